import type { TensorInfo, NamedAttrMap } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, runPacked, type WebGpuBackendLike } from './program.js';
import { attrsOf, constants, dimsOf, dsSnippet, keyOf, type Dims, type Resolved } from './attention-common.js';
import { dkvProgramV2, dqProgramV2, forwardProgramV2, v2Fit, v2Takes } from './attention-v2.js';

/**
 * Fused causal attention (flash-style): queries and keys are taken in tiles, the softmax is
 * computed online (running max and sum per query row), and no T x T tensor exists in memory.
 *
 * Layout: q [B, T, H, D], k and v [B, T, Hkv, D], o [B, T, H, D]; query head h reads kv head
 * floor(h / G), G = H / Hkv (MHA, GQA, MQA). Positions are 0..T-1 for queries and keys (training
 * and prefill without a cache). For query i and visible key j (j <= i, and i - j < window):
 *
 *   s_ij = scale * q_i . k_j - slope_h * (i - j)          (the ALiBi term only when slopes are given)
 *   softmax: o_i = sum_j exp(s_ij - lse_i) v_j,  lse_i = log sum_j exp(s_ij)
 *   sigmoid: o_i = sum_j sigmoid(s_ij + sigmoidBias) v_j  (no row normalization)
 */
export interface FlashAttentionOptions {
  /** How scores become weights. Default `softmax`. */
  score?: 'softmax' | 'sigmoid';
  /** Added to every score before the sigmoid (sigmoid only). Default 0. */
  sigmoidBias?: number;
  /** Sliding window: query i sees keys i - window < j <= i. Default: full causal. */
  window?: number;
  /** ALiBi slopes, one per query head: adds -slope_h * (i - j). Default: no bias. */
  alibiSlopes?: ArrayLike<number>;
  /** Score scale. Default 1 / sqrt(D). */
  scale?: number;
}

export const FLASH_ATTENTION = 'TsfFlashAttention';
export const FLASH_ATTENTION_GRAD = 'TsfFlashAttentionGrad';


function resolve(o: FlashAttentionOptions, D: number): Resolved {
  if (o.window !== undefined && !(Number.isInteger(o.window) && o.window > 0)) throw new Error(`flashAttention: window must be a positive integer, got ${o.window}`);
  return {
    sigmoid: (o.score ?? 'softmax') === 'sigmoid',
    sigmoidBias: o.sigmoidBias ?? 0,
    window: o.window ?? 0,
    scale: o.scale ?? 1 / Math.sqrt(D),
    alibi: o.alibiSlopes !== undefined,
  };
}

function checkShapes(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): [number, number, number, number, number] {
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4) throw new Error('flashAttention: q, k, v must be [B, T, H, D]');
  const [B, T, H, D] = q.shape as [number, number, number, number];
  const [Bk, Tk, Hkv, Dk] = k.shape as [number, number, number, number];
  if (Bk !== B || Tk !== T || Dk !== D || !tf.util.arraysEqual(k.shape, v.shape)) {
    throw new Error(`flashAttention: k ${k.shape} and v ${v.shape} must be [${B}, ${T}, Hkv, ${D}]`);
  }
  if (H % Hkv !== 0) throw new Error(`flashAttention: kv heads (${Hkv}) must divide query heads (${H})`);
  return [B, T, H, Hkv, D];
}

/**
 * The composite-op definition: dense scores with tfjs ops ([B, H, T, T] in memory). It runs on
 * every backend, its gradient is tfjs autodiff, and it is the oracle of the fused kernel.
 */
