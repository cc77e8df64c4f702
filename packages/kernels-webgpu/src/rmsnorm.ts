import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, f32, kernelActive, run, runMultiOutput, workgroupSumWgsl, type MultiOutputProgram, type WebGpuBackendLike } from './program.js';

/**
 * Fused RMSNorm over the last axis, optionally gated (the output norm of GLA / DeltaNet layers):
 *
 *   y = x / sqrt(mean(x^2) + eps) * weight            x [..., D], weight [D]
 *   gated: y = that * silu(gate)                       gate [..., D]
 *
 * Forward: one dispatch, one workgroup per row (one read of x, one write of y; nothing else, so the
 * backward gets no host-made zero gradient for an unused output). Backward: one dispatch for dx (and
 * dgate) that recomputes 1/rms per row, and a two-stage column sum for dweight (row chunks, then
 * chunks). Ungated and gated are two kernels (no placeholder input and no zero gradient for it).
 */
export const RMS_NORM = 'TsfRmsNorm';
export const RMS_NORM_GATED = 'TsfRmsNormGated';
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
  const inputs: Record<string, tf.Tensor> = gate ? { x, weight, gate } : { x, weight };
  return tf.engine().runKernel(gate ? RMS_NORM_GATED : RMS_NORM, inputs, { eps } as unknown as NamedAttrMap) as tf.Tensor;
}

const THREADS = 128;

/** Sum of `v` over the workgroup (THREADS threads), the same value returned to every thread. */
const siluSnippet = `
  fn silu(g: f32) -> f32 { return g / (1.0 + exp(-g)); }
`;

function header(N: number, D: number, eps: number, gated: boolean): string {
  return `const N = ${N}u; const D = ${D}u; const EPS = ${f32(eps)}; const GATED = ${gated};
    var<workgroup> rowShared: u32;
    ${workgroupSumWgsl(THREADS)}
    ${siluSnippet}
    fn row() -> u32 {
      if (localIndex == 0u) { rowShared = wgIndex(); }
      return workgroupUniformLoad(&rowShared);
    }`;
}

