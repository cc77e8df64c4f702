import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, f32, kernelActive, run, runPacked, type WebGpuBackendLike } from './program.js';

/**
 * Chunked gated linear attention (GLA) on webgpu, forward and backward, no T x T tensor. The
 * composite definition (the oracle, and the path on every other backend) is `@tsformer/ops`
 * `glaChunkComposite`; `glaChunk` reaches this kernel through the fused registry.
 *
 * Per batch row and head, with q already scaled, the sequence is cut into chunks of C tokens; b_t is
 * the cumulative log gate from the chunk start (b_t <= 0, non-increasing), bL its value at the
 * chunk's last token, S_n the state entering chunk n (S_0 the initial state):
 *
 *   o_i     = (q_i * exp(b_i)) S_n + sum_{j <= i} A_ij v_j,   A_ij = sum_c q_ic k_jc exp(b_ic - b_jc)
 *   S_{n+1} = diag(exp(bL)) S_n + sum_j (k_j * exp(bL - b_j)) v_j^T
 *
 * The intra-chunk weights take exp(b_ic - b_jc) per channel (exact; the exponent is <= 0 for
 * j <= i, so nothing overflows however strong the gates). Kernels:
 * - `cumgate`: b, one thread per (b, chunk, h, channel).
 * - `chunksum` and `carry`: the states entering every chunk, [B, H, nC + 1, K, V] (the last: the
 *   final state): each chunk's contribution for all chunks at once, then one thread per state
 *   element, sequential over chunks. Reversed, the same kernels give dS_n.
 *   Not an output of the op (the backward runs it again): the op returns o, and the final state
 *   when asked.
 * - `intra`: o (forward) or dv (backward, A transposed), one workgroup per (b, h, chunk, 64
 *   value columns): A in workgroup memory, then the inter and intra products.
 * - `dqk`: dq, dk and dg, one workgroup per (b, h, chunk, 64 key channels).
 *
 * Backward (dA_ij = dO_i . v_j, j <= i; dS_n the gradient of the state entering chunk n):
 *
 *   dS_n  = diag(exp(bL)) dS_{n+1} + sum_i (q_i * exp(b_i)) dO_i^T,   dS_nC = the final state's cotangent
 *   dv_j  = sum_{i >= j} A_ij dO_i + (k_j * exp(bL - b_j)) dS_{n+1}
 *   dq_ic = exp(b_ic) (dO_i . S_n[c]) + sum_{j <= i} dA_ij k_jc exp(b_ic - b_jc)
 *   dk_jc = exp(bL_c - b_jc) (v_j . dS_{n+1}[c]) + sum_{i >= j} dA_ij q_ic exp(b_ic - b_jc)
 *   dg_tc = sum_{s >= t in the chunk} (q_sc dq_sc - k_sc dk_sc) + S_{n+1}[c] . dS_{n+1}[c]
 *
 * (dg: shifting every cumulative gate from token t on by d scales q_s exp(b_s) by e^d and
 * k_s exp(-b_s) by e^-d for s in the chunk, and the state entering the next chunk by e^d.)
 */
export const GLA = 'TsfGla';
/** The same forward from a given initial state (an `s0` input, differentiable). */
export const GLA_INIT = 'TsfGlaInit';
export const GLA_GRAD = 'TsfGlaGrad';

/** Widest key and value heads the kernel takes. */
const MAX_WIDTH = 256;

/** Whether the kernel takes key width K and value width V (else the composite runs). */
export function glaSupported(K: number, V: number): boolean {
  return K >= 1 && V >= 1 && K <= MAX_WIDTH && V <= MAX_WIDTH;
}

export interface GlaWebGpuOptions {
  /** Multiplies the queries. Default K^-0.5. */
  scale?: number;
  /** The state before the first token, [B, H, K, V]. Default zeros. */
  initialState?: tf.Tensor;
  /** Also return the state after the last token. Default false. */
  outputFinalState?: boolean;
  /**
   * Tokens per chunk of the kernel: 16, 32 or 64 (other values: the largest of those below it).
   * Default 64. Smaller where the device's workgroup memory or a short sequence asks for it.
   */
  chunkSize?: number;
}

/**
 * GLA through the fused kernel (webgpu with the kernel registered; throws elsewhere or for
 * shapes it does not take). q, k, g [B, T, H, K]; v [B, T, H, V]. Differentiable in q, k, v, g
 * and the initial state. The caller owns (disposes) the outputs.
 */
