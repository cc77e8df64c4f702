import { Module, TsformerError, checkShape, tf } from '@tsformer/core';
import { Dropout, Linear, RMSNorm } from '@tsformer/layers';
import type { PositionalEncoding } from '@tsformer/positional';
import { z } from 'zod';
import { causalMask } from './softmax.js';
import type { Attention, AttentionCache, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';

/** A dimension: a positive integer, with a message that names the field. */
function dim(field: string) {
  const error = (issue: { input?: unknown }) => `${field} must be a positive integer (got ${JSON.stringify(issue.input)})`;
  return z.number({ error }).int({ error }).positive({ error });
}

export const mlaAttentionSchema = z
  .object({
    type: z.literal('mla'),
    /** Number of attention heads. */
    numHeads: dim('numHeads'),
    /**
     * Rank of the query latent: c_q = RMSNorm(x W_dq), q = c_q W_uq. Absent (default): no query
     * compression, q = x W_q (as in DeepSeek-V2-Lite).
     */
    qLoraRank: dim('qLoraRank').optional(),
    /** Rank of the key/value latent c_kv: with the rope key, all the cache holds per token. */
    kvLoraRank: dim('kvLoraRank'),
    /** Per-head query/key width that carries no position (keys come from the latent). */
    qkNopeHeadDim: dim('qkNopeHeadDim'),
    /** Per-head query/key width that is rotated; the rotated key is one vector shared by all heads. */
    qkRopeHeadDim: dim('qkRopeHeadDim'),
    /** Per-head value width. */
    vHeadDim: dim('vHeadDim'),
    /** Bias on the projections of x and on o_proj (q_proj or q_a_proj, kv_a_proj_with_mqa, o_proj), as in DeepSeek. Default false. */
    bias: z.boolean().default(false),
    /** Epsilon of the RMSNorms on the latents. Default 1e-6. */
    normEps: z.number().positive().default(1e-6),
    /** Dropout on attention probabilities (training only). Default 0. */
    dropout: z.number().min(0).max(0.99).default(0),
  })
  .strict();
export type MlaAttentionConfig = z.infer<typeof mlaAttentionSchema>;

/**
 * The compressed cache: per token only the normalized key/value latent and the rotated rope key
 * (kvLoraRank + qkRopeHeadDim numbers), never per-head keys or values.
 */
export interface MlaCache extends AttentionCache {
  readonly kind: 'mla';
  /** Normalized latents c_kv: [B, S, kvLoraRank], or null before the first token. */
  readonly latent: tf.Tensor | null;
  /**
   * Rope keys shared by all heads: [B, S, qkRopeHeadDim], or null before the first token. Rotated,
   * except under a `lengthDependent` encoding (dynamic NTK), whose keys are cached unrotated and
   * rotated with all cached positions at every call.
   */
  readonly kRope: tf.Tensor | null;
  /** Absolute positions of the S cached tokens. */
  readonly positions: Int32Array;
}

/** The projections every path starts from. */
interface Projected {
  /** [B, T, H, qkNope] */
  qNope: tf.Tensor;
  /** Rotated: [B, T, H, qkRope] */
  qRope: tf.Tensor;
  /** Normalized c_kv: [B, T, kvLoraRank] */
  latent: tf.Tensor;
  /** Not yet rotated, shared by all heads: [B, T, qkRope] */
  kRope: tf.Tensor;
}

/**
 * Multi-head latent attention (DeepSeek-V2/V3). Keys and values are decompressed from one latent
 * per token, c_kv = RMSNorm(x W_dkv); position enters only through a narrow rotated part of each
 * query and one rotated key per token shared by all heads:
 *
 *   q_h = [q_nope_h | R(q_rope_h)],  k_h = [c_kv W_uk_h | R(x W_kr)],  v_h = c_kv W_uv_h
 *   o_h = softmax(q_h . k_h / sqrt(qkNope + qkRope)) v_h,  y = concat_h(o_h) W_o
 *
 * Without a cache (training) this expanded form runs. With a cache (prefill and decode) the
 * absorbed form runs: W_uk_h is folded into the query (q_nope_h W_uk_h^T is a query against the
 * latent) and W_uv_h is applied after the weighted sum of latents, so the cache holds only c_kv and
 * the rotated rope key.
 */
export class MlaAttention extends Module implements Attention {
  readonly type = 'mla';
  readonly numHeads: number;
  readonly qLoraRank: number | undefined;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
  /** 1 / sqrt(qkNope + qkRope). */
  readonly softmaxScale: number;
  readonly dModel: number;
  /** Present without query compression. */
  readonly q_proj?: Linear;
  /** Present with query compression (qLoraRank). */
  readonly q_a_proj?: Linear;
  readonly q_a_layernorm?: RMSNorm;
  readonly q_b_proj?: Linear;
  /** x -> [c_kv | k_rope]: [B, T, kvLoraRank + qkRope]. */
  readonly kv_a_proj_with_mqa: Linear;
  readonly kv_a_layernorm: RMSNorm;
  /** c_kv -> per head [k_nope | v]: [B, T, H * (qkNope + vHead)]. */
  readonly kv_b_proj: Linear;
  readonly o_proj: Linear;
  readonly attnDropout: Dropout;
  readonly #positional: PositionalEncoding;

  constructor(cfg: MlaAttentionConfig, deps: AttentionDeps) {
    super();
    const { dModel, rng } = deps;
    this.dModel = dModel;
    this.numHeads = cfg.numHeads;
    this.qLoraRank = cfg.qLoraRank;
    this.kvLoraRank = cfg.kvLoraRank;
    this.qkNopeHeadDim = cfg.qkNopeHeadDim;
    this.qkRopeHeadDim = cfg.qkRopeHeadDim;
    this.vHeadDim = cfg.vHeadDim;
    const H = this.numHeads;
    const qkDim = cfg.qkNopeHeadDim + cfg.qkRopeHeadDim;
    this.softmaxScale = 1 / Math.sqrt(qkDim);
    if (cfg.qLoraRank === undefined) {
      this.q_proj = this.addModule('q_proj', new Linear(dModel, H * qkDim, rng, { bias: cfg.bias }));
    } else {
      this.q_a_proj = this.addModule('q_a_proj', new Linear(dModel, cfg.qLoraRank, rng, { bias: cfg.bias }));
      this.q_a_layernorm = this.addModule('q_a_layernorm', new RMSNorm(cfg.qLoraRank, cfg.normEps));
      this.q_b_proj = this.addModule('q_b_proj', new Linear(cfg.qLoraRank, H * qkDim, rng));
    }
    this.kv_a_proj_with_mqa = this.addModule('kv_a_proj_with_mqa', new Linear(dModel, cfg.kvLoraRank + cfg.qkRopeHeadDim, rng, { bias: cfg.bias }));
    this.kv_a_layernorm = this.addModule('kv_a_layernorm', new RMSNorm(cfg.kvLoraRank, cfg.normEps));
    this.kv_b_proj = this.addModule('kv_b_proj', new Linear(cfg.kvLoraRank, H * (cfg.qkNopeHeadDim + cfg.vHeadDim), rng));
    this.o_proj = this.addModule('o_proj', new Linear(H * cfg.vHeadDim, dModel, rng, { bias: cfg.bias, std: deps.outStd }));
    this.attnDropout = this.addModule('attn_dropout', new Dropout(cfg.dropout, rng));
    this.#positional = deps.positional;
  }

  initCache(): MlaCache {
    return { kind: 'mla', length: 0, latent: null, kRope: null, positions: new Int32Array(0), tensors: [] };
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { T } = checkShape('attention input', x, ['B', 'T', this.dModel]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    if (!ctx.cache) return { y: tf.tidy(() => this.#expanded(x, ctx.positions)) };
    if (ctx.cache.kind !== 'mla') throw new TsformerError(`mla attention got a "${ctx.cache.kind}" cache`, 'shape');
    const cache = ctx.cache as MlaCache;
    let newCache: MlaCache | undefined;
    const y = tf.tidy(() => {
      const { y, latent, kRope, positions } = this.#absorbed(x, ctx.positions, cache);
      newCache = { kind: 'mla', length: positions.length, latent: tf.keep(latent), kRope: tf.keep(kRope), positions, tensors: [latent, kRope] };
      return y;
    });
    return { y, cache: newCache! };
  }

  /** Queries, normalized latents and rope keys of the T new tokens (call inside a tidy). */
  #project(x: tf.Tensor, positions: Int32Array): Projected {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const qIn = this.q_proj ? this.q_proj.forward(x) : this.q_b_proj!.forward(this.q_a_layernorm!.forward(this.q_a_proj!.forward(x)));
    const q = qIn.reshape([B, T, H, this.qkNopeHeadDim + this.qkRopeHeadDim]); // [B, T, H, qkNope + qkRope]
    const [qNope, qRopeRaw] = splitLast(q, this.qkNopeHeadDim); // [B, T, H, qkNope], [B, T, H, qkRope]
    const [latentRaw, kRopeRaw] = splitLast(this.kv_a_proj_with_mqa.forward(x), this.kvLoraRank); // [B, T, R], [B, T, qkRope]
    const latent = this.kv_a_layernorm.forward(latentRaw); // [B, T, R]
    const qRope = this.#positional.rotate ? this.#positional.rotate(qRopeRaw, positions) : qRopeRaw; // [B, T, H, qkRope]
    return { qNope, qRope, latent, kRope: kRopeRaw };
  }

  /** Rotates rope keys [B, S, qkRope] (one key head) at their positions. */
  #rotateKeys(k: tf.Tensor, positions: Int32Array): tf.Tensor {
    if (!this.#positional.rotate) return k;
    const [B, S] = k.shape as [number, number, number];
    const one = k.reshape([B, S, 1, this.qkRopeHeadDim]); // [B, S, 1, qkRope]: one key head
    return this.#positional.rotate(one, positions).reshape([B, S, this.qkRopeHeadDim]); // [B, S, qkRope]
  }

  /** Scores [B, H, T, S] (already scaled) -> attention probabilities, with bias, mask and dropout. */
  #probabilities(scores: tf.Tensor, qPositions: Int32Array, kPositions: Int32Array): tf.Tensor {
    let s = scores;
    if (this.#positional.scoreBias) s = s.add(this.#positional.scoreBias(this.numHeads, qPositions, kPositions)); // + [H, T, S]
    s = s.add(causalMask(qPositions, kPositions)); // + [T, S]
    return this.attnDropout.forward(tf.softmax(s, -1)); // [B, H, T, S]
  }

  /** The training form: per-head keys and values decompressed from the latents. */
  #expanded(x: tf.Tensor, positions: Int32Array): tf.Tensor {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const V = this.vHeadDim;
    const { qNope, qRope, latent, kRope: kRopeRaw } = this.#project(x, positions);
    const kRope = this.#rotateKeys(kRopeRaw, positions); // [B, T, qkRope]
    const kv = this.kv_b_proj.forward(latent).reshape([B, T, H, this.qkNopeHeadDim + V]); // [B, T, H, qkNope + V]
    const [kNope, v] = splitLast(kv, this.qkNopeHeadDim); // [B, T, H, qkNope], [B, T, H, V]
    const qn = qNope.transpose([0, 2, 1, 3]); // [B, H, T, qkNope]
    const kn = kNope.transpose([0, 2, 1, 3]); // [B, H, T, qkNope]
    // q.k = q_nope.k_nope + q_rope.k_rope; the rope key is shared, so heads fold into the rows
    // instead of broadcasting the key to every head.
    const qr = qRope.transpose([0, 2, 1, 3]).reshape([B, H * T, this.qkRopeHeadDim]); // [B, H*T, qkRope]
    const ropeScores = tf.matMul(qr, kRope, false, true).reshape([B, H, T, T]); // [B, H, T, T]
    const scores = tf.matMul(qn, kn, false, true).add(ropeScores).mul(this.softmaxScale); // [B, H, T, T]
    const p = this.#probabilities(scores, positions, positions);
    const o = tf.matMul(p, v.transpose([0, 2, 1, 3])); // [B, H, T, V]
    const merged = o.transpose([0, 2, 1, 3]).reshape([B, T, H * V]); // [B, T, H*V]
    return this.o_proj.forward(merged); // [B, T, dModel]
  }

  /**
   * The decoding form over the cached latents (call inside a tidy). Returns the output and the
   * extended cache tensors (latent, rope keys as cached) with their positions.
   */
  #absorbed(
    x: tf.Tensor,
    positions: Int32Array,
    cache: MlaCache,
  ): { y: tf.Tensor; latent: tf.Tensor; kRope: tf.Tensor; positions: Int32Array } {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const R = this.kvLoraRank;
    const V = this.vHeadDim;
    const nope = this.qkNopeHeadDim;
    const proj = this.#project(x, positions);
    const kPositions = concatPositions(cache.positions, positions);
    const S = kPositions.length;
    const latent = cache.latent ? tf.concat([cache.latent, proj.latent], 1) : proj.latent; // [B, S, R]
    // What the cache keeps (see MlaCache.kRope) and the rotated keys the scores use: [B, S, qkRope] each.
    let kRopeCached: tf.Tensor;
    let kRope: tf.Tensor;
    if (this.#positional.lengthDependent) {
      kRopeCached = cache.kRope ? tf.concat([cache.kRope, proj.kRope], 1) : proj.kRope;
      kRope = this.#rotateKeys(kRopeCached, kPositions);
    } else {
      const rotated = this.#rotateKeys(proj.kRope, positions);
      kRopeCached = kRope = cache.kRope ? tf.concat([cache.kRope, rotated], 1) : rotated;
    }

    // kv_b_proj.weight [R, H*(qkNope+V)] holds per head [W_uk_h | W_uv_h].
    const w = this.kv_b_proj.weight.reshape([R, H, nope + V]); // [R, H, qkNope + V]
    const [wUk, wUv] = splitLast(w, nope); // [R, H, qkNope], [R, H, V]
    // Absorb W_uk into the query: q_nope_h W_uk_h^T is head h's query against the latent.
    const qn = proj.qNope.transpose([2, 0, 1, 3]).reshape([H, B * T, nope]); // [H, B*T, qkNope]
    const qLatent = tf
      .matMul(qn, wUk.transpose([1, 2, 0])) // [H, B*T, qkNope] x [H, qkNope, R] -> [H, B*T, R]
      .reshape([H, B, T, R]) // [H, B, T, R]
      .transpose([1, 0, 2, 3]) // [B, H, T, R]
      .reshape([B, H * T, R]); // [B, H*T, R]
    const qr = proj.qRope.transpose([0, 2, 1, 3]).reshape([B, H * T, this.qkRopeHeadDim]); // [B, H*T, qkRope]
    const scores = tf
      .matMul(qLatent, latent, false, true) // [B, H*T, S]
      .add(tf.matMul(qr, kRope, false, true)) // [B, H*T, S]
      .mul(this.softmaxScale)
      .reshape([B, H, T, S]); // [B, H, T, S]
    const p = this.#probabilities(scores, positions, kPositions);
    // The weighted sum of latents, then W_uv per head.
    const oLatent = tf
      .matMul(p.reshape([B, H * T, S]), latent) // [B, H*T, R]
      .reshape([B, H, T, R]) // [B, H, T, R]
      .transpose([1, 0, 2, 3]) // [H, B, T, R]
      .reshape([H, B * T, R]); // [H, B*T, R]
    const o = tf
      .matMul(oLatent, wUv.transpose([1, 0, 2])) // [H, B*T, R] x [H, R, V] -> [H, B*T, V]
      .reshape([H, B, T, V]) // [H, B, T, V]
      .transpose([1, 2, 0, 3]) // [B, T, H, V]
      .reshape([B, T, H * V]); // [B, T, H*V]
    return { y: this.o_proj.forward(o), latent, kRope: kRopeCached, positions: kPositions };
  }
}

/** Splits the last axis into its first `n` entries and the rest. */
function splitLast(t: tf.Tensor, n: number): [tf.Tensor, tf.Tensor] {
  const [a, b] = tf.split(t, [n, t.shape[t.rank - 1]! - n], -1);
  return [a!, b!];
}

function concatPositions(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
