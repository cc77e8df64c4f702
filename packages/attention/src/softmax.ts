import { Module, TsformerError, checkShape, tf } from '@tsformer/core';
import { Dropout, Linear } from '@tsformer/layers';
import type { PositionalEncoding } from '@tsformer/positional';
import { z } from 'zod';
import type { Attention, AttentionCache, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';

export const softmaxAttentionSchema = z
  .object({
    type: z.literal('mha'),
    /** Number of query heads. */
    numHeads: z.number().int().positive(),
    /** Number of key/value heads: = numHeads for MHA, 1 for MQA, a divisor in between for GQA. Default numHeads. */
    numKvHeads: z.number().int().positive().optional(),
    /** Per-head dim. Default dModel / numHeads. */
    headDim: z.number().int().positive().optional(),
    /** Bias on q/k/v/o projections. Default false. */
    bias: z.boolean().default(false),
    /** Dropout on attention probabilities (training only). Default 0. */
    dropout: z.number().min(0).max(0.99).default(0),
    /** Score normalizer. Only `softmax` in this release. */
    score: z.enum(['softmax']).default('softmax'),
  })
  .strict();
export type SoftmaxAttentionConfig = z.infer<typeof softmaxAttentionSchema>;

/** The KV cache: keys (already rotated) and values of every absorbed token. */
export interface KvCache extends AttentionCache {
  readonly kind: 'kv';
  /** [B, S, Hkv, D], or null before the first token. */
  readonly k: tf.Tensor | null;
  readonly v: tf.Tensor | null;
  /** Absolute positions of the S cached tokens. */
  readonly positions: Int32Array;
}

const NEG = -1e9;

/**
 * The softmax attention shell: MHA, GQA and MQA are one class (through `numKvHeads`). Positions
 * arrive as a `PositionalEncoding` (rotation and/or score bias); causal masking comes from the
 * absolute positions of queries and keys, so prefill, decode and training share one path.
 */
export class SoftmaxAttention extends Module implements Attention {
  readonly type = 'mha';
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly attnDropout: Dropout;
  readonly #positional: PositionalEncoding;

  constructor(cfg: SoftmaxAttentionConfig, deps: AttentionDeps) {
    super();
    this.numHeads = cfg.numHeads;
    this.numKvHeads = cfg.numKvHeads ?? cfg.numHeads;
    if (this.numHeads % this.numKvHeads !== 0) {
      throw new TsformerError(`attention.numKvHeads (${this.numKvHeads}) must divide attention.numHeads (${this.numHeads})`, 'config');
    }
    this.headDim = cfg.headDim ?? deps.dModel / cfg.numHeads;
    if (!Number.isInteger(this.headDim)) {
      throw new TsformerError(`attention.numHeads (${cfg.numHeads}) must divide dModel (${deps.dModel}), or set attention.headDim`, 'config');
    }
    const { dModel, rng } = deps;
    const qDim = this.numHeads * this.headDim;
    const kvDim = this.numKvHeads * this.headDim;
    this.q_proj = this.addModule('q_proj', new Linear(dModel, qDim, rng, { bias: cfg.bias }));
    this.k_proj = this.addModule('k_proj', new Linear(dModel, kvDim, rng, { bias: cfg.bias }));
    this.v_proj = this.addModule('v_proj', new Linear(dModel, kvDim, rng, { bias: cfg.bias }));
    this.o_proj = this.addModule('o_proj', new Linear(qDim, dModel, rng, { bias: cfg.bias, std: deps.outStd }));
    this.attnDropout = this.addModule('attn_dropout', new Dropout(cfg.dropout, rng));
    this.#positional = deps.positional;
  }

  initCache(): KvCache {
    return { kind: 'kv', length: 0, k: null, v: null, positions: new Int32Array(0), tensors: [] };
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { B, T } = checkShape('attention input', x, ['B', 'T', this.q_proj.inFeatures]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    const cache = ctx.cache as KvCache | undefined;
    if (cache && cache.kind !== 'kv') throw new TsformerError(`mha attention got a "${cache.kind}" cache`, 'shape');
    const H = this.numHeads;
    const Hkv = this.numKvHeads;
    const D = this.headDim;
    const G = H / Hkv; // query heads per kv head

    const kPositions = cache ? concatPositions(cache.positions, ctx.positions) : ctx.positions;
    const S = kPositions.length;

    let newCache: KvCache | undefined;
    const y = tf.tidy(() => {
      let q = this.q_proj.forward(x).reshape([B, T, H, D]); // [B, T, H, D]
      let k = this.k_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
      let v = this.v_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
      if (this.#positional.rotate) {
        q = this.#positional.rotate(q, ctx.positions);
        k = this.#positional.rotate(k, ctx.positions);
      }
      if (cache) {
        if (cache.k && cache.v) {
          k = tf.concat([cache.k, k], 1); // [B, S, Hkv, D]
          v = tf.concat([cache.v, v], 1);
        }
        newCache = { kind: 'kv', length: S, k: tf.keep(k), v: tf.keep(v), positions: kPositions, tensors: [k, v] };
      }

      // Group query heads by their kv head so K/V are never repeated in memory:
      // head h = kv * G + g.
      const qg = q.transpose([0, 2, 1, 3]).reshape([B, Hkv, G * T, D]); // [B, Hkv, G*T, D]
      const kh = k.transpose([0, 2, 1, 3]); // [B, Hkv, S, D]
      const vh = v.transpose([0, 2, 1, 3]); // [B, Hkv, S, D]
      let scores = tf.matMul(qg, kh, false, true).mul(1 / Math.sqrt(D)); // [B, Hkv, G*T, S]
      scores = scores.reshape([B, H, T, S]); // [B, H, T, S]
      if (this.#positional.scoreBias) {
        scores = scores.add(this.#positional.scoreBias(H, ctx.positions, kPositions)); // + [H, T, S]
      }
      scores = scores.add(causalMask(ctx.positions, kPositions)); // + [T, S]
      let p = tf.softmax(scores, -1); // [B, H, T, S]
      p = this.attnDropout.forward(p);
      const o = tf.matMul(p.reshape([B, Hkv, G * T, S]), vh); // [B, Hkv, G*T, D]
      const merged = o.reshape([B, H, T, D]).transpose([0, 2, 1, 3]).reshape([B, T, H * D]); // [B, T, H*D]
      return this.o_proj.forward(merged); // [B, T, dModel]
    });
    return newCache ? { y, cache: newCache } : { y };
  }
}

function concatPositions(a: Int32Array, b: Int32Array): Int32Array {
  const out = new Int32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Additive mask [T, S]: 0 where key position <= query position, -1e9 elsewhere. */
export function causalMask(qPositions: Int32Array, kPositions: Int32Array): tf.Tensor {
  const T = qPositions.length;
  const S = kPositions.length;
  const m = new Float32Array(T * S);
  for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) if (kPositions[j]! > qPositions[i]!) m[i * S + j] = NEG;
  return tf.tensor(m, [T, S]);
}
