import { Module, TsformerError, checkShape, tf, type Rng } from '@tsformer/core';
import { Linear, RMSNorm } from '@tsformer/layers';
import type { Attention, AttentionCache, AttentionContext, AttentionOutput, SoftmaxAttention } from '@tsformer/attention';
import type { PositionalEncoding } from '@tsformer/positional';
import { z } from 'zod';
import { HedgehogFeatureMap } from './feature-map.js';
import { absorbIntoState, hybridAttention, hybridWeights, type HybridInputs, type HybridPath } from './hybrid.js';
import { asSoftmaxTeacher, expandKvHeads, softmaxOutput } from './teacher.js';

export const lolcatsConfigSchema = z
  .object({
    type: z.literal('lolcats'),
    /** Feature dim f of each Hedgehog map (phi has 2f features). Default 64. */
    featureDim: z.number().int().positive().default(64),
    /** Sliding-window length w: query i scores keys i-w+1..i with exp scores, older keys linearly. Default 64. */
    window: z.number().int().positive().default(64),
    /** Init of the feature maps' projections: `kaiming` (default) or `identity` (see HedgehogOptions). */
    featureMapInit: z.enum(['kaiming', 'identity']).default('kaiming'),
    /** gamma = sigmoid(window factor) at init, the same for every head. Default 0.1. */
    windowWeightInit: z.number().gt(0).lt(1).default(0.1),
  })
  .strict();
export type LolcatsConfig = z.infer<typeof lolcatsConfigSchema>;
export type LolcatsConfigInput = z.input<typeof lolcatsConfigSchema>;

/**
 * The decoding cache: the last (at most w) keys, rotated, and values, in kv-head layout, plus the
 * linear state of every older token (kv = sum phi_k(k) v^T [B, H, F, D], z = sum phi_k(k) [B, H, F]).
 * Its size is constant in the number of tokens absorbed.
 */
export interface LolcatsCache extends AttentionCache {
  readonly kind: 'lolcats';
  /** [B, P, Hkv, D] with P = min(w, length), or null before the first token. */
  readonly k: tf.Tensor | null;
  readonly v: tf.Tensor | null;
  /** [B, H, F, D] and [B, H, F], or null while no token has left the window. */
  readonly kv: tf.Tensor | null;
  readonly z: tf.Tensor | null;
}

/** The modules a LoLCATs layer computes q, k, v and the output with (the teacher's, or copies of them). */
export interface LolcatsProjections {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm?: RMSNorm;
  k_norm?: RMSNorm;
  g_proj?: Linear;
}

export interface LolcatsShape {
  dModel: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * LoLCATs attention (Zhang et al., 2024): the teacher's projections and RoPE, a Hedgehog feature
 * map per head for q and one for k (applied after RoPE, on keys expanded to the query heads), and
 * the sliding-window + linear hybrid of `hybrid.ts` with gamma_h = sigmoid(window_factors_h).
 *
 *   q, k, v = teacher projections (q/k norms, rotation);   fq, fk = phi_q(q), phi_k(k)
 *   o = hybrid(q, k, v, fq, fk, gamma, w);   y = o_proj(o [* sigmoid(x W_g)])
 *
 * Parameters: the projections under their teacher names, `feature_map_q.weight`,
 * `feature_map_k.weight` [H, D, f] and `window_factors` [H]. The window runs over token indices:
 * positions are expected to be consecutive (as the model gives them).
 */
export class LolcatsAttention extends Module implements Attention {
  readonly type = 'lolcats';
  readonly dModel: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly window: number;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly q_norm?: RMSNorm;
  readonly k_norm?: RMSNorm;
  readonly g_proj?: Linear;
  readonly feature_map_q: HedgehogFeatureMap;
  readonly feature_map_k: HedgehogFeatureMap;
  /** Per-head window logits [H]: gamma = sigmoid(window_factors). */
  readonly window_factors: tf.Variable;
  /** Which hybrid algorithm the forward uses (tests pin it). */
  path: HybridPath = 'auto';
  readonly #positional: PositionalEncoding;