export function glaWebGpu(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, opts: GlaWebGpuOptions = {}): { o: tf.Tensor; finalState?: tf.Tensor } {
  if (!kernelActive(GLA)) throw new Error('glaWebGpu: the GLA kernel is not registered for the active backend');
  const K = q.shape[3]!;
  const V = v.shape[3]!;
  if (!glaSupported(K, V)) throw new Error(`glaWebGpu: K ${K} and V ${V} must be in 1..${MAX_WIDTH}`);
  return tf.tidy(() => {
    const withFinal = opts.outputFinalState ?? false;
    const attrs = { scale: opts.scale ?? 1 / Math.sqrt(K), hasInit: opts.initialState !== undefined, withFinal, chunk: opts.chunkSize ?? 64 };
    // no placeholder for a missing initial state (its zero gradient would be one more fill and add)
    const inputs: Record<string, tf.Tensor> = opts.initialState ? { q, k, v, g, s0: opts.initialState } : { q, k, v, g };
    // [o] or [o, finalState]: no other output, since tfjs's tape fills the cotangent of every unused
    // output with zeros made on the host (a per-chunk states output cost ~10 ms per step that way)
    const [o, finalState] = tf.engine().runKernel(opts.initialState ? GLA_INIT : GLA, inputs, attrs as unknown as NamedAttrMap) as tf.Tensor[];
    return withFinal ? { o: o!, finalState: finalState! } : { o: o! };
  });
}

// ---------------------------------------------------------------------------------------------
// WGSL

interface Dims {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
  /** Tokens per chunk, chunks. */
  C: number;
  NC: number;
}

/**
 * Tokens per chunk: the largest of 64, 32, 16 that is <= the asked size, no longer than the
 * sequence needs (a short sequence does not pay for a long chunk), and whose `intra` and `dqk`
 * tiles fit `limit` bytes of workgroup memory (C = 64 needs 25 KiB, C = 32 14 KiB).
 */
function chunkOf(T: number, asked: number, limit: number): number {
  let C = 64;
  while (C > 16 && (C > asked || C / 2 >= T || Math.max(intraFloats(C), dqkFloats(C)) * 4 + 64 > limit)) C /= 2;
  return C;
}

function dimsOf(q: TensorInfo, v: TensorInfo, limit: number, asked: number): Dims {
  const [B, T, H, K] = q.shape as [number, number, number, number];
  const C = chunkOf(T, asked, limit);
  return { B, T, H, K, V: v.shape[3]!, C, NC: Math.ceil(T / C) };
}

function keyOf(name: string, d: Dims, extra: Array<string | number | boolean>): string {
  return `${name}_${d.B}_${d.T}_${d.H}_${d.K}_${d.V}_${d.C}_${extra.join('_')}`;
}

/** Sizes and index helpers shared by every GLA kernel. */
function constants(d: Dims, scale: number): string {
  return `
    const B = ${d.B}u; const T = ${d.T}u; const H = ${d.H}u; const K = ${d.K}u; const V = ${d.V}u;
    const C = ${d.C}u; const NC = ${d.NC}u; const NS = ${d.NC + 1}u; const SCALE = ${f32(scale)};
    // q, k, g, b: [B, T, H, K]; v, o: [B, T, H, V]; states: [B, H, NS, K, V]
    fn ik(b: u32, t: u32, h: u32, c: u32) -> u32 { return ((b * T + t) * H + h) * K + c; }
    fn iv(b: u32, t: u32, h: u32, v: u32) -> u32 { return ((b * T + t) * H + h) * V + v; }
    fn ist(bh: u32, n: u32, c: u32, v: u32) -> u32 { return ((bh * NS + n) * K + c) * V + v; }
    // tokens of chunk n: [n C, n C + chunkLen(n))
    fn chunkLen(n: u32) -> u32 { return min(T, n * C + C) - n * C; }
    var<workgroup> wgShared: u32;
  `;
}

