import { TsformerError, tf } from '@tsformer/core';

/**
 * Mean sparse cross-entropy: logits [..., V] against int32 targets [...], without one-hot labels:
 * loss_i = logsumexp(logits_i) - logits_i[target_i]. The target logits are gathered from the
 * flattened matrix, so the backward pass is softmax minus a scatter of ones at the targets.
 */
export function sparseCrossEntropy(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape[logits.rank - 1]!;
  const N = targets.size;
  if (logits.size !== N * V) {
    throw new TsformerError(`sparseCrossEntropy: logits [${logits.shape}] do not match targets [${targets.shape}]`, 'shape');
  }
  if (targets.dtype !== 'int32') throw new TsformerError(`sparseCrossEntropy: targets must be int32, got ${targets.dtype}`, 'shape');
  return tf.tidy(() => {
    const flat = logits.reshape([N, V]); // [N, V]
    const lse = tf.logSumExp(flat, -1); // [N]
    const index = tf.range(0, N, 1, 'int32').mul(tf.scalar(V, 'int32')).add(targets.reshape([N])); // [N] flat positions
    const picked = tf.gather(flat.reshape([N * V]), index); // [N]
    return lse.sub(picked).mean() as tf.Scalar;
  });
}
