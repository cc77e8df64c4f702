import { Module, TsformerError, checkShape, tf } from '@tsformer/core';
import { GatedRMSNorm, Linear, ShortConv1d } from '@tsformer/layers';
import { glaChunk, glaStep } from '@tsformer/ops';
import { z } from 'zod';
import type { Attention, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';
import { posInt, posNumber } from './fields.js';
import { convolveQkv, keepRecurrentCache, type ConvStates, type RecurrentCache } from './recurrent.js';

export const glaAttentionSchema = z
  .object({
    type: z.literal('gla'),
    /** Number of heads. dModel * expandK and dModel * expandV must be multiples of it. */
    numHeads: posInt('numHeads'),
    /** Total key width (all heads) as a fraction of dModel. Default 0.5. */
    expandK: posNumber('expandK').default(0.5),
    /** Total value width (all heads) as a fraction of dModel. Default 1. */
    expandV: posNumber('expandV').default(1),
    /** Rank of the low-rank forget-gate projection x W_g1 W_g2 + b. Default 16. */
    gateLowRank: posInt('gateLowRank').default(16),
    /** The log gates logsigmoid(.) are divided by this (slower forgetting). Default 16. */
    gateLogitNormalizer: posNumber('gateLogitNormalizer').default(16),
    /** Causal depthwise short convolution (with silu) on q, k and v. Default false. */
    useShortConv: z.boolean().default(false),
    /** Taps of the short convolutions. Default 4. */
    convSize: posInt('convSize').default(4),
    /** Chunk length of the chunked training form. Default 64. */
    chunkSize: posInt('chunkSize').default(64),
    /** Epsilon of the per-head gated output RMSNorm. Default 1e-5. */
    normEps: posNumber('normEps').default(1e-5),
  })
  .strict();
export type GlaAttentionConfig = z.infer<typeof glaAttentionSchema>;

/** The short-convolution states of q, k and v: [B, convSize-1, H*K] (q, k) and [B, convSize-1, H*V] (v). */
export type GlaConvStates = ConvStates;

/**
 * The recurrent decoding cache: a constant-size state [B, H, K, V], whatever the number of tokens
 * absorbed (numHeads * K * V numbers per sequence and layer, plus the short-conv tails when enabled).
 */
export interface GlaCache extends RecurrentCache {
  readonly kind: 'gla';
}

/** The per-token inputs of the GLA op, before the recurrence. */
export interface GlaProjected {
  /** [B, T, H, K] */
  q: tf.Tensor;
  /** [B, T, H, K] */
  k: tf.Tensor;
  /** [B, T, H, V] */
  v: tf.Tensor;
  /** Log forget gates (<= 0): [B, T, H, K] */
  g: tf.Tensor;
  /** Next short-conv states (when short convolutions are on). */
  conv?: ConvStates;
}

/**
 * Gated linear attention (Yang et al., 2023), the layer around the `@tsformer/ops` GLA op:
 *
 *   q = x W_q, k = x W_k  [B, T, H, K];  v = x W_v  [B, T, H, V]    (optionally short-conv + silu)
 *   g = logsigmoid(x W_gk_a W_gk_b + b) / gateLogitNormalizer        [B, T, H, K], log forget gates
 *   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
 *   y = concat_h(GatedRMSNorm(o_h, gate = (x W_g)_h)) W_o
 *
 * Parameter names follow flash-linear-attention (`q_proj`, `k_proj`, `v_proj`, `g_proj` the output
 * gate, `gk_proj_a`/`gk_proj_b` for fla's `gk_proj.0`/`gk_proj.1`, `g_norm`, `o_proj`, and
 * `q_conv1d`/`k_conv1d`/`v_conv1d`).
 *
 * Position enters only through the recurrence: GLA uses no positional encoding, so
 * `deps.positional` and `ctx.positions` (beyond their count) are ignored.
 *
 * Without a cache the chunked form runs over the whole sequence. With a cache, one token runs one
 * recurrent step (`glaStep`) and several tokens (prefill) the chunked form from the cached state.
 */
export class GlaAttention extends Module implements Attention {
  readonly type = 'gla';
  readonly dModel: number;
  readonly numHeads: number;
  /** Per-head key width: dModel * expandK / numHeads. */
  readonly headKDim: number;
  /** Per-head value width: dModel * expandV / numHeads. */
  readonly headVDim: number;
  readonly gateLogitNormalizer: number;
  readonly chunkSize: number;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  /** Output gate: x -> [B, T, H*V]. */
  readonly g_proj: Linear;
  /** Low-rank forget gate, first factor: x -> [B, T, gateLowRank]. */
  readonly gk_proj_a: Linear;
  /** Low-rank forget gate, second factor with bias: -> [B, T, H*K]. */
  readonly gk_proj_b: Linear;
  readonly q_conv1d?: ShortConv1d;
  readonly k_conv1d?: ShortConv1d;
  readonly v_conv1d?: ShortConv1d;
  /** Per-head gated RMSNorm over V. */
  readonly g_norm: GatedRMSNorm;
  readonly o_proj: Linear;

  constructor(cfg: GlaAttentionConfig, deps: AttentionDeps) {
    super();
    const { dModel, rng } = deps;
    const H = cfg.numHeads;
    const keyDim = dModel * cfg.expandK;
    const valueDim = dModel * cfg.expandV;
    if (!Number.isInteger(keyDim) || keyDim % H !== 0) {
      throw new TsformerError(`attention.expandK: dModel (${dModel}) * expandK (${cfg.expandK}) = ${keyDim} must be a multiple of attention.numHeads (${H})`, 'config');
    }
    if (!Number.isInteger(valueDim) || valueDim % H !== 0) {
      throw new TsformerError(`attention.expandV: dModel (${dModel}) * expandV (${cfg.expandV}) = ${valueDim} must be a multiple of attention.numHeads (${H})`, 'config');
    }
    this.dModel = dModel;
    this.numHeads = H;
    this.headKDim = keyDim / H;
    this.headVDim = valueDim / H;
    this.gateLogitNormalizer = cfg.gateLogitNormalizer;
    this.chunkSize = cfg.chunkSize;
    this.q_proj = this.addModule('q_proj', new Linear(dModel, keyDim, rng));
    this.k_proj = this.addModule('k_proj', new Linear(dModel, keyDim, rng));
    this.v_proj = this.addModule('v_proj', new Linear(dModel, valueDim, rng));
    this.g_proj = this.addModule('g_proj', new Linear(dModel, valueDim, rng));
    this.gk_proj_a = this.addModule('gk_proj_a', new Linear(dModel, cfg.gateLowRank, rng));
    this.gk_proj_b = this.addModule('gk_proj_b', new Linear(cfg.gateLowRank, keyDim, rng, { bias: true }));
    if (cfg.useShortConv) {
      const opts = { kernelSize: cfg.convSize, activation: 'silu' as const };
      this.q_conv1d = this.addModule('q_conv1d', new ShortConv1d(keyDim, rng, opts));
      this.k_conv1d = this.addModule('k_conv1d', new ShortConv1d(keyDim, rng, opts));
      this.v_conv1d = this.addModule('v_conv1d', new ShortConv1d(valueDim, rng, opts));
    }
    this.g_norm = this.addModule('g_norm', new GatedRMSNorm(this.headVDim, cfg.normEps));
    this.o_proj = this.addModule('o_proj', new Linear(valueDim, dModel, rng, { std: deps.outStd }));
  }

  initCache(): GlaCache {
    return { kind: 'gla', length: 0, state: null, conv: null, tensors: [] };
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { T } = checkShape('attention input', x, ['B', 'T', this.dModel]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    if (!ctx.cache) {
      return {
        y: tf.tidy(() => {
          const p = this.project(x);
          const { o } = glaChunk(p.q, p.k, p.v, p.g, { chunkSize: this.chunkSize });
          return this.output(x, o);
        }),
      };
    }
    if (ctx.cache.kind !== 'gla') throw new TsformerError(`gla attention got a "${ctx.cache.kind}" cache`, 'shape');
    const cache = ctx.cache as GlaCache;
    let newCache: GlaCache | undefined;
    const y = tf.tidy(() => {
      const p = this.project(x, cache.conv ?? undefined);
      let o: tf.Tensor;
      let state: tf.Tensor;
      if (T === 1) {
        const [B] = x.shape as [number];
        const prev = cache.state ?? tf.zeros([B, this.numHeads, this.headKDim, this.headVDim]);
        ({ o, state } = glaStep(p.q, p.k, p.v, p.g, prev));
      } else {
        const r = glaChunk(p.q, p.k, p.v, p.g, { chunkSize: this.chunkSize, initialState: cache.state ?? undefined, outputFinalState: true });
        o = r.o;
        state = r.finalState!;
      }
      newCache = keepRecurrentCache('gla', cache.length + T, state, p.conv);
      return this.output(x, o);
    });
    return { y, cache: newCache! };
  }

  /**
   * q, k, v and the log forget gates of x [B, T, D], the short convolutions continuing from
   * `conv` when given. Call inside a tidy. Public so tests can build references from it.
   */
  project(x: tf.Tensor, conv?: GlaConvStates): GlaProjected {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const K = this.headKDim;
    const V = this.headVDim;
    let q = this.q_proj.forward(x); // [B, T, H*K]
    let k = this.k_proj.forward(x); // [B, T, H*K]
    let v = this.v_proj.forward(x); // [B, T, H*V]
    const convolved = convolveQkv({ q: this.q_conv1d, k: this.k_conv1d, v: this.v_conv1d }, q, k, v, conv);
    [q, k, v] = [convolved.q, convolved.k, convolved.v];
    const next = convolved.next;
    const gk = this.gk_proj_b.forward(this.gk_proj_a.forward(x)); // [B, T, H*K]
    // logsigmoid(z) = -softplus(-z). (Not tf.logSigmoid: its gradient reads the forward's input after
    // tfjs has released it, which fails on the wasm backend.)
    const g = tf.softplus(gk.neg()).neg().div(this.gateLogitNormalizer); // [B, T, H*K], <= 0
    const out: GlaProjected = {
      q: q.reshape([B, T, H, K]),
      k: k.reshape([B, T, H, K]),
      v: v.reshape([B, T, H, V]),
      g: g.reshape([B, T, H, K]),
    };
    if (next) out.conv = next;
    return out;
  }

  /** The GLA outputs o [B, T, H, V] -> per-head gated norm (gate x W_g) -> o_proj: [B, T, D]. Call inside a tidy. */
  output(x: tf.Tensor, o: tf.Tensor): tf.Tensor {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const V = this.headVDim;
    const gate = this.g_proj.forward(x).reshape([B, T, H, V]); // [B, T, H, V]
    const normed = this.g_norm.forward(o, gate).reshape([B, T, H * V]); // [B, T, H*V]
    return this.o_proj.forward(normed); // [B, T, D]
  }
}
