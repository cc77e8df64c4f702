/**
 * Host-side caches for tfjs-backend-webgpu 4.22's dispatches: bind groups and uniform buffers.
 *
 * For every dispatch, tfjs packs its uniforms (NaN, Infinity, the shapes and strides of inputs and
 * output, the program's own values) into a fresh pooled buffer with `queue.writeBuffer`, asks the
 * pipeline for its bind group layout and creates a bind group. Through Dawn in Node on the H100 a
 * bind group costs 24.6 µs of host time, the layout 2.9 µs and the write 6.4 µs
 * (`scripts/bench/gpu-host.ts --native`), against about 6 µs for recording the dispatch itself; a
 * GPT-2-small training step makes about 700 dispatches, and at T=512 the host is the bound.
 *
 * A training step repeats the same programs on the same shapes, and tfjs's buffer pool hands out
 * buffers in the same order each step, so both repeat:
 * - Uniforms are cached by content: identical bytes bind the same buffer, written once. A cached
 *   buffer is never written again while cached; one evicted from the cache (least recently used,
 *   beyond UNIFORM_CACHE entries) goes back to tfjs's pool only after the next submit (through
 *   tfjs's own pending-disposal list), as tfjs does with its per-dispatch uniform buffers.
 * - Bind groups are cached by layout and bound buffers (identity, offset, size). A bind group holds
 *   buffers, not their contents, so a hit is the same binding whatever the buffers now hold. A
 *   destroyed buffer drops every cached bind group that holds it (tfjs destroys buffers when its
 *   pool is disposed, and staging buffers after use).
 * - Pipelines answer `getBindGroupLayout` from a memo (one layout object per pipeline), so the
 *   layout can key the cache.
 */

interface BufferLike {
  destroy(): void;
}
interface BindGroupEntryLike {
  binding: number;
  resource: { buffer?: BufferLike; offset?: number; size?: number } | object;
}
interface BindGroupDescLike {
  layout: object;
  entries: BindGroupEntryLike[];
  label?: string;
}
interface PipelineLike {
  getBindGroupLayout(i: number): object;
}
interface DeviceLike {
  createBindGroup(d: BindGroupDescLike): unknown;
  createBuffer(d: unknown): BufferLike;
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
/** Distinct bind groups kept. */
export const BIND_GROUP_CACHE = 16384;

/** GPUBufferUsage.UNIFORM | COPY_DST, as tfjs gives its uniform buffers. */
const UNIFORM_USAGE = 0x0040 | 0x0008;

/** Counters of one backend's caches (for benchmarks and tests). */
export interface DispatchCacheStats {
  uniformHits: number;
  uniformMisses: number;
  bindGroupHits: number;
  bindGroupMisses: number;
  /** Cached bind groups dropped because a buffer they hold was destroyed. */
  invalidated: number;
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
  delete(k: string): boolean {
    return this.#map.delete(k);
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
  if (typeof device.createBindGroup !== 'function' || typeof device.createComputePipeline !== 'function') return undefined;
  const stats: DispatchCacheStats = { uniformHits: 0, uniformMisses: 0, bindGroupHits: 0, bindGroupMisses: 0, invalidated: 0 };

  // object identities as numbers (layouts, buffers)
  const ids = new WeakMap<object, number>();
  let nextId = 1;
  const idOf = (o: object): number => {
    let id = ids.get(o);
    if (id === undefined) ids.set(o, (id = nextId++));
    return id;
  };

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

  // bind groups by layout and buffers; a destroyed buffer drops the groups that hold it
  const groups = new Lru<unknown>(BIND_GROUP_CACHE);
  const keysOfBuffer = new Map<number, string[]>();
  const watched = new WeakSet<object>();
  const watch = (b: BufferLike) => {
    if (watched.has(b)) return;
    watched.add(b);
    const destroy = b.destroy.bind(b);
    Object.defineProperty(b, 'destroy', {
      value: () => {
        const id = idOf(b);
        for (const k of keysOfBuffer.get(id) ?? []) if (groups.delete(k)) stats.invalidated++;
        keysOfBuffer.delete(id);
        destroy();
      },
      configurable: true,
    });
  };
  const createBindGroup = device.createBindGroup.bind(device);
  device.createBindGroup = (d: BindGroupDescLike) => {
    let key = `${idOf(d.layout)}`;
    for (const e of d.entries) {
      const r = e.resource as { buffer?: BufferLike; offset?: number; size?: number };
      if (!r.buffer) return createBindGroup(d); // textures, samplers: not cached
      key += `|${e.binding}:${idOf(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1}`;
    }
    const hit = groups.get(key);
    if (hit) {
      stats.bindGroupHits++;
      return hit;
    }
    stats.bindGroupMisses++;
    const g = createBindGroup(d);
    groups.set(key, g);
    for (const e of d.entries) {
      const b = (e.resource as { buffer: BufferLike }).buffer;
      watch(b);
      const id = idOf(b);
      let keys = keysOfBuffer.get(id);
      if (!keys) keysOfBuffer.set(id, (keys = []));
      keys.push(key);
    }
    return g;
  };
  (backend as { tsformerDispatchCaches?: DispatchCacheStats }).tsformerDispatchCaches = stats;
  return stats;
}
