import { Module, TsformerError, checkShape, fused, tf } from '@tsformer/core';
import { Dropout, Linear, RMSNorm } from '@tsformer/layers';
import type { PositionalEncoding } from '@tsformer/positional';
import { z } from 'zod';
import type { Attention, AttentionCache, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';
import { denseAttention, type ScoreSpec } from './softmax-ops.js';
import { bandable, bandedAttention, bandedScoreCount } from './window.js';

export { causalMask, type ScoreSpec } from './softmax-ops.js';

export const softmaxAttentionSchema = z
  .object({
    type: z.literal('mha'),
    /** Number of query heads. */
    numHeads: z.number().int().positive(),
    /** Number of key/value heads: = numHeads for MHA, 1 for MQA, a divisor in between for GQA. Default numHeads. */
    numKvHeads: z.number().int().positive().optional(),
    /** Per-head dim. Default dModel / numHeads. */
    headDim: z.number().int().positive().optional(),
    /** Bias on q/k/v/o (and g) projections. Default false. */
    bias: z.boolean().default(false),
    /** Dropout on attention weights (training only). Default 0. */
    dropout: z.number().min(0).max(0.99).default(0),
    /**
     * Score normalizer. `softmax` (default): weights are a softmax over the visible keys.
     * `sigmoid`: weight sigmoid(q.k/sqrt(D) + bias + sigmoidBias) per visible key, no row normalization.
     */
    score: z.enum(['softmax', 'sigmoid']).default('softmax'),
    /**
     * Sigmoid attention only: the constant added to every score before the sigmoid. Default -ln(n),
     * n = the context length the layer is trained at (`AttentionDeps.contextLength`).
     */
    sigmoidBias: z.number({ error: 'attention.sigmoidBias must be a finite number' }).optional(),
    /**
     * Sliding window: query i sees keys j with pos_i - window < pos_j <= pos_i (itself included),
     * and the KV cache keeps only the last `window` tokens. Default: none (full causal).
     */
    window: z
      .number({ error: 'attention.window must be a positive integer' })
      .int({ error: 'attention.window must be a positive integer' })
      .positive({ error: 'attention.window must be a positive integer' })
      .optional(),
    /** RMSNorm over the head dim on q and on k (gains `q_norm`, `k_norm` shared by heads), before RoPE. Default false. */
    qkNorm: z.boolean().default(false),
    /** Gated attention: y = o_proj(o * sigmoid(x W_g)), per element, with `g_proj` dModel -> H*headDim. Default false. */
    outputGate: z.boolean().default(false),
    /**
     * SWAN-GPT's logit scaling for length extrapolation (meant for global NoPE layers): the logits of
     * the query at position n are multiplied by log_a(a + n) = ln(a + n) / ln(a) (1 at n = 0, growing
     * slowly). `when: inference` (default) applies it only outside training, as in SWAN; `always`
     * trains with it too. Default: off.
     */
    logitScale: z
      .object({
        /** The log base a (> 1), e.g. the training context length. */
        base: z.number().gt(1, { error: 'attention.logitScale.base must be > 1' }),
        /** `inference` (default) or `always`. */
        when: z.enum(['inference', 'always']).default('inference'),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.numKvHeads !== undefined && c.numHeads % c.numKvHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['numKvHeads'], message: `attention.numKvHeads (${c.numKvHeads}) must divide attention.numHeads (${c.numHeads})` });
    }
    if (c.sigmoidBias !== undefined && c.score !== 'sigmoid') {
      ctx.addIssue({ code: 'custom', path: ['sigmoidBias'], message: 'attention.sigmoidBias applies only to score: sigmoid' });
    }
  });
export type SoftmaxAttentionConfig = z.infer<typeof softmaxAttentionSchema>;

/**
 * The KV cache: keys (already rotated) and values of the absorbed tokens. With a sliding window it
 * is a ring buffer of the last `window` tokens (appending drops the oldest), so its memory stays
 * constant; without one it holds every token.
 */
export interface KvCache extends AttentionCache {
  readonly kind: 'kv';
  /** [B, S, Hkv, D] with S <= window when windowed, or null before the first token. */
  readonly k: tf.Tensor | null;
  readonly v: tf.Tensor | null;
  /** Absolute positions of the S cached tokens. (`length` counts every token absorbed, dropped ones too.) */
  readonly positions: Int32Array;
}