export function flashAttentionComposite(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, opts: FlashAttentionOptions = {}): tf.Tensor {
  const [B, T, H, Hkv, D] = checkShapes(q, k, v);
  const r = resolve(opts, D);
  const G = H / Hkv;
  const allowed = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) if (r.window === 0 || i - j < r.window) allowed[i * T + j] = 1;
  return tf.tidy(() => {
    const qg = q.transpose([0, 2, 1, 3]).reshape([B, Hkv, G * T, D]); // [B, Hkv, G*T, D], head h = kv * G + g
    const kh = k.transpose([0, 2, 1, 3]); // [B, Hkv, T, D]
    const vh = v.transpose([0, 2, 1, 3]); // [B, Hkv, T, D]
    let s = tf.matMul(qg, kh, false, true).mul(r.scale).reshape([B, H, T, T]); // [B, H, T, T]
    if (opts.alibiSlopes) {
      const dist = new Float32Array(T * T);
      for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) dist[i * T + j] = i - j;
      const slopes = tf.tensor(Float32Array.from(opts.alibiSlopes), [H, 1, 1]);
      s = s.sub(slopes.mul(tf.tensor(dist, [1, T, T]))); // - slope_h (i - j)
    }
    let p: tf.Tensor;
    if (r.sigmoid) {
      p = tf.sigmoid(s.add(r.sigmoidBias)).mul(tf.tensor(allowed, [T, T])); // masked keys weigh exactly 0
    } else {
      const add = allowed.map((a) => (a ? 0 : -1e9));
      p = tf.softmax(s.add(tf.tensor(add, [T, T])), -1);
    }
    const o = tf.matMul(p.reshape([B, Hkv, G * T, T]), vh); // [B, Hkv, G*T, D]
    return o.reshape([B, H, T, D]).transpose([0, 2, 1, 3]); // [B, T, H, D]
  });
}

/** Whether the fused kernel takes these shapes (else the composite path runs). */
export function flashAttentionSupported(D: number): boolean {
  return D % 4 === 0 && D <= 256;
}

/**
 * Causal attention: the fused WGSL kernel on `webgpu` once `registerWebGpuKernels()` has run,
 * the composite definition elsewhere. Same meaning, outputs and gradients on both.
 */
export function flashAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, opts: FlashAttentionOptions = {}): tf.Tensor {
  const [, , H, , D] = checkShapes(q, k, v);
  if (!kernelActive(FLASH_ATTENTION) || !flashAttentionSupported(D)) return flashAttentionComposite(q, k, v, opts);
  const r = resolve(opts, D);
  if (opts.alibiSlopes && opts.alibiSlopes.length !== H) throw new Error(`flashAttention: ${opts.alibiSlopes.length} ALiBi slopes for ${H} heads`);
  return tf.tidy(() => {
    const slopes = tf.tensor1d(opts.alibiSlopes ? Float32Array.from(opts.alibiSlopes) : new Float32Array(H));
    const attrs = { sigmoid: r.sigmoid, sigmoidBias: r.sigmoidBias, window: r.window, scale: r.scale, alibi: r.alibi };
    const [o] = tf.engine().runKernel(FLASH_ATTENTION, { q, k, v, slopes }, attrs as unknown as NamedAttrMap) as tf.Tensor[];
    return o!;
  });
}

// ---------------------------------------------------------------------------------------------
// WGSL

/** Largest power-of-two tile (<= cap) whose shared-memory bytes fit the device. */
function fitTile(cap: number, bytes: (n: number) => number, limit: number): number {
  let n = cap;
  while (n > 4 && bytes(n) > limit) n /= 2;
  return n;
}

/**
 * The K and V tiles of key block j0 into kt and vt (BC rows of kv head g, rows past T repeating row
 * T - 1), unrolled: every global load of a thread is issued before the first store into workgroup
 * memory (a loop of load-then-store waits on each load in turn). On the H100 this changed nothing
 * measurable here (v1's forward 1.70 ms at T=1024 before and after); the same change took v2's
 * forward from 1.84 to 1.31 ms.
 */
function kvTileLoad(BC: number, D4: number, threads: number): string {
  const total = BC * D4;
  const rounds = Math.ceil(total / threads);
  const lines: string[] = [];
  for (let n = 0; n < rounds; n++) {
    lines.push(`let e${n} = localIndex + ${n * threads}u; let src${n} = ((b * T + min(j0 + e${n} / D4, T - 1u)) * HKV + g) * D4 + e${n} % D4;`);
    lines.push(`let k${n} = K[src${n}]; let v${n} = V[src${n}];`);
  }
  for (let n = 0; n < rounds; n++) {
    const store = `kt[e${n}] = k${n}; vt[e${n}] = v${n};`;
    lines.push((n + 1) * threads > total ? `if (e${n} < ${total}u) { ${store} }` : store);
  }
  return `{
          ${lines.join('\n          ')}
          }`;
}

