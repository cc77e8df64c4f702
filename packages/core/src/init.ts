import { tf } from './tf.js';
import type { Rng } from './rng.js';

/** Initializers draw from our seeded RNG on the host, so weights are identical on every backend. */
export const init = {
  normal(rng: Rng, shape: number[], std: number, truncate = 3): tf.Tensor {
    return tf.tensor(rng.normalArray(size(shape), std, truncate), shape, 'float32');
  },
  uniform(rng: Rng, shape: number[], bound: number): tf.Tensor {
    return tf.tensor(rng.uniformArray(size(shape), -bound, bound), shape, 'float32');
  },
  zeros(shape: number[]): tf.Tensor {
    return tf.zeros(shape, 'float32');
  },
  ones(shape: number[]): tf.Tensor {
    return tf.ones(shape, 'float32');
  },
};

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
