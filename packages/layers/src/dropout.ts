import { Module, tf, type Rng } from '@tsformer/core';

/**
 * Inverted dropout. Masks come from `tf.dropout` with a seed drawn from our RNG, so a run's
 * dropout pattern is reproducible and resumes exactly from the saved RNG state.
 */
export class Dropout extends Module {
  constructor(
    readonly rate: number,
    private readonly rng: Rng,
  ) {
    super();
    if (!(rate >= 0 && rate < 1)) throw new Error(`dropout rate must be in [0, 1), got ${rate}`);
  }

  forward(x: tf.Tensor): tf.Tensor {
    if (!this.training || this.rate === 0) return x;
    return tf.dropout(x, this.rate, undefined, this.rng.opSeed());
  }
}
