import { Module, TsformerError, checkShape, init, tf, type Rng } from '@tsformer/core';

export interface HedgehogOptions {
  /** Feature dim f of the projection (the map's output has 2f features). Default 64. */
  featureDim?: number;
  /**
   * `kaiming` (default): each head's W [D, f] ~ U(-1/sqrt(D), 1/sqrt(D)) (PyTorch's default Linear
   * init). `identity`: W_ij = 1 if i == j else 0, so with f = D the map starts as
   * [softmax(x), softmax(-x)]; with f < D it reads the first f coordinates, with f > D the extra
   * features start at 0 (their softmax weights are equal until trained).
   */
  init?: 'kaiming' | 'identity';
}

/**
 * The Hedgehog feature map (Zhang et al., 2024), one learned projection per head:
 *
 *   phi(x) = [softmax(x W_h), softmax(-x W_h)]   over the feature axis,  W_h: [D, f]
 *
 * x [B, T, H, D] -> phi [B, T, H, 2f]. Every feature is positive and each half sums to 1, so
 * phi(q)^T phi(k) is a positive similarity in (0, 2]. Parameter `weight` [H, D, f].
 */
export class HedgehogFeatureMap extends Module {
  readonly weight: tf.Variable; // [H, D, f]
  readonly featureDim: number;

  constructor(
    readonly numHeads: number,
    readonly headDim: number,
    rng: Rng,
    opts: HedgehogOptions = {},
  ) {
    super();
    const f = (this.featureDim = opts.featureDim ?? 64);
    if (!(Number.isInteger(f) && f > 0)) throw new TsformerError(`featureDim must be a positive integer, got ${f}`, 'config');
    let w: tf.Tensor;
    if ((opts.init ?? 'kaiming') === 'identity') {
      const eye = new Float32Array(numHeads * headDim * f);
      for (let h = 0; h < numHeads; h++) for (let i = 0; i < Math.min(headDim, f); i++) eye[(h * headDim + i) * f + i] = 1;
      w = tf.tensor(eye, [numHeads, headDim, f]);
    } else {
      w = init.uniform(rng, [numHeads, headDim, f], 1 / Math.sqrt(headDim));
    }
    this.weight = this.addParam('weight', w, { decay: false });
  }

  /** The number of features per head: 2f. */
  get outDim(): number {
    return 2 * this.featureDim;
  }

  /** x [B, T, H, D] -> [B, T, H, 2f] */
  forward(x: tf.Tensor): tf.Tensor {
    const { B, T } = checkShape('feature map input', x, ['B', 'T', this.numHeads, this.headDim]) as { B: number; T: number };
    return tf.tidy(() => {
      const H = this.numHeads;
      const xh = x.reshape([B * T, H, this.headDim]).transpose([1, 0, 2]); // [H, B*T, D]
      const z = tf
        .matMul(xh, this.weight) // [H, B*T, f]
        .transpose([1, 0, 2]) // [B*T, H, f]
        .reshape([B, T, H, this.featureDim]); // [B, T, H, f]
      return tf.concat([tf.softmax(z, -1), tf.softmax(z.neg(), -1)], -1); // [B, T, H, 2f]
    });
  }
}