/**
 * Forward: one thread per query row; a workgroup takes BR consecutive queries of one (b, h) and
 * walks the key tiles it can see, K and V tiles of BC rows in shared memory. Heavy (late) query
 * blocks are scheduled first. Output: o [B, T, H, D] then lse [B, H, T], packed in one buffer.
 */
function forwardProgram(d: Dims, r: Resolved, limit: number, maxThreads: number): KernelProgram {
  const BR = Math.min(64, maxThreads);
  const BC = fitTile(32, (n) => 2 * n * d.D * 4 + 16, limit);
  const NQB = Math.ceil(d.T / BR);
  const key = keyOf('tsf_fa_fwd', d, r, [BR, BC]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B * d.T * d.H * d.D + d.B * d.H * d.T],
    inputs: ['Q', 'K', 'V', 'S'],
    components: [4, 4, 4, 1],
    threads: BR,
    numGroups: d.B * d.H * NQB,
    body: `
      ${constants(d, r)}
      const BR = ${BR}u; const BC = ${BC}u; const NQB = ${NQB}u;
      var<workgroup> kt: array<vec4<f32>, ${BC * (d.D / 4)}>;
      var<workgroup> vt: array<vec4<f32>, ${BC * (d.D / 4)}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NQB) { return; }
        let qb = NQB - 1u - wg % NQB;
        let h = (wg / NQB) % H;
        let b = wg / (NQB * H);
        let g = h / G;
        let i = qb * BR + localIndex;
        let ic = min(i, T - 1u);
        let slope = select(0.0, S[h], ALIBI);
        var q: array<vec4<f32>, D4>;
        var acc: array<vec4<f32>, D4>;
        let qBase = ((b * T + ic) * H + h) * D4;
        for (var c = 0u; c < D4; c++) { q[c] = Q[qBase + c] * SCALE; acc[c] = vec4<f32>(0.0); }
        var m = MASKED;
        var l = 0.0;
        // keys this block can see: [kLo, kHi)
        let iLo = qb * BR;
        let kHi = min(T, iLo + BR);
        var kLo = 0u;
        if (WINDOW > 0u && iLo + 1u > WINDOW) { kLo = iLo + 1u - WINDOW; }
        for (var j0 = (kLo / BC) * BC; j0 < kHi; j0 += BC) {
          ${kvTileLoad(BC, d.D / 4, BR)}
          workgroupBarrier();
          var s: array<f32, BC>;
          var mt = m;
          for (var jt = 0u; jt < BC; jt++) {
            let j = j0 + jt;
            var x = 0.0;
            for (var c = 0u; c < D4; c++) { x += dot(q[c], kt[jt * D4 + c]); }
            if (ALIBI) { x -= slope * (f32(i) - f32(j)); }
            if (!visible(i, j)) { x = MASKED; }
            s[jt] = x;
            mt = max(mt, x);
          }
          if (SIGMOID) {
            for (var jt = 0u; jt < BC; jt++) {
              let p = select(0.0, 1.0 / (1.0 + exp(-(s[jt] + SBIAS))), s[jt] > MASKED);
              for (var c = 0u; c < D4; c++) { acc[c] += p * vt[jt * D4 + c]; }
            }
          } else {
            let corr = exp(m - mt);
            l *= corr;
            for (var c = 0u; c < D4; c++) { acc[c] *= corr; }
            for (var jt = 0u; jt < BC; jt++) {
              let p = select(0.0, exp(s[jt] - mt), s[jt] > MASKED);
              l += p;
              for (var c = 0u; c < D4; c++) { acc[c] += p * vt[jt * D4 + c]; }
            }
            m = mt;
          }
          workgroupBarrier();
        }
        if (i < T) {
          let inv = select(1.0 / l, 1.0, SIGMOID);
          let oBase = ((b * T + i) * H + h) * D4 * 4u;
          for (var c = 0u; c < D4; c++) {
            let o = acc[c] * inv;
            result[oBase + 4u * c] = o.x; result[oBase + 4u * c + 1u] = o.y;
            result[oBase + 4u * c + 2u] = o.z; result[oBase + 4u * c + 3u] = o.w;
          }
          result_1[(b * H + h) * T + i] = select(m + log(l), 0.0, SIGMOID);
        }
      }`,
  }));
}