/** b: the cumulative log gate from each chunk's start, [B, T, H, K]. */
function cumgateProgram(d: Dims): KernelProgram {
  const threads = 128;
  const n = d.B * d.NC * d.H * d.K;
  const key = keyOf('tsf_gla_cumgate', d, []);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.T, d.H, d.K],
    inputs: ['G'],
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      ${constants(d, 1)}
      fn kernel() {
        let idx = wgIndex() * ${threads}u + localIndex;
        if (idx >= B * NC * H * K) { return; }
        let c = idx % K; let h = (idx / K) % H; let n = (idx / (K * H)) % NC; let b = idx / (K * H * NC);
        var acc = 0.0;
        for (var t = n * C; t < n * C + chunkLen(n); t++) { acc += G[ik(b, t, h, c)]; result[ik(b, t, h, c)] = acc; }
      }`,
  }));
}

/**
 * Each chunk's own contribution to the state recurrence, all chunks at once: one workgroup per
 * (b, h, chunk, 16 x 16 tile of the K x V state), the chunk's rows of the tile staged in workgroup
 * memory, one thread per state element. Output [B, H, NC, K, V].
 *
 * forward (X = k, Y = v):   U_n = sum_j (k_j exp(bL_n - b_j)) v_j^T
 * backward (X = q, Y = dO): W_n = sum_i (SCALE q_i exp(b_i)) dO_i^T
 */
function chunkSumProgram(d: Dims, scale: number, backward: boolean): KernelProgram {
  const NCT = Math.ceil(d.K / 16);
  const NVT = Math.ceil(d.V / 16);
  const key = keyOf('tsf_gla_chunksum', d, [scale, backward]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.H, d.NC, d.K, d.V],
    inputs: ['X', 'Y', 'BC'],
    threads: 256,
    numGroups: d.B * d.H * d.NC * NCT * NVT,
    body: `
      ${constants(d, scale)}
      const NCT = ${NCT}u; const NVT = ${NVT}u; const BACKWARD = ${backward};
      var<workgroup> xs: array<f32, ${d.C * 16}>;
      var<workgroup> ys: array<f32, ${d.C * 16}>;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NC * NCT * NVT) { return; }
        let vt = wg % NVT; let ct = (wg / NVT) % NCT; let n = (wg / (NVT * NCT)) % NC; let bh = wg / (NVT * NCT * NC);
        let b = bh / H; let h = bh % H;
        let tx = localIndex % 16u; let ty = localIndex / 16u;
        let c = ct * 16u + ty; let v = vt * 16u + tx;
        let t0 = n * C;
        let len = chunkLen(n);
        let last = t0 + len - 1u;
        for (var e = localIndex; e < C * 16u; e += 256u) {
          let j = e / 16u; let cc = ct * 16u + e % 16u; let vv = vt * 16u + e % 16u;
          var x = 0.0;
          var y = 0.0;
          if (j < len) {
            let t = t0 + j;
            if (cc < K) {
              let bj = BC[ik(b, t, h, cc)];
              if (BACKWARD) { x = X[ik(b, t, h, cc)] * SCALE * exp(bj); }
              else { x = X[ik(b, t, h, cc)] * exp(BC[ik(b, last, h, cc)] - bj); }
            }
            if (vv < V) { y = Y[iv(b, t, h, vv)]; }
          }
          xs[e] = x;
          ys[e] = y;
        }
        workgroupBarrier();
        var acc = 0.0;
        for (var j = 0u; j < len; j++) { acc += xs[j * 16u + ty] * ys[j * 16u + tx]; }
        if (c < K && v < V) { result[(((bh * NC + n) * K + c) * V) + v] = acc; }
      }`,
  }));
}

/**
 * The state recurrence over chunks from their contributions U (chunkSumProgram): one thread per
 * state element, sequential over chunks (one load and one multiply-add per chunk).
 *
 * forward: E = the initial state (if given). Writes S_n for n = 0..NC.
 *   S_{n+1} = diag(exp(bL_n)) S_n + U_n
 * backward: E = the final state's cotangent dS_NC (if given). Writes dS_n, n = NC..0.
 *   dS_n = diag(exp(bL_n)) dS_{n+1} + W_n
 */
function carryProgram(d: Dims, backward: boolean, hasE: boolean): KernelProgram {
  const threads = 64;
  const n = d.B * d.H * d.K * d.V;
  const key = keyOf('tsf_gla_carry', d, [backward, hasE]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.H, d.NC + 1, d.K, d.V],
    inputs: ['U', 'BC', 'E'],
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      ${constants(d, 1)}
      const BACKWARD = ${backward}; const HAS_E = ${hasE};
      fn kernel() {
        let i = wgIndex() * ${threads}u + localIndex;
        if (i >= B * H * K * V) { return; }
        let v = i % V; let c = (i / V) % K; let bh = i / (K * V);
        let b = bh / H; let h = bh % H;
        var s = 0.0;
        if (HAS_E) { s = E[i]; }
        if (BACKWARD) { result[ist(bh, NC, c, v)] = s; }
        for (var m = 0u; m < NC; m++) {
          let n = select(m, NC - 1u - m, BACKWARD);
          if (!BACKWARD) { result[ist(bh, n, c, v)] = s; }
          let last = n * C + chunkLen(n) - 1u;
          s = exp(BC[ik(b, last, h, c)]) * s + U[((bh * NC + n) * K + c) * V + v];
          if (BACKWARD) { result[ist(bh, n, c, v)] = s; }
        }
        if (!BACKWARD) { result[ist(bh, NC, c, v)] = s; }
      }`,
  }));
}

