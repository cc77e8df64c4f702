import type { TensorInfo } from '@tensorflow/tfjs-core';
import { customOp, tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, runMultiOutput, type MultiOutputProgram, type WebGpuBackendLike } from './program.js';

/**
 * Chunked DeltaNet and Gated DeltaNet on webgpu: the chunked (WY/UT) form of `@tsformer/ops`
 * (README there derives it) as one custom op with a hand-written backward, its two sequential
 * parts as WGSL kernels:
 *
 *  - `TsfDeltaSolve`: X = (I + L)^-1 for the strictly lower triangular L = tril(diag(beta) (K K^T o D), -1)
 *    of every chunk, by forward substitution in workgroup memory (one workgroup per chunk-head, one
 *    thread per column of X).
 *  - `TsfDeltaRecur`: the inter-chunk state recurrence, all chunks in one dispatch. Per (b, h, tile of
 *    value columns) one workgroup carries the state tile S [K, VT] in workgroup memory and, chunk by
 *    chunk, computes U = U~ - W S, saves S (the state at the chunk start, read by the output), and
 *    updates S <- gamma_C S + (exp(G_C - G) o K)^T U. Columns of the state are independent, so value
 *    tiles run in parallel.
 *  - `TsfDeltaRecurGrad`: the same kernel run backwards over the chunks for the state's gradient:
 *    dU = dU_o + Kw dS', dS <- gamma_C dS' - W^T dU + dS_start (Kw = exp(G_C - G) o K), saving dS'
 *    per chunk.
 *
 * Everything else (decay masks, K K^T, W = T (gamma o K), U~ = T V, the intra-chunk output, and every
 * local gradient given dU and dS') is batched products over [N*B*H, C, *]: all chunks at once. No
 * T x T tensor exists: the largest is [N*B*H, C, C]. Gradients flow to q, k, v, beta, g and the
 * initial state, through o and the final state. The backward is written out (`backward`) instead of
 * tfjs autodiff: about 60% of the ops autodiff made (138 instead of 231 per DeltaNet forward+backward,
 * 204 instead of 349 gated), and tfjs-webgpu is host-bound per op.
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

/** Workgroup memory of the active device (WebGPU's default minimum where no device is found: Node tests). */
function workgroupBytes(): number {
  const be = tf.backend() as unknown as Partial<WebGpuBackendLike>;
  return be.device?.limits.maxComputeWorkgroupStorageSize ?? 16384;
}

/** Rows per chunk the solve can hold: C x C floats of workgroup memory. */
function maxChunk(limit: number): number {
  let c = 64;
  while (c > 8 && c * c * 4 + 16 > limit) c /= 2;
  return c;
}

/** Sizes of one call: chunk C (the kernel's), N chunks, M = N * B * H chunk-heads. */
interface Dims {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
  C: number;
  N: number;
  M: number;
}

/** [B, T, H, D] -> [N*B*H, C, D] (chunk-major), zero-padded to N*C tokens; inert padding. */
function toChunks(x: tf.Tensor, d: Dims, D: number): tf.Tensor {
  const { B, T, H, C, N, M } = d;
  const padded = N * C > T ? x.pad([[0, 0], [0, N * C - T], [0, 0], [0, 0]]) : x; // [B, N*C, H, D]
  return padded
    .reshape([B, N, C, H, D]) // [B, N, C, H, D]
    .transpose([1, 0, 3, 2, 4]) // [N, B, H, C, D]: one copy
    .reshape([M, C, D]); // [N*B*H, C, D]
}

/** The inverse of toChunks: [N*B*H, C, D] -> [B, T, H, D] (padding dropped). */
function fromChunks(x: tf.Tensor, d: Dims, D: number): tf.Tensor {
  const { B, T, H, C, N } = d;
  const y = x
    .reshape([N, B, H, C, D]) // [N, B, H, C, D]
    .transpose([1, 0, 3, 2, 4]) // [B, N, C, H, D]: one copy
    .reshape([B, N * C, H, D]); // [B, N*C, H, D]
  return N * C > T ? y.slice([0, 0, 0, 0], [B, T, H, D]) : y; // [B, T, H, D]
}

/** Forward intermediates kept for the backward (all chunk-major [M, ...]). */
const SAVED = ['qc', 'kc', 'vc', 'bc', 'X', 'Tm', 'gK', 'w', 'kWrite', 'u', 'starts', 'qRead', 'qkl', 'kk', 'decay', 'gamma', 'toEnd', 'chunkDecay'] as const;
type Saved = Record<(typeof SAVED)[number], tf.Tensor>;

