/**
 * Host-to-GPU uploads for tfjs-backend-webgpu 4.22 through `queue.writeBuffer` into pooled buffers.
 *
 * tfjs uploads a tensor made on the host (every scalar a JS number turns into, `tf.tensor(...)`,
 * the ones and zeros some gradients build) the first time a kernel reads it: when its pool has a
 * buffer of that size, it creates a fresh mapped staging buffer, copies through it and destroys it
 * afterwards; otherwise it creates a new mapped buffer. Through Dawn in Node either costs about
 * 0.85 ms of host time per upload on the H100 (measured: `x.mul(0.5)` 963 µs against 109 µs for
 * `x.add(y)`; scripts/bench/gpu-host.ts), and a GPT-2-small step made 354 of them.
 *
 * `queue.writeBuffer` needs neither: it copies the data into the queue's own staging memory, and the
 * copy lands before any command submitted after it. That ordering is safe here because a buffer
 * taken from the pool is referenced by no recorded-but-unsubmitted command (tfjs returns a buffer to
 * the pool only after the commands that used it were submitted), and every command that will read
 * the new tensor is recorded after this call, so submitted after the copy.
 */

interface TensorData {
  values: ArrayLike<number> | Uint8Array | null | undefined;
  dtype: string;
  shape: number[];
  resource: unknown;
}

interface WebGpuBackendInternals {
  tensorMap: { get(dataId: object): TensorData | undefined };
  bufferManager: { acquireBuffer(size: number, usage: number): unknown };
  queue: { writeBuffer(buffer: unknown, offset: number, data: ArrayBufferView): void };
  uploadToGPU(dataId: object): void;
}

/** GPUBufferUsage.STORAGE | COPY_SRC | COPY_DST: the usage tfjs gives tensor buffers. */
const TENSOR_USAGE = 0x0080 | 0x0004 | 0x0008;

/** The data as a 4-byte-per-element typed array (bool is stored as int32, as tfjs does). */
function words(d: TensorData): Float32Array | Int32Array | undefined {
  const v = d.values;
  if (d.dtype === 'float32') return v instanceof Float32Array ? v : Float32Array.from(v as ArrayLike<number>);
  if (d.dtype === 'int32' || d.dtype === 'bool') return v instanceof Int32Array ? v : Int32Array.from(v as ArrayLike<number>);
  return undefined;
}

/**
 * Replaces `uploadToGPU` on one backend instance (tfjs-backend-webgpu's WebGPUBackend) with the
 * writeBuffer path for float32, int32 and bool tensors; any other case goes to tfjs's own code.
 * Returns false (and changes nothing) when the instance does not have the expected internals.
 */
export function installFastUploads(backend: object): boolean {
  const be = backend as Partial<WebGpuBackendInternals>;
  if (typeof be.uploadToGPU !== 'function' || !be.tensorMap || !be.bufferManager || !be.queue) return false;
  const original = be.uploadToGPU.bind(be);
  be.uploadToGPU = (dataId: object) => {
    const d = be.tensorMap!.get(dataId);
    if (!d || d.resource != null || d.values == null) return original(dataId);
    const data = words(d);
    if (!data || data.byteLength === 0) return original(dataId);
    const buffer = be.bufferManager!.acquireBuffer(data.byteLength, TENSOR_USAGE);
    be.queue!.writeBuffer(buffer, 0, data);
    d.resource = buffer;
    // once uploaded, the host copy is dropped (as tfjs does)
    d.values = null;
  };
  (be as { tsformerFastUploads?: boolean }).tsformerFastUploads = true;
  return true;
}