/** The states entering every chunk (or their gradients, backward): chunk sums, then the carry. */
function scan(be: WebGpuBackendLike, d: Dims, scale: number, backward: boolean, x: TensorInfo, y: TensorInfo, b: TensorInfo, e: TensorInfo | undefined): TensorInfo {
  const u = run(be, chunkSumProgram(d, scale, backward), [x, y, b]);
  const out = run(be, carryProgram(d, backward, e !== undefined), [u, b, e ?? u]);
  be.disposeData(u.dataId);
  return out;
}

/** Channel (or row) slice streamed through workgroup memory per step. */
const KS = 8;

/** Floats of workgroup memory of `intra`: A [C, C], then the staged slices. */
function intraFloats(C: number): number {
  return C * C + Math.max(3 * C * KS, C * KS + KS * 64);
}

/**
 * o (forward) or dv (backward, `transposed`), one workgroup of 16 x 16 threads per (b, h, chunk,
 * 64 value columns); a thread owns rows ty + 16 a and columns tx + 16 e.
 *
 * forward: rows are queries i. A_is = sum_c SCALE q_ic k_sc exp(b_ic - b_sc), s <= i;
 *   o_i = (SCALE q_i exp(b_i)) S_n + sum_s A_is v_s                     (M = states, Y = v)
 * backward: rows are keys j. A'_js = A_sj (s >= j);
 *   dv_j = (k_j exp(bL - b_j)) dS_{n+1} + sum_s A'_js dO_s                (M = dstates, Y = dO)
 */
