import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, f32, kernelActive, run, type WebGpuBackendLike } from './program.js';

/**
 * Fused LayerNorm over the last axis (GPT-2's norm):
 *
 *   y = (x - mean) / sqrt(var + eps) * weight (+ bias)        x [..., D], weight, bias [D]
 *
 * Forward: one dispatch, one workgroup per row; nothing but y is written (tfjs would otherwise hand
 * the backward a host-made zero gradient for every unused extra output). Backward: the row
 * statistics are recomputed in one pass ([N, 2]), then dx one workgroup per row, and dweight/dbias
 * as a two-stage column sum. Against the composite (tf.moments and ~10 elementwise ops forward,
 * ~25 backward, whose Mean gradients each upload a host-made tensor of ones the size of x), a
 * LayerNorm costs 1 dispatch forward and 5 backward.
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

/** Row statistics in a workgroup of THREADS threads: mean, then 1/sqrt(var + eps) (two passes over the row). */
function rowStats(eps: number): string {
  return `
    var<workgroup> red: array<f32, ${THREADS}>;
    var<workgroup> rowShared: u32;
    fn wgSum(v: f32) -> f32 {
      red[localIndex] = v;
      workgroupBarrier();
      for (var s = ${THREADS / 2}u; s > 0u; s >>= 1u) {
        if (localIndex < s) { red[localIndex] += red[localIndex + s]; }
        workgroupBarrier();
      }
      let total = red[0];
      workgroupBarrier();
      return total;
    }
    fn row() -> u32 {
      if (localIndex == 0u) { rowShared = wgIndex(); }
      return workgroupUniformLoad(&rowShared);
    }
    // [mean, rstd] of row n
    fn stats(n: u32) -> vec2<f32> {
      var s = 0.0;
      for (var d = localIndex; d < D; d += ${THREADS}u) { s += X[n * D + d]; }
      let mean = wgSum(s) / f32(D);
      var ss = 0.0;
      for (var d = localIndex; d < D; d += ${THREADS}u) { let c = X[n * D + d] - mean; ss += c * c; }
      return vec2<f32>(mean, inverseSqrt(wgSum(ss) / f32(D) + ${f32(eps)}));
    }`;
}

function forwardProgram(N: number, D: number, eps: number, hasBias: boolean): KernelProgram {
  return new KernelProgram({
    key: `tsf_ln_fwd_${N}_${D}_${eps}_${hasBias}`,
    outputShape: [N, D],
    inputs: hasBias ? ['X', 'W', 'BS'] : ['X', 'W'],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u;
      ${rowStats(eps)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        let st = stats(n);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          result[n * D + d] = (X[n * D + d] - st.x) * st.y * W[d]${hasBias ? ' + BS[d]' : ''};
        }
      }`,
  });
}

/** [mean, rstd] per row: [N, 2]. */
function statsProgram(N: number, D: number, eps: number): KernelProgram {
  return new KernelProgram({
    key: `tsf_ln_stats_${N}_${D}_${eps}`,
    outputShape: [N, 2],
    inputs: ['X'],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u;
      ${rowStats(eps)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        let st = stats(n);
        if (localIndex == 0u) { result[2u * n] = st.x; result[2u * n + 1u] = st.y; }
      }`,
  });
}

/** dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy w and xhat = (x - mean) rstd, per row. */
function dxProgram(N: number, D: number): KernelProgram {
  return new KernelProgram({
    key: `tsf_ln_dx_${N}_${D}`,
    outputShape: [N, D],
    inputs: ['X', 'W', 'S', 'DY'],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u;
      ${rowStats(0)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        let mean = S[2u * n]; let rstd = S[2u * n + 1u];
        var sg = 0.0; var sgx = 0.0;
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          let g = DY[n * D + d] * W[d];
          sg += g;
          sgx += g * (X[n * D + d] - mean) * rstd;
        }
        let mg = wgSum(sg) / f32(D);
        let mgx = wgSum(sgx) / f32(D);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          let xhat = (X[n * D + d] - mean) * rstd;
          result[n * D + d] = rstd * (DY[n * D + d] * W[d] - mg - xhat * mgx);
        }
      }`,
  });
}

/** Stage 1 of dweight and dbias: partial column sums over C chunks of rows, [C, 2D] = [dw part | db part]. */
function partialProgram(N: number, D: number, C: number): KernelProgram {
  const rowsPer = Math.ceil(N / C);
  return new KernelProgram({
    key: `tsf_ln_dwb1_${N}_${D}_${C}`,
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
  });
}

/** Stage 2: the sum over the C partial rows of one half (0: dweight, 1: dbias) -> [D]. */
function finalProgram(D: number, C: number, half: 0 | 1): KernelProgram {
  return new KernelProgram({
    key: `tsf_ln_dwb2_${D}_${C}_${half}`,
    outputShape: [D],
    inputs: ['P'],
    threads: 64,
    numGroups: Math.ceil(D / 64),
    body: `
      fn kernel() {
        let d = wgIndex() * 64u + localIndex;
        if (d >= ${D}u) { return; }
        var acc = 0.0;
        for (var c = 0u; c < ${C}u; c++) { acc += P[c * ${2 * D}u + ${half * D}u + d]; }
        result[d] = acc;
      }`,
  });
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
        const s = run(be, statsProgram(N, D, attrs!.eps as number), [x!]); // [N, 2]
        const dx = run(be, dxProgram(N, D), [x!, weight!, s, dy!]);
        const C = Math.max(1, Math.min(256, Math.ceil(N / 32)));
        const partial = run(be, partialProgram(N, D, C), [x!, s, dy!]); // [C, 2D]
        const dw = run(be, finalProgram(D, C, 0), [partial]);
        const db = run(be, finalProgram(D, C, 1), [partial]);
        be.disposeData(s.dataId);
        be.disposeData(partial.dataId);
        return [{ ...dx, shape: x!.shape }, dw, db];
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
