import { tf } from '@tsformer/core';

/**
 * Global-norm clipping: scales every gradient by min(1, maxNorm / ||g||) where ||g|| is the norm
 * of all gradients together. Returns new gradients (the inputs stay the caller's to dispose) and
 * the pre-clip norm as a scalar tensor. maxNorm <= 0 disables clipping (the norm is still reported).
 */
export function clipByGlobalNorm(grads: ReadonlyMap<string, tf.Tensor>, maxNorm: number): { grads: Map<string, tf.Tensor>; norm: tf.Scalar } {
  const names = [...grads.keys()];
  // tf.tidy keeps tensors found in arrays and plain objects (not Maps), so return an array.
  const { clipped, norm } = tf.tidy(() => {
    const gs = [...grads.values()];
    const norm = (gs.length ? tf.addN(gs.map((g) => g.square().sum())) : tf.scalar(0)).sqrt() as tf.Scalar;
    if (maxNorm <= 0) return { clipped: gs.map((g) => g.clone()), norm };
    const scale = tf.minimum(tf.scalar(1), tf.scalar(maxNorm).div(norm.add(1e-6)));
    return { clipped: gs.map((g) => g.mul(scale)), norm };
  });
  return { grads: new Map(names.map((n, i) => [n, clipped[i]!])), norm };
}
