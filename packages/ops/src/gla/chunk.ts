import { TsformerError, fused, tf } from '@tsformer/core';
import { checkGlaInputs, queryScale, type GlaOptions, type GlaOutput } from './check.js';

/** Options of `glaChunk`. */
export interface GlaChunkOptions extends GlaOptions {
  /** Tokens per chunk: the state is materialized once per chunk. Default 64. */
  chunkSize?: number;
  /**
   * Tokens per sub-chunk (must divide `chunkSize`): pairs inside one sub-chunk are scored
   * exactly, per key channel; pairs across sub-chunks by a product. Default: the largest divisor
   * of `chunkSize` up to 8 (on tfjs-wasm, 8 of 64 ran forward+backward ~10% faster than 16).
   */
  subChunkSize?: number;
  /** Return the state after the last token. Default false. */
  outputFinalState?: boolean;
}

/**
 * Gated linear attention in its chunked (training) form: the same function as `glaNaive`, with
 * the sequence cut into chunks of C tokens (the end padded with zeros). Inside a chunk, with
 * b_t = g_1 + ... + g_t counted from the chunk start and S the state before the chunk:
 *
 *   o_i = (q_i * exp(b_i)) S  +  sum_{j <= i} [sum_c q_ic k_jc exp(b_ic - b_jc)] v_j
 *   S'  = diag(exp(b_C)) S    +  sum_j (k_j * exp(b_C - b_j)) v_j^T
 *
 * (q already scaled). Every exponent above is <= 0 because the log gates are. The intra-chunk
 * scores must not be split as (q_i exp(b_i)) . (k_j exp(-b_j)), whose second factor overflows
 * once a chunk's gates sum below about -88; instead the chunk is cut into sub-chunks of c tokens:
 * - key j in an earlier sub-chunk than query i: both factors are taken relative to r, the
 *   cumulative gate just before i's sub-chunk: (q_i exp(b_i - r)) . (k_j exp(r - b_j)), where
 *   b_i <= r <= b_j, so both exponents are <= 0 (a product per sub-chunk of queries);
 * - key j in i's own sub-chunk: exp(b_ic - b_jc) per channel, elementwise ([c, c, K] per
 *   sub-chunk), from cumulative gates counted from the sub-chunk start.
 * All chunks go through the same batched products at once; only the state recurrence loops over
 * chunks. Every tensor stays at rank <= 4 (tfjs-wasm runs rank-5 slices and transposes ~100x
 * slower). Gradients are tfjs autodiff of this form. The caller owns (disposes) the outputs.
 */
export function glaChunk(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, opts: GlaChunkOptions = {}): GlaOutput {
  checkGlaInputs('glaChunk', q, k, v, g, opts.initialState);
  // A fused kernel where one is registered for the active backend (webgpu), else the composite.
  const scale = queryScale(q.shape[3]!, opts.scale);
  const f = fused('glaChunk')?.(q, k, v, g, { scale, chunkSize: opts.chunkSize ?? 64, initialState: opts.initialState, outputFinalState: opts.outputFinalState ?? false });
  if (f) return f;
  return glaChunkComposite(q, k, v, g, opts);
}

/**
 * `glaChunk` as plain tfjs ops, whatever the backend: the definition the fused kernels are
 * checked against. Same arguments and result as `glaChunk`.
 */
