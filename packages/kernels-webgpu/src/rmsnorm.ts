import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, f32, kernelActive, run, slicePacked, type WebGpuBackendLike } from './program.js';

/**
 * Fused RMSNorm over the last axis, optionally gated (the output norm of GLA / DeltaNet layers):
 *
 *   y = x / sqrt(mean(x^2) + eps) * weight            x [..., D], weight [D]
 *   gated: y = that * silu(gate)                       gate [..., D]
 *
 * Forward: one workgroup per row (one read of x, one write of y, plus 1/rms per row kept for the
 * backward). Backward: one workgroup per row for dx (and dgate), and a two-stage column sum for
 * dweight (row chunks, then chunks).
 */
export const RMS_NORM = 'TsfRmsNorm';
export const RMS_NORM_GRAD = 'TsfRmsNormGrad';

/** Composite definition (any backend; the oracle). */
export function rmsNormComposite(x: tf.Tensor, weight: tf.Tensor, eps = 1e-5, gate?: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const y = x.mul(x.square().mean(-1, true).add(eps).rsqrt()).mul(weight); // [..., D]
    return gate ? y.mul(gate.mul(gate.sigmoid())) : y;
  });
}

/** RMSNorm (gated when `gate` is given): the fused kernel on webgpu, the composite elsewhere. */
export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps = 1e-5, gate?: tf.Tensor): tf.Tensor {
  const D = x.shape[x.rank - 1]!;
  if (weight.rank !== 1 || weight.shape[0] !== D) throw new Error(`rmsNorm: weight [${weight.shape}] for x [${x.shape}]`);
  if (gate && !tf.util.arraysEqual(gate.shape, x.shape)) throw new Error(`rmsNorm: gate [${gate.shape}] for x [${x.shape}]`);
  if (!kernelActive(RMS_NORM)) return rmsNormComposite(x, weight, eps, gate);
  return tf.tidy(() => {
    const inputs: Record<string, tf.Tensor> = { x, weight, gate: gate ?? x };
    const [y] = tf.engine().runKernel(RMS_NORM, inputs, { eps, gated: gate !== undefined } as unknown as NamedAttrMap) as tf.Tensor[];
    return y!;
  });
}

const THREADS = 128;

/** Sum of `v` over the workgroup (THREADS threads), the same value returned to every thread. */
const reduceSnippet = `
  var<workgroup> red: array<f32, ${THREADS}>;
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
  fn silu(g: f32) -> f32 { return g / (1.0 + exp(-g)); }
`;

function header(N: number, D: number, eps: number, gated: boolean): string {
  return `const N = ${N}u; const D = ${D}u; const EPS = ${f32(eps)}; const GATED = ${gated};
    var<workgroup> rowShared: u32;
    ${reduceSnippet}
    fn row() -> u32 {
      if (localIndex == 0u) { rowShared = wgIndex(); }
      return workgroupUniformLoad(&rowShared);
    }`;
}

function forwardProgram(N: number, D: number, eps: number, gated: boolean): KernelProgram {
  return new KernelProgram({
    key: `tsf_rms_fwd_${N}_${D}_${eps}_${gated}`,
    outputShape: [N * D + N],
    inputs: ['X', 'W', 'GATE'],
    threads: THREADS,
    numGroups: N,
    body: `
      ${header(N, D, eps, gated)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        var ss = 0.0;
        for (var d = localIndex; d < D; d += ${THREADS}u) { let x = X[n * D + d]; ss += x * x; }
        let r = inverseSqrt(wgSum(ss) / f32(D) + EPS);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          var y = X[n * D + d] * r * W[d];
          if (GATED) { y *= silu(GATE[n * D + d]); }
          result[n * D + d] = y;
        }
        if (localIndex == 0u) { result[N * D + n] = r; }
      }`,
  });
}

/**
 * dx (and dgate): with u = dy * w (* silu(g)) and xhat = x r,
 *   dx = r (u - xhat mean(u xhat)),   dgate = dy xhat w silu'(g).
 * Output [dx | dgate] packed when gated.
 */
function dxProgram(N: number, D: number, eps: number, gated: boolean): KernelProgram {
  return new KernelProgram({
    key: `tsf_rms_dx_${N}_${D}_${eps}_${gated}`,
    outputShape: [(gated ? 2 : 1) * N * D],
    inputs: ['X', 'W', 'GATE', 'R', 'DY'],
    threads: THREADS,
    numGroups: N,
    body: `
      ${header(N, D, eps, gated)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        let r = R[n];
        var acc = 0.0;
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          var u = DY[n * D + d] * W[d];
          if (GATED) { u *= silu(GATE[n * D + d]); }
          acc += u * X[n * D + d] * r;
        }
        let mean = wgSum(acc) / f32(D);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          let xhat = X[n * D + d] * r;
          var u = DY[n * D + d] * W[d];
          if (GATED) {
            let g = GATE[n * D + d];
            let s = 1.0 / (1.0 + exp(-g));
            result[N * D + n * D + d] = DY[n * D + d] * xhat * W[d] * s * (1.0 + g * (1.0 - s));
            u *= g * s;
          }
          result[n * D + d] = r * (u - xhat * mean);
        }
      }`,
  });
}

