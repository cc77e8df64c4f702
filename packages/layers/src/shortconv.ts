import { Module, TsformerError, checkShape, init, tf, type Rng } from '@tsformer/core';

export interface ShortConvOptions {
  /** Taps per channel (the current token and the k-1 before it). Default 4. */
  kernelSize?: number;
  /** Add a per-channel bias. Default false. */
  bias?: boolean;
  /** Activation applied to the convolution's output. Default 'silu'. */
  activation?: 'silu' | 'none';
}

/** What `ShortConv1d.forward` returns: the output and the state to continue from. */
export interface ShortConvOutput {
  /** [B, T, C] */
  y: tf.Tensor;
  /** The last k-1 inputs (zeros where the sequence has not reached back that far): [B, k-1, C]. */
  state: tf.Tensor;
}

/**
 * Causal depthwise 1-D convolution over time (the short convolution in front of the q/k/v of
 * linear-attention layers): y_t = act(sum_{i<k} w[i, c] x_{t-k+1+i, c} + b_c), with the inputs
 * before the start taken from `state` (zeros if none). x: [B, T, C] -> [B, T, C].
 *
 * `weight[i, c]` is Hugging Face's `conv1d.weight[c, 0, i]` (cross-correlation, left padding k-1).
 */
export class ShortConv1d extends Module {
  readonly weight: tf.Variable; // [k, C]
  readonly bias?: tf.Variable; // [C]
  readonly kernelSize: number;
  readonly activation: 'silu' | 'none';

  constructor(
    readonly channels: number,
    rng: Rng,
    opts: ShortConvOptions = {},
  ) {
    super();
    this.kernelSize = opts.kernelSize ?? 4;
    this.activation = opts.activation ?? 'silu';
    if (!Number.isInteger(this.kernelSize) || this.kernelSize < 1) {
      throw new TsformerError(`ShortConv1d: kernelSize must be a positive integer, got ${this.kernelSize}`, 'config');
    }
    const k = this.kernelSize;
    this.weight = this.addParam('weight', init.uniform(rng, [k, channels], 1 / Math.sqrt(k)));
    if (opts.bias) this.bias = this.addParam('bias', init.zeros([channels]));
  }

  /**
   * Runs the convolution over x, continuing from `state` (the previous call's returned state) if
   * given. Feeding a sequence in pieces, state passed along, gives the same outputs as one call.
   * The caller owns the returned tensors; `state` is not disposed.
   */
  forward(x: tf.Tensor, state?: tf.Tensor): ShortConvOutput {
    const k = this.kernelSize;
    const { B, T } = checkShape('ShortConv1d input x', x, ['B', 'T', this.channels]) as { B: number; T: number };
    if (state) checkShape('ShortConv1d state', state, [B, k - 1, this.channels]);
    const C = this.channels;
    return tf.tidy(() => {
      const past = state ?? tf.zeros([B, k - 1, C]); // [B, k-1, C]
      const xp = k > 1 ? tf.concat([past, x], 1) : x; // [B, T+k-1, C]
      const tap = (i: number) => this.weight.slice([i, 0], [1, C]).reshape([C]); // [C]
      // Sum of k shifted windows: tap i sees x_{t-k+1+i}, which is xp[:, t+i].
      let z = xp.slice([0, 0, 0], [B, T, C]).mul(tap(0)); // [B, T, C]
      for (let i = 1; i < k; i++) z = z.add(xp.slice([0, i, 0], [B, T, C]).mul(tap(i))); // [B, T, C]
      if (this.bias) z = z.add(this.bias);
      const y = this.activation === 'silu' ? z.mul(z.sigmoid()) : z;
      const next = xp.slice([0, T, 0], [B, k - 1, C]); // [B, k-1, C]
      return { y, state: next };
    });
  }
}
