import type { TensorInfo } from '@tensorflow/tfjs-core';
import { matMul, tf } from '@tsformer/core';
import { KernelProgram, kernelActive, run, slicePacked, type WebGpuBackendLike } from './program.js';

/**
 * Chunked DeltaNet and Gated DeltaNet on webgpu: the composite chunked form of `@tsformer/ops`
 * (README there derives it) with its two sequential parts replaced by WGSL kernels:
 *
 *  - `TsfDeltaSolve`: X = (I + L)^-1 for the strictly lower triangular L = tril(diag(beta) (K K^T o D), -1)
 *    of every chunk, by forward substitution in workgroup memory (one workgroup per chunk-head, one
 *    thread per column of X). Gradient: dL = -tril(X^T dX X^T, -1) (tfjs matmuls).
 *  - `TsfDeltaRecur`: the inter-chunk state recurrence, all chunks in one dispatch. Per (b, h, tile of
 *    value columns) one workgroup carries the state tile S [K, VT] in workgroup memory and, chunk by
 *    chunk, computes U = U~ - W S, saves S (the state at the chunk start, read by the output), and
 *    updates S <- gamma_C S + (exp(G_C - G) o K)^T U. Columns of the state are independent, so value
 *    tiles run in parallel.
 *  - `TsfDeltaRecurGrad`: the same kernel run backwards over the chunks for the state's gradient:
 *    X = dU + Kw dS', dS <- gamma_C dS' - W^T X + dS_start (Kw = exp(G_C - G) o K), saving dS' per
 *    chunk; the products that need it (dW = -X S^T, dKw = U dS'^T, dgamma_C = <S, dS'>) then run for
 *    all chunks at once as batched matmuls.
 *
 * Everything else (decay masks, K K^T, W = T (gamma o K), U~ = T V, the intra-chunk output) is the
 * composite's per-chunk batched products over [N*B*H, C, *], differentiated by tfjs autodiff through
 * the two kernels' registered gradients. No T x T tensor exists: the largest is [N*B*H, C, C].
 * The initial state's gradient and the final state are supported fully.
 */
export const DELTA_SOLVE = 'TsfDeltaSolve';
export const DELTA_RECUR = 'TsfDeltaRecur';
export const DELTA_RECUR_GRAD = 'TsfDeltaRecurGrad';

/** Options of the fused chunked form (the op has resolved the defaults). */
export interface DeltaKernelOptions {
  /** Read-out scale. */
  scale: number;
  /** Tokens per chunk requested by the caller; the kernel takes at most 64 (what the solve's workgroup memory holds). */
  chunkSize: number;
  /** [B, H, K, V]; default zeros. */
  initialState?: tf.Tensor;
}

/** Largest key and value head sizes the kernels take (the state tile lives in workgroup memory). */
export const DELTA_MAX_DIM = 128;

/** Whether the kernels take these head sizes (else the composite runs). */
export function deltaKernelSupported(K: number, V: number): boolean {
  return K >= 1 && V >= 1 && K <= DELTA_MAX_DIM && V <= DELTA_MAX_DIM;
}

function deviceLimits(): [number, number] {
  const be = tf.backend() as unknown as WebGpuBackendLike;
  return [be.device.limits.maxComputeWorkgroupStorageSize, be.device.limits.maxComputeInvocationsPerWorkgroup];
}

/** Rows per chunk the solve can hold: C x C floats of workgroup memory. */
function maxChunk(limit: number): number {
  let c = 64;
  while (c > 8 && c * c * 4 + 16 > limit) c /= 2;
  return c;
}

/**
 * DeltaNet (g undefined) or Gated DeltaNet, chunked, through the kernels. q, k [B, T, H, K],
 * v [B, T, H, V], beta and g [B, T, H]. Same meaning and gradients as the composite `deltaChunk` /
 * `gatedDeltaChunk` of @tsformer/ops; the caller owns the returned tensors.
 */
