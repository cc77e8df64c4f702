import { Module, TsformerError, checkShape, tf, type Rng } from '@tsformer/core';
import { GatedRMSNorm, Linear, RMSNorm, ShortConv1d, l2Normalize } from '@tsformer/layers';
import { deltaChunk, deltaStep, gatedDeltaChunk, gatedDeltaStep, type DeltaResult } from '@tsformer/ops';
import { z } from 'zod';
import type { Attention, AttentionContext, AttentionDeps, AttentionOutput } from './types.js';
import { posInt, posNumber } from './fields.js';
import { convolveQkv, keepRecurrentCache, type ConvStates, type RecurrentCache } from './recurrent.js';

/** Fields DeltaNet and Gated DeltaNet share. */
const deltaFields = {
  /** Number of heads. */
  numHeads: posInt('numHeads'),
  /** Per-head key (and query) width K. Default dModel / numHeads. */
  headDim: posInt('headDim').optional(),
  /** Per-head value width V = headDim * expandV. Default 1. */
  expandV: posNumber('expandV').default(1),
  /** Causal depthwise short convolution (kernel convSize, silu) on q, k and v. Default true. */
  useShortConv: z.boolean().default(true),
  /** Taps of the short convolutions. Default 4. */
  convSize: posInt('convSize').default(4),
  /** beta = sigmoid(x W_b) per head and token; false: beta = 1. Default true. */
  useBeta: z.boolean().default(true),
  /** beta = 2 sigmoid(x W_b), in (0, 2): the transition I - beta k k^T may have a negative eigenvalue. Default false. */
  allowNegEigval: z.boolean().default(false),
  /** Chunk length of the chunked (WY/UT) training form. Default 64. */
  chunkSize: posInt('chunkSize').default(64),
  /** Epsilon of the per-head output RMSNorm. Default 1e-5. */
  normEps: posNumber('normEps').default(1e-5),
};

export const deltaNetAttentionSchema = z
  .object({
    type: z.literal('deltanet'),
    ...deltaFields,
    /** Per-head output norm gated by silu(x W_g) (GatedRMSNorm); false: plain per-head RMSNorm. Default false. */
    useOutputGate: z.boolean().default(false),
  })
  .strict();
export type DeltaNetAttentionConfig = z.infer<typeof deltaNetAttentionSchema>;

export const gatedDeltaNetAttentionSchema = z
  .object({
    type: z.literal('gated-deltanet'),
    ...deltaFields,
    /** Per-head output norm gated by silu(x W_g). Default true. */
    useOutputGate: z.boolean().default(true),
    /** A = exp(A_log) is drawn uniformly from this range at init (Mamba2). Default [1, 16]. */
    aInitRange: z.tuple([posNumber('aInitRange'), posNumber('aInitRange')]).default([1, 16]),
    /** dt = softplus(. + dt_bias) is initialized log-uniform in [dtMin, dtMax] (Mamba2). Defaults 0.001, 0.1. */
    dtMin: posNumber('dtMin').default(0.001),
    dtMax: posNumber('dtMax').default(0.1),
    /** Floor of the initial dt. Default 1e-4. */
    dtInitFloor: posNumber('dtInitFloor').default(1e-4),
  })
  .strict();
export type GatedDeltaNetAttentionConfig = z.infer<typeof gatedDeltaNetAttentionSchema>;

export type AnyDeltaNetConfig = DeltaNetAttentionConfig | GatedDeltaNetAttentionConfig;

/** The decoding cache of both layers: the [B, H, K, V] state and the short-convolution tails. */
export interface DeltaNetCache extends RecurrentCache {
  readonly kind: 'deltanet';
}

/** The per-token inputs of the delta-rule op, before the recurrence. */
export interface DeltaProjected {
  /** L2-normalized queries [B, T, H, K] */
  q: tf.Tensor;
  /** L2-normalized keys [B, T, H, K] */
  k: tf.Tensor;
  /** [B, T, H, V] */
  v: tf.Tensor;
  /** Writing strengths in (0, 1), or (0, 2) with allowNegEigval: [B, T, H] */
  beta: tf.Tensor;
  /** Log decays (<= 0), Gated DeltaNet only: [B, T, H] */
  g?: tf.Tensor;
  /** Next short-conv tails (with short convolutions). */
  conv?: ConvStates;
}

