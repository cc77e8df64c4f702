import { TsformerError, checkShape, fused, tf } from '@tsformer/core';
import type { PositionalEncoding } from './types.js';
import { ropeConfigSchema, type RopeLayout, type RopeScaling, type RopeScalingInput } from './schema.js';
import { baseInverseFrequencies, ropeFrequencies, rotaryDimFor, type RopeFrequencies } from './frequencies.js';

export interface RopeOptions {
  /** Per-head dim of the tensors `rotate` receives. Required. */
  headDim: number;
  /** Base of the inverse frequencies. Default 10000. */
  theta?: number;
  /** Fraction of the head dim that is rotated, in (0, 1]; the rest passes through. Default 1. */
  fraction?: number;
  /** `half` (dim i pairs with i + R/2) or `interleaved` (2i with 2i+1). Default `half`. */
  layout?: RopeLayout;
  /** Context-extension scaling (linear, ntk, dynamic, yarn). Default none. */
  scaling?: RopeScalingInput;
}

/**
 * Rotary position embedding. The first R = rotaryDim dims of each head are split into R/2 pairs
 * (x_a, x_b); pair i at position p turns by angle p * invFreq_i:
 *   x_a' = m (x_a cos - x_b sin),   x_b' = m (x_b cos + x_a sin)
 * with m the attention factor (1 except for YaRN). `half` pairs dim i with i + R/2 (Llama, NeoX and
 * HF checkpoints), `interleaved` pairs 2i with 2i+1 (GPT-J, the original paper). Dims R.. pass
 * through unchanged. Angles are computed in float64 on the host for each call's positions.
 */
export class Rope implements PositionalEncoding {
  readonly type = 'rope';
  readonly headDim: number;
  readonly theta: number;
  readonly fraction: number;
  readonly layout: RopeLayout;
  readonly scaling: RopeScaling | undefined;
  /** Rotated dims: floor(fraction * headDim) rounded down to even. */
  readonly rotaryDim: number;
  /**
   * Inverse frequencies [R/2] of every call, scaling included; for `dynamic` scaling those of lengths
   * up to `originalMaxPositions` (longer calls get a larger base, see `frequencies`).
   */
  readonly invFreq: Float64Array;
  /** Factor on cos and sin: YaRN's (default 0.1 ln(factor) + 1), else 1. */
  readonly attentionFactor: number;
  /**
   * True for `dynamic` scaling: the angles of a call depend on its largest position, so a key rotated
   * in an earlier call does not match one rotated now. See `PositionalEncoding.lengthDependent`.
   */
  readonly lengthDependent: boolean;

