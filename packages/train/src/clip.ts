import { fused, tf } from '@tsformer/core';

/** The global L2 norm of all gradients together, as a scalar tensor (the caller disposes it). */
export function globalNorm(grads: ReadonlyMap<string, tf.Tensor>): tf.Scalar {
  return tf.tidy(() => {
    const gs = [...grads.values()];
    // one fused pass over many tensors where registered (webgpu), else a Square and a Sum per tensor
    const fast = gs.length ? fused('sumSquares')?.(gs) : undefined;
    return (fast ?? (gs.length ? tf.addN(gs.map((g) => g.square().sum())) : tf.scalar(0))).sqrt() as tf.Scalar;
  });
}

/**
 * Global-norm clipping: scales every gradient by min(1, maxNorm / ||g||) where ||g|| is the norm
 * of all gradients together. Returns new gradients (the inputs stay the caller's to dispose) and
 * the pre-clip norm as a scalar tensor. maxNorm <= 0 disables clipping (the norm is still reported).
 * `norm`, when given, is the norm already computed by `globalNorm` (it is returned, not copied).
 */
export function clipByGlobalNorm(grads: ReadonlyMap<string, tf.Tensor>, maxNorm: number, norm?: tf.Scalar): { grads: Map<string, tf.Tensor>; norm: tf.Scalar } {
  const names = [...grads.keys()];
  const n = norm ?? globalNorm(grads);
  // tf.tidy keeps tensors found in arrays and plain objects (not Maps), so return an array.
  const clipped = tf.tidy(() => {
    const gs = [...grads.values()];
    if (maxNorm <= 0) return gs.map((g) => g.clone());
    const scale = tf.minimum(tf.scalar(1), tf.scalar(maxNorm).div(n.add(1e-6)));
    return gs.map((g) => g.mul(scale));
  });
  return { grads: new Map(names.map((name, i) => [name, clipped[i]!])), norm: n };
}
