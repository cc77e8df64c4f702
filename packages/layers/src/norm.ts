import { Module, init, tf } from '@tsformer/core';

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * g. */
export class RMSNorm extends Module {
  readonly weight: tf.Variable; // [D]

  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.addParam('weight', init.ones([dim]), { decay: false });
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const ms = x.square().mean(-1, true); // [..., 1]
      return x.mul(ms.add(this.eps).rsqrt()).mul(this.weight);
    });
  }
}

/** LayerNorm over the last axis with gain and (optional) bias. */
export class LayerNorm extends Module {
  readonly weight: tf.Variable; // [D]
  readonly bias?: tf.Variable; // [D]

  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    opts: { bias?: boolean } = {},
  ) {
    super();
    this.weight = this.addParam('weight', init.ones([dim]), { decay: false });
    if (opts.bias ?? true) this.bias = this.addParam('bias', init.zeros([dim]), { decay: false });
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true); // [..., 1] each
      let y = x.sub(mean).mul(variance.add(this.eps).rsqrt()).mul(this.weight);
      if (this.bias) y = y.add(this.bias);
      return y;
    });
  }
}