/** delta_i = dO_i . O_i per (b, h, i), [B, H, T] (softmax backward only). */
function deltaProgram(d: Dims, r: Resolved): KernelProgram {
  const threads = 128;
  const key = keyOf('tsf_fa_delta', d, r, [threads]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.H, d.T],
    inputs: ['O', 'DO'],
    components: [4, 4],
    threads,
    numGroups: Math.ceil((d.B * d.H * d.T) / threads),
    body: `
      ${constants(d, r)}
      fn kernel() {
        let n = wgIndex() * ${threads}u + localIndex;
        if (n >= B * H * T) { return; }
        let i = n % T; let h = (n / T) % H; let b = n / (T * H);
        let base = ((b * T + i) * H + h) * D4;
        var x = 0.0;
        for (var c = 0u; c < D4; c++) { x += dot(O[base + c], DO[base + c]); }
        result[n] = x;
      }`,
  }));
}

/**
 * dQ: one thread per query row (like the forward): recompute s and p per key, dp = dO_i . v_j,
 * dS = p (dp - delta_i) (softmax) or dp p (1 - p) (sigmoid), dq_i += dS k_j; dq = scale * that.
 */
function dqProgram(d: Dims, r: Resolved, limit: number, maxThreads: number): KernelProgram {
  const BR = Math.min(64, maxThreads);
  const own = BR * (d.D / 4 + 1) * 16; // the dO rows, one padded row per thread
  const BC = fitTile(32, (n) => 2 * n * d.D * 4 + own + 16, limit);
  const NQB = Math.ceil(d.T / BR);
  const key = keyOf('tsf_fa_dq', d, r, [BR, BC]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.T, d.H, d.D],
    inputs: ['Q', 'K', 'V', 'S', 'DO', 'LSE', 'DELTA'],
    components: [4, 4, 4, 1, 4, 1, 1],
    threads: BR,
    numGroups: d.B * d.H * NQB,
    body: `
      ${constants(d, r)}
      ${dsSnippet}
      const BR = ${BR}u; const BC = ${BC}u; const NQB = ${NQB}u;
      var<workgroup> kt: array<vec4<f32>, ${BC * (d.D / 4)}>;
      var<workgroup> vt: array<vec4<f32>, ${BC * (d.D / 4)}>;
      const VS = D4 + 1u;
      var<workgroup> dOown: array<vec4<f32>, ${BR * (d.D / 4 + 1)}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NQB) { return; }
        let qb = NQB - 1u - wg % NQB;
        let h = (wg / NQB) % H;
        let b = wg / (NQB * H);
        let g = h / G;
        let i = qb * BR + localIndex;
        let ic = min(i, T - 1u);
        let slope = select(0.0, S[h], ALIBI);
        // q and dq in registers; dO_i in a padded shared row of this thread's own (register pressure)
        var q: array<vec4<f32>, D4>;
        var dq: array<vec4<f32>, D4>;
        let qBase = ((b * T + ic) * H + h) * D4;
        for (var c = 0u; c < D4; c++) { q[c] = Q[qBase + c] * SCALE; dOown[localIndex * VS + c] = DO[qBase + c]; dq[c] = vec4<f32>(0.0); }
        let lse = LSE[(b * H + h) * T + ic];
        let delta = select(DELTA[(b * H + h) * T + ic], 0.0, SIGMOID);
        let iLo = qb * BR;
        let kHi = min(T, iLo + BR);
        var kLo = 0u;
        if (WINDOW > 0u && iLo + 1u > WINDOW) { kLo = iLo + 1u - WINDOW; }
        for (var j0 = (kLo / BC) * BC; j0 < kHi; j0 += BC) {
          ${kvTileLoad(BC, d.D / 4, BR)}
          workgroupBarrier();
          for (var jt = 0u; jt < BC; jt++) {
            let j = j0 + jt;
            var x = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < D4; c++) { x += dot(q[c], kt[jt * D4 + c]); dp += dot(dOown[localIndex * VS + c], vt[jt * D4 + c]); }
            if (ALIBI) { x -= slope * (f32(i) - f32(j)); }
            if (!visible(i, j)) { x = MASKED; }
            let ds = dscore(weight(x, lse), dp, delta);
            for (var c = 0u; c < D4; c++) { dq[c] += ds * kt[jt * D4 + c]; }
          }
          workgroupBarrier();
        }
        if (i < T) {
          let base = ((b * T + i) * H + h) * D4 * 4u;
          for (var c = 0u; c < D4; c++) {
            let o = dq[c] * SCALE;
            result[base + 4u * c] = o.x; result[base + 4u * c + 1u] = o.y;
            result[base + 4u * c + 2u] = o.z; result[base + 4u * c + 3u] = o.w;
          }
        }
      }`,
  }));
}