/**
 * The forward, per chunk (rows r, i; G the in-chunk cumulative log decay, 0 ungated):
 *   L = tril(diag(beta) (K K^T o D), -1);  X = (I + L)^-1 (TsfDeltaSolve);  T = X diag(beta)
 *   W = T (gamma o K),  U~ = T V;  U, S_start, S_final from TsfDeltaRecur
 *   O = (gamma o Qs) S_start + (Qs K^T o lower o D) U,   Qs = scale q
 */
function forward(d: Dims, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, g: tf.Tensor | undefined, s0: tf.Tensor | undefined, scale: number): { o: tf.Tensor; last: tf.Tensor; saved: Saved } {
  const { B, H, K, V, C, M } = d;
  const qc = toChunks(q, d, K).mul(scale); // [M, C, K]
  const kc = toChunks(k, d, K); // [M, C, K]
  const vc = toChunks(v, d, V); // [M, C, V]
  const bc = toChunks(beta.expandDims(3), d, 1); // [B, T, H, 1] -> [M, C, 1]
  const lower = triangle(C, true); // [C, C], 1 where i <= r
  const strict = triangle(C, false); // [C, C], 1 where i < r
  let decay = lower; // [M, C, C] gated: exp(G_r - G_i) for i <= r, else 0; ungated: the mask
  let gamma = tf.ones([M, C, 1]); // exp(G_r)
  let toEnd = gamma; // [M, C, 1]: exp(G_C - G_r)
  let chunkDecay = tf.ones([M]); // [M]: exp(G_C)
  if (g) {
    // cumsum along the last axis of a [M, C] view: tfjs 4.22's Cumsum gradient mis-shapes other axes
    const G = toChunks(g.expandDims(3), d, 1).reshape([M, C]).cumsum(1).reshape([M, C, 1]); // [B, T, H, 1] -> [M, C] -> [M, C, 1]
    const last = G.slice([0, C - 1, 0], [M, 1, 1]); // [M, 1, 1]
    // the exponent is masked first: the upper triangle is exp(0), not an overflow
    decay = G.sub(G.reshape([M, 1, C])).mul(lower).exp().mul(lower); // [M, C, C]
    gamma = G.exp();
    toEnd = last.sub(G).exp();
    chunkDecay = last.exp().reshape([M]);
  }
  const kk = tf.matMul(kc, kc, false, true); // [M, C, C]: K K^T
  const L = kk.mul(bc).mul(g ? decay.mul(strict) : strict); // [M, C, C]: A - I
  const X = tf.engine().runKernel(DELTA_SOLVE, { l: L }) as tf.Tensor; // [M, C, C]: A^-1
  const Tm = X.mul(bc.reshape([M, 1, C])); // [M, C, C]: A^-1 diag(beta)
  const gK = g ? kc.mul(gamma) : kc; // [M, C, K]
  const w = tf.matMul(Tm, gK); // [M, C, K]
  const uTilde = tf.matMul(Tm, vc); // [M, C, V]
  const kWrite = g ? kc.mul(toEnd) : kc; // [M, C, K]
  const init = s0 ? s0.reshape([B * H, K, V]) : tf.zeros([B * H, K, V]); // [B*H, K, V]
  const [u, starts, last] = tf.engine().runKernel(DELTA_RECUR, { p: uTilde, q1: w, q2: kWrite, decay: chunkDecay, s0: init }) as tf.Tensor[];
  // u [M, C, V]: the chunks' true pseudo-values; starts [M, K, V]: the state at each chunk's start
  const qkl = tf.matMul(qc, kc, false, true).mul(lower); // [M, C, C]
  const qRead = g ? qc.mul(gamma) : qc; // [M, C, K]
  const out = tf.matMul(qRead, starts!).add(tf.matMul(g ? qkl.mul(decay) : qkl, u!)); // [M, C, V]
  const saved: Saved = { qc, kc, vc, bc, X, Tm, gK, w, kWrite, u: u!, starts: starts!, qRead, qkl, kk, decay, gamma, toEnd, chunkDecay };
  return { o: fromChunks(out, d, V), last: last!.reshape([B, H, K, V]), saved };
}

