import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, type WebGpuBackendLike } from './program.js';

/**
 * The sum of squares of many tensors together (the global gradient norm before clipping is its
 * square root). tfjs ops take two dispatches per tensor (Square, Sum; three for large ones), 250
 * to 320 for a GPT-2-small step. Here each dispatch reads a group of up to (storage bindings - 1)
 * tensors: every workgroup squares and sums one chunk of one tensor into a partial, and the
 * partials of all groups are summed by tfjs's Sum once (about 12 dispatches for GPT-2 small).
 */
export const SUM_SQUARES = 'TsfSumSquares';

const CHUNK = 8192;
const THREADS = 256;

/** Composite definition (any backend; the oracle). */
export function sumSquaresComposite(xs: tf.Tensor[]): tf.Scalar {
  return tf.tidy(() => (xs.length ? (tf.addN(xs.map((x) => x.square().sum())) as tf.Scalar) : tf.scalar(0)));
}

/** sum over xs of sum(x^2): the fused kernel on webgpu (float32 tensors), the composite elsewhere. */
export function sumSquares(xs: tf.Tensor[]): tf.Scalar {
  if (!kernelActive(SUM_SQUARES) || xs.length === 0 || xs.some((x) => x.dtype !== 'float32')) return sumSquaresComposite(xs);
  const be = tf.backend() as unknown as WebGpuBackendLike;
  // one binding for the output, the rest for one group's inputs
  const perGroup = Math.max(1, Math.min(15, be.device.limits.maxStorageBuffersPerShaderStage - 1));
  return tf.tidy(() => {
    const partials: tf.Tensor[] = [];
    for (let i = 0; i < xs.length; i += perGroup) {
      const inputs: Record<string, tf.Tensor> = {};
      xs.slice(i, i + perGroup).forEach((x, j) => (inputs[`x${j}`] = x));
      partials.push(tf.engine().runKernel(SUM_SQUARES, inputs, { count: Object.keys(inputs).length } as unknown as NamedAttrMap) as tf.Tensor);
    }
    return (partials.length === 1 ? partials[0]! : tf.concat(partials)).sum() as tf.Scalar;
  });
}

/** Partial sums of squares of one group: [sum over tensors of ceil(n_i / CHUNK)]. */
function groupProgram(sizes: number[]): KernelProgram {
  const chunks = sizes.map((n) => Math.ceil(n / CHUNK));
  const starts: number[] = [];
  let total = 0;
  for (const c of chunks) {
    starts.push(total);
    total += c;
  }
  // workgroup -> (tensor, chunk): one branch per tensor of the group
  const branches = sizes
    .map((n, i) => `${i ? 'else ' : ''}if (wg < ${starts[i]! + chunks[i]!}u) { acc = part${i}(wg - ${starts[i]}u); }`)
    .join('\n        ');
  const parts = sizes
    .map(
      (n, i) => `fn part${i}(c: u32) -> f32 {
        var s = 0.0;
        let hi = min(${n}u, (c + 1u) * ${CHUNK}u);
        for (var j = c * ${CHUNK}u + localIndex; j < hi; j += ${THREADS}u) { let x = X${i}[j]; s += x * x; }
        return s;
      }`,
    )
    .join('\n      ');
  const key = `tsf_sumsq_${sizes.join('_')}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [total],
    inputs: sizes.map((_, i) => `X${i}`),
    threads: THREADS,
    numGroups: total,
    body: `
      var<workgroup> red: array<f32, ${THREADS}>;
      var<workgroup> wgShared: u32;
      ${parts}
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= ${total}u) { return; }
        var acc = 0.0;
        ${branches}
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

export function registerSumSquares(): void {
  if (tf.getKernel(SUM_SQUARES, 'webgpu')) return;
  tf.registerKernel({
    kernelName: SUM_SQUARES,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const be = backend as unknown as WebGpuBackendLike;
      const xs = Array.from({ length: attrs!.count as number }, (_, i) => inputs[`x${i}`] as TensorInfo);
      const flat = xs.map((x) => ({ ...x, shape: [tf.util.sizeFromShape(x.shape)] }));
      return run(be, groupProgram(flat.map((x) => x.shape[0]!)), flat);
    },
  });
}