  constructor(opts: RopeOptions) {
    const { headDim } = opts;
    const parsed = ropeConfigSchema.safeParse({ type: 'rope', theta: opts.theta, fraction: opts.fraction, layout: opts.layout, scaling: opts.scaling });
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`);
      throw new TsformerError(`invalid RoPE options: ${issues.join('; ')}`, 'config');
    }
    const cfg = parsed.data;
    if (!Number.isInteger(headDim) || headDim <= 0) throw new TsformerError(`RoPE needs a positive integer head dim, got ${headDim}`, 'config');
    this.headDim = headDim;
    this.theta = cfg.theta;
    this.fraction = cfg.fraction ?? 1;
    this.layout = cfg.layout ?? 'half';
    this.scaling = cfg.scaling;
    if (this.fraction === 1 && headDim % 2 !== 0) {
      throw new TsformerError(`RoPE needs an even head dim, got ${headDim} (or set fraction < 1 to rotate part of it)`, 'config');
    }
    this.rotaryDim = rotaryDimFor(headDim, this.fraction);
    if (this.rotaryDim === 0) {
      throw new TsformerError(`fraction ${this.fraction} of head dim ${headDim} rounds to 0 rotary dims (need at least 2)`, 'config');
    }
    const t = this.scaling?.type;
    if ((t === 'ntk' || t === 'dynamic') && this.rotaryDim < 4) {
      throw new TsformerError(`scaling.type ${t} needs at least 4 rotary dims (its exponent is R/(R-2)), got ${this.rotaryDim}`, 'config');
    }
    this.lengthDependent = t === 'dynamic';
    const f = this.frequencies(0);
    this.invFreq = f.invFreq;
    this.attentionFactor = f.attentionFactor;
  }

  /** Inverse frequencies and attention factor for a call whose largest position is seqLen - 1. */
  frequencies(seqLen: number): RopeFrequencies {
    return ropeFrequencies(this.rotaryDim, this.theta, this.scaling, seqLen);
  }

  /** The unscaled inverse frequencies theta^(-2i/R) [R/2]. */
  baseFrequencies(): Float64Array {
    return baseInverseFrequencies(this.rotaryDim, this.theta);
  }

  #lastTables?: { positions: Int32Array; tables: { cos: Float32Array; sin: Float32Array } };

  /**
   * cos and sin tables [T, R/2] for the given positions, attention factor included, computed in
   * float64 on the host. The sequence length for `dynamic` scaling is max(positions) + 1.
   */
  tables(positions: Int32Array): { cos: Float32Array; sin: Float32Array } {
    // q and k of every layer rotate at the same positions within one forward: reuse the last tables
    const last = this.#lastTables;
    if (last && last.positions.length === positions.length && last.positions.every((p, i) => p === positions[i])) return last.tables;
    const half = this.rotaryDim / 2;
    const { invFreq, attentionFactor: m } = this.lengthDependent ? this.frequencies(seqLenOf(positions)) : this;
    const cos = new Float32Array(positions.length * half);
    const sin = new Float32Array(positions.length * half);
    positions.forEach((p, t) => {
      for (let i = 0; i < half; i++) {
        const a = p * invFreq[i]!;
        cos[t * half + i] = m * Math.cos(a);
        sin[t * half + i] = m * Math.sin(a);
      }
    });
    const tables = { cos, sin };
    this.#lastTables = { positions: positions.slice(), tables };
    return tables;
  }

  rotate(x: tf.Tensor, positions: Int32Array): tf.Tensor {
    const { B, T, H } = checkShape('RoPE input', x, ['B', 'T', 'H', this.headDim]) as { B: number; T: number; H: number }; // [B, T, H, D]
    if (positions.length !== T) throw new TsformerError(`RoPE: ${positions.length} positions for a sequence of ${T}`, 'shape');
    const D = this.headDim;
    const R = this.rotaryDim;
    const P = R / 2;
    const { cos, sin } = this.tables(positions);
    const kernel = fused('rope');
    if (kernel) {
      const y = tf.tidy(() => kernel(x, tf.tensor(cos, [T, P]), tf.tensor(sin, [T, P]), this.layout)); // [B, T, H, D]
      if (y) return y;
    }
    return tf.tidy(() => {
      const [rot, pass] = R === D ? [x, undefined] : tf.split(x, [R, D - R], -1); // [B, T, H, R], [B, T, H, D-R]
      let out: tf.Tensor;
      if (this.layout === 'half') {
        const c = tf.tensor(cos, [1, T, 1, P]); // broadcast over B and H
        const s = tf.tensor(sin, [1, T, 1, P]);
        const [x1, x2] = tf.split(rot!, 2, -1) as [tf.Tensor, tf.Tensor]; // [B, T, H, R/2] each: dims i and i + R/2
        out = tf.concat([x1.mul(c).sub(x2.mul(s)), x2.mul(c).add(x1.mul(s))], -1); // [B, T, H, R]
      } else {
        const c = tf.tensor(cos, [1, T, 1, P, 1]); // broadcast over B, H and the pair
        const s = tf.tensor(sin, [1, T, 1, P, 1]);
        const pairs = rot!.reshape([B, T, H, P, 2]); // [B, T, H, R/2, 2]
        const [xe, xo] = tf.split(pairs, 2, -1) as [tf.Tensor, tf.Tensor]; // [B, T, H, R/2, 1] each: dims 2i and 2i + 1
        out = tf.concat([xe.mul(c).sub(xo.mul(s)), xo.mul(c).add(xe.mul(s))], -1).reshape([B, T, H, R]); // [B, T, H, R]
      }
      return pass ? tf.concat([out, pass], -1) : out; // [B, T, H, D]
    });
  }
}

/** Largest position + 1 (0 for no positions), without spreading a long array into Math.max. */
function seqLenOf(positions: Int32Array): number {
  let max = -1;
  for (const p of positions) if (p > max) max = p;
  return max + 1;
}
