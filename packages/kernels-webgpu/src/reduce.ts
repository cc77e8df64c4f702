import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, run, type WebGpuBackendLike } from './program.js';

/**
 * A two-stage `Sum` for webgpu. tfjs-backend-webgpu 4.22 reduces each output element in a single
 * workgroup, so a sum with few outputs over many elements (the squared-gradient sums of global-norm
 * clipping, a scalar loss over a large tensor) runs on one of the GPU's 132 SMs: 38.6M elements (a
 * GPT-2 embedding gradient) take tens of ms. Here such a sum first reduces chunks of CHUNK elements
 * in parallel to [batch, ceil(n / CHUNK)] partial sums, then hands those to tfjs's own Sum. Every
 * other Sum goes to tfjs's kernel unchanged.
 */
const CHUNK = 4096;
const THREADS = 256;

function partialProgram(batch: number, n: number): KernelProgram {
  const C = Math.ceil(n / CHUNK);
  const key = `tsf_sum_partial_${batch}_${n}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [batch, C],
    inputs: ['X'],
    threads: THREADS,
    numGroups: batch * C,
    body: `
      const N = ${n}u; const C = ${C}u; const BATCH = ${batch}u;
      var<workgroup> red: array<f32, ${THREADS}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= BATCH * C) { return; }
        let row = wg / C; let c = wg % C;
        let lo = c * ${CHUNK}u; let hi = min(N, lo + ${CHUNK}u);
        var acc = 0.0;
        for (var i = lo + localIndex; i < hi; i += ${THREADS}u) { acc += X[row * N + i]; }
        red[localIndex] = acc;
        workgroupBarrier();
        for (var s = ${THREADS / 2}u; s > 0u; s >>= 1u) {
          if (localIndex < s) { red[localIndex] += red[localIndex + s]; }
          workgroupBarrier();
        }
        if (localIndex == 0u) { result[wg] = red[0]; }
      }`,
  }));
}

/** Whether `axes` (normalized) are the trailing axes of a rank-`rank` tensor. */
function trailing(axes: number[], rank: number): boolean {
  const sorted = [...axes].sort((a, b) => a - b);
  return sorted.every((a, i) => a === rank - sorted.length + i);
}

let original: KernelConfig | undefined;

export function registerFastSum(): void {
  const current = tf.getKernel('Sum', 'webgpu');
  if (!current || (current as { tsformer?: boolean }).tsformer) return;
  original = current;
  const tfjsSum = current.kernelFunc;
  const kernelFunc: KernelFunc = (args) => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x as TensorInfo;
    const rank = x.shape.length;
    const axes = tf.util.parseAxisParam((attrs as { axis: number | number[] }).axis, x.shape);
    const n = axes.reduce((p, a) => p * x.shape[a]!, 1);
    const batch = tf.util.sizeFromShape(x.shape) / Math.max(n, 1);
    if (x.dtype !== 'float32' || n < 65536 || batch >= 1024 || !trailing(axes, rank)) return tfjsSum(args);
    const be = backend as unknown as WebGpuBackendLike;
    const partial = run(be, partialProgram(batch, n), [{ ...x, shape: [batch, n] }]);
    const keepDims = Boolean((attrs as { keepDims?: boolean }).keepDims);
    const out = tfjsSum({ inputs: { x: partial }, backend, attrs: { axis: 1, keepDims: false } as unknown as NamedAttrMap }) as TensorInfo;
    be.disposeData(partial.dataId);
    const shape = keepDims ? x.shape.map((s, i) => (axes.includes(i) ? 1 : s)) : x.shape.filter((_, i) => !axes.includes(i));
    return { ...out, shape };
  };
  tf.unregisterKernel('Sum', 'webgpu');
  tf.registerKernel(Object.assign({ kernelName: 'Sum', backendName: 'webgpu', kernelFunc }, { tsformer: true }));
}

/** tfjs's own Sum kernel for webgpu (the oracle of the two-stage one), once registerFastSum has run. */
export function originalSum(): KernelConfig | undefined {
  return original;
}

/**
 * AddN over any number of tensors. tfjs-backend-webgpu 4.22 binds every input of AddN in one shader,
 * so more than maxStorageBuffersPerShaderStage - 1 inputs (8 by default, 16 on the H100) fail
 * pipeline validation and the result is never written: global-norm clipping over a model's ~150
 * gradients (tf.addN of their squared sums) did that. Here the inputs are summed in groups that fit,
 * then the group sums, with tfjs's own AddN.
 */
export function registerChunkedAddN(): void {
  const current = tf.getKernel('AddN', 'webgpu');
  if (!current || (current as { tsformer?: boolean }).tsformer) return;
  const tfjsAddN = current.kernelFunc;
  const kernelFunc: KernelFunc = (args) => {
    const be = args.backend as unknown as WebGpuBackendLike;
    const max = Math.max(2, be.device.limits.maxStorageBuffersPerShaderStage - 1);
    let level = args.inputs as unknown as TensorInfo[];
    if (level.length <= max) return tfjsAddN(args);
    const temps: TensorInfo[] = [];
    while (level.length > max) {
      const next: TensorInfo[] = [];
      for (let i = 0; i < level.length; i += max) {
        const chunk = level.slice(i, i + max);
        if (chunk.length === 1) next.push(chunk[0]!);
        else {
          const r = tfjsAddN({ ...args, inputs: chunk as never }) as TensorInfo;
          temps.push(r);
          next.push(r);
        }
      }
      level = next;
    }
    const out = tfjsAddN({ ...args, inputs: level as never }) as TensorInfo;
    for (const t of temps) be.disposeData(t.dataId);
    return out;
  };
  tf.unregisterKernel('AddN', 'webgpu');
  tf.registerKernel(Object.assign({ kernelName: 'AddN', backendName: 'webgpu', kernelFunc }, { tsformer: true }));
}