/** Which algorithm scores queries against keys: `auto` lets the shell choose. */
export type AttentionPath = 'auto' | 'dense' | 'banded';

/**
 * Attention over positions: q [B, T, H, D], k and v [B, S, Hkv, D] -> o [B, T, H, D].
 * `dense` scores every query against every key ([T, S] per head, the reference). `banded` (sliding
 * window only) scores each block of `window` queries against 2 * window keys, O(T * window).
 * `auto` takes the banded path when it computes fewer scores and the positions allow it.
 */
export function scoreAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  qPositions: Int32Array,
  kPositions: Int32Array,
  spec: ScoreSpec,
  path: AttentionPath = 'auto',
): tf.Tensor {
  const T = qPositions.length;
  const S = kPositions.length;
  if (path === 'auto') {
    const kernel = fusedAttention(qPositions, kPositions, spec);
    const o = kernel?.(q, k, v, { score: spec.score, sigmoidBias: spec.sigmoidBias, window: spec.window, alibiSlopes: spec.alibiSlopes });
    if (o) return o;
  }
  const banded =
    path === 'banded' || (path === 'auto' && spec.window !== undefined && bandedScoreCount(T, spec.window) < T * S && bandable(qPositions, kPositions));
  return banded ? bandedAttention(q, k, v, qPositions, kPositions, spec) : denseAttention(q, k, v, qPositions, kPositions, spec);
}

/**
 * The fused attention kernel of the active backend (webgpu), when it computes exactly what the
 * dense path would: no cache (query and key positions both 0..T-1), no dropout, and a score bias
 * that is ALiBi's (given as slopes) or none.
 */
function fusedAttention(qPositions: Int32Array, kPositions: Int32Array, spec: ScoreSpec) {
  const kernel = fused('attention');
  if (!kernel || spec.dropout || (spec.scoreBias && !spec.alibiSlopes)) return undefined;
  if (qPositions.length !== kPositions.length) return undefined;
  for (let i = 0; i < qPositions.length; i++) if (qPositions[i] !== i || kPositions[i] !== i) return undefined;
  return kernel;
}

/**
 * The softmax attention shell: MHA, GQA and MQA are one class (through `numKvHeads`); sigmoid
 * attention is its other normalizer (`score`), and a sliding window is an argument (`window`).
 * Positions arrive as a `PositionalEncoding` (rotation and/or score bias); masks come from the
 * absolute positions of queries and keys, so prefill, decode and training share one path.
 *
 *   q, k = [RMSNorm per head] (x W_q), (x W_k);  rotate q, k;  v = x W_v
 *   o = attend(q, k, v)                      (softmax or sigmoid weights, causal or windowed)
 *   y = (o [* sigmoid(x W_g)]) W_o
 */
