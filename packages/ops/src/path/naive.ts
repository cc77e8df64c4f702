/**
 * The spec of PaTH attention (Yang et al. 2025): softmax attention whose logits carry the product
 * of the Householder-like transforms between query and key,
 *
 *   H_t  = I - beta_t w_t w_t^T
 *   s_ij = scale * q_i^T (H_i H_{i-1} ... H_{j+1}) k_j  (+ sum_{s=j+1..i} log f_s, PaTH-FoX)   j <= i
 *   o_i  = sum_{j<=i} softmax_j(s_i.) v_j
 *
 * `pathHost` is the definition in float64 on plain arrays, building the D x D product matrix for
 * every (i, j): the numerical oracle. `pathNaive` is the same with tfjs ops (differentiable, the
 * gradient reference): it pulls all queries back one transform at a time, O(T^2 D), walking the
 * key index j down from T-1 to 0. Slow and obvious on purpose.
 */
import { matMul, tf } from '@tsformer/core';
import { splitAll } from '../delta/types.js';
import { checkPathInputs, logitScale, MASKED, type PathDims, type PathOptions, type PathResult } from './types.js';

/** PaTH by its definition. q, k, w: [B, T, H, D]; v: [B, T, H, V]; beta (and opts.g): [B, T, H]. */
export function pathNaive(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, w: tf.Tensor, beta: tf.Tensor, opts: PathOptions = {}): PathResult {
  const op = 'pathNaive';
  const { B, T, H, D, V } = checkPathInputs(op, q, k, v, w, beta, opts.g);
  const scale = logitScale(op, D, opts.scale);
  const BH = B * H;
  const o = tf.tidy(() => {
    const heads = (x: tf.Tensor, n: number): tf.Tensor => x.transpose([0, 2, 1, 3]).reshape([BH, T, n]); // [B*H, T, n]
    const perToken = (x: tf.Tensor): tf.Tensor => x.transpose([0, 2, 1]).reshape([BH, T]); // [B*H, T]
    const ks = splitAll(heads(k, D), 1); // T x [B*H, 1, D]
    const ws = splitAll(heads(w, D), 1); // T x [B*H, 1, D]
    const betas = splitAll(perToken(beta).reshape([BH, T, 1]), 1); // T x [B*H, 1, 1]
    const rowIndex = tf.range(0, T, 1, 'int32').reshape([1, T, 1]); // [1, T, 1]
    // X_i = (q_i^T H_i ... H_{j+1})^T when column j is read; rows i < j are not used (masked below).
    let X = heads(q, D).mul(scale); // [B*H, T, D]
    const columns: tf.Tensor[] = new Array(T);
    for (let j = T - 1; j >= 0; j--) {
      columns[j] = matMul(X, ks[j]!, false, true); // [B*H, T, 1]: X_i . k_j
      if (j === 0) break;
      // X_i <- H_j X_i for the rows that will read a key before j: i >= j
      const active = rowIndex.greaterEqual(j).cast('float32'); // [1, T, 1]
      const along = matMul(X, ws[j]!, false, true).mul(betas[j]!).mul(active); // [B*H, T, 1]: beta_j (X_i . w_j)
      X = X.sub(along.mul(ws[j]!)); // [B*H, T, D]
    }
    let logits = tf.concat(columns, 2); // [B*H, T, T]
    if (opts.g) {
      const F = perToken(opts.g).cumsum(1); // [B*H, T]: sum_{s<=i} log f_s (cumsum on the last axis)
      logits = logits.add(F.reshape([BH, T, 1]).sub(F.reshape([BH, 1, T]))); // + sum_{s=j+1..i} log f_s
    }
    const causal = tf.linalg.bandPart(tf.ones([T, T]), -1, 0); // [T, T], 1 where j <= i
    logits = logits.add(tf.onesLike(causal).sub(causal).mul(MASKED)); // [B*H, T, T]
    const out = matMul(tf.softmax(logits), heads(v, V)); // [B*H, T, V]
    return out.reshape([B, H, T, V]).transpose([0, 2, 1, 3]); // [B, T, H, V]
  });
  return { o };
}

/** Inputs of the float64 oracle: flat row-major arrays in the ops' layout. */
export interface PathHostInputs {
  /** [B, T, H, D] */
  q: ArrayLike<number>;
  /** [B, T, H, D] */
  k: ArrayLike<number>;
  /** [B, T, H, V] */
  v: ArrayLike<number>;
  /** [B, T, H, D] */
  w: ArrayLike<number>;
  /** [B, T, H] */
  beta: ArrayLike<number>;
  /** [B, T, H], log forget gates (PaTH-FoX); absent for plain PaTH. */
  g?: ArrayLike<number>;
  /** Default D^-0.5. */
  scale?: number;
}

/** PaTH in float64 from the definition: the product matrix H_i ... H_{j+1} for every (i, j). Returns o [B, T, H, V], flat. */
export function pathHost(dims: PathDims, x: PathHostInputs): Float64Array {
  const { B, T, H, D, V } = dims;
  const scale = x.scale ?? 1 / Math.sqrt(D);
  const o = new Float64Array(B * T * H * V);
  const P = new Float64Array(D * D); // H_i ... H_{j+1}, row-major
  const Pw = new Float64Array(D);
  const logits = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const row = (t: number) => (b * T + t) * H + h; // index of (b, t, h) in [B, T, H]
      for (let i = 0; i < T; i++) {
        P.fill(0);
        for (let a = 0; a < D; a++) P[a * D + a] = 1;
        let gateSum = 0; // sum_{s=j+1..i} log f_s
        for (let j = i; j >= 0; j--) {
          // s_ij = q_i^T P k_j
          let s = 0;
          for (let a = 0; a < D; a++) {
            let pk = 0;
            for (let c = 0; c < D; c++) pk += P[a * D + c]! * x.k[row(j) * D + c]!;
            s += x.q[row(i) * D + a]! * pk;
          }
          logits[j] = s * scale + gateSum;
          if (j === 0) break;
          // P <- P H_j = P - beta_j (P w_j) w_j^T
          const bj = x.beta[row(j)]!;
          for (let a = 0; a < D; a++) {
            let acc = 0;
            for (let c = 0; c < D; c++) acc += P[a * D + c]! * x.w[row(j) * D + c]!;
            Pw[a] = acc;
          }
          for (let a = 0; a < D; a++) for (let c = 0; c < D; c++) P[a * D + c] = P[a * D + c]! - bj * Pw[a]! * x.w[row(j) * D + c]!;
          if (x.g) gateSum += x.g[row(j)]!;
        }
        let max = -Infinity;
        for (let j = 0; j <= i; j++) max = Math.max(max, logits[j]!);
        let total = 0;
        for (let j = 0; j <= i; j++) total += Math.exp(logits[j]! - max);
        for (let c = 0; c < V; c++) {
          let acc = 0;
          for (let j = 0; j <= i; j++) acc += Math.exp(logits[j]! - max) * x.v[row(j) * V + c]!;
          o[row(i) * V + c] = acc / total;
        }
      }
    }
  }
  return o;
}
