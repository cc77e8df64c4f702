import { Module, TsformerError, checkShape, tf } from '@tsformer/core';
import { Linear, RMSNorm, ShortConv1d, l2Normalize } from '@tsformer/layers';
import { pathBlockwise, pathDecodeStep, type PathState } from '@tsformer/ops';
import { z } from 'zod';
import type { Attention, AttentionCache, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';
import { posInt } from './fields.js';

export const pathAttentionSchema = z
  .object({
    type: z.literal('path'),
    /** Number of heads. */
    numHeads: posInt('numHeads'),
    /** Per-head width of q, k, v and w. Default dModel / numHeads. */
    headDim: posInt('headDim').optional(),
    /** Rank of the low-rank projection of the Householder directions w = x W_wa W_wb. Default 32. */
    wLowRank: posInt('wLowRank').default(32),
    /** Taps of the causal short convolution (with silu) on w, before the per-head L2 norm. Default 3. */
    convSize: posInt('convSize').default(3),
    /** PaTH-FoX: a per-head forget gate log f = logsigmoid(x W_f + b) added to the logits. Default false. */
    forgetGate: z.boolean().default(false),
    /** Tokens per block of the blockwise training form. Default 64. */
    blockSize: posInt('blockSize').default(64),
    /** Per-head RMSNorm of q and k. Default false. */
    qkNorm: z.boolean().default(false),
  })
  .strict();
export type PathAttentionConfig = z.infer<typeof pathAttentionSchema>;

/**
 * The decoding cache: like a KV cache it grows by one key and one value per token, but the keys
 * are kept transformed up to the latest token (each new token moves all of them through its
 * Householder transform), plus the short-convolution tail of w and, for PaTH-FoX, each key's
 * gate sum up to the latest token.
 */
export interface PathCache extends AttentionCache {
  readonly kind: 'path';
  /** [B, H, S, D], transformed up to the latest token; null before the first token. */
  readonly keys: tf.Tensor | null;
  /** [B, H, S, D]; null before the first token. */
  readonly values: tf.Tensor | null;
  /** [B, H, S]: sum of log f after each key up to the latest token (PaTH-FoX only, else null). */
  readonly logGates: tf.Tensor | null;
  /** The w short convolution's last convSize-1 inputs, [B, convSize-1, H*D]; null before the first token. */
  readonly conv: tf.Tensor | null;
}

/** The per-token inputs of the PaTH op. */
export interface PathProjected {
  /** [B, T, H, D] */
  q: tf.Tensor;
  /** [B, T, H, D] */
  k: tf.Tensor;
  /** [B, T, H, D] */
  v: tf.Tensor;
  /** Unit Householder directions, [B, T, H, D]. */
  w: tf.Tensor;
  /** In (0, 2), [B, T, H]. */
  beta: tf.Tensor;
  /** Log forget gates (<= 0), [B, T, H]; PaTH-FoX only. */
  g?: tf.Tensor;
  /** The next state of the w short convolution, [B, convSize-1, H*D]. */
  conv: tf.Tensor;
}

/** Numbers the PaTH cache holds per token, layer and sequence: keys and values (2 H D), plus H gate sums with the forget gate. */
export function pathKvNumbersPerToken(cfg: PathAttentionConfig, dModel: number): number {
  const D = cfg.headDim ?? dModel / cfg.numHeads;
  return 2 * cfg.numHeads * D + (cfg.forgetGate ? cfg.numHeads : 0);
}

/**
 * PaTH attention (Yang et al. 2025), the layer around the `@tsformer/ops` PaTH op:
 *
 *   q = x W_q, k = x W_k, v = x W_v                         [B, T, H, D]   (optionally RMSNorm'd per head)
 *   w = l2norm_per_head(silu(conv(x W_wa W_wb)))             [B, T, H, D]
 *   beta = 2 sigmoid(x W_beta + b)                           [B, T, H], in (0, 2)
 *   log f = logsigmoid(x W_f + b)                            [B, T, H], PaTH-FoX only
 *   o_i = sum_{j<=i} softmax_j(q_i^T H_i ... H_{j+1} k_j / sqrt(D) + sum_{s=j+1..i} log f_s) v_j,
 *   H_t = I - beta_t w_t w_t^T;   y = concat_h(o) W_o
 *
 * Parameter names follow flash-linear-attention (`q_proj`, `k_proj`, `v_proj`, `w_proj_a`/`w_proj_b`
 * for fla's `w_proj.0`/`w_proj.1`, `w_conv1d`, `bt_proj`, `g_proj`, `o_proj`; `q_norm`/`k_norm`).
 *
 * PaTH is itself the position encoding (data-dependent): `deps.positional` and `ctx.positions`
 * (beyond their count) are ignored.
 *
 * Without a cache the blockwise form runs over the whole sequence. With a cache, one token runs a
 * decode step (cached keys moved through the token's transform, then softmax attention), and
 * several tokens (prefill) run the blockwise form on top of the cached keys.
 */
export class PathAttention extends Module implements Attention {
  readonly type = 'path';
  readonly dModel: number;
  readonly numHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  readonly convSize: number;
  readonly forgetGate: boolean;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  /** Low-rank w, first factor: x -> [B, T, wLowRank]. */
  readonly w_proj_a: Linear;
  /** Low-rank w, second factor: -> [B, T, H*D]. */
  readonly w_proj_b: Linear;
  readonly w_conv1d: ShortConv1d;
  /** beta logits with bias: x -> [B, T, H]. */
  readonly bt_proj: Linear;
  /** Forget-gate logits with bias: x -> [B, T, H] (PaTH-FoX). */
  readonly g_proj?: Linear;
  readonly q_norm?: RMSNorm;
  readonly k_norm?: RMSNorm;
  readonly o_proj: Linear;

  constructor(cfg: PathAttentionConfig, deps: AttentionDeps) {
    super();
    const { dModel, rng } = deps;
    const H = cfg.numHeads;
    if (cfg.headDim === undefined && dModel % H !== 0) {
      throw new TsformerError(`attention.numHeads: dModel (${dModel}) must be a multiple of attention.numHeads (${H}), or set attention.headDim`, 'config');
    }
    const D = cfg.headDim ?? dModel / H;
    this.dModel = dModel;
    this.numHeads = H;
    this.headDim = D;
    this.blockSize = cfg.blockSize;
    this.convSize = cfg.convSize;
    this.forgetGate = cfg.forgetGate;
    this.q_proj = this.addModule('q_proj', new Linear(dModel, H * D, rng));
    this.k_proj = this.addModule('k_proj', new Linear(dModel, H * D, rng));
    this.v_proj = this.addModule('v_proj', new Linear(dModel, H * D, rng));
    this.w_proj_a = this.addModule('w_proj_a', new Linear(dModel, cfg.wLowRank, rng));
    this.w_proj_b = this.addModule('w_proj_b', new Linear(cfg.wLowRank, H * D, rng));
    this.w_conv1d = this.addModule('w_conv1d', new ShortConv1d(H * D, rng, { kernelSize: cfg.convSize, activation: 'silu' }));
    this.bt_proj = this.addModule('bt_proj', new Linear(dModel, H, rng, { bias: true }));
    if (cfg.forgetGate) this.g_proj = this.addModule('g_proj', new Linear(dModel, H, rng, { bias: true }));
    if (cfg.qkNorm) {
      this.q_norm = this.addModule('q_norm', new RMSNorm(D));
      this.k_norm = this.addModule('k_norm', new RMSNorm(D));
    }
    this.o_proj = this.addModule('o_proj', new Linear(H * D, dModel, rng, { std: deps.outStd }));
  }

  initCache(): PathCache {
    return { kind: 'path', length: 0, keys: null, values: null, logGates: null, conv: null, tensors: [] };
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { B, T } = checkShape('attention input', x, ['B', 'T', this.dModel]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    const H = this.numHeads;
    const D = this.headDim;
    if (!ctx.cache) {
      return {
        y: tf.tidy(() => {
          const p = this.project(x);
          const { o } = pathBlockwise(p.q, p.k, p.v, p.w, p.beta, { blockSize: this.blockSize, ...(p.g ? { g: p.g } : {}) });
          return this.o_proj.forward(o.reshape([B, T, H * D])); // [B, T, D_model]
        }),
      };
    }
    if (ctx.cache.kind !== 'path') throw new TsformerError(`path attention got a "${ctx.cache.kind}" cache`, 'shape');
    const cache = ctx.cache as PathCache;
    let newCache: PathCache | undefined;
    const y = tf.tidy(() => {
      const p = this.project(x, cache.conv ?? undefined);
      let past: PathState | undefined;
      if (cache.keys && cache.values) {
        past = { keys: cache.keys, values: cache.values };
        if (cache.logGates) past.logGates = cache.logGates;
      }
      const gate = p.g ? { g: p.g } : {};
      let o: tf.Tensor; // [B, T, H, D]
      let state: PathState;
      if (T === 1) {
        const token = (t: tf.Tensor) => t.squeeze([1]); // [B, 1, H, ...] -> [B, H, ...]
        const r = pathDecodeStep(token(p.q), token(p.k), token(p.v), token(p.w), token(p.beta), { ...(p.g ? { g: token(p.g) } : {}), ...(past ? { past } : {}) });
        o = r.o.expandDims(1); // [B, 1, H, D]
        state = r.state;
      } else {
        const r = pathBlockwise(p.q, p.k, p.v, p.w, p.beta, { ...gate, blockSize: this.blockSize, outputState: true, ...(past ? { past } : {}) });
        o = r.o;
        state = r.state!;
      }
      const kept = [state.keys, state.values, ...(state.logGates ? [state.logGates] : []), p.conv];
      kept.forEach((t) => tf.keep(t));
      newCache = {
        kind: 'path',
        length: cache.length + T,
        keys: state.keys,
        values: state.values,
        logGates: state.logGates ?? null,
        conv: p.conv,
        tensors: kept,
      };
      return this.o_proj.forward(o.reshape([B, T, H * D])); // [B, T, D_model]
    });
    return { y, cache: newCache! };
  }

  /**
   * q, k, v, w, beta (and the log forget gates) of x [B, T, D_model], the w short convolution
   * continuing from `conv` when given. Call inside a tidy. Public so tests can build references.
   */
  project(x: tf.Tensor, conv?: tf.Tensor): PathProjected {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const D = this.headDim;
    const heads = (t: tf.Tensor) => t.reshape([B, T, H, D]); // [B, T, H, D]
    let q = heads(this.q_proj.forward(x));
    let k = heads(this.k_proj.forward(x));
    if (this.q_norm && this.k_norm) {
      q = this.q_norm.forward(q);
      k = this.k_norm.forward(k);
    }
    const v = heads(this.v_proj.forward(x));
    const wc = this.w_conv1d.forward(this.w_proj_b.forward(this.w_proj_a.forward(x)), conv); // [B, T, H*D]
    const w = l2Normalize(heads(wc.y)); // [B, T, H, D], unit rows
    const beta = this.bt_proj.forward(x).sigmoid().mul(2); // [B, T, H]
    const out: PathProjected = { q, k, v, w, beta, conv: wc.state };
    // logsigmoid as -softplus(-z): tf.logSigmoid's gradient reads a released tensor on wasm.
    if (this.g_proj) out.g = tf.softplus(this.g_proj.forward(x).neg()).neg(); // [B, T, H]
    return out;
  }
}