export class SoftmaxAttention extends Module implements Attention {
  readonly type = 'mha';
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly score: 'softmax' | 'sigmoid';
  /** The constant added to scores before the sigmoid (sigmoid attention only). */
  readonly sigmoidBias: number;
  /** Sliding window length, or undefined for full causal attention. */
  readonly window: number | undefined;
  /** SWAN logit scaling, when configured. */
  readonly logitScale: SoftmaxAttentionConfig['logitScale'];
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly g_proj?: Linear;
  readonly q_norm?: RMSNorm;
  readonly k_norm?: RMSNorm;
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
    if (cfg.window !== undefined && !(Number.isInteger(cfg.window) && cfg.window > 0)) {
      throw new TsformerError(`attention.window must be a positive integer, got ${cfg.window}`, 'config');
    }
    this.score = cfg.score ?? 'softmax';
    this.window = cfg.window;
    this.logitScale = cfg.logitScale;
    if (cfg.sigmoidBias !== undefined && !Number.isFinite(cfg.sigmoidBias)) {
      throw new TsformerError(`attention.sigmoidBias must be a finite number, got ${cfg.sigmoidBias}`, 'config');
    }
    if (this.score === 'sigmoid' && cfg.sigmoidBias === undefined && !(deps.contextLength >= 1)) {
      throw new TsformerError(`sigmoid attention's default bias -ln(n) needs a context length >= 1, got ${deps.contextLength}; set attention.sigmoidBias`, 'config');
    }
    this.sigmoidBias = cfg.sigmoidBias ?? (this.score === 'sigmoid' ? -Math.log(deps.contextLength) : 0);
    const { dModel, rng } = deps;
    const qDim = this.numHeads * this.headDim;
    const kvDim = this.numKvHeads * this.headDim;
    this.q_proj = this.addModule('q_proj', new Linear(dModel, qDim, rng, { bias: cfg.bias }));
    this.k_proj = this.addModule('k_proj', new Linear(dModel, kvDim, rng, { bias: cfg.bias }));
    this.v_proj = this.addModule('v_proj', new Linear(dModel, kvDim, rng, { bias: cfg.bias }));
    this.o_proj = this.addModule('o_proj', new Linear(qDim, dModel, rng, { bias: cfg.bias, std: deps.outStd }));
    if (cfg.outputGate) this.g_proj = this.addModule('g_proj', new Linear(dModel, qDim, rng, { bias: cfg.bias }));
    if (cfg.qkNorm) {
      this.q_norm = this.addModule('q_norm', new RMSNorm(this.headDim));
      this.k_norm = this.addModule('k_norm', new RMSNorm(this.headDim));
    }
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

    const kPositions = cache ? concatPositions(cache.positions, ctx.positions) : ctx.positions;
    const S = kPositions.length;
    const kept = this.window === undefined ? S : Math.min(S, this.window); // tokens the new cache holds
    const positional = this.#positional;
    const spec: ScoreSpec = {
      score: this.score,
      sigmoidBias: this.sigmoidBias,
      window: this.window,
      scoreBias: positional.scoreBias ? (qp, kp) => positional.scoreBias!(H, qp, kp) : undefined,
      alibiSlopes: positional.scoreBias && positional.linearBiasSlopes ? positional.linearBiasSlopes(H) : undefined,
      // undefined when it is the identity (eval, or rate 0): then a fused kernel may run
      dropout: this.attnDropout.training && this.attnDropout.rate > 0 ? (p) => this.attnDropout.forward(p) : undefined,
    };

    let newCache: KvCache | undefined;
    const y = tf.tidy(() => {
      let q = this.q_proj.forward(x).reshape([B, T, H, D]); // [B, T, H, D]
      let k = this.k_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
      let v = this.v_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
      if (this.q_norm && this.k_norm) {
        q = this.q_norm.forward(q);
        k = this.k_norm.forward(k);
      }
      if (positional.rotate) {
        q = positional.rotate(q, ctx.positions);
        k = positional.rotate(k, ctx.positions);
      }
      const ls = this.logitScale;
      if (ls && (ls.when === 'always' || !ctx.training)) {
        // scaling q by s(pos_i) scales every logit of query i (and only its own position matters,
        // so decoding still equals the full forward)
        const s = Float32Array.from(ctx.positions, (n) => Math.log(ls.base + n) / Math.log(ls.base));
        q = q.mul(tf.tensor(s, [1, T, 1, 1])); // [B, T, H, D]
      }
      if (cache) {
        if (cache.k && cache.v) {
          k = tf.concat([cache.k, k], 1); // [B, S, Hkv, D]
          v = tf.concat([cache.v, v], 1);
        }
        // Ring buffer: keep the last `window` tokens (all of them without a window).
        const kc = kept < S ? k.slice([0, S - kept, 0, 0], [B, kept, Hkv, D]) : k; // [B, kept, Hkv, D]
        const vc = kept < S ? v.slice([0, S - kept, 0, 0], [B, kept, Hkv, D]) : v;
        newCache = { kind: 'kv', length: cache.length + T, k: tf.keep(kc), v: tf.keep(vc), positions: kPositions.slice(S - kept), tensors: [kc, vc] };
      }
      const o = scoreAttention(q, k, v, ctx.positions, kPositions, spec); // [B, T, H, D]
      let merged = o.reshape([B, T, H * D]); // [B, T, H*D]
      if (this.g_proj) merged = merged.mul(tf.sigmoid(this.g_proj.forward(x)));
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
