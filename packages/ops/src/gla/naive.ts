import { TsformerError, tf } from '@tsformer/core';
import { checkGlaInputs, queryScale, type GlaDims, type GlaOptions } from './check.js';

/** What the naive forms return. */
export interface GlaNaiveOutput {
  /** [B, T, H, V] */
  o: tf.Tensor;
  /** The state after the last token, [B, H, K, V]. */
  finalState: tf.Tensor;
}

/**
 * Gated linear attention by its defining recurrence, one token at a time:
 *
 *   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T      S_t: [K, V] per batch and head
 *   o_t = S_t^T (scale * q_t)
 *
 * q, k, g: [B, T, H, K]; v: [B, T, H, V]; g holds log gates (<= 0). Written with plain tf ops, so
 * it is differentiable; it is the spec and the oracle of the fast forms, not a training path
 * (T small steps of a few elementwise ops each). The caller owns (disposes) both outputs.
 */
export function glaNaive(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, g: tf.Tensor, opts: GlaOptions = {}): GlaNaiveOutput {
  const { B, T, H, K, V } = checkGlaInputs('glaNaive', q, k, v, g, opts.initialState);
  const scale = queryScale(K, opts.scale);
  return tf.tidy(() => {
    const qs = tf.unstack(q.mul(scale), 1); // T x [B, H, K]
    const ks = tf.unstack(k, 1); // T x [B, H, K]
    const vs = tf.unstack(v, 1); // T x [B, H, V]
    const gs = tf.unstack(g, 1); // T x [B, H, K]
    let S = opts.initialState ?? tf.zeros([B, H, K, V]); // [B, H, K, V]
    const outs: tf.Tensor[] = [];
    for (let t = 0; t < T; t++) {
      const decay = gs[t]!.exp().expandDims(3); // [B, H, K, 1]
      const kv = ks[t]!.expandDims(3).mul(vs[t]!.expandDims(2)); // k_t v_t^T: [B, H, K, V]
      S = S.mul(decay).add(kv);
      outs.push(qs[t]!.expandDims(3).mul(S).sum(2)); // [B, H, V]
    }
    return { o: tf.stack(outs, 1), finalState: S }; // o: [B, T, H, V]
  });
}

/** Options of the host oracle: like `GlaOptions`, with the initial state as a flat array. */
export interface GlaHostOptions {
  /** Multiplies the queries. Default K^-0.5. */
  scale?: number;
  /** The state before the first token, row-major [B, H, K, V]. Default zeros. */
  initialState?: ArrayLike<number>;
}

/** What the host oracle returns: row-major float64 arrays. */
export interface GlaHostOutput {
  /** [B, T, H, V] */
  o: Float64Array;
  /** [B, H, K, V] */
  finalState: Float64Array;
}

/**
 * The same recurrence as `glaNaive` in float64 on the host, over flat row-major arrays in the
 * same layouts (q, k, g: [B, T, H, K]; v: [B, T, H, V]). The test oracle: it shares no code and
 * no rounding with the tensor forms.
 */
export function glaNaiveHost(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  g: ArrayLike<number>,
  dims: GlaDims,
  opts: GlaHostOptions = {},
): GlaHostOutput {
  const { B, T, H, K, V } = dims;
  const expect = (name: string, a: ArrayLike<number>, n: number) => {
    if (a.length !== n) throw new TsformerError(`glaNaiveHost ${name}: expected ${n} numbers, got ${a.length}`, 'shape');
  };
  expect('q', q, B * T * H * K);
  expect('k', k, B * T * H * K);
  expect('g', g, B * T * H * K);
  expect('v', v, B * T * H * V);
  if (opts.initialState) expect('initialState', opts.initialState, B * H * K * V);
  const scale = queryScale(K, opts.scale);
  const o = new Float64Array(B * T * H * V);
  const state = Float64Array.from(opts.initialState ?? new Float64Array(B * H * K * V));
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const s0 = (b * H + h) * K * V; // this head's [K, V] block of the state
      for (let t = 0; t < T; t++) {
        const qk0 = ((b * T + t) * H + h) * K; // q_t, k_t, g_t of this head
        const v0 = ((b * T + t) * H + h) * V; // v_t and o_t of this head
        for (let i = 0; i < K; i++) {
          const decay = Math.exp(g[qk0 + i]!);
          const ki = k[qk0 + i]!;
          for (let j = 0; j < V; j++) state[s0 + i * V + j] = decay * state[s0 + i * V + j]! + ki * v[v0 + j]!;
        }
        for (let j = 0; j < V; j++) {
          let acc = 0;
          for (let i = 0; i < K; i++) acc += scale * q[qk0 + i]! * state[s0 + i * V + j]!;
          o[v0 + j] = acc;
        }
      }
    }
  }
  return { o, finalState: state };
}