export function glaChunkComposite(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, opts: GlaChunkOptions = {}): GlaOutput {
  const { B, T, H, K, V } = checkGlaInputs('glaChunk', q, k, v, g, opts.initialState);
  const C = opts.chunkSize ?? 64;
  const c = opts.subChunkSize ?? defaultSubChunk(C);
  if (!Number.isInteger(C) || C < 1) throw new TsformerError(`glaChunk: chunkSize must be a positive integer, got ${C}`, 'config');
  if (!Number.isInteger(c) || c < 1 || C % c !== 0) {
    throw new TsformerError(`glaChunk: subChunkSize must be a positive integer dividing chunkSize ${C}, got ${c}`, 'config');
  }
  const scale = queryScale(K, opts.scale);
  const nC = Math.ceil(T / C); // chunks
  const Tp = nC * C; // padded length
  const nS = C / c; // sub-chunks per chunk
  const BH = B * H;
  const N = BH * nC; // chunks of all heads
  const M = N * nS; // sub-chunks of all heads

  // Host-side masks. `earlier[I, j]`: key j (of the chunk) precedes sub-chunk I.
  // `causal[i, j]`: key j is at or before query i within one sub-chunk.
  const earlier = new Float32Array(nS * C);
  for (let I = 0; I < nS; I++) for (let j = 0; j < I * c; j++) earlier[I * C + j] = 1;
  const causal = new Float32Array(c * c);
  for (let i = 0; i < c; i++) for (let j = 0; j <= i; j++) causal[i * c + j] = 1;

  return tf.tidy(() => {
    // Zero padding at the end is harmless: k = 0 adds nothing to the state and g = 0 keeps it.
    const chunks = (x: tf.Tensor) => {
      const X = x.shape[3]!;
      return x
        .pad([[0, 0], [0, Tp - T], [0, 0], [0, 0]]) // [B, Tp, H, X]
        .transpose([0, 2, 1, 3]) // [B, H, Tp, X]
        .reshape([N, C, X]); // [B*H*nC, C, X]
    };
    const qc = chunks(q.mul(scale)); // [N, C, K]
    const kc = chunks(k); // [N, C, K]
    const vc = chunks(v); // [N, C, V]
    const gc = chunks(g); // [N, C, K]

    // Cumulative log gates, summed along the last axis: in tfjs 4.22 the gradient of cumsum
    // along any other axis comes back transposed.
    const gT = gc.transpose([0, 2, 1]); // [N, K, C]
    const b = gT.cumsum(2).transpose([0, 2, 1]); // b_t from the chunk start: [N, C, K]
    const rest = gT.cumsum(2, true, true).transpose([0, 2, 1]); // b_C - b_t = g_{t+1} + ... + g_C: [N, C, K]
    const bSub = gT
      .reshape([N, K, nS, c]) // [N, K, nS, c]
      .cumsum(3) // b_t from the sub-chunk start
      .transpose([0, 2, 3, 1]); // [N, nS, c, K]

    // State recurrence: S' = diag(exp(b_C)) S + sum_j (k_j exp(b_C - b_j)) v_j^T, the sums of all
    // chunks in one product, then a loop over chunks for the carry.
    const kRest = kc.mul(rest.exp()).transpose([0, 2, 1]); // [N, K, C]
    const sums = tf.unstack(tf.matMul(kRest, vc).reshape([BH, nC, K * V]), 1); // nC x [B*H, K*V]
    const decays = tf.unstack(b.slice([0, C - 1, 0], [N, 1, K]).exp().reshape([BH, nC, K]), 1); // exp(b_C): nC x [B*H, K]
    let S = opts.initialState ? opts.initialState.reshape([BH, K, V]) : tf.zeros([BH, K, V]); // [B*H, K, V]
    const before: tf.Tensor[] = []; // the state before each chunk
    for (let n = 0; n < nC; n++) {
      before.push(S);
      if (n === nC - 1 && !opts.outputFinalState) break;
      S = S.mul(decays[n]!.reshape([BH, K, 1])).add(sums[n]!.reshape([BH, K, V])); // [B*H, K, V]
    }

    // Inter-chunk: (q_i exp(b_i)) S.
    const qInter = qc.mul(b.exp()).reshape([BH, nC, C, K]); // [B*H, nC, C, K]
    let o = tf.matMul(qInter, tf.stack(before, 1)).reshape([N, C, V]); // [B*H, nC, C, K] x [B*H, nC, K, V] -> [N, C, V]

    // Intra-chunk, key in an earlier sub-chunk: relative to r_I, the cumulative gate just
    // before sub-chunk I, as (q_i exp(b_i - r_I)) . (k_j exp(r_I - b_j)).
    if (nS > 1) {
      const qSub = qc.reshape([N, nS, c, K]).mul(bSub.exp()); // b_i - r_I is bSub: [N, nS, c, K]
      const ends = b.reshape([N, nS, c, K]).slice([0, 0, c - 1, 0], [N, nS - 1, 1, K]); // b at the end of sub-chunks 0..nS-2: [N, nS-1, 1, K]
      const ref = tf.concat([tf.zeros([N, 1, 1, K]), ends], 1); // r_I: [N, nS, 1, K]
      const keep = tf.tensor(earlier, [1, nS, C, 1]);
      // Masked pairs get exponent 0 before exp (r_I - b_j > 0 there) and weight 0 after it.
      const kExp = ref.sub(b.reshape([N, 1, C, K])).mul(keep); // r_I - b_j: [N, nS, C, K]
      const kSub = kc.reshape([N, 1, C, K]).mul(kExp.exp().mul(keep)); // [N, nS, C, K]
      const scores = tf.matMul(qSub, kSub, false, true); // [N, nS, c, C]
      o = o.add(tf.matMul(scores.reshape([N, C, C]), vc)); // [N, C, C] x [N, C, V] -> [N, C, V]
    }

    // Intra-chunk, key in the query's own sub-chunk: exp(b_ic - b_jc) per channel.
    const tri = tf.tensor(causal, [1, c, c, 1]);
    const bl = bSub.reshape([M, c, K]); // [N*nS, c, K]
    const dExp = bl.reshape([M, c, 1, K]).sub(bl.reshape([M, 1, c, K])).mul(tri); // b_i - b_j (j <= i), else 0: [M, c, c, K]
    const qk = qc.reshape([M, c, 1, K]).mul(kc.reshape([M, 1, c, K])); // q_ic k_jc: [M, c, c, K]
    const diag = qk.mul(dExp.exp().mul(tri)).sum(3); // [M, c, c]
    o = o.add(tf.matMul(diag, vc.reshape([M, c, V])).reshape([N, C, V])); // [M, c, V] -> [N, C, V]

    const out = o
      .reshape([B, H, Tp, V]) // [B, H, Tp, V]
      .slice([0, 0, 0, 0], [B, H, T, V]) // [B, H, T, V]
      .transpose([0, 2, 1, 3]); // [B, T, H, V]
    return opts.outputFinalState ? { o: out, finalState: S.reshape([B, H, K, V]) } : { o: out };
  });
}

/** The largest divisor of the chunk size up to 8. */
function defaultSubChunk(chunkSize: number): number {
  let c = Math.min(8, chunkSize);
  while (c > 1 && chunkSize % c !== 0) c--;
  return c;
}