/**
 * The backward, per chunk, given dO and the final state's gradient dS_N:
 *   dU_o = P^T dO, dS_start = (gamma o Qs)^T dO (P = Qs K^T o lower o D)
 *   TsfDeltaRecurGrad: dU = dU_o + Kw dS' (Kw = exp(G_C - G) o K), dS' per chunk, dS_0
 *   dW = -dU S^T, dKw = U dS'^T, dgamma_C = <S, dS'>
 *   dT = dW (gamma o K)^T + dU V^T;  dV = T^T dU;  d(gamma o K) = T^T dW
 *   dX = dT diag(beta);  dbeta_i += sum_r dT_ri X_ri;  dL = -tril(X^T dX X^T, -1)
 *   dbeta_r += sum_i dL_ri (K K^T o D)_ri;  d(K K^T) = (diag(beta) dL) o D
 *   dP = dO U^T o lower o D;  dQs = dP K + gamma o (dO S^T);  dK += dP^T Qs + d(KK^T) K + d(KK^T)^T K + ...
 * and for the decay, dG from gamma, exp(G_C - G), gamma_C and D, then dg = reverse cumsum of dG.
 */
function backward(d: Dims, gated: boolean, s: Saved, dO: tf.Tensor, dLast: tf.Tensor, scale: number): { dq: tf.Tensor; dk: tf.Tensor; dv: tf.Tensor; dbeta: tf.Tensor; dg?: tf.Tensor; ds0: tf.Tensor } {
  const { B, H, K, V, C, M } = d;
  const strict = triangle(C, false); // [C, C]
  const dOc = toChunks(dO, d, V); // [M, C, V]
  const P = gated ? s.qkl.mul(s.decay) : s.qkl; // [M, C, C]
  const dUo = tf.matMul(P, dOc, true, false); // [M, C, V]
  const dStarts = tf.matMul(s.qRead, dOc, true, false); // [M, K, V]
  const [dU, ends, ds0] = tf.engine().runKernel(DELTA_RECUR_GRAD, {
    p: dUo,
    q1: s.kWrite,
    q2: s.w,
    decay: s.chunkDecay,
    s0: dLast.reshape([B * H, K, V]), // [B*H, K, V]
    r: dStarts,
  }) as tf.Tensor[];
  // dU [M, C, V]: the pseudo-values' gradient; ends [M, K, V]: the gradient of each chunk's final state
  const dWn = tf.matMul(dU!, s.starts, false, true); // [M, C, K]: -dW
  const dKw = tf.matMul(s.u, ends!, false, true); // [M, C, K]
  const dT = tf.matMul(dU!, s.vc, false, true).sub(tf.matMul(dWn, s.gK, false, true)); // [M, C, C]
  const dv = tf.matMul(s.Tm, dU!, true, false); // [M, C, V]
  const dgK = tf.matMul(s.Tm, dWn, true, false).neg(); // [M, C, K]
  const dX = dT.mul(s.bc.reshape([M, 1, C])); // [M, C, C]
  const dLn = tf.matMul(tf.matMul(s.X, dX, true, false), s.X, false, true).mul(strict); // [M, C, C]: -dL
  const kkd = gated ? s.kk.mul(s.decay) : s.kk; // [M, C, C]: K K^T o D
  const dbeta = dT.mul(s.X).sum(1).sub(dLn.mul(kkd).sum(2)); // [M, C]
  const dKK = gated ? dLn.mul(s.bc).mul(s.decay).neg() : dLn.mul(s.bc).neg(); // [M, C, C]: d(K K^T), strictly lower
  const dPm = tf.matMul(dOc, s.u, false, true); // [M, C, C]: dO U^T
  const dPD = dPm.mul(s.decay); // [M, C, C]: decay is the lower mask itself ungated
  const dqRead = tf.matMul(dOc, s.starts, false, true); // [M, C, K]: dO S^T
  const dQs = tf.matMul(dPD, s.kc).add(gated ? dqRead.mul(s.gamma) : dqRead); // [M, C, K]
  let dK = tf.matMul(dKK, s.kc).add(tf.matMul(dKK, s.kc, true, false)).add(tf.matMul(dPD, s.qc, true, false)); // [M, C, K]
  dK = gated ? dK.add(dgK.mul(s.gamma)).add(dKw.mul(s.toEnd)) : dK.add(dgK).add(dKw);
  let dg: tf.Tensor | undefined;
  if (gated) {
    // dG_r from gamma_r (in W and in the read), exp(G_C - G_r), and D (rows +, columns -)
    const dGamma = dgK.mul(s.kc).sum(2).add(dqRead.mul(s.qc).sum(2)).mul(s.gamma.reshape([M, C])); // [M, C]
    const dE = dKw.mul(s.kc).sum(2).mul(s.toEnd.reshape([M, C])); // [M, C]
    const dDD = dKK.mul(s.kk).add(dPD.mul(s.qkl)); // [M, C, C]: dD o D (dKK and dPD carry D already)
    const dLastG = dE.sum(1, true).add(s.starts.mul(ends!).sum([1, 2]).mul(s.chunkDecay).reshape([M, 1])); // [M, 1]
    const lastOnly = tf.oneHot(tf.fill([M], C - 1, 'int32'), C); // [M, C]: 1 at the chunk's last row
    const dG = dGamma.sub(dE).add(dDD.sum(2)).sub(dDD.sum(1)).add(lastOnly.mul(dLastG)); // [M, C]
    dg = fromChunks(dG.cumsum(1, false, true).reshape([M, C, 1]), d, 1).reshape([B, d.T, H]); // [B, T, H]
  }
  return {
    dq: fromChunks(dQs.mul(scale), d, K),
    dk: fromChunks(dK, d, K),
    dv: fromChunks(dv, d, V),
    dbeta: fromChunks(dbeta.reshape([M, C, 1]), d, 1).reshape([B, d.T, H]), // [B, T, H]
    dg,
    ds0: ds0!.reshape([B, H, K, V]),
  };
}