  constructor(cfg: LolcatsConfig, shape: LolcatsShape, projections: LolcatsProjections, positional: PositionalEncoding, rng: Rng) {
    super();
    const { dModel, numHeads: H, numKvHeads: Hkv, headDim: D } = shape;
    if (H % Hkv !== 0) throw new TsformerError(`lolcats: numKvHeads (${Hkv}) must divide numHeads (${H})`, 'config');
    if (positional.scoreBias) throw new TsformerError(`lolcats: a score-bias positional encoding (${positional.type}) cannot enter the linear part; use RoPE or none`, 'config');
    if (positional.lengthDependent) throw new TsformerError(`lolcats: a length-dependent rotation (dynamic NTK) does not fit a running state`, 'config');
    const expectShape = (name: string, lin: Linear, inF: number, outF: number) => {
      if (lin.inFeatures !== inF || lin.outFeatures !== outF) {
        throw new TsformerError(`lolcats: ${name} is ${lin.inFeatures} -> ${lin.outFeatures}, expected ${inF} -> ${outF}`, 'shape');
      }
    };
    expectShape('q_proj', projections.q_proj, dModel, H * D);
    expectShape('k_proj', projections.k_proj, dModel, Hkv * D);
    expectShape('v_proj', projections.v_proj, dModel, Hkv * D);
    expectShape('o_proj', projections.o_proj, H * D, dModel);
    this.dModel = dModel;
    this.numHeads = H;
    this.numKvHeads = Hkv;
    this.headDim = D;
    this.window = cfg.window;
    this.q_proj = this.addModule('q_proj', projections.q_proj);
    this.k_proj = this.addModule('k_proj', projections.k_proj);
    this.v_proj = this.addModule('v_proj', projections.v_proj);
    this.o_proj = this.addModule('o_proj', projections.o_proj);
    if (projections.g_proj) this.g_proj = this.addModule('g_proj', projections.g_proj);
    if (projections.q_norm && projections.k_norm) {
      this.q_norm = this.addModule('q_norm', projections.q_norm);
      this.k_norm = this.addModule('k_norm', projections.k_norm);
    }
    const fmOpts = { featureDim: cfg.featureDim, init: cfg.featureMapInit };
    this.feature_map_q = this.addModule('feature_map_q', new HedgehogFeatureMap(H, D, rng, fmOpts));
    this.feature_map_k = this.addModule('feature_map_k', new HedgehogFeatureMap(H, D, rng, fmOpts));
    const logit = Math.log(cfg.windowWeightInit / (1 - cfg.windowWeightInit));
    this.window_factors = this.addParam('window_factors', tf.fill([H], logit), { decay: false });
    this.#positional = positional;
  }

  /**
   * A LoLCATs layer from a softmax teacher layer. `share: true` registers the teacher's own
   * projection modules (no copy: whatever changes them changes the teacher); `false` (default)
   * copies their weights into new modules. The positional encoding is the one the teacher's model
   * built for that layer.
   */
  static fromTeacher(teacher: Attention, positional: PositionalEncoding, cfg: LolcatsConfigInput, rng: Rng, opts: { share?: boolean } = {}): LolcatsAttention {
    const t = asSoftmaxTeacher(teacher);
    const parsed = lolcatsConfigSchema.parse(cfg);
    const projections: LolcatsProjections = opts.share
      ? { q_proj: t.q_proj, k_proj: t.k_proj, v_proj: t.v_proj, o_proj: t.o_proj, q_norm: t.q_norm, k_norm: t.k_norm, g_proj: t.g_proj }
      : {
          q_proj: copyLinear(t.q_proj, rng),
          k_proj: copyLinear(t.k_proj, rng),
          v_proj: copyLinear(t.v_proj, rng),
          o_proj: copyLinear(t.o_proj, rng),
          q_norm: t.q_norm && copyNorm(t.q_norm),
          k_norm: t.k_norm && copyNorm(t.k_norm),
          g_proj: t.g_proj && copyLinear(t.g_proj, rng),
        };
    const shape = { dModel: t.q_proj.inFeatures, numHeads: t.numHeads, numKvHeads: t.numKvHeads, headDim: t.headDim };
    return new LolcatsAttention(parsed, shape, projections, positional, rng);
  }

  /** gamma [H] = sigmoid(window_factors) */
  gamma(): tf.Tensor {
    return tf.sigmoid(this.window_factors);
  }

  initCache(): LolcatsCache {
    return { kind: 'lolcats', length: 0, k: null, v: null, kv: null, z: null, tensors: [] };
  }