/**
 * DeltaNet (Yang et al., 2024) and Gated DeltaNet (Yang et al., ICLR 2025), the layers around the
 * `@tsformer/ops` delta-rule ops:
 *
 *   q, k = l2norm(silu(conv(x W_q))), l2norm(silu(conv(x W_k)))   [B, T, H, K]
 *   v = silu(conv(x W_v))                                           [B, T, H, V]
 *   beta = sigmoid(x W_b)  (x 2 with allowNegEigval)                [B, T, H]
 *   gated only: g = -exp(A_log) * softplus(x W_a + dt_bias)        [B, T, H], log decays
 *   S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - S'^T k_t))^T   (S' the decayed state),  o_t = S_t^T q_t / sqrt(K)
 *   y = concat_h(norm(o_h)) W_o,  norm = RMSNorm, or GatedRMSNorm(o_h, (x W_g)_h) with the output gate
 *
 * (without short convolutions, silu applies to the plain projections). Parameter names follow
 * flash-linear-attention: `q_proj k_proj v_proj b_proj a_proj A_log dt_bias q_conv1d k_conv1d
 * v_conv1d g_proj o_norm o_proj`. `A_log` and `dt_bias` take no weight decay.
 *
 * No positional encoding: order enters through the recurrence (and the short convolutions).
 * Without a cache the chunked form runs over the whole sequence; with one, a single token runs one
 * recurrent step and several tokens (prefill) the chunked form from the cached state.
 */
export class DeltaNetAttention extends Module implements Attention {
  readonly type: 'deltanet' | 'gated-deltanet';
  readonly dModel: number;
  readonly numHeads: number;
  /** Per-head key width K. */
  readonly headKDim: number;
  /** Per-head value width V. */
  readonly headVDim: number;
  readonly chunkSize: number;
  readonly allowNegEigval: boolean;
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  /** x -> beta logits [B, T, H] (absent with useBeta: false). */
  readonly b_proj?: Linear;
  /** Gated only: x -> decay logits [B, T, H]. */
  readonly a_proj?: Linear;
  /** Gated only: log of the per-head decay rate A, [H]. */
  readonly A_log?: tf.Variable;
  /** Gated only: per-head bias of the softplus time step, [H]. */
  readonly dt_bias?: tf.Variable;
  readonly q_conv1d?: ShortConv1d;
  readonly k_conv1d?: ShortConv1d;
  readonly v_conv1d?: ShortConv1d;
  /** Output gate x -> [B, T, H*V] (useOutputGate). */
  readonly g_proj?: Linear;
  /** Per-head output norm over V: GatedRMSNorm with the output gate, else RMSNorm. */
  readonly o_norm: GatedRMSNorm | RMSNorm;
  readonly o_proj: Linear;

