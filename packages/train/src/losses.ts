import { TsformerError, customOp, fused, tf } from '@tsformer/core';

/**
 * Mean sparse cross-entropy: logits [..., V] against int32 targets [...]. Labels are never expanded:
 * the forward gathers the target logits, loss_i = logsumexp(logits_i) - logits_i[target_i], and the
 * backward is written by hand as (softmax(logits) - [j == target_i]) * dy / N, one dense [N, V]
 * gradient and nothing else (autodiff through the gather would go through UnsortedSegmentSum,
 * which is O(N * V) masks on the cpu backend and missing on wasm).
 */
export function sparseCrossEntropy(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape[logits.rank - 1]!;
  const N = targets.size;
  if (logits.size !== N * V) {
    throw new TsformerError(`sparseCrossEntropy: logits [${logits.shape}] do not match targets [${targets.shape}]`, 'shape');
  }
  if (targets.dtype !== 'int32') throw new TsformerError(`sparseCrossEntropy: targets must be int32, got ${targets.dtype}`, 'shape');
  // the fused kernel (one pass per row, no softmax tensor) where one is registered for the backend
  const f = fused('sparseCrossEntropy')?.(logits, targets);
  if (f) return f;
  return customOp<tf.Scalar>((...args) => {
    const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
    const t = targets.reshape([N]); // [N]
    const flat = x.reshape([N, V]); // [N, V]
    const lse = tf.logSumExp(flat, -1, true); // [N, 1]
    const index = tf.range(0, N, 1, 'int32').mul(tf.scalar(V, 'int32')).add(t); // [N] flat positions
    const picked = tf.gather(flat.reshape([N * V]), index); // [N]
    save([flat, lse, t]);
    return {
      value: lse.reshape([N]).sub(picked).mean() as tf.Scalar,
      gradFunc: (dy, saved) => {
        const [f, l, tt] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const probs = f.sub(l).exp(); // [N, V] softmax
        // [N, V] target indicator, by comparison (tfjs-wasm 4.22's float32 oneHot writes integer bits)
        const hit = tf.equal(tf.range(0, V, 1, 'int32').reshape([1, V]), tt.reshape([N, 1])).cast('float32');
        return probs.sub(hit).mul(dy.div(N)).reshape(x.shape);
      },
    };
  })(logits);
}