/**
 * dK and dV: one thread per key row j of kv head g; the workgroup walks, for each of the G query
 * heads that read g, the query tiles that can see its keys (Q, dO, lse, delta tiles in shared
 * memory). dv_j += p dO_i; dk_j += dS (scale q_i). dk_j and dv_j live in registers, k_j and v_j in
 * padded shared rows of the thread's own (no bank conflicts; 192 floats of registers spilled). Output: dk then dv, packed [2, B, T, Hkv, D].
 */
function dkvProgram(d: Dims, r: Resolved, limit: number, maxThreads: number): KernelProgram {
  const D4 = d.D / 4;
  const bytes = (bk: number, bq: number) => 2 * bk * (D4 + 1) * 16 + 2 * bq * d.D * 4 + 2 * bq * 4 + 16;
  let BK = Math.min(64, maxThreads);
  let BQ = 32;
  while (BQ > 4 && bytes(BK, BQ) > limit) BQ /= 2;
  while (BK > 8 && bytes(BK, BQ) > limit) BK /= 2;
  const NKB = Math.ceil(d.T / BK);
  const key = keyOf('tsf_fa_dkv', d, r, [BK, BQ]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [2 * d.B * d.T * d.HKV * d.D],
    inputs: ['Q', 'K', 'V', 'S', 'DO', 'LSE', 'DELTA'],
    components: [4, 4, 4, 1, 4, 1, 1],
    threads: BK,
    numGroups: d.B * d.HKV * NKB,
    body: `
      ${constants(d, r)}
      ${dsSnippet}
      const BK = ${BK}u; const BQ = ${BQ}u; const NKB = ${NKB}u; const VS = ${D4 + 1}u;
      var<workgroup> vown: array<vec4<f32>, ${BK * (D4 + 1)}>;
      var<workgroup> kown: array<vec4<f32>, ${BK * (D4 + 1)}>;
      var<workgroup> qt: array<vec4<f32>, ${BQ * D4}>;
      var<workgroup> dOt: array<vec4<f32>, ${BQ * D4}>;
      var<workgroup> lset: array<f32, ${BQ}>;
      var<workgroup> deltat: array<f32, ${BQ}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * HKV * NKB) { return; }
        let kb = NKB - 1u - wg % NKB;
        let g = (wg / NKB) % HKV;
        let b = wg / (NKB * HKV);
        let j = kb * BK + localIndex;
        let jc = min(j, T - 1u);
        // dk and dv in registers; k_j and v_j in padded shared rows of this thread's own
        var dk: array<vec4<f32>, D4>;
        var dv: array<vec4<f32>, D4>;
        let kBase = ((b * T + jc) * HKV + g) * D4;
        for (var c = 0u; c < D4; c++) {
          kown[localIndex * VS + c] = K[kBase + c]; vown[localIndex * VS + c] = V[kBase + c];
          dk[c] = vec4<f32>(0.0); dv[c] = vec4<f32>(0.0);
        }
        // queries that see this block: [iLo, iHi)
        let jLo = kb * BK;
        let iLo = jLo;
        var iHi = T;
        if (WINDOW > 0u) { iHi = min(T, jLo + BK - 1u + WINDOW); }
        for (var hh = 0u; hh < G; hh++) {
          let h = g * G + hh;
          let slope = select(0.0, S[h], ALIBI);
          for (var i0 = (iLo / BQ) * BQ; i0 < iHi; i0 += BQ) {
            workgroupBarrier();
            for (var e = localIndex; e < BQ * D4; e += BK) {
              let i = min(i0 + e / D4, T - 1u);
              let src = ((b * T + i) * H + h) * D4 + e % D4;
              qt[e] = Q[src] * SCALE;
              dOt[e] = DO[src];
            }
            for (var e = localIndex; e < BQ; e += BK) {
              let i = min(i0 + e, T - 1u);
              lset[e] = LSE[(b * H + h) * T + i];
              deltat[e] = select(DELTA[(b * H + h) * T + i], 0.0, SIGMOID);
            }
            workgroupBarrier();
            for (var it = 0u; it < BQ; it++) {
              let i = i0 + it;
              var x = 0.0;
              var dp = 0.0;
              for (var c = 0u; c < D4; c++) { x += dot(qt[it * D4 + c], kown[localIndex * VS + c]); dp += dot(dOt[it * D4 + c], vown[localIndex * VS + c]); }
              if (ALIBI) { x -= slope * (f32(i) - f32(j)); }
              if (!visible(i, j)) { x = MASKED; }
              let p = weight(x, lset[it]);
              let ds = dscore(p, dp, deltat[it]);
              for (var c = 0u; c < D4; c++) { dv[c] += p * dOt[it * D4 + c]; dk[c] += ds * qt[it * D4 + c]; }
            }
          }
        }
        if (j < T) {
          let base = ((b * T + j) * HKV + g) * D4 * 4u;
          for (var c = 0u; c < D4; c++) {
            result[base + 4u * c] = dk[c].x; result[base + 4u * c + 1u] = dk[c].y;
            result[base + 4u * c + 2u] = dk[c].z; result[base + 4u * c + 3u] = dk[c].w;
            result_1[base + 4u * c] = dv[c].x; result_1[base + 4u * c + 1u] = dv[c].y;
            result_1[base + 4u * c + 2u] = dv[c].z; result_1[base + 4u * c + 3u] = dv[c].w;
          }
        }
      }`,
  }));
}