  /** q [B, T, H, D] and k, v [B, T, Hkv, D]: projections, q/k norms, rotation. Call inside a tidy. */
  project(x: tf.Tensor, positions: Int32Array): { q: tf.Tensor; k: tf.Tensor; v: tf.Tensor } {
    const [B, T] = x.shape as [number, number, number];
    const D = this.headDim;
    let q = this.q_proj.forward(x).reshape([B, T, this.numHeads, D]); // [B, T, H, D]
    let k = this.k_proj.forward(x).reshape([B, T, this.numKvHeads, D]); // [B, T, Hkv, D]
    const v = this.v_proj.forward(x).reshape([B, T, this.numKvHeads, D]); // [B, T, Hkv, D]
    if (this.q_norm && this.k_norm) {
      q = this.q_norm.forward(q);
      k = this.k_norm.forward(k);
    }
    if (this.#positional.rotate) {
      q = this.#positional.rotate(q, positions);
      k = this.#positional.rotate(k, positions);
    }
    return { q, k, v };
  }

  /** The hybrid's inputs for queries q and keys k, v [B, S, Hkv, D] (cache prefix included). Call inside a tidy. */
  #inputs(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): HybridInputs {
    const kh = expandKvHeads(k, this.numHeads); // [B, S, H, D]
    return {
      q,
      k: kh,
      v: expandKvHeads(v, this.numHeads), // [B, S, H, D]
      fq: this.feature_map_q.forward(q), // [B, T, H, 2f]
      fk: this.feature_map_k.forward(kh), // [B, S, H, 2f]
      gamma: this.gamma(),
      window: this.window,
    };
  }

  /** The per-head output before the output gate and o_proj: x [B, T, dModel] -> [B, T, H, D]. No cache. */
  heads(x: tf.Tensor, positions: Int32Array): tf.Tensor {
    return tf.tidy(() => {
      const { q, k, v } = this.project(x, positions);
      return hybridAttention(this.#inputs(q, k, v), this.path);
    });
  }

  /** The normalized hybrid attention weights [B, H, T, T] (dense; for the attention-map loss). */
  weights(x: tf.Tensor, positions: Int32Array): tf.Tensor {
    return tf.tidy(() => {
      const { q, k, v } = this.project(x, positions);
      return hybridWeights(this.#inputs(q, k, v));
    });
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { B, T } = checkShape('attention input', x, ['B', 'T', this.dModel]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    if (!ctx.cache) return { y: tf.tidy(() => softmaxOutput(this, x, this.heads(x, ctx.positions))) };
    const cache = ctx.cache as LolcatsCache;
    if (cache.kind !== 'lolcats') throw new TsformerError(`lolcats attention got a "${cache.kind}" cache`, 'shape');
    const Hkv = this.numKvHeads;
    const D = this.headDim;
    let newCache: LolcatsCache | undefined;
    const y = tf.tidy(() => {
      const p = this.project(x, ctx.positions);
      const k = cache.k ? tf.concat([cache.k, p.k], 1) : p.k; // [B, S, Hkv, D]
      const v = cache.v ? tf.concat([cache.v, p.v], 1) : p.v; // [B, S, Hkv, D]
      const S = k.shape[1]!;
      const inputs = this.#inputs(p.q, k, v);
      const state = cache.kv && cache.z ? { kv: cache.kv, z: cache.z } : undefined;
      if (state) inputs.state = state;
      const o = hybridAttention(inputs, this.path); // [B, T, H, D]
      // Keep the last w keys; the older ones join the linear state.
      const kept = Math.min(S, this.window);
      const leaving = S - kept;
      const kc = k.slice([0, leaving, 0, 0], [B, kept, Hkv, D]); // [B, kept, Hkv, D]
      const vc = v.slice([0, leaving, 0, 0], [B, kept, Hkv, D]); // [B, kept, Hkv, D]
      let kv: tf.Tensor | null = null;
      let z: tf.Tensor | null = null;
      if (leaving > 0 || state) ({ kv, z } = absorbIntoState(inputs.fk, inputs.v, leaving, state));
      const tensors = [kc, vc, ...(kv && z ? [kv, z] : [])];
      tensors.forEach((t) => tf.keep(t));
      newCache = { kind: 'lolcats', length: cache.length + T, k: kc, v: vc, kv, z, tensors };
      return softmaxOutput(this, x, o);
    });
    return { y, cache: newCache! };
  }
}

/** A new Linear holding a copy of `src`'s weight (and bias). */
export function copyLinear(src: Linear, rng: Rng): Linear {
  const out = new Linear(src.inFeatures, src.outFeatures, rng, { bias: src.bias !== undefined, std: 0 });
  out.weight.assign(src.weight);
  if (src.bias && out.bias) out.bias.assign(src.bias);
  return out;
}

function copyNorm(src: RMSNorm): RMSNorm {
  const out = new RMSNorm(src.weight.shape[0]!, src.eps);
  out.weight.assign(src.weight);
  return out;
}
