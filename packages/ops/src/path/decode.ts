/**
 * The decode form of PaTH attention: the cache holds every past key already transformed up to the
 * latest token. A new token t first moves all cached keys through its transform,
 *   k_j <- H_t k_j = k_j - beta_t (w_t . k_j) w_t,
 * (and, with PaTH-FoX, adds its log f_t to every cached key's gate sum), appends its own key
 * untransformed (the empty product) with gate sum 0, then runs plain softmax attention for q_t.
 * O(S D) per token, like a KV cache.
 */
import { checkShape, matMul, tf } from '@tsformer/core';
import { checkPathState, logitScale, type PathOptions, type PathState } from './types.js';

/** What a decode step returns; the caller owns the tensors (and disposes the old state). */
export interface PathStepResult {
  /** `[B, H, V]` */
  o: tf.Tensor;
  /** The state including this token: keys `[B, H, S+1, D]`, values `[B, H, S+1, V]`, gates `[B, H, S+1]`. */
  state: PathState;
}

/**
 * One PaTH token. q, k, w: [B, H, D]; v: [B, H, V]; beta (and opts.g): [B, H]; `past` the state
 * before this token (absent: the first token). `past` is not disposed.
 */
export function pathDecodeStep(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  w: tf.Tensor,
  beta: tf.Tensor,
  opts: PathOptions & { past?: PathState } = {},
): PathStepResult {
  const op = 'pathDecodeStep';
  const g = opts.g;
  const known = checkShape(`${op} q`, q, ['B', 'H', 'D']);
  checkShape(`${op} k`, k, ['B', 'H', 'D'], known);
  checkShape(`${op} w`, w, ['B', 'H', 'D'], known);
  const sizes = checkShape(`${op} v`, v, ['B', 'H', 'V'], known);
  checkShape(`${op} beta`, beta, ['B', 'H'], sizes);
  if (g) checkShape(`${op} g`, g, ['B', 'H'], sizes);
  const S = opts.past ? checkPathState(op, opts.past, sizes, g !== undefined) : 0;
  const { B, H, D, V } = sizes as { B: number; H: number; D: number; V: number };
  const scale = logitScale(op, D, opts.scale);
  const BH = B * H;
  // [o, keys, values, (logGates)]
  const [o, keys, values, logGates] = tf.tidy((): tf.Tensor[] => {
    const kRow = k.reshape([BH, 1, D]); // [B*H, 1, D]
    const vRow = v.reshape([BH, 1, V]); // [B*H, 1, V]
    let keys = kRow;
    let values = vRow;
    let gates = g ? tf.zeros([BH, 1]) : undefined; // [B*H, 1]
    if (opts.past) {
      const past = opts.past.keys.reshape([BH, S, D]); // [B*H, S, D]
      const wRow = w.reshape([BH, 1, D]); // [B*H, 1, D]
      const along = matMul(past, wRow, false, true).mul(beta.reshape([BH, 1, 1])); // [B*H, S, 1]: beta_t (w_t . k_j)
      keys = tf.concat([past.sub(along.mul(wRow)), kRow], 1); // [B*H, S+1, D]
      values = tf.concat([opts.past.values.reshape([BH, S, V]), vRow], 1); // [B*H, S+1, V]
      if (g) gates = tf.concat([opts.past.logGates!.reshape([BH, S]).add(g.reshape([BH, 1])), gates!], 1); // [B*H, S+1]
    }
    let logits = matMul(q.reshape([BH, 1, D]), keys, false, true).mul(scale); // [B*H, 1, S+1]
    if (gates) logits = logits.add(gates.reshape([BH, 1, S + 1])); // [B*H, 1, S+1]
    return [
      matMul(tf.softmax(logits), values).reshape([B, H, V]), // [B, H, V]
      keys.reshape([B, H, S + 1, D]), // [B, H, S+1, D]
      values.reshape([B, H, S + 1, V]), // [B, H, S+1, V]
      ...(gates ? [gates.reshape([B, H, S + 1])] : []), // [B, H, S+1]
    ];
  });
  return { o: o!, state: logGates ? { keys: keys!, values: values!, logGates } : { keys: keys!, values: values! } };
}

/** Disposes the tensors of a state (keys, values, gates). */
export function disposePathState(state: PathState | undefined): void {
  if (!state) return;
  tf.dispose([state.keys, state.values, ...(state.logGates ? [state.logGates] : [])]);
}