function intraProgram(d: Dims, scale: number, transposed: boolean): KernelProgram {
  const RA = d.C / 16;
  const NVT = Math.ceil(d.V / 64);
  const SL = d.C * d.C; // offset of the staged slices
  const key = keyOf('tsf_gla_intra', d, [scale, transposed]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.T, d.H, d.V],
    inputs: ['QQ', 'KK', 'Y', 'BC', 'M'],
    threads: 256,
    numGroups: d.B * d.H * d.NC * NVT,
    body: `
      ${constants(d, scale)}
      const RA = ${RA}u; const NVT = ${NVT}u; const KS = ${KS}u; const SL = ${SL}u; const TR = ${transposed};
      var<workgroup> buf: array<f32, ${intraFloats(d.C)}>;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NC * NVT) { return; }
        let vt = wg % NVT; let n = (wg / NVT) % NC; let bh = wg / (NVT * NC);
        let b = bh / H; let h = bh % H;
        let tx = localIndex % 16u; let ty = localIndex / 16u;
        let t0 = n * C;
        let len = chunkLen(n);
        let last = t0 + len - 1u;

        // A (or A transposed): rows r = ty + 16 ia, columns s = tx + 16 is, channels in slices of KS.
        var a: array<f32, ${RA * RA}>;
        for (var x = 0u; x < RA * RA; x++) { a[x] = 0.0; }
        for (var c0 = 0u; c0 < K; c0 += KS) {
          // [C, KS] each: the row side P, the column side Q, b (padding rows repeat the last b)
          for (var e = localIndex; e < C * KS; e += 256u) {
            let r = e / KS; let cc = c0 + e % KS;
            var p = 0.0; var q = 0.0; var bb = 0.0;
            if (cc < K) {
              bb = BC[ik(b, t0 + min(r, len - 1u), h, cc)];
              if (r < len) {
                let qv = QQ[ik(b, t0 + r, h, cc)] * SCALE;
                let kv = KK[ik(b, t0 + r, h, cc)];
                p = select(qv, kv, TR);
                q = select(kv, qv, TR);
              }
            }
            buf[SL + e] = p; buf[SL + C * KS + e] = q; buf[SL + 2u * C * KS + e] = bb;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var js = 0u; js < RA; js++) {
              let s = tx + 16u * js;
              // the query is the later token: exponent b_query - b_key <= 0
              if (select(s <= r, s >= r, TR)) {
                var acc = a[ia * RA + js];
                for (var cc = 0u; cc < KS; cc++) {
                  let br = buf[SL + 2u * C * KS + r * KS + cc];
                  let bs = buf[SL + 2u * C * KS + s * KS + cc];
                  acc += buf[SL + r * KS + cc] * buf[SL + C * KS + s * KS + cc] * exp(select(br - bs, bs - br, TR));
                }
                a[ia * RA + js] = acc;
              }
            }
          }
          workgroupBarrier();
        }
        for (var ia = 0u; ia < RA; ia++) {
          for (var js = 0u; js < RA; js++) { buf[(ty + 16u * ia) * C + tx + 16u * js] = a[ia * RA + js]; }
        }

        // out_r = X_r M + sum_s A_rs Y_s: columns v = vt 64 + tx + 16 e
        var o: array<f32, ${RA * 4}>;
        for (var x = 0u; x < RA * 4u; x++) { o[x] = 0.0; }
        let mn = select(n, n + 1u, TR); // S_n forward, dS_{n+1} backward
        for (var c0 = 0u; c0 < K; c0 += KS) {
          workgroupBarrier();
          // X slice [C, KS], M slice [KS, 64]
          for (var e = localIndex; e < C * KS; e += 256u) {
            let r = e / KS; let cc = c0 + e % KS;
            var x = 0.0;
            if (cc < K && r < len) {
              let br = BC[ik(b, t0 + r, h, cc)];
              if (TR) { x = KK[ik(b, t0 + r, h, cc)] * exp(BC[ik(b, last, h, cc)] - br); }
              else { x = QQ[ik(b, t0 + r, h, cc)] * SCALE * exp(br); }
            }
            buf[SL + e] = x;
          }
          for (var e = localIndex; e < KS * 64u; e += 256u) {
            let cc = c0 + e / 64u; let vv = vt * 64u + e % 64u;
            var x = 0.0;
            if (cc < K && vv < V) { x = M[ist(bh, mn, cc, vv)]; }
            buf[SL + C * KS + e] = x;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var cc = 0u; cc < KS; cc++) {
              let x = buf[SL + r * KS + cc];
              for (var ev = 0u; ev < 4u; ev++) { o[ia * 4u + ev] += x * buf[SL + C * KS + cc * 64u + tx + 16u * ev]; }
            }
          }
        }
        for (var s0 = 0u; s0 < C; s0 += KS) {
          workgroupBarrier();
          // Y slice [KS, 64]
          for (var e = localIndex; e < KS * 64u; e += 256u) {
            let s = s0 + e / 64u; let vv = vt * 64u + e % 64u;
            var y = 0.0;
            if (s < len && vv < V) { y = Y[iv(b, t0 + s, h, vv)]; }
            buf[SL + e] = y;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var ss = 0u; ss < KS; ss++) {
              let w = buf[(r * C) + s0 + ss];
              for (var ev = 0u; ev < 4u; ev++) { o[ia * 4u + ev] += w * buf[SL + ss * 64u + tx + 16u * ev]; }
            }
          }
        }
        for (var ia = 0u; ia < RA; ia++) {
          let r = ty + 16u * ia;
          for (var ev = 0u; ev < 4u; ev++) {
            let vv = vt * 64u + tx + 16u * ev;
            if (r < len && vv < V) { result[iv(b, t0 + r, h, vv)] = o[ia * 4u + ev]; }
          }
        }
      }`,
  }));
}

/** Floats of workgroup memory of `dqk`: dA [C, C] (later the dg terms [C, 64]), then slices. */
function dqkFloats(C: number): number {
  return Math.max(C * C, C * 64) + Math.max(2 * C * KS + 2 * 64 * KS, 3 * KS * 64);
}

/**
 * dq, dk, dg, one workgroup of 16 x 16 threads per (b, h, chunk, 64 key channels); a thread owns
 * rows ty + 16 a and channels tx + 16 e. Output packed [3, B, T, H, K]: dq (of the unscaled q),
 * dk, dg.
 */