export function deltaChunkKernels(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaKernelOptions,
): { o: tf.Tensor; finalState: tf.Tensor } {
  const [B, T, H, K] = q.shape as [number, number, number, number];
  const V = v.shape[3]!;
  const C = Math.min(opts.chunkSize, maxChunk(deviceLimits()[0]), T);
  const N = Math.ceil(T / C);
  const BH = B * H;
  const M = N * BH; // chunk-heads, chunk-major: chunk n is rows [n * BH, (n + 1) * BH)
  const [o, finalState] = tf.tidy(() => {
    // Padding has beta = 0, k = 0, g = 0: its delta updates are the identity, so it is inert.
    const toChunks = (x: tf.Tensor, D: number): tf.Tensor => {
      const padded = N * C > T ? x.pad([[0, 0], [0, N * C - T], [0, 0], [0, 0]]) : x; // [B, N*C, H, D]
      return padded
        .transpose([0, 2, 1, 3]) // [B, H, N*C, D]
        .reshape([BH, N, C, D]) // [B*H, N, C, D]
        .transpose([1, 0, 2, 3]) // [N, B*H, C, D]
        .reshape([M, C, D]); // [N*B*H, C, D]
    };
    const perToken = (x: tf.Tensor): tf.Tensor => toChunks(x.expandDims(3), 1); // [B, T, H] -> [N*B*H, C, 1]

    const qc = toChunks(q, K).mul(opts.scale); // [M, C, K]
    const kc = toChunks(k, K); // [M, C, K]
    const vc = toChunks(v, V); // [M, C, V]
    const bc = perToken(beta); // [M, C, 1]
    const lower = tf.linalg.bandPart(tf.ones([C, C]), -1, 0); // [C, C], 1 where i <= r
    const strict = lower.sub(tf.eye(C)); // [C, C], 1 where i < r

    let decay: tf.Tensor | undefined; // [M, C, C]: exp(G_r - G_i) for i <= r, else 0
    let gamma: tf.Tensor | undefined; // [M, C, 1]: exp(G_r)
    let toEnd: tf.Tensor | undefined; // [M, C, 1]: exp(G_C - G_r)
    let chunkDecay: tf.Tensor; // [M]: exp(G_C)
    if (g) {
      // cumsum along the last axis: tfjs 4.22's Cumsum gradient mis-shapes other axes
      const G = perToken(g).reshape([M, C]).cumsum(1).reshape([M, C, 1]); // [M, C, 1]
      const last = G.slice([0, C - 1, 0], [M, 1, 1]); // [M, 1, 1]
      decay = G.sub(G.reshape([M, 1, C])).mul(lower).exp().mul(lower); // [M, C, C]
      gamma = G.exp();
      toEnd = last.sub(G).exp();
      chunkDecay = last.exp().reshape([M]); // [M]
    } else {
      chunkDecay = tf.ones([M]); // [M]
    }
    const withDecay = (x: tf.Tensor): tf.Tensor => (decay ? x.mul(decay) : x);

    const L = withDecay(matMul(kc.mul(bc), kc, false, true).mul(strict)); // [M, C, C]: A - I
    const X = tf.engine().runKernel(DELTA_SOLVE, { l: L }) as tf.Tensor; // [M, C, C]: A^-1
    const Tm = X.mul(bc.reshape([M, 1, C])); // [M, C, C]: A^-1 diag(beta)
    const w = matMul(Tm, gamma ? kc.mul(gamma) : kc); // [M, C, K]
    const uTilde = matMul(Tm, vc); // [M, C, V]
    const kWrite = toEnd ? kc.mul(toEnd) : kc; // [M, C, K]
    const s0 = opts.initialState ? opts.initialState.reshape([BH, K, V]) : tf.zeros([BH, K, V]); // [B*H, K, V]
    const [u, starts, last] = tf.engine().runKernel(DELTA_RECUR, { p: uTilde, q1: w, q2: kWrite, decay: chunkDecay, s0 }) as tf.Tensor[];
    // u [M, C, V]: the chunks' true pseudo-values; starts [M, K, V]: the state at each chunk's start

    const attn = withDecay(matMul(qc, kc, false, true).mul(lower)); // [M, C, C]
    const qRead = gamma ? qc.mul(gamma) : qc; // [M, C, K]
    const out = matMul(qRead, starts!)
      .add(matMul(attn, u!)) // [M, C, V]
      .reshape([N, BH, C, V]) // [N, B*H, C, V]
      .transpose([1, 0, 2, 3]) // [B*H, N, C, V]
      .reshape([B, H, N * C, V]) // [B, H, N*C, V]
      .transpose([0, 2, 1, 3]); // [B, N*C, H, V]
    const o = N * C > T ? out.slice([0, 0, 0, 0], [B, T, H, V]) : out; // [B, T, H, V]
    return [o, last!.reshape([B, H, K, V])] as [tf.Tensor, tf.Tensor]; // [B, H, K, V]
  });
  return { o, finalState };
}