function forwardProgram(N: number, D: number, eps: number, gated: boolean): KernelProgram {
  const key = `tsf_rms_fwd_${N}_${D}_${eps}_${gated}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [N * D],
    inputs: gated ? ['X', 'W', 'GATE'] : ['X', 'W'],
    threads: THREADS,
    numGroups: N,
    body: `
      ${header(N, D, eps, gated)}
      fn kernel() {
        let n = row();
        if (n >= N) { return; }
        var ss = 0.0;
        for (var d = localIndex; d < D; d += ${THREADS}u) { let x = X[n * D + d]; ss += x * x; }
        let r = inverseSqrt(wgSum(ss, localIndex) / f32(D) + EPS);
        for (var d = localIndex; d < D; d += ${THREADS}u) {
          var y = X[n * D + d] * r * W[d];
          ${gated ? 'y *= silu(GATE[n * D + d]);' : ''}
          result[n * D + d] = y;
        }
      }`,
  }));
}

/**
 * dx (and dgate), with 1/rms recomputed per row (written to R [N] for the dweight sums): with
 * u = dy * w (* silu(g)) and xhat = x r,
 *   dx = r (u - xhat mean(u xhat)),   dgate = dy xhat w silu'(g).
 */
function dxProgram(N: number, D: number, eps: number, gated: boolean): MultiOutputProgram {
  return {
    key: `tsf_rms_dx_${N}_${D}_${eps}_${gated}`,
    inputs: gated ? ['X', 'W', 'GATE', 'DY'] : ['X', 'W', 'DY'],
    outputs: [{ name: 'DX', shape: [N * D] }, ...(gated ? [{ name: 'DG', shape: [N * D] }] : []), { name: 'R', shape: [N] }],
    threads: THREADS,
    numGroups: N,
    body: `
      const N = ${N}u; const D = ${D}u; const EPS = ${f32(eps)};
      ${workgroupSumWgsl(THREADS)}
      ${siluSnippet}
      fn kernel(n: u32, tid: u32) {
        var ss = 0.0;
        for (var d = tid; d < D; d += ${THREADS}u) { let x = X[n * D + d]; ss += x * x; }
        let r = inverseSqrt(wgSum(ss, tid) / f32(D) + EPS);
        var acc = 0.0;
        for (var d = tid; d < D; d += ${THREADS}u) {
          var u = DY[n * D + d] * W[d];
          ${gated ? 'u *= silu(GATE[n * D + d]);' : ''}
          acc += u * X[n * D + d] * r;
        }
        let mean = wgSum(acc, tid) / f32(D);
        for (var d = tid; d < D; d += ${THREADS}u) {
          let xhat = X[n * D + d] * r;
          var u = DY[n * D + d] * W[d];
          ${
            gated
              ? `let g = GATE[n * D + d];
          let s = 1.0 / (1.0 + exp(-g));
          DG[n * D + d] = DY[n * D + d] * xhat * W[d] * s * (1.0 + g * (1.0 - s));
          u *= g * s;`
              : ''
          }
          DX[n * D + d] = r * (u - xhat * mean);
        }
        if (tid == 0u) { R[n] = r; }
      }`,
  };
}

/** dweight, stage 1: partial column sums of dy xhat (* silu(g)) over chunks of rows: [C, D]. */
function dwPartialProgram(N: number, D: number, C: number, gated: boolean): KernelProgram {
  const rowsPer = Math.ceil(N / C);
  const key = `tsf_rms_dw1_${N}_${D}_${C}_${gated}`;
  return cachedProgram(key, () => ({
    key,
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
  }));
}

/** dweight, stage 2: sum of the C partial rows. */
function dwFinalProgram(D: number, C: number): KernelProgram {
  const key = `tsf_rms_dw2_${D}_${C}`;
  return cachedProgram(key, () => ({
    key,
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
  }));
}

export function registerRmsNorm(): void {
  const forward: tf.KernelFunc = ({ inputs, backend, attrs }) => {
    const be = backend as unknown as WebGpuBackendLike;
    const { x, weight, gate } = inputs as Record<string, TensorInfo>;
    const D = x!.shape[x!.shape.length - 1]!;
    const N = tf.util.sizeFromShape(x!.shape) / D;
    const y = run(be, forwardProgram(N, D, attrs!.eps as number, gate !== undefined), gate ? [x!, weight!, gate] : [x!, weight!]);
    return { ...y, shape: x!.shape };
  };
  for (const kernelName of [RMS_NORM, RMS_NORM_GATED]) {
    if (!tf.getKernel(kernelName, 'webgpu')) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: forward });
  }
  if (!tf.getKernel(RMS_NORM_GRAD, 'webgpu')) {
    tf.registerKernel({
      kernelName: RMS_NORM_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { x, weight, gate, dy } = inputs as Record<string, TensorInfo>;
        const gated = gate !== undefined;
        const D = x!.shape[x!.shape.length - 1]!;
        const N = tf.util.sizeFromShape(x!.shape) / D;
        const outs = runMultiOutput(be, dxProgram(N, D, attrs!.eps as number, gated), gated ? [x!, weight!, gate, dy!] : [x!, weight!, dy!]);
        const [dx, dgate, r] = gated ? outs : [outs[0], undefined, outs[1]];
        const C = Math.max(1, Math.min(256, Math.ceil(N / 32)));
        const partial = run(be, dwPartialProgram(N, D, C, gated), [x!, gate ?? x!, r!, dy!]);
        const dw = run(be, dwFinalProgram(D, C), [partial]);
        be.disposeData(partial.dataId);
        be.disposeData(r!.dataId);
        const shaped = (t: TensorInfo) => ({ ...t, shape: x!.shape });
        return dgate ? [shaped(dx!), dw, shaped(dgate)] : [shaped(dx!), dw];
      },
    });
  }
  for (const [kernelName, gated] of [
    [RMS_NORM, false],
    [RMS_NORM_GATED, true],
  ] as const) {
    if (tf.getGradient(kernelName)) continue;
    tf.registerGradient({
      kernelName,
      inputsToSave: gated ? ['x', 'weight', 'gate'] : ['x', 'weight'],
      gradFunc: (dy, saved, attrs) => {
        const [x, weight, gate] = saved as tf.Tensor[];
        const inputs: Record<string, tf.Tensor> = { x: x!, weight: weight!, dy: dy as tf.Tensor };
        if (gated) inputs.gate = gate!;
        const [dx, dw, dg] = tf.engine().runKernel(RMS_NORM_GRAD, inputs, attrs) as tf.Tensor[];
        const grads: Record<string, () => tf.Tensor> = { x: () => dx!, weight: () => dw! };
        if (gated) grads.gate = () => dg!;
        return grads;
      },
    });
  }
}