function dqkProgram(d: Dims, scale: number): KernelProgram {
  const RA = d.C / 16;
  const NCT = Math.ceil(d.K / 64);
  const SL = Math.max(d.C * d.C, d.C * 64);
  const n = d.B * d.T * d.H * d.K;
  const key = keyOf('tsf_gla_dqk', d, [scale]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [3 * n],
    inputs: ['QQ', 'KK', 'VV', 'BC', 'DO', 'ST', 'DS'],
    threads: 256,
    numGroups: d.B * d.H * d.NC * NCT,
    body: `
      ${constants(d, scale)}
      const RA = ${RA}u; const NCT = ${NCT}u; const KS = ${KS}u; const SL = ${SL}u; const N = ${n}u;
      var<workgroup> buf: array<f32, ${dqkFloats(d.C)}>;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NC * NCT) { return; }
        let ct = wg % NCT; let n = (wg / NCT) % NC; let bh = wg / (NCT * NC);
        let b = bh / H; let h = bh % H;
        let tx = localIndex % 16u; let ty = localIndex / 16u;
        let t0 = n * C;
        let len = chunkLen(n);
        let last = t0 + len - 1u;

        // dA_rs = dO_r . v_s (s <= r): values in slices of KS
        var a: array<f32, ${RA * RA}>;
        for (var x = 0u; x < RA * RA; x++) { a[x] = 0.0; }
        for (var v0 = 0u; v0 < V; v0 += KS) {
          for (var e = localIndex; e < C * KS; e += 256u) {
            let r = e / KS; let vv = v0 + e % KS;
            var dov = 0.0; var vvv = 0.0;
            if (r < len && vv < V) { dov = DO[iv(b, t0 + r, h, vv)]; vvv = VV[iv(b, t0 + r, h, vv)]; }
            buf[SL + e] = dov; buf[SL + C * KS + e] = vvv;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var js = 0u; js < RA; js++) {
              let s = tx + 16u * js;
              if (s <= r) {
                var acc = a[ia * RA + js];
                for (var x = 0u; x < KS; x++) { acc += buf[SL + r * KS + x] * buf[SL + C * KS + s * KS + x]; }
                a[ia * RA + js] = acc;
              }
            }
          }
          workgroupBarrier();
        }
        for (var ia = 0u; ia < RA; ia++) {
          for (var js = 0u; js < RA; js++) { buf[(ty + 16u * ia) * C + tx + 16u * js] = a[ia * RA + js]; }
        }

        // inter: dq_rc = dO_r . S_n[c], dk_rc = v_r . dS_{n+1}[c]; value slices of KS
        var dq: array<f32, ${RA * 4}>;
        var dk: array<f32, ${RA * 4}>;
        for (var x = 0u; x < RA * 4u; x++) { dq[x] = 0.0; dk[x] = 0.0; }
        for (var v0 = 0u; v0 < V; v0 += KS) {
          workgroupBarrier();
          for (var e = localIndex; e < C * KS; e += 256u) {
            let r = e / KS; let vv = v0 + e % KS;
            var dov = 0.0; var vvv = 0.0;
            if (r < len && vv < V) { dov = DO[iv(b, t0 + r, h, vv)]; vvv = VV[iv(b, t0 + r, h, vv)]; }
            buf[SL + e] = dov; buf[SL + C * KS + e] = vvv;
          }
          for (var e = localIndex; e < 64u * KS; e += 256u) {
            let cc = ct * 64u + e / KS; let vv = v0 + e % KS;
            var st = 0.0; var ds = 0.0;
            if (cc < K && vv < V) { st = ST[ist(bh, n, cc, vv)]; ds = DS[ist(bh, n + 1u, cc, vv)]; }
            buf[SL + 2u * C * KS + e] = st; buf[SL + 2u * C * KS + 64u * KS + e] = ds;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var ec = 0u; ec < 4u; ec++) {
              let cl = tx + 16u * ec;
              var xq = 0.0; var xk = 0.0;
              for (var x = 0u; x < KS; x++) {
                xq += buf[SL + r * KS + x] * buf[SL + 2u * C * KS + cl * KS + x];
                xk += buf[SL + C * KS + r * KS + x] * buf[SL + 2u * C * KS + 64u * KS + cl * KS + x];
              }
              dq[ia * 4u + ec] += xq; dk[ia * 4u + ec] += xk;
            }
          }
        }
        // own rows: q (scaled), k, b; inter terms times exp(b_r) and exp(bL - b_r)
        var qo: array<f32, ${RA * 4}>;
        var ko: array<f32, ${RA * 4}>;
        var bo: array<f32, ${RA * 4}>;
        for (var ia = 0u; ia < RA; ia++) {
          let r = ty + 16u * ia;
          for (var ec = 0u; ec < 4u; ec++) {
            let c = ct * 64u + tx + 16u * ec;
            let x = ia * 4u + ec;
            qo[x] = 0.0; ko[x] = 0.0; bo[x] = 0.0;
            if (c < K) {
              bo[x] = BC[ik(b, t0 + min(r, len - 1u), h, c)];
              if (r < len) { qo[x] = QQ[ik(b, t0 + r, h, c)] * SCALE; ko[x] = KK[ik(b, t0 + r, h, c)]; }
              dq[x] *= exp(bo[x]);
              dk[x] *= exp(BC[ik(b, last, h, c)] - bo[x]);
            }
          }
        }

        // intra: rows s of the chunk in slices of KS: q_s, k_s, b_s [KS, 64]
        for (var s0 = 0u; s0 < C; s0 += KS) {
          workgroupBarrier();
          for (var e = localIndex; e < KS * 64u; e += 256u) {
            let s = s0 + e / 64u; let cc = ct * 64u + e % 64u;
            var qv = 0.0; var kv = 0.0; var bb = 0.0;
            if (cc < K) {
              bb = BC[ik(b, t0 + min(s, len - 1u), h, cc)];
              if (s < len) { qv = QQ[ik(b, t0 + s, h, cc)] * SCALE; kv = KK[ik(b, t0 + s, h, cc)]; }
            }
            buf[SL + e] = qv; buf[SL + KS * 64u + e] = kv; buf[SL + 2u * KS * 64u + e] = bb;
          }
          workgroupBarrier();
          for (var ia = 0u; ia < RA; ia++) {
            let r = ty + 16u * ia;
            for (var ss = 0u; ss < KS; ss++) {
              let s = s0 + ss;
              let dArs = buf[r * C + s]; // dA_rs (0 unless s <= r)
              let dAsr = buf[s * C + r]; // dA_sr (0 unless s >= r)
              for (var ec = 0u; ec < 4u; ec++) {
                let cl = tx + 16u * ec;
                let x = ia * 4u + ec;
                let db = bo[x] - buf[SL + 2u * KS * 64u + ss * 64u + cl]; // b_r - b_s
                dq[x] += select(0.0, dArs * buf[SL + KS * 64u + ss * 64u + cl] * exp(db), s <= r);
                dk[x] += select(0.0, dAsr * buf[SL + ss * 64u + cl] * exp(-db), s >= r);
              }
            }
          }
        }

        // dg: suffix sums over the chunk's rows of q dq - k dk, plus S_{n+1}[c] . dS_{n+1}[c]
        workgroupBarrier();
        for (var ia = 0u; ia < RA; ia++) {
          let r = ty + 16u * ia;
          for (var ec = 0u; ec < 4u; ec++) {
            let x = ia * 4u + ec;
            buf[r * 64u + tx + 16u * ec] = qo[x] * dq[x] - ko[x] * dk[x];
            let c = ct * 64u + tx + 16u * ec;
            if (r < len && c < K) {
              result[ik(b, t0 + r, h, c)] = dq[x] * SCALE;
              result_1[ik(b, t0 + r, h, c)] = dk[x];
            }
          }
        }
        workgroupBarrier();
        if (ty == 0u) {
          for (var ec = 0u; ec < 4u; ec++) {
            let cl = tx + 16u * ec;
            let c = ct * 64u + cl;
            if (c < K) {
              var acc = 0.0;
              for (var vv = 0u; vv < V; vv++) { acc += ST[ist(bh, n + 1u, c, vv)] * DS[ist(bh, n + 1u, c, vv)]; }
              for (var r = len; r > 0u; r--) {
                acc += buf[(r - 1u) * 64u + cl];
                result_2[ik(b, t0 + r - 1u, h, c)] = acc;
              }
            }
          }
        }
      }`,
  }));
}