/** dweight, stage 1: partial column sums of dy xhat (* silu(g)) over chunks of rows: [C, D]. */
function dwPartialProgram(N: number, D: number, C: number, gated: boolean): KernelProgram {
  const rowsPer = Math.ceil(N / C);
  return new KernelProgram({
    key: `tsf_rms_dw1_${N}_${D}_${C}_${gated}`,
    outputShape: [C, D],
    inputs: ['X', 'GATE', 'R', 'DY'],
    threads: 64,
    numGroups: C * Math.ceil(D / 64),
    body: `
      const N = ${N}u; const D = ${D}u; const C = ${C}u; const ROWS = ${rowsPer}u; const GATED = ${gated};
      fn kernel() {
        let wg = wgIndex();
        let c = wg % C;
        let d = (wg / C) * 64u + localIndex;
        if (d >= D || c >= C) { return; }
        var acc = 0.0;
        for (var n = c * ROWS; n < min(N, c * ROWS + ROWS); n++) {
          var t = DY[n * D + d] * X[n * D + d] * R[n];
          if (GATED) { let g = GATE[n * D + d]; t *= g / (1.0 + exp(-g)); }
          acc += t;
        }
        result[c * D + d] = acc;
      }`,
  });
}

/** dweight, stage 2: sum of the C partial rows. */
function dwFinalProgram(D: number, C: number): KernelProgram {
  return new KernelProgram({
    key: `tsf_rms_dw2_${D}_${C}`,
    outputShape: [D],
    inputs: ['P'],
    threads: 64,
    numGroups: Math.ceil(D / 64),
    body: `
      fn kernel() {
        let d = wgIndex() * 64u + localIndex;
        if (d >= ${D}u) { return; }
        var acc = 0.0;
        for (var c = 0u; c < ${C}u; c++) { acc += P[c * ${D}u + d]; }
        result[d] = acc;
      }`,
  });
}

export function registerRmsNorm(): void {
  if (!tf.getKernel(RMS_NORM, 'webgpu')) {
    tf.registerKernel({
      kernelName: RMS_NORM,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { x, weight, gate } = inputs as Record<string, TensorInfo>;
        const D = x!.shape[x!.shape.length - 1]!;
        const N = tf.util.sizeFromShape(x!.shape) / D;
        const packed = run(be, forwardProgram(N, D, attrs!.eps as number, Boolean(attrs!.gated)), [x!, weight!, gate!]);
        const y = slicePacked(be, packed, 0, x!.shape);
        const r = slicePacked(be, packed, N * D, [N]);
        be.disposeData(packed.dataId);
        return [y, r];
      },
    });
    tf.registerKernel({
      kernelName: RMS_NORM_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { x, weight, gate, r, dy } = inputs as Record<string, TensorInfo>;
        const gated = Boolean(attrs!.gated);
        const D = x!.shape[x!.shape.length - 1]!;
        const N = tf.util.sizeFromShape(x!.shape) / D;
        const packed = run(be, dxProgram(N, D, attrs!.eps as number, gated), [x!, weight!, gate!, r!, dy!]);
        const dx = slicePacked(be, packed, 0, x!.shape);
        const dgate = gated ? slicePacked(be, packed, N * D, x!.shape) : undefined;
        be.disposeData(packed.dataId);
        const C = Math.max(1, Math.min(256, Math.ceil(N / 32)));
        const partial = run(be, dwPartialProgram(N, D, C, gated), [x!, gate!, r!, dy!]);
        const dw = run(be, dwFinalProgram(D, C), [partial]);
        be.disposeData(partial.dataId);
        return dgate ? [dx, dw, dgate] : [dx, dw];
      },
    });
  }
  if (!tf.getGradient(RMS_NORM)) {
    tf.registerGradient({
      kernelName: RMS_NORM,
      inputsToSave: ['x', 'weight', 'gate'],
      outputsToSave: [false, true],
      gradFunc: (dys, saved, attrs) => {
        const [x, weight, gate, r] = saved as tf.Tensor[];
        const dy = (dys as tf.Tensor[])[0]!;
        const gated = Boolean(attrs!.gated);
        const [dx, dw, dg] = tf.engine().runKernel(RMS_NORM_GRAD, { x: x!, weight: weight!, gate: gate!, r: r!, dy }, attrs) as tf.Tensor[];
        // Ungated, `gate` is x itself (a placeholder input): its share of x's gradient is zero.
        return { x: () => dx!, weight: () => dw!, gate: () => (gated ? dg! : tf.zerosLike(gate!)) };
      },
    });
  }
}