/**
 * Which kernels run: `v2` (the default; attention-v2.ts: register-blocked micro-tiles, the next
 * block's tiles read into registers while the current one is computed, FlashAttention-2 backward;
 * head dims that are multiples of 32 whose tiles fit the device's workgroup memory, else v1), `v1`
 * (one thread per query or key row; every head dim), or `mixed` (v1's dQ kernel with v2's forward
 * and dK/dV kernels). On the H100 (B=8, H=12, D=64, GPU ms per call, gpu-attn.ts, 2026-11-23, after
 * v2's tile loads were batched and pipelined, before its later tuning) v2 ran forward+backward in
 * 1.51 / 5.51 / 21.4 / 84.1 ms at T = 512 / 1024 / 2048 / 4096 against v1's 3.34 / 10.75 / 39.7 / 151
 * and mixed's 1.64 / 6.42 / 23.5 / 90.9; per kernel at T=1024 v2's forward, dQ and dK/dV took 1.11,
 * 1.70 and 2.69 ms against v1's 1.70, 1.84 and 7.21. v2 now takes 3.47 ms at T=1024 and 52.9 at
 * T=4096 (docs/benchmarks.md, eleventh run).
 * The kernels of both generations read and write the same layouts, so they combine freely.
 */
export type FlashAttentionImpl = 'v1' | 'v2' | 'mixed';

