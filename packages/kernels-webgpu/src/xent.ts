import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, runMultiOutput, type MultiOutputProgram, type WebGpuBackendLike } from './program.js';

/**
 * Fused sparse cross-entropy: logits [N, V], int32 targets [N] -> mean over rows of
 *   loss_n = logsumexp(logits_n) - logits_n[target_n]
 * Forward: one dispatch, one workgroup per row, one pass over the row with an online max and sum
 * (no softmax tensor), writing the row losses and log-sum-exps. Backward: one elementwise pass, dlogits = (exp(logits - lse) - onehot(target)) dloss_n,
 * reading the logits once and writing the gradient once.
 */
export const SPARSE_XENT = 'TsfSparseXent';
export const SPARSE_XENT_GRAD = 'TsfSparseXentGrad';

/** Composite definition (any backend; the oracle): mean over rows. */
export function sparseCrossEntropyComposite(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape[logits.rank - 1]!;
  const N = targets.size;
  return tf.tidy(() => {
    const flat = logits.reshape([N, V]); // [N, V]
    const picked = tf.sum(flat.mul(tf.oneHot(targets.reshape([N]), V).cast('float32')), -1); // [N]
    return tf.logSumExp(flat, -1).sub(picked).mean() as tf.Scalar;
  });
}

/** Mean sparse cross-entropy: the fused kernel on webgpu, the composite elsewhere. */
export function sparseCrossEntropy(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape[logits.rank - 1]!;
  const N = targets.size;
  if (logits.size !== N * V) throw new Error(`sparseCrossEntropy: logits [${logits.shape}] for targets [${targets.shape}]`);
  if (targets.dtype !== 'int32') throw new Error(`sparseCrossEntropy: targets must be int32, got ${targets.dtype}`);
  if (!kernelActive(SPARSE_XENT)) return sparseCrossEntropyComposite(logits, targets);
  return tf.tidy(() => {
    const [rows] = tf.engine().runKernel(SPARSE_XENT, { logits: logits.reshape([N, V]), targets: targets.reshape([N]) }) as tf.Tensor[];
    return rows!.mean() as tf.Scalar;
  });
}

const THREADS = 256;

/** Per row: the loss (ROWS [N]) and the log-sum-exp (LSE [N], kept for the backward), one dispatch. */
function forwardProgram(N: number, V: number): MultiOutputProgram {
  return {
    key: `tsf_xent_fwd_${N}_${V}`,
    inputs: ['L', 'TGT'],
    outputs: [
      { name: 'ROWS', shape: [N] },
      { name: 'LSE', shape: [N] },
    ],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const V = ${V}u;
      var<workgroup> mx: array<f32, ${THREADS}>;
      var<workgroup> sm: array<f32, ${THREADS}>;
      fn kernel(n: u32, localIndex: u32) {
        // the targets are int32: read through their bits
        // online max and sum of exp over this thread's strided share of the row
        var m = -3.0e38;
        var s = 0.0;
        for (var v = localIndex; v < V; v += ${THREADS}u) {
          let x = L[n * V + v];
          if (x > m) { s = s * exp(m - x) + 1.0; m = x; } else { s += exp(x - m); }
        }
        mx[localIndex] = m; sm[localIndex] = s;
        workgroupBarrier();
        for (var k = ${THREADS / 2}u; k > 0u; k >>= 1u) {
          if (localIndex < k) {
            let m1 = mx[localIndex]; let m2 = mx[localIndex + k];
            let mm = max(m1, m2);
            sm[localIndex] = sm[localIndex] * exp(m1 - mm) + sm[localIndex + k] * exp(m2 - mm);
            mx[localIndex] = mm;
          }
          workgroupBarrier();
        }
        if (localIndex == 0u) {
          let lse = mx[0] + log(sm[0]);
          let t = bitcast<u32>(TGT[n]);
          ROWS[n] = lse - L[n * V + t];
          LSE[n] = lse;
        }
      }`,
  };
}

function gradProgram(N: number, V: number): KernelProgram {
  const key = `tsf_xent_grad_${N}_${V}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [N, V],
    inputs: ['L', 'TGT', 'LSE', 'DY'],
    threads: THREADS,
    numGroups: Math.ceil((N * V) / THREADS),
    body: `
      fn kernel() {
        let i = wgIndex() * ${THREADS}u + localIndex;
        if (i >= ${N * V}u) { return; }
        let n = i / ${V}u; let v = i % ${V}u;
        let p = exp(L[i] - LSE[n]);
        result[i] = (p - select(0.0, 1.0, u32(TGT[n]) == v)) * DY[n];
      }`,
  }));
}

export function registerSparseCrossEntropy(): void {
  if (!tf.getKernel(SPARSE_XENT, 'webgpu')) {
    tf.registerKernel({
      kernelName: SPARSE_XENT,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { logits, targets } = inputs as Record<string, TensorInfo>;
        const [N, V] = logits!.shape as [number, number];
        return runMultiOutput(be, forwardProgram(N, V), [logits!, targets!]); // [rows, lse]
      },
    });
    tf.registerKernel({
      kernelName: SPARSE_XENT_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const { logits, targets, lse, dy } = inputs as Record<string, TensorInfo>;
        const [N, V] = logits!.shape as [number, number];
        return run(backend as unknown as WebGpuBackendLike, gradProgram(N, V), [logits!, targets!, lse!, dy!]);
      },
    });
  }
  if (!tf.getGradient(SPARSE_XENT)) {
    tf.registerGradient({
      kernelName: SPARSE_XENT,
      inputsToSave: ['logits', 'targets'],
      outputsToSave: [false, true],
      gradFunc: (dys, saved) => {
        const [logits, targets, lse] = saved as tf.Tensor[];
        const dy = (dys as tf.Tensor[])[0]!;
        return {
          logits: () => tf.engine().runKernel(SPARSE_XENT_GRAD, { logits: logits!, targets: targets!, lse: lse!, dy }) as tf.Tensor,
          targets: () => tf.zeros(targets!.shape),
        };
      },
    });
  }
}
