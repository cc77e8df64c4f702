import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, f32, kernelActive, run, runMultiOutput, workgroupSumWgsl, type MultiOutputProgram, type WebGpuBackendLike } from './program.js';

/**
 * Fused LayerNorm over the last axis (GPT-2's norm):
 *
 *   y = (x - mean) / sqrt(var + eps) * weight (+ bias)        x [..., D], weight, bias [D]
 *
 * Forward: one dispatch, one workgroup per row; nothing but y is written (tfjs would otherwise hand
 * the backward a host-made zero gradient for every unused extra output). Backward: the row
 * statistics are recomputed with dx (one dispatch, one workgroup per row, writing dx and the
 * [N, 2] statistics), then dweight/dbias as a two-stage column sum. Against the composite (tf.moments and ~10 elementwise ops forward,
 * ~25 backward, whose Mean gradients each upload a host-made tensor of ones the size of x), a
 * LayerNorm costs 1 dispatch forward and 3 backward.
 */
export const LAYER_NORM = 'TsfLayerNorm';
export const LAYER_NORM_GRAD = 'TsfLayerNormGrad';

/** Composite definition (any backend; the oracle): @tsformer/layers' LayerNorm. */
export function layerNormComposite(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, eps = 1e-5): tf.Tensor {
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, -1, true); // [..., 1] each
    const y = x.sub(mean).mul(variance.add(eps).rsqrt()).mul(weight);
    return bias ? y.add(bias) : y;
  });
}

/** LayerNorm: the fused kernel on webgpu, the composite elsewhere. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, eps = 1e-5): tf.Tensor {
  const D = x.shape[x.rank - 1]!;
  if (weight.rank !== 1 || weight.shape[0] !== D) throw new Error(`layerNorm: weight [${weight.shape}] for x [${x.shape}]`);
  if (bias && (bias.rank !== 1 || bias.shape[0] !== D)) throw new Error(`layerNorm: bias [${bias.shape}] for x [${x.shape}]`);
  if (!kernelActive(LAYER_NORM)) return layerNormComposite(x, weight, bias, eps);
  const inputs: Record<string, tf.Tensor> = bias ? { x, weight, bias } : { x, weight };
  return tf.engine().runKernel(LAYER_NORM, inputs, { eps, hasBias: bias !== undefined } as unknown as NamedAttrMap) as tf.Tensor;
}

const THREADS = 128;

/**
 * Row statistics in a workgroup of THREADS threads (`tid` the local index): mean, then
 * 1/sqrt(var + eps) (two passes over the row).
 */
function rowStats(eps: number): string {
  return `
    ${workgroupSumWgsl(THREADS)}
    // [mean, rstd] of row n
    fn stats(n: u32, tid: u32) -> vec2<f32> {
      var s = 0.0;
      for (var d = tid; d < D; d += ${THREADS}u) { s += X[n * D + d]; }
      let mean = wgSum(s, tid) / f32(D);
      var ss = 0.0;
      for (var d = tid; d < D; d += ${THREADS}u) { let c = X[n * D + d] - mean; ss += c * c; }
      return vec2<f32>(mean, inverseSqrt(wgSum(ss, tid) / f32(D) + ${f32(eps)}));
    }`;
}

function forwardProgram(N: number, D: number, eps: number, hasBias: boolean): KernelProgram {
  const key = `tsf_ln_fwd_${N}_${D}_${eps}_${hasBias}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [N, D],
    inputs: hasBias ? ['X', 'W', 'BS'] : ['X', 'W'],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u;
      ${rowStats(eps)}
      var<workgroup> rowShared: u32;
      fn kernel() {
        // the row index through workgroup memory: uniform for the barriers in wgSum
        if (localIndex == 0u) { rowShared = wgIndex(); }
        let n = workgroupUniformLoad(&rowShared);
        if (n >= N) { return; }
        let st = stats(n, localIndex);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          result[n * D + d] = (X[n * D + d] - st.x) * st.y * W[d]${hasBias ? ' + BS[d]' : ''};
        }
      }`,
  }));
}

/**
 * Per row: the statistics recomputed ([mean, rstd] -> S [N, 2], for the column sums), and
 * dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy w and xhat = (x - mean) rstd -> DX [N, D].
 */
