import { Module, fused, init, tf } from '@tsformer/core';

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
    // the fused kernel where one is registered for the active backend (webgpu), else tfjs ops
    return fused('rmsNorm')?.(x, this.weight, this.eps) ?? tf.tidy(() => rmsNormalize(x, this.eps).mul(this.weight));
  }
}

/** x / sqrt(mean(x^2) + eps) over the last axis, no gain. */
export function rmsNormalize(x: tf.Tensor, eps: number): tf.Tensor {
  return tf.tidy(() => x.mul(x.square().mean(-1, true).add(eps).rsqrt())); // mean: [..., 1]
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
    // the fused kernel where one is registered for the active backend (webgpu), else tfjs ops
    const f = fused('layerNorm')?.(x, this.weight, this.bias, this.eps);
    if (f) return f;
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true); // [..., 1] each
      let y = x.sub(mean).mul(variance.add(this.eps).rsqrt()).mul(this.weight);
      if (this.bias) y = y.add(this.bias);
      return y;
    });
  }
}
