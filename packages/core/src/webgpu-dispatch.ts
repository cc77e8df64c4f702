/**
 * Host-side caches for tfjs-backend-webgpu 4.22's dispatches: uniform buffers and bind group layouts.
 *
 * For every dispatch, tfjs packs its uniforms (NaN, Infinity, the shapes and strides of inputs and
 * output, the program's own values) into a fresh pooled buffer with `queue.writeBuffer`, and asks
 * the pipeline for its bind group layout. Through Dawn in Node on the H100 the write costs 6.4 µs of
 * host time and the layout 2.9 µs (`scripts/bench/gpu-host.ts --native`; a bind group 24.6, a
 * recorded dispatch about 6); a GPT-2-small training step makes about 700 dispatches.
 *
 * - Uniforms are cached by content: a training step repeats the same programs on the same shapes,
 *   so identical bytes bind the same buffer, written once (on the H100: 8,724 hits and 55 misses
 *   over 12 GPT-2-small steps). A cached buffer is never written again while cached; one evicted
 *   (least recently used, beyond UNIFORM_CACHE entries) goes back to tfjs's pool only after the next
 *   submit, through tfjs's own pending-disposal list, as tfjs does with its per-dispatch buffers.
 * - Pipelines answer `getBindGroupLayout` from a memo (one layout object per pipeline).
 *
 * Bind groups are not cached: keyed by their buffers they hit 17% of the time over those steps
 * (tfjs's pool does not hand out the same buffers in the same roles each step), which did not pay
 * for the bookkeeping. The step itself was GPU-bound at that point (100-103 ms with or without).
 */

interface PipelineLike {
  getBindGroupLayout(i: number): object;
}
interface DeviceLike {
  createComputePipeline(d: unknown): PipelineLike;
  createComputePipelineAsync?(d: unknown): Promise<PipelineLike>;
}
interface Uniform {
  type: string;
  data: number[];
}
interface WebGpuBackendInternals {
  device: DeviceLike;
  queue: { writeBuffer(buffer: unknown, offset: number, data: ArrayBuffer, dataOffset?: number, size?: number): void };
  bufferManager: { acquireBuffer(size: number, usage: number): unknown };
  uniformPendingDisposal: unknown[];
  makeUniforms(u: Uniform[]): { offset: number; size: number; buffer: unknown };
}

/** Distinct uniform contents kept (a GPT-2-small step has a few hundred). */
export const UNIFORM_CACHE = 4096;

/** GPUBufferUsage.UNIFORM | COPY_DST, as tfjs gives its uniform buffers. */
const UNIFORM_USAGE = 0x0040 | 0x0008;

/** Counters of one backend's caches (for benchmarks and tests). */
export interface DispatchCacheStats {
  uniformHits: number;
  uniformMisses: number;
}

/**
 * tfjs 4.22's uniform packing (WGSL struct alignment of scalars and vectors up to 6 wide):
 * the bytes of the uniform block for `uniforms`.
 */
export function packUniforms(uniforms: Uniform[]): ArrayBuffer {
  let offset = 0;
  let previous = 0;
  let maxAlign = 1;
  const offsets: number[] = [];
  for (const d of uniforms) {
    if (d.data.length === 0) d.data = [1]; // as tfjs does
    const n = d.data.length;
    if (n > 6) throw new Error(`packUniforms: a ${n}-wide uniform (tfjs supports up to 6)`);
    let align = n === 1 ? 4 : n === 2 ? 8 : 16;
    if (previous === 5 || previous === 6) align = 16;
    maxAlign = Math.max(maxAlign, align);
    offset = Math.ceil(offset / align) * align;
    previous = n;
    offsets.push(offset);
    offset += 4 * n;
  }
  const bytes = new ArrayBuffer(Math.ceil(offset / maxAlign) * maxAlign);
  uniforms.forEach((d, i) => {
    const View = d.type === 'int32' ? Int32Array : d.type === 'uint32' ? Uint32Array : Float32Array;
    new View(bytes, offsets[i]!, d.data.length).set(d.data);
  });
  return bytes;
}

/** A Map used as a least-recently-used cache of at most `limit` entries; `evict` gets the dropped values. */
class Lru<V> {
  readonly #map = new Map<string, V>();
  constructor(
    readonly limit: number,
    readonly evict: (v: V) => void = () => {},
  ) {}
  get(k: string): V | undefined {
    const v = this.#map.get(k);
    if (v !== undefined) {
      this.#map.delete(k);
      this.#map.set(k, v);
    }
    return v;
  }
  set(k: string, v: V): void {
    this.#map.set(k, v);
    if (this.#map.size > this.limit) {
      const [oldest, value] = this.#map.entries().next().value as [string, V];
      this.#map.delete(oldest);
      this.evict(value);
    }
  }
  get size(): number {
    return this.#map.size;
  }
}

/**
 * Installs the caches on one backend instance (tfjs-backend-webgpu's WebGPUBackend) and its device.
 * Returns the counters, or undefined (and changes nothing) when the instance does not have the
 * expected internals.
 */
export function installDispatchCaches(backend: object): DispatchCacheStats | undefined {
  const be = backend as Partial<WebGpuBackendInternals>;
  const device = be.device;
  if (!device || typeof be.makeUniforms !== 'function' || !be.queue || !be.bufferManager || !Array.isArray(be.uniformPendingDisposal)) return undefined;
  if (typeof device.createComputePipeline !== 'function') return undefined;
  const stats: DispatchCacheStats = { uniformHits: 0, uniformMisses: 0 };

  // uniforms by content
  const uniforms = new Lru<{ offset: number; size: number; buffer: unknown }>(UNIFORM_CACHE, (u) => be.uniformPendingDisposal!.push(u.buffer));
  be.makeUniforms = (u: Uniform[]) => {
    const bytes = packUniforms(u);
    const key = new Int32Array(bytes).join(',');
    const hit = uniforms.get(key);
    if (hit) {
      stats.uniformHits++;
      return hit;
    }
    stats.uniformMisses++;
    const buffer = be.bufferManager!.acquireBuffer(bytes.byteLength, UNIFORM_USAGE);
    be.queue!.writeBuffer(buffer, 0, bytes, 0, bytes.byteLength);
    const binding = { offset: 0, size: bytes.byteLength, buffer };
    uniforms.set(key, binding);
    return binding;
  };

  // one layout object per pipeline
  const memoLayouts = (p: PipelineLike): PipelineLike => {
    const layouts = new Map<number, object>();
    const get = p.getBindGroupLayout.bind(p);
    Object.defineProperty(p, 'getBindGroupLayout', {
      value: (i: number) => {
        let l = layouts.get(i);
        if (!l) layouts.set(i, (l = get(i)));
        return l;
      },
      configurable: true,
    });
    return p;
  };
  const createPipeline = device.createComputePipeline.bind(device);
  device.createComputePipeline = (d: unknown) => memoLayouts(createPipeline(d));
  if (typeof device.createComputePipelineAsync === 'function') {
    const createAsync = device.createComputePipelineAsync.bind(device);
    device.createComputePipelineAsync = async (d: unknown) => memoLayouts(await createAsync(d));
  }

  (backend as { tsformerDispatchCaches?: DispatchCacheStats }).tsformerDispatchCaches = stats;
  return stats;
}
