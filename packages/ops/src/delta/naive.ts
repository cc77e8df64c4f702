/**
 * The spec of DeltaNet and Gated DeltaNet: the defining recurrences, one token at a time.
 *
 *   DeltaNet:        S_t = S_{t-1} + k_t (beta_t (v_t - S_{t-1}^T k_t))^T
 *   Gated DeltaNet:  S'  = exp(g_t) S_{t-1};  S_t = S' + k_t (beta_t (v_t - S'^T k_t))^T
 *   read-out:        o_t = scale * S_t^T q_t
 *
 * with S_t: [K, V] per batch row and head. `deltaNaive`/`gatedDeltaNaive` run the recurrence with
 * tfjs ops (differentiable: the gradient reference of the fast paths); `deltaHost`/`gatedDeltaHost`
 * run it in float64 over plain arrays (the numerical oracle). Slow and obvious on purpose.
 */
import { tf } from '@tsformer/core';
import { checkDeltaInputs, readoutScale, type DeltaDims, type DeltaOptions, type DeltaResult } from './types.js';

/** DeltaNet by its recurrence. q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]. */
export function deltaNaive(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, opts: DeltaOptions = {}): DeltaResult {
  return naiveRecurrence('deltaNaive', q, k, v, beta, undefined, opts);
}

/** Gated DeltaNet by its recurrence; g: [B, T, H] is the log decay (g <= 0). */
export function gatedDeltaNaive(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor,
  opts: DeltaOptions = {},
): DeltaResult {
  return naiveRecurrence('gatedDeltaNaive', q, k, v, beta, g, opts);
}

function naiveRecurrence(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaOptions,
): DeltaResult {
  const { B, T, H, K, V } = checkDeltaInputs(op, q, k, v, beta, g, opts.initialState);
  const scale = readoutScale(op, K, opts.scale);
  const [o, finalState] = tf.tidy(() => {
    const qs = tf.unstack(q, 1); // T x [B, H, K]
    const ks = tf.unstack(k, 1); // T x [B, H, K]
    const vs = tf.unstack(v, 1); // T x [B, H, V]
    const betas = tf.unstack(beta, 1); // T x [B, H]
    const gs = g ? tf.unstack(g, 1) : undefined; // T x [B, H]
    let S = opts.initialState ?? tf.zeros([B, H, K, V]); // [B, H, K, V]
    const outs: tf.Tensor[] = [];
    for (let t = 0; t < T; t++) {
      if (gs) S = S.mul(gs[t]!.exp().reshape([B, H, 1, 1])); // [B, H, 1, 1]
      const kt = ks[t]!.reshape([B, H, K, 1]); // [B, H, K, 1]
      const predicted = S.mul(kt).sum(2); // S^T k: [B, H, V]
      const u = vs[t]!.sub(predicted).mul(betas[t]!.reshape([B, H, 1])); // [B, H, V]
      S = S.add(kt.mul(u.reshape([B, H, 1, V]))); // [B, H, K, V]
      outs.push(S.mul(qs[t]!.reshape([B, H, K, 1])).sum(2).mul(scale)); // [B, H, V]
    }
    return [tf.stack(outs, 1), S] as [tf.Tensor, tf.Tensor]; // [B, T, H, V]
  });
  return { o, finalState };
}

/** Inputs of the float64 oracle: flat row-major arrays in the ops' layout. */
export interface DeltaHostInputs {
  /** [B, T, H, K] */
  q: ArrayLike<number>;
  /** [B, T, H, K] */
  k: ArrayLike<number>;
  /** [B, T, H, V] */
  v: ArrayLike<number>;
  /** [B, T, H] */
  beta: ArrayLike<number>;
  /** [B, T, H], log decay; absent for plain DeltaNet. */
  g?: ArrayLike<number>;
  /** [B, H, K, V]; default zeros. */
  initialState?: ArrayLike<number>;
  /** Default K^-0.5. */
  scale?: number;
}

/** The float64 oracle's result: `o` [B, T, H, V] and `finalState` [B, H, K, V], flat. */
export interface DeltaHostResult {
  o: Float64Array;
  finalState: Float64Array;
}

/** Gated DeltaNet in float64 on the host (`deltaHost` with a required `g`). */
export function gatedDeltaHost(dims: DeltaDims, x: DeltaHostInputs & { g: ArrayLike<number> }): DeltaHostResult {
  return deltaHost(dims, x);
}

/** DeltaNet (or Gated DeltaNet when `g` is given) in float64 on the host. */
export function deltaHost(dims: DeltaDims, x: DeltaHostInputs): DeltaHostResult {
  const { B, T, H, K, V } = dims;
  const scale = x.scale ?? 1 / Math.sqrt(K);
  const o = new Float64Array(B * T * H * V);
  const finalState = new Float64Array(B * H * K * V);
  const S = new Float64Array(K * V); // one head's state, row-major [K, V]
  const u = new Float64Array(V);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const s0 = (b * H + h) * K * V;
      for (let i = 0; i < K * V; i++) S[i] = x.initialState ? x.initialState[s0 + i]! : 0;
      for (let t = 0; t < T; t++) {
        const row = (b * T + t) * H + h; // index of (b, t, h) in [B, T, H]
        if (x.g) {
          const a = Math.exp(x.g[row]!);
          for (let i = 0; i < K * V; i++) S[i] = S[i]! * a;
        }
        const bt = x.beta[row]!;
        for (let j = 0; j < V; j++) {
          let pred = 0;
          for (let i = 0; i < K; i++) pred += S[i * V + j]! * x.k[row * K + i]!;
          u[j] = bt * (x.v[row * V + j]! - pred);
        }
        for (let i = 0; i < K; i++) {
          const ki = x.k[row * K + i]!;
          for (let j = 0; j < V; j++) S[i * V + j] = S[i * V + j]! + ki * u[j]!;
        }
        for (let j = 0; j < V; j++) {
          let acc = 0;
          for (let i = 0; i < K; i++) acc += S[i * V + j]! * x.q[row * K + i]!;
          o[row * V + j] = acc * scale;
        }
      }
      finalState.set(S, s0);
    }
  }
  return { o, finalState };
}