// ---------------------------------------------------------------------------------------------
// WGSL

const wgPrelude = `
  var<workgroup> wgShared: u32;
  fn groupIndex() -> u32 {
    if (localIndex == 0u) { wgShared = wgIndex(); }
    return workgroupUniformLoad(&wgShared);
  }`;

/**
 * X = (I + L)^-1 for each strictly lower triangular L [C, C] of M chunk-heads. One workgroup per
 * chunk-head holds L; thread j solves column j by forward substitution, X_rj = delta_rj -
 * sum_{j <= i < r} L_ri X_ij, its column in registers.
 */
function solveProgram(M: number, C: number): KernelProgram {
  return new KernelProgram({
    key: `tsf_delta_solve_${M}_${C}`,
    outputShape: [M, C, C],
    inputs: ['L'],
    threads: C,
    numGroups: M,
    body: `
      const M = ${M}u; const C = ${C}u;
      var<workgroup> lt: array<f32, ${C * C}>;
      ${wgPrelude}
      fn kernel() {
        let m = groupIndex();
        if (m >= M) { return; }
        for (var e = localIndex; e < C * C; e += C) { lt[e] = L[m * C * C + e]; }
        workgroupBarrier();
        let j = localIndex;
        var x: array<f32, ${C}>;
        x[j] = 1.0;
        for (var r = j + 1u; r < C; r++) {
          var acc = 0.0;
          for (var i = j; i < r; i++) { acc += lt[r * C + i] * x[i]; }
          x[r] = -acc;
        }
        for (var r = 0u; r < C; r++) { result[(m * C + r) * C + j] = x[r]; }
      }`,
  });
}

interface RecurDims {
  N: number;
  BH: number;
  C: number;
  K: number;
  V: number;
}

/**
 * The chunk recurrence, forward or reverse, one workgroup per (b*h, tile of VT value columns):
 *
 *   forward (n = 0..N-1):   save S;  Y = P - Q1 S;  S <- gam_n S + Q2^T Y
 *   reverse (n = N-1..0):   save S;  Y = P + Q1 S;  S <- gam_n S - Q2^T Y + R_n
 *
 * P [M, C, V], Q1 and Q2 [M, C, K], GAM [M], S0 [BH, K, V], R [M, K, V], M = N * BH chunk-major.
 * Output packed: Y [M, C, V], the saved states [M, K, V], the last state [BH, K, V].
 */