function dxProgram(N: number, D: number, eps: number): MultiOutputProgram {
  return {
    key: `tsf_ln_dx_${N}_${D}_${eps}`,
    inputs: ['X', 'W', 'DY'],
    outputs: [
      { name: 'DX', shape: [N, D] },
      { name: 'S', shape: [N, 2] },
    ],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u;
      ${rowStats(eps)}
      fn kernel(wg: u32, tid: u32) {
        let n = wg; // one workgroup per row (uniform: from the workgroup id)
        let st = stats(n, tid);
        let mean = st.x; let rstd = st.y;
        var sg = 0.0; var sgx = 0.0;
        for (var d = tid; d < D; d += ${THREADS}u) {
          let g = DY[n * D + d] * W[d];
          sg += g;
          sgx += g * (X[n * D + d] - mean) * rstd;
        }
        let mg = wgSum(sg, tid) / f32(D);
        let mgx = wgSum(sgx, tid) / f32(D);
        for (var d = tid; d < D; d += ${THREADS}u) {
          let xhat = (X[n * D + d] - mean) * rstd;
          DX[n * D + d] = rstd * (DY[n * D + d] * W[d] - mg - xhat * mgx);
        }
        if (tid == 0u) { S[2u * n] = mean; S[2u * n + 1u] = rstd; }
      }`,
  };
}

/** Stage 1 of dweight and dbias: partial column sums over C chunks of rows, [C, 2D] = [dw part | db part]. */
function partialProgram(N: number, D: number, C: number): KernelProgram {
  const rowsPer = Math.ceil(N / C);
  const key = `tsf_ln_dwb1_${N}_${D}_${C}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [C, 2 * D],
    inputs: ['X', 'S', 'DY'],
    threads: 64,
    numGroups: C * Math.ceil(D / 64),
    body: `
      const N = ${N}u; const D = ${D}u; const C = ${C}u; const ROWS = ${rowsPer}u;
      fn kernel() {
        let wg = wgIndex();
        let c = wg % C;
        let d = (wg / C) * 64u + localIndex;
        if (d >= D || c >= C) { return; }
        var dw = 0.0; var db = 0.0;
        for (var n = c * ROWS; n < min(N, c * ROWS + ROWS); n++) {
          let dy = DY[n * D + d];
          dw += dy * (X[n * D + d] - S[2u * n]) * S[2u * n + 1u];
          db += dy;
        }
        result[c * 2u * D + d] = dw;
        result[c * 2u * D + D + d] = db;
      }`,
  }));
}

/** Stage 2: the sums over the C partial rows -> dweight [D] and dbias [D]. */
function finalProgram(D: number, C: number): MultiOutputProgram {
  return {
    key: `tsf_ln_dwb2_${D}_${C}`,
    inputs: ['P'],
    outputs: [
      { name: 'DW', shape: [D] },
      { name: 'DB', shape: [D] },
    ],
    threads: 64,
    numGroups: Math.ceil(D / 64),
    body: `
      fn kernel(wg: u32, tid: u32) {
        let d = wg * 64u + tid;
        if (d >= ${D}u) { return; }
        var dw = 0.0; var db = 0.0;
        for (var c = 0u; c < ${C}u; c++) { dw += P[c * ${2 * D}u + d]; db += P[c * ${2 * D}u + ${D}u + d]; }
        DW[d] = dw;
        DB[d] = db;
      }`,
  };
}

export function registerLayerNorm(): void {
  if (!tf.getKernel(LAYER_NORM, 'webgpu')) {
    tf.registerKernel({
      kernelName: LAYER_NORM,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { x, weight, bias } = inputs as Record<string, TensorInfo>;
        const D = x!.shape[x!.shape.length - 1]!;
        const N = tf.util.sizeFromShape(x!.shape) / D;
        const hasBias = Boolean(attrs!.hasBias);
        const y = run(be, forwardProgram(N, D, attrs!.eps as number, hasBias), hasBias ? [x!, weight!, bias!] : [x!, weight!]);
        return { ...y, shape: x!.shape };
      },
    });
    tf.registerKernel({
      kernelName: LAYER_NORM_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { x, weight, dy } = inputs as Record<string, TensorInfo>;
        const D = x!.shape[x!.shape.length - 1]!;
        const N = tf.util.sizeFromShape(x!.shape) / D;
        const [dx, s] = runMultiOutput(be, dxProgram(N, D, attrs!.eps as number), [x!, weight!, dy!]); // [N, D], [N, 2]
        const C = Math.max(1, Math.min(256, Math.ceil(N / 32)));
        const partial = run(be, partialProgram(N, D, C), [x!, s!, dy!]); // [C, 2D]
        const [dw, db] = runMultiOutput(be, finalProgram(D, C), [partial]);
        be.disposeData(s!.dataId);
        be.disposeData(partial.dataId);
        return [{ ...dx!, shape: x!.shape }, dw!, db!];
      },
    });
  }
  if (!tf.getGradient(LAYER_NORM)) {
    tf.registerGradient({
      kernelName: LAYER_NORM,
      inputsToSave: ['x', 'weight'],
      gradFunc: (dy, saved, attrs) => {
        const [x, weight] = saved as tf.Tensor[];
        const [dx, dw, db] = tf.engine().runKernel(LAYER_NORM_GRAD, { x: x!, weight: weight!, dy: dy as tf.Tensor }, attrs) as tf.Tensor[];
        const grads: Record<string, () => tf.Tensor> = { x: () => dx!, weight: () => dw! };
        if (attrs!.hasBias) grads.bias = () => db!;
        else db!.dispose();
        return grads;
      },
    });
  }
}