/**
 * DeltaNet (g undefined) or Gated DeltaNet, chunked, through the kernels. q, k [B, T, H, K],
 * v [B, T, H, V], beta and g [B, T, H]. Same meaning and gradients as the composite `deltaChunk` /
 * `gatedDeltaChunk` of @tsformer/ops (q, k, v, beta, g and the initial state, through o and the
 * final state); the caller owns the returned tensors.
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
  const C = Math.min(opts.chunkSize, maxChunk(workgroupBytes()), T);
  const N = Math.ceil(T / C);
  const d: Dims = { B, T, H, K, V, C, N, M: N * B * H };
  const s0 = opts.initialState;
  const inputs = [q, k, v, beta, ...(g ? [g] : []), ...(s0 ? [s0] : [])];
  const nO = B * T * H * V;
  // One custom op: its value packs o and the final state (customGrad takes one output).
  const op = customOp((...args) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const xs = args.slice(0, -1) as tf.Tensor[];
    const f = forward(d, xs[0]!, xs[1]!, xs[2]!, xs[3]!, g ? xs[4] : undefined, s0 ? xs[xs.length - 1] : undefined, opts.scale);
    save(SAVED.map((name) => f.saved[name]));
    return {
      value: tf.concat([f.o.reshape([nO]), f.last.reshape([B * H * K * V])]), // [B*T*H*V + B*H*K*V]
      gradFunc: (dy: tf.Tensor, savedList: tf.Tensor[]) =>
        tf.tidy(() => {
          const saved = Object.fromEntries(SAVED.map((name, i) => [name, savedList[i]!])) as Saved;
          const dO = dy.slice([0], [nO]).reshape([B, T, H, V]); // [B, T, H, V]
          const dLast = dy.slice([nO], [B * H * K * V]); // [B*H*K*V]
          const r = backward(d, g !== undefined, saved, dO, dLast, opts.scale);
          return [r.dq, r.dk, r.dv, r.dbeta, ...(r.dg ? [r.dg] : []), ...(s0 ? [r.ds0] : [])];
        }),
    };
  });
  return tf.tidy(() => {
    const packed = op(...inputs);
    return { o: packed.slice([0], [nO]).reshape([B, T, H, V]), finalState: packed.slice([nO], [B * H * K * V]).reshape([B, H, K, V]) };
  });
}

/**
 * The lower-triangular mask [C, C] (1 where i <= r, or i < r when not `diagonal`), made on the host:
 * one upload instead of tfjs's bandPart (about ten ops).
 */