function recurProgram(d: RecurDims, reverse: boolean, limit: number, maxThreads: number): KernelProgram {
  const { N, BH, C, K, V } = d;
  const M = N * BH;
  let VT = 16;
  while (VT > 1 && (K + C) * VT * 4 + 16 > limit) VT /= 2;
  VT = Math.min(VT, V);
  const NVT = Math.ceil(V / VT);
  const threads = Math.min(256, maxThreads);
  return new KernelProgram({
    key: `tsf_delta_recur_${N}_${BH}_${C}_${K}_${V}_${VT}_${threads}_${reverse}`,
    outputShape: [M * C * V + M * K * V + BH * K * V],
    inputs: reverse ? ['P', 'Q1', 'Q2', 'GAM', 'S0', 'RS'] : ['P', 'Q1', 'Q2', 'GAM', 'S0'],
    threads,
    numGroups: BH * NVT,
    body: `
      const N = ${N}u; const BH = ${BH}u; const C = ${C}u; const K = ${K}u; const V = ${V}u;
      const VT = ${VT}u; const NVT = ${NVT}u; const TH = ${threads}u;
      const SAVED = ${M * C * V}u; const LAST = ${M * C * V + M * K * V}u;
      var<workgroup> st: array<f32, ${K * VT}>;
      var<workgroup> yt: array<f32, ${C * VT}>;
      ${wgPrelude}
      fn kernel() {
        let wg = groupIndex();
        if (wg >= BH * NVT) { return; }
        let bh = wg / NVT;
        let v0 = (wg % NVT) * VT;
        for (var e = localIndex; e < K * VT; e += TH) {
          let v = v0 + e % VT;
          var s = 0.0;
          if (v < V) { s = S0[(bh * K + e / VT) * V + v]; }
          st[e] = s;
        }
        workgroupBarrier();
        for (var step = 0u; step < N; step++) {
          let n = ${reverse ? 'N - 1u - step' : 'step'};
          let m = n * BH + bh;
          for (var e = localIndex; e < K * VT; e += TH) {
            let v = v0 + e % VT;
            if (v < V) { result[SAVED + (m * K + e / VT) * V + v] = st[e]; }
          }
          for (var e = localIndex; e < C * VT; e += TH) {
            let r = e / VT;
            let c = e % VT;
            let v = v0 + c;
            var acc = 0.0;
            for (var kk = 0u; kk < K; kk++) { acc += Q1[(m * C + r) * K + kk] * st[kk * VT + c]; }
            var y = 0.0;
            if (v < V) {
              y = P[(m * C + r) * V + v] ${reverse ? '+' : '-'} acc;
              result[(m * C + r) * V + v] = y;
            }
            yt[e] = y;
          }
          workgroupBarrier();
          let gam = GAM[m];
          for (var e = localIndex; e < K * VT; e += TH) {
            let kk = e / VT;
            let c = e % VT;
            var acc = 0.0;
            for (var r = 0u; r < C; r++) { acc += Q2[(m * C + r) * K + kk] * yt[r * VT + c]; }
            var s = gam * st[e] ${reverse ? '-' : '+'} acc;
            ${reverse ? 'if (v0 + c < V) { s += RS[(m * K + kk) * V + v0 + c]; }' : ''}
            st[e] = s;
          }
          workgroupBarrier();
        }
        for (var e = localIndex; e < K * VT; e += TH) {
          let v = v0 + e % VT;
          if (v < V) { result[LAST + (bh * K + e / VT) * V + v] = st[e]; }
        }
      }`,
  });
}

function recurDims(p: TensorInfo, q1: TensorInfo, s0: TensorInfo): RecurDims {
  const [M, C, V] = p.shape as [number, number, number];
  const BH = s0.shape[0]!;
  return { N: M / BH, BH, C, K: q1.shape[2]!, V };
}

/** Runs the recurrence and splits its packed output into [Y, saved states, last state]. */
function runRecur(be: WebGpuBackendLike, inputs: TensorInfo[], reverse: boolean): TensorInfo[] {
  const d = recurDims(inputs[0]!, inputs[1]!, inputs[4]!);
  const M = d.N * d.BH;
  const limits = be.device.limits;
  const packed = run(be, recurProgram(d, reverse, limits.maxComputeWorkgroupStorageSize, limits.maxComputeInvocationsPerWorkgroup), inputs);
  const y = slicePacked(be, packed, 0, [M, d.C, d.V]);
  const saved = slicePacked(be, packed, M * d.C * d.V, [M, d.K, d.V]);
  const last = slicePacked(be, packed, M * d.C * d.V + M * d.K * d.V, [d.BH, d.K, d.V]);
  be.disposeData(packed.dataId);
  return [y, saved, last];
}

