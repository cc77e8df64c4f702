import { Module, init, tf, type Rng } from '@tsformer/core';

/** Token embedding table [vocab, dim]; `attend` reuses it as a tied output head. No weight decay. */
export class Embedding extends Module {
  readonly weight: tf.Variable; // [V, D]

  constructor(
    readonly vocabSize: number,
    readonly dim: number,
    rng: Rng,
    opts: { std?: number } = {},
  ) {
    super();
    this.weight = this.addParam('weight', init.normal(rng, [vocabSize, dim], opts.std ?? 0.02), { decay: false });
  }

  /** ids: int32 [B, T] -> [B, T, D] */
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const flat = ids.reshape([-1]); // [B*T]
      return tf.gather(this.weight, flat).reshape([...ids.shape, this.dim]); // [B, T, D]
    });
  }

  /** Tied output projection: h [..., D] -> logits [..., V] = h E^T */
  attend(h: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const lead = h.shape.slice(0, -1);
      const logits = tf.matMul(h.reshape([-1, this.dim]), this.weight, false, true); // [N, V]
      return logits.reshape([...lead, this.vocabSize]);
    });
  }
}
