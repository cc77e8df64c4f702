import { tf } from '@tsformer/core';

/**
 * L2-normalizes over the last axis: x / sqrt(sum(x^2) + eps). Used on the queries and keys of
 * DeltaNet-style layers. Shape-preserving: [..., D] -> [..., D].
 * @param eps added under the square root. Default 1e-6.
 */
export function l2Normalize(x: tf.Tensor, eps = 1e-6): tf.Tensor {
  return tf.tidy(() => {
    const ss = x.square().sum(-1, true); // [..., 1]
    return x.mul(ss.add(eps).rsqrt());
  });
}