function triangle(C: number, diagonal: boolean): tf.Tensor {
  const m = new Float32Array(C * C);
  for (let r = 0; r < C; r++) for (let i = 0; i < (diagonal ? r + 1 : r); i++) m[r * C + i] = 1;
  return tf.tensor(m, [C, C]);
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
  const key = `tsf_delta_solve_${M}_${C}`;
  return cachedProgram(key, () => ({
    key,
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
  }));
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
 * Outputs: Y [M, C, V], the saved states [M, K, V], the last state [BH, K, V].
 */
function recurProgram(d: RecurDims, reverse: boolean, limit: number, maxThreads: number): MultiOutputProgram {
  const { N, BH, C, K, V } = d;
  const M = N * BH;
  // Value columns per workgroup: the chunk loop is sequential and latency-bound (each thread's
  // dot products of length K and C per chunk), so narrower tiles both shorten it and give more
  // workgroups; at least 256 workgroups where the columns allow, at most 16 columns.
  let VT = 16;
  while (VT > 1 && (K + C) * VT * 4 + 16 > limit) VT /= 2;
  while (VT > 2 && BH * Math.ceil(V / VT) < 256) VT /= 2;
  VT = Math.min(VT, V);
  const NVT = Math.ceil(V / VT);
  const threads = Math.min(256, maxThreads);
  return {
    key: `tsf_delta_recur_${N}_${BH}_${C}_${K}_${V}_${VT}_${threads}_${reverse}`,
    outputs: [
      { name: 'YO', shape: [M, C, V] },
      { name: 'SV', shape: [M, K, V] },
      { name: 'LS', shape: [BH, K, V] },
    ],
    inputs: reverse ? ['P', 'Q1', 'Q2', 'GAM', 'S0', 'RS'] : ['P', 'Q1', 'Q2', 'GAM', 'S0'],
    threads,
    numGroups: BH * NVT,
    body: `
      const N = ${N}u; const BH = ${BH}u; const C = ${C}u; const K = ${K}u; const V = ${V}u;
      const VT = ${VT}u; const NVT = ${NVT}u; const TH = ${threads}u;
      var<workgroup> st: array<f32, ${K * VT}>;
      var<workgroup> yt: array<f32, ${C * VT}>;
      fn kernel(wg: u32, tid: u32) {
        let bh = wg / NVT;
        let v0 = (wg % NVT) * VT;
        for (var e = tid; e < K * VT; e += TH) {
          let v = v0 + e % VT;
          var s = 0.0;
          if (v < V) { s = S0[(bh * K + e / VT) * V + v]; }
          st[e] = s;
        }
        workgroupBarrier();
        for (var step = 0u; step < N; step++) {
          let n = ${reverse ? 'N - 1u - step' : 'step'};
          let m = n * BH + bh;
          for (var e = tid; e < K * VT; e += TH) {
            let v = v0 + e % VT;
            if (v < V) { SV[(m * K + e / VT) * V + v] = st[e]; }
          }
          for (var e = tid; e < C * VT; e += TH) {
            let r = e / VT;
            let c = e % VT;
            let v = v0 + c;
            var acc = 0.0;
            for (var kk = 0u; kk < K; kk++) { acc += Q1[(m * C + r) * K + kk] * st[kk * VT + c]; }
            var y = 0.0;
            if (v < V) {
              y = P[(m * C + r) * V + v] ${reverse ? '+' : '-'} acc;
              YO[(m * C + r) * V + v] = y;
            }
            yt[e] = y;
          }
          workgroupBarrier();
          let gam = GAM[m];
          for (var e = tid; e < K * VT; e += TH) {
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
        for (var e = tid; e < K * VT; e += TH) {
          let v = v0 + e % VT;
          if (v < V) { LS[(bh * K + e / VT) * V + v] = st[e]; }
        }
      }`,
  };
}

function recurDims(p: TensorInfo, q1: TensorInfo, s0: TensorInfo): RecurDims {
  const [M, C, V] = p.shape as [number, number, number];
  const BH = s0.shape[0]!;
  return { N: M / BH, BH, C, K: q1.shape[2]!, V };
}

/** Runs the recurrence: [Y, the saved states, the last state], one dispatch. */
function runRecur(be: WebGpuBackendLike, inputs: TensorInfo[], reverse: boolean): TensorInfo[] {
  const d = recurDims(inputs[0]!, inputs[1]!, inputs[4]!);
  const limits = be.device.limits;
  return runMultiOutput(be, recurProgram(d, reverse, limits.maxComputeWorkgroupStorageSize, limits.maxComputeInvocationsPerWorkgroup), inputs);
}

/** Registers the three kernels for `webgpu` (their gradient is `deltaChunkKernels`'s custom op). */
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
}

/** The registry hook's test: the kernels are registered and take these head sizes. */
export function deltaKernelsActive(K: number, V: number): boolean {
  return kernelActive(DELTA_RECUR) && deltaKernelSupported(K, V);
}