/** The state entering chunk n of every (b, h) (n = NC: the final state): [B, H, NS, K, V] -> [B, H, K, V]. */
function takeStateProgram(d: Dims, at: number): KernelProgram {
  const threads = 128;
  const n = d.B * d.H * d.K * d.V;
  const key = keyOf('tsf_gla_take', d, [at]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.H, d.K, d.V],
    inputs: ['S'],
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      ${constants(d, 1)}
      fn kernel() {
        let i = wgIndex() * ${threads}u + localIndex;
        if (i >= B * H * K * V) { return; }
        result[i] = S[((i / (K * V)) * NS + ${at}u) * K * V + i % (K * V)];
      }`,
  }));
}

function limitOf(backend: WebGpuBackendLike): number {
  return backend.device.limits.maxComputeWorkgroupStorageSize;
}

/** Registers the forward and backward kernels for `webgpu`, and the gradient. */
export function registerGla(): void {
  const forward: tf.KernelFunc = ({ inputs, backend, attrs }) => {
    const be = backend as unknown as WebGpuBackendLike;
    const { q, k, v, g, s0 } = inputs as Record<string, TensorInfo>;
    const d = dimsOf(q!, v!, limitOf(be), attrs!.chunk as number);
    const scale = attrs!.scale as number;
    const b = run(be, cumgateProgram(d), [g!]);
    const states = scan(be, d, scale, false, k!, v!, b, attrs!.hasInit ? s0! : undefined);
    const o = run(be, intraProgram(d, scale, false), [q!, k!, v!, b, states]);
    be.disposeData(b.dataId);
    const out = [o];
    if (attrs!.withFinal) out.push(run(be, takeStateProgram(d, d.NC), [states]));
    be.disposeData(states.dataId);
    return out;
  };
  for (const kernelName of [GLA, GLA_INIT]) {
    if (!tf.getKernel(kernelName, 'webgpu')) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: forward });
  }
  if (!tf.getKernel(GLA_GRAD, 'webgpu')) {
    tf.registerKernel({
      kernelName: GLA_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { q, k, v, g, s0, dy, dfinal } = inputs as Record<string, TensorInfo>;
        const d = dimsOf(q!, v!, limitOf(be), attrs!.chunk as number);
        const scale = attrs!.scale as number;
        // the forward's b and states again (one cheap dispatch each), rather than saving them
        const b = run(be, cumgateProgram(d), [g!]);
        const states = scan(be, d, scale, false, k!, v!, b, attrs!.hasInit ? s0! : undefined);
        const dS = scan(be, d, scale, true, q!, dy!, b, attrs!.withFinal ? dfinal! : undefined);
        const dv = run(be, intraProgram(d, scale, true), [q!, k!, dy!, b, dS]);
        const shape = [d.B, d.T, d.H, d.K];
        // dq, dk and dg [B, T, H, K], one dispatch
        const [dq, dk, dg] = runPacked(be, dqkProgram(d, scale), [q!, k!, v!, b, dy!, states!, dS], [shape, shape, shape]);
        be.disposeData(b.dataId);
        be.disposeData(states.dataId);
        const out = [dq!, dk!, dv, dg!];
        if (attrs!.hasInit) out.push(run(be, takeStateProgram(d, 0), [dS]));
        be.disposeData(dS.dataId);
        return out;
      },
    });
  }
  for (const [kernelName, withInit] of [
    [GLA, false],
    [GLA_INIT, true],
  ] as const) {
    if (tf.getGradient(kernelName)) continue;
    tf.registerGradient({
      kernelName,
      inputsToSave: withInit ? ['q', 'k', 'v', 'g', 's0'] : ['q', 'k', 'v', 'g'],
      gradFunc: (dys, saved, attrs) => {
        const [q, k, v, g, s0] = saved as tf.Tensor[];
        // tfjs's tape passes zeros for an output the loss does not use
        const [dy, dFinal] = (Array.isArray(dys) ? dys : [dys]) as tf.Tensor[];
        // the final state's cotangent when it was returned; q stands in otherwise (unread)
        const inputs: Record<string, tf.Tensor> = { q: q!, k: k!, v: v!, g: g!, dy: dy!, dfinal: attrs!.withFinal ? dFinal! : q! };
        if (withInit) inputs.s0 = s0!;
        const [dq, dk, dv, dg, ds0] = tf.engine().runKernel(GLA_GRAD, inputs, attrs) as tf.Tensor[];
        const grads: Record<string, () => tf.Tensor> = { q: () => dq!, k: () => dk!, v: () => dv!, g: () => dg! };
        if (withInit) grads.s0 = () => ds0!;
        return grads;
      },
    });
  }
}