let impl: FlashAttentionImpl = 'v2';

/** Selects the kernels of later calls (forward and backward alike); returns the previous choice. */
export function setFlashAttentionImpl(next: FlashAttentionImpl): FlashAttentionImpl {
  const prev = impl;
  impl = next;
  return prev;
}

/** The kernel generation a call with head dim D runs on a device with `limit` bytes of workgroup memory. */
export function flashAttentionImplFor(D: number, limit: number): FlashAttentionImpl {
  return impl !== 'v1' && v2Takes(D, limit) ? impl : 'v1';
}

function limits(backend: WebGpuBackendLike): [number, number] {
  return [backend.device.limits.maxComputeWorkgroupStorageSize, backend.device.limits.maxComputeInvocationsPerWorkgroup];
}

/** Registers the forward and backward kernels for `webgpu`, and the gradient (any backend). */
export function registerFlashAttention(): void {
  if (!tf.getKernel(FLASH_ATTENTION, 'webgpu')) {
    tf.registerKernel({
      kernelName: FLASH_ATTENTION,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { q, k, v, slopes } = inputs as Record<string, TensorInfo>;
        const d = dimsOf(q!, k!);
        const r = attrsOf(attrs!);
        const fit = impl !== 'v1' ? v2Fit(d.D, limits(be)[0], 'forward') : undefined;
        const program = fit ? forwardProgramV2(d, r, fit.R, fit.t) : forwardProgram(d, r, ...limits(be));
        // o [B, T, H, D] and the row log-sum-exp [B, H, T], one dispatch
        return runPacked(be, program, [q!, k!, v!, slopes!], [
          [d.B, d.T, d.H, d.D],
          [d.B, d.H, d.T],
        ]);
      },
    });
    tf.registerKernel({
      kernelName: FLASH_ATTENTION_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as WebGpuBackendLike;
        const { q, k, v, slopes, o, lse, dy } = inputs as Record<string, TensorInfo>;
        const d = dimsOf(q!, k!);
        const r = attrsOf(attrs!);
        // delta is unused by the sigmoid variant; lse stands in for it (same shape).
        const delta = r.sigmoid ? lse! : run(be, deltaProgram(d, r), [o!, dy!]);
        const ins = [q!, k!, v!, slopes!, dy!, lse!, delta];
        const fq = impl === 'v2' ? v2Fit(d.D, limits(be)[0], 'dq') : undefined; // mixed: v1's dQ
        const fkv = impl !== 'v1' ? v2Fit(d.D, limits(be)[0], 'dkv') : undefined;
        const dq = run(be, fq ? dqProgramV2(d, r, fq.R, fq.t) : dqProgram(d, r, ...limits(be)), ins);
        const kvShape = [d.B, d.T, d.HKV, d.D];
        // dk and dv [B, T, Hkv, D], one dispatch
        const [dk, dv] = runPacked(be, fkv ? dkvProgramV2(d, r, fkv.R, fkv.t) : dkvProgram(d, r, ...limits(be)), ins, [kvShape, kvShape]);
        if (!r.sigmoid) be.disposeData(delta.dataId);
        return [dq, dk!, dv!];
      },
    });
  }
  if (!tf.getGradient(FLASH_ATTENTION)) {
    tf.registerGradient({
      kernelName: FLASH_ATTENTION,
      inputsToSave: ['q', 'k', 'v', 'slopes'],
      outputsToSave: [true, true],
      gradFunc: (dys, saved, attrs) => {
        const [q, k, v, slopes, o, lse] = saved as tf.Tensor[];
        const dy = (dys as tf.Tensor[])[0] ?? tf.zerosLike(o!);
        const [dq, dk, dv] = tf.engine().runKernel(FLASH_ATTENTION_GRAD, { q: q!, k: k!, v: v!, slopes: slopes!, o: o!, lse: lse!, dy }, attrs) as tf.Tensor[];
        return { q: () => dq!, k: () => dk!, v: () => dv!, slopes: () => tf.zerosLike(slopes!) };
      },
    });
  }
}
