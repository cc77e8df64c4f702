import { TsformerError, tf } from '@tsformer/core';
import { checkGlaInputs, queryScale, type GlaOptions, type GlaOutput } from './check.js';

/** One decoding step's result. */
export interface GlaStepOutput {
  /** [B, 1, H, V] */
  o: tf.Tensor;
  /** The state after this token, [B, H, K, V]. */
  state: tf.Tensor;
}

/** Options of `glaRecurrent`. */
export interface GlaRecurrentOptions extends GlaOptions {
  /** Return the state after the last token. Default false. */
  outputFinalState?: boolean;
}

/**
 * One token of GLA, for decoding: q_t, k_t, g_t [B, 1, H, K], v_t [B, 1, H, V] and the state
 * [B, H, K, V] before it give o_t [B, 1, H, V] and the state after it:
 *
 *   S = diag(exp(g_t)) S + k_t v_t^T,   o_t = S^T (scale * q_t)
 *
 * The state passed in is not disposed (the caller drops it once it has the new one).
 */
export function glaStep(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  g: tf.Tensor,
  state: tf.Tensor,
  opts: { scale?: number } = {},
): GlaStepOutput {
  const { B, T, H, K, V } = checkGlaInputs('glaStep', q, k, v, g, state);
  if (T !== 1) throw new TsformerError(`glaStep takes one token (T = 1), got T = ${T}; use glaRecurrent or glaChunk for a sequence`, 'shape');
  const scale = queryScale(K, opts.scale);
  return tf.tidy(() => {
    const BH = B * H;
    // With T = 1, [B, 1, H, X] has the memory layout of [B*H, X].
    const decay = g.reshape([BH, K, 1]).exp(); // [B*H, K, 1]
    const kv = tf.matMul(k.reshape([BH, K, 1]), v.reshape([BH, 1, V])); // k_t v_t^T: [B*H, K, V]
    const next = state.reshape([BH, K, V]).mul(decay).add(kv); // [B*H, K, V]
    const o = tf.matMul(q.reshape([BH, 1, K]).mul(scale), next); // [B*H, 1, V]
    return {
      o: o.reshape([B, 1, H, V]), // [B, 1, H, V]
      state: next.reshape([B, H, K, V]), // [B, H, K, V]
    };
  });
}

/**
 * GLA over a sequence as a loop of `glaStep`s: q, k, g [B, T, H, K], v [B, T, H, V] ->
 * o [B, T, H, V] (and the final state). Differentiable; O(T) small steps, so it suits short
 * prefills and checks rather than training (use `glaChunk` there).
 */
export function glaRecurrent(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, opts: GlaRecurrentOptions = {}): GlaOutput {
  const { B, T, H, K, V } = checkGlaInputs('glaRecurrent', q, k, v, g, opts.initialState);
  const step = { scale: queryScale(K, opts.scale) };
  return tf.tidy(() => {
    const token = (x: tf.Tensor) => tf.unstack(x, 1).map((t) => t.expandDims(1)); // T x [B, 1, H, X]
    const [qs, ks, vs, gs] = [token(q), token(k), token(v), token(g)];
    let state = opts.initialState ?? tf.zeros([B, H, K, V]); // [B, H, K, V]
    const outs: tf.Tensor[] = [];
    for (let t = 0; t < T; t++) {
      const r = glaStep(qs[t]!, ks[t]!, vs[t]!, gs[t]!, state, step);
      outs.push(r.o);
      state = r.state;
    }
    const o = tf.concat(outs, 1); // [B, T, H, V]
    return opts.outputFinalState ? { o, finalState: state } : { o };
  });
}