  constructor(cfg: AnyDeltaNetConfig, deps: AttentionDeps) {
    super();
    const { dModel, rng } = deps;
    const H = cfg.numHeads;
    const K = cfg.headDim ?? dModel / H;
    if (!Number.isInteger(K)) {
      throw new TsformerError(`attention.numHeads: dModel (${dModel}) is not a multiple of numHeads (${H}); set attention.headDim`, 'config');
    }
    const V = K * cfg.expandV;
    if (!Number.isInteger(V)) throw new TsformerError(`attention.expandV: headDim (${K}) * expandV (${cfg.expandV}) = ${V} is not an integer`, 'config');
    this.type = cfg.type;
    this.dModel = dModel;
    this.numHeads = H;
    this.headKDim = K;
    this.headVDim = V;
    this.chunkSize = cfg.chunkSize;
    this.allowNegEigval = cfg.allowNegEigval;
    this.q_proj = this.addModule('q_proj', new Linear(dModel, H * K, rng));
    this.k_proj = this.addModule('k_proj', new Linear(dModel, H * K, rng));
    this.v_proj = this.addModule('v_proj', new Linear(dModel, H * V, rng));
    if (cfg.useBeta) this.b_proj = this.addModule('b_proj', new Linear(dModel, H, rng));
    if (cfg.type === 'gated-deltanet') {
      this.a_proj = this.addModule('a_proj', new Linear(dModel, H, rng));
      const [aMin, aMax] = cfg.aInitRange;
      if (aMin > aMax) throw new TsformerError(`attention.aInitRange: [${aMin}, ${aMax}] is not a range (min > max)`, 'config');
      if (cfg.dtMin > cfg.dtMax) throw new TsformerError(`attention.dtMin (${cfg.dtMin}) is above attention.dtMax (${cfg.dtMax})`, 'config');
      const { aLog, dtBias } = mamba2DecayInit(rng, H, cfg);
      this.A_log = this.addParam('A_log', tf.tensor(aLog, [H]), { decay: false });
      this.dt_bias = this.addParam('dt_bias', tf.tensor(dtBias, [H]), { decay: false });
    }
    if (cfg.useShortConv) {
      const opts = { kernelSize: cfg.convSize, activation: 'silu' as const };
      this.q_conv1d = this.addModule('q_conv1d', new ShortConv1d(H * K, rng, opts));
      this.k_conv1d = this.addModule('k_conv1d', new ShortConv1d(H * K, rng, opts));
      this.v_conv1d = this.addModule('v_conv1d', new ShortConv1d(H * V, rng, opts));
    }
    if (cfg.useOutputGate) {
      this.g_proj = this.addModule('g_proj', new Linear(dModel, H * V, rng));
      this.o_norm = this.addModule('o_norm', new GatedRMSNorm(V, cfg.normEps));
    } else {
      this.o_norm = this.addModule('o_norm', new RMSNorm(V, cfg.normEps));
    }
    this.o_proj = this.addModule('o_proj', new Linear(H * V, dModel, rng, { std: deps.outStd }));
  }

  initCache(): DeltaNetCache {
    return { kind: 'deltanet', length: 0, state: null, conv: null, tensors: [] };
  }

  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput {
    const { B, T } = checkShape('attention input', x, ['B', 'T', this.dModel]) as { B: number; T: number };
    if (ctx.positions.length !== T) throw new TsformerError(`attention: ${ctx.positions.length} positions for ${T} tokens`, 'shape');
    if (!ctx.cache) {
      return {
        y: tf.tidy(() => {
          const p = this.project(x);
          const r = this.chunked(p);
          r.finalState.dispose();
          return this.output(x, r.o);
        }),
      };
    }
    if (ctx.cache.kind !== 'deltanet') throw new TsformerError(`${this.type} attention got a "${ctx.cache.kind}" cache`, 'shape');
    const cache = ctx.cache as DeltaNetCache;
    let newCache: DeltaNetCache | undefined;
    const y = tf.tidy(() => {
      const p = this.project(x, cache.conv ?? undefined);
      const initialState = cache.state ?? undefined;
      let r: DeltaResult;
      if (T === 1) {
        // One token: the recurrent step on [B, H, *] rows.
        const row = (t: tf.Tensor) => t.reshape(t.shape.filter((_, i) => i !== 1)); // drop the T axis
        const q = row(p.q); // [B, H, K]
        const k = row(p.k); // [B, H, K]
        const v = row(p.v); // [B, H, V]
        const beta = row(p.beta); // [B, H]
        r = p.g ? gatedDeltaStep(q, k, v, beta, row(p.g), { initialState }) : deltaStep(q, k, v, beta, { initialState });
        r = { o: r.o.reshape([B, 1, this.numHeads, this.headVDim]), finalState: r.finalState }; // [B, 1, H, V]
      } else {
        r = this.chunked(p, initialState);
      }
      newCache = keepRecurrentCache('deltanet', cache.length + T, r.finalState, p.conv);
      return this.output(x, r.o);
    });
    return { y, cache: newCache! };
  }

  /** The chunked op over projected inputs, from `initialState` when given. Call inside a tidy. */
  private chunked(p: DeltaProjected, initialState?: tf.Tensor): DeltaResult {
    const opts = { chunkSize: this.chunkSize, initialState };
    return p.g ? gatedDeltaChunk(p.q, p.k, p.v, p.beta, p.g, opts) : deltaChunk(p.q, p.k, p.v, p.beta, opts);
  }

