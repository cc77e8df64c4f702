import { tf } from '@tsformer/core';
import type { PositionalEncoding } from './types.js';

export interface RopeOptions {
  /** Size of each head's vector that is rotated (the head dim). Must be even. */
  headDim: number;
  /** Base of the inverse frequencies. Default 10000. */
  theta?: number;
}

/**
 * Rotary position embedding, half-split layout (as in Llama checkpoints): dimension i pairs with
 * i + D/2 and rotates by angle pos * theta^(-2i/D).
 *   out[..., :D/2] = x1 cos - x2 sin,   out[..., D/2:] = x2 cos + x1 sin
 */
export class Rope implements PositionalEncoding {
  readonly type = 'rope';
  readonly headDim: number;
  readonly theta: number;
  readonly invFreq: Float64Array; // [D/2]

  constructor(opts: RopeOptions) {
    this.headDim = opts.headDim;
    this.theta = opts.theta ?? 10000;
    if (this.headDim % 2 !== 0) throw new Error(`RoPE needs an even head dim, got ${this.headDim}`);
    const half = this.headDim / 2;
    this.invFreq = new Float64Array(half);
    for (let i = 0; i < half; i++) this.invFreq[i] = Math.pow(this.theta, (-2 * i) / this.headDim);
  }

  /** cos and sin tables [T, D/2] for the given positions, computed in float64 on the host. */
  tables(positions: Int32Array): { cos: Float32Array; sin: Float32Array } {
    const half = this.headDim / 2;
    const cos = new Float32Array(positions.length * half);
    const sin = new Float32Array(positions.length * half);
    positions.forEach((p, t) => {
      for (let i = 0; i < half; i++) {
        const a = p * this.invFreq[i]!;
        cos[t * half + i] = Math.cos(a);
        sin[t * half + i] = Math.sin(a);
      }
    });
    return { cos, sin };
  }

  rotate(x: tf.Tensor, positions: Int32Array): tf.Tensor {
    const [, T, , D] = x.shape as [number, number, number, number]; // [B, T, H, D]
    if (D !== this.headDim) throw new Error(`RoPE built for head dim ${this.headDim}, got a tensor of shape [${x.shape}]`);
    if (positions.length !== T) throw new Error(`RoPE: ${positions.length} positions for a sequence of ${T}`);
    const half = D / 2;
    const { cos, sin } = this.tables(positions);
    return tf.tidy(() => {
      const c = tf.tensor(cos, [1, T, 1, half]); // broadcast over B and H
      const s = tf.tensor(sin, [1, T, 1, half]);
      const [x1, x2] = tf.split(x, 2, -1); // [B, T, H, D/2] each
      return tf.concat([x1!.mul(c).sub(x2!.mul(s)), x2!.mul(c).add(x1!.mul(s))], -1);
    });
  }
}