/** Registers the three kernels for `webgpu` and the gradients of the solve and the recurrence. */
export function registerDelta(): void {
  if (!tf.getKernel(DELTA_SOLVE, 'webgpu')) {
    tf.registerKernel({
      kernelName: DELTA_SOLVE,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const { l } = inputs as Record<string, TensorInfo>;
        const [M, C] = l!.shape as [number, number, number];
        return run(backend as unknown as WebGpuBackendLike, solveProgram(M, C), [l!]);
      },
    });
    tf.registerKernel({
      kernelName: DELTA_RECUR,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const { p, q1, q2, decay, s0 } = inputs as Record<string, TensorInfo>;
        return runRecur(backend as unknown as WebGpuBackendLike, [p!, q1!, q2!, decay!, s0!], false);
      },
    });
    tf.registerKernel({
      kernelName: DELTA_RECUR_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const { p, q1, q2, decay, s0, r } = inputs as Record<string, TensorInfo>;
        return runRecur(backend as unknown as WebGpuBackendLike, [p!, q1!, q2!, decay!, s0!, r!], true);
      },
    });
  }
  if (!tf.getGradient(DELTA_SOLVE)) {
    tf.registerGradient({
      kernelName: DELTA_SOLVE,
      inputsToSave: [],
      outputsToSave: [true],
      gradFunc: (dy, saved) => {
        const [X] = saved as tf.Tensor[];
        const dX = Array.isArray(dy) ? dy[0]! : dy;
        const C = X!.shape[1]!;
        return {
          // X = A^-1: dA = -X^T dX X^T; only the strictly lower triangle of L enters A.
          l: () => {
            const strict = tf.linalg.bandPart(tf.ones([C, C]), -1, 0).sub(tf.eye(C)); // [C, C]
            return matMul(matMul(X!, dX, true, false), X!, false, true).mul(strict).neg(); // [M, C, C]
          },
        };
      },
    });
  }
  if (!tf.getGradient(DELTA_RECUR)) {
    tf.registerGradient({
      kernelName: DELTA_RECUR,
      inputsToSave: ['q1', 'q2', 'decay', 's0'],
      outputsToSave: [true, true, false],
      gradFunc: (dys, saved) => {
        const [w, kWrite, decay, s0, u, starts] = saved as tf.Tensor[];
        const [dU, dStarts, dLast] = dys as Array<tf.Tensor | null>;
        // Reverse recurrence: x = dU + Kw dS' (the pseudo-values' full gradient, [M, C, V]),
        // ends = dS' per chunk ([M, K, V], the gradient of the state after the chunk), dS0.
        const [x, ends, ds0] = tf.engine().runKernel(DELTA_RECUR_GRAD, {
          p: dU ?? tf.zerosLike(u!),
          q1: kWrite!,
          q2: w!,
          decay: decay!,
          s0: dLast ?? tf.zerosLike(s0!),
          r: dStarts ?? tf.zerosLike(starts!),
        }) as tf.Tensor[];
        return {
          p: () => x!.clone(),
          q1: () => matMul(x!, starts!, false, true).neg(), // dW = -X S^T: [M, C, K]
          q2: () => matMul(u!, ends!, false, true), // dKw = U dS'^T: [M, C, K]
          decay: () => starts!.mul(ends!).sum([1, 2]), // <S, dS'>: [M]
          s0: () => ds0!.clone(),
        };
      },
    });
  }
}

/** The registry hook's test: the kernels are registered and take these head sizes. */
export function deltaKernelsActive(K: number, V: number): boolean {
  return kernelActive(DELTA_RECUR) && deltaKernelSupported(K, V);
}