  /**
   * q, k, v, beta (and g) of x [B, T, D], the short convolutions continuing from `conv` when
   * given. Call inside a tidy. Public so tests can build references from it.
   */
  project(x: tf.Tensor, conv?: ConvStates): DeltaProjected {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const K = this.headKDim;
    const V = this.headVDim;
    const silu = (t: tf.Tensor) => t.mul(t.sigmoid());
    let q = this.q_proj.forward(x); // [B, T, H*K]
    let k = this.k_proj.forward(x); // [B, T, H*K]
    let v = this.v_proj.forward(x); // [B, T, H*V]
    const convolved = convolveQkv({ q: this.q_conv1d, k: this.k_conv1d, v: this.v_conv1d }, q, k, v, conv);
    if (convolved.next) {
      [q, k, v] = [convolved.q, convolved.k, convolved.v]; // silu inside the convolutions
    } else {
      [q, k, v] = [silu(q), silu(k), silu(v)];
    }
    let beta: tf.Tensor; // [B, T, H]
    if (this.b_proj) {
      beta = this.b_proj.forward(x).sigmoid();
      if (this.allowNegEigval) beta = beta.mul(2);
    } else {
      beta = tf.ones([B, T, H]);
    }
    const out: DeltaProjected = {
      q: l2Normalize(q.reshape([B, T, H, K])), // [B, T, H, K]
      k: l2Normalize(k.reshape([B, T, H, K])), // [B, T, H, K]
      v: v.reshape([B, T, H, V]), // [B, T, H, V]
      beta,
    };
    if (this.a_proj && this.A_log && this.dt_bias) {
      const dt = tf.softplus(this.a_proj.forward(x).add(this.dt_bias)); // [B, T, H]
      out.g = dt.mul(this.A_log.exp()).neg(); // [B, T, H], <= 0
    }
    if (convolved.next) out.conv = convolved.next;
    return out;
  }

  /** The op's outputs o [B, T, H, V] -> per-head (gated) norm -> o_proj: [B, T, D]. Call inside a tidy. */
  output(x: tf.Tensor, o: tf.Tensor): tf.Tensor {
    const [B, T] = x.shape as [number, number, number];
    const H = this.numHeads;
    const V = this.headVDim;
    let normed: tf.Tensor; // [B, T, H, V]
    if (this.g_proj) {
      const gate = this.g_proj.forward(x).reshape([B, T, H, V]); // [B, T, H, V]
      normed = (this.o_norm as GatedRMSNorm).forward(o, gate);
    } else {
      normed = (this.o_norm as RMSNorm).forward(o);
    }
    return this.o_proj.forward(normed.reshape([B, T, H * V])); // [B, T, D]
  }
}

/**
 * Mamba2's initialization of the decay parameters, as Gated DeltaNet uses it: A ~ U(aInitRange),
 * A_log = ln A; dt log-uniform in [dtMin, dtMax] (floored at dtInitFloor), dt_bias =
 * softplus^-1(dt) = dt + ln(1 - e^-dt), so that softplus(dt_bias) = dt at init.
 */
export function mamba2DecayInit(
  rng: Rng,
  numHeads: number,
  cfg: Pick<GatedDeltaNetAttentionConfig, 'aInitRange' | 'dtMin' | 'dtMax' | 'dtInitFloor'>,
): { aLog: Float32Array; dtBias: Float32Array } {
  const [aMin, aMax] = cfg.aInitRange;
  const a = rng.uniformArray(numHeads, aMin, aMax);
  const u = rng.uniformArray(numHeads, Math.log(cfg.dtMin), Math.log(cfg.dtMax));
  const aLog = new Float32Array(numHeads);
  const dtBias = new Float32Array(numHeads);
  for (let h = 0; h < numHeads; h++) {
    aLog[h] = Math.log(a[h]!);
    const dt = Math.max(Math.exp(u[h]!), cfg.dtInitFloor);
    dtBias[h] = dt + Math.log(-Math.expm1(-dt));
  }
  return { aLog, dtBias };
}
