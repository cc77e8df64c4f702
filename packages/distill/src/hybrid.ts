import { TsformerError, tf } from '@tsformer/core';

/**
 * The LoLCATs attention: a sliding window of softmax-style scores plus linear attention over
 * everything older, sharing one normalizer. For query i (key index P + i among S = P + T keys, the
 * queries being the last T keys) and key j, with distance d = P + i - j:
 *
 *   window  (0 <= d < w):  a_ij = gamma_h * exp(q_i . k_j / sqrt(D) - m_i),  m_i = max over the window of q_i . k_j / sqrt(D)
 *   linear  (d >= w):      b_ij = phi_q(q_i) . phi_k(k_j)
 *   older than every key (a carried state kv0 = sum phi_k(k) v^T [F, V], z0 = sum phi_k(k) [F]):
 *                          phi_q(q_i)^T kv0 and phi_q(q_i) . z0
 *
 *   o_i = (sum_j (a_ij + b_ij) v_j + phi_q(q_i)^T kv0) / (sum_j (a_ij + b_ij) + phi_q(q_i) . z0)
 *
 * gamma_h = sigmoid(window factor) per head. The max stabilizes only the window terms (as in
 * LoLCATs), so m_i is part of the definition, not a free shift. The query's own key is always in
 * its window, so the denominator is at least gamma_h > 0.
 *
 * Layout: q [B, T, H, D], k [B, S, H, D], v [B, S, H, V], fq [B, T, H, F], fk [B, S, H, F] (keys
 * and values already expanded to the H query heads), gamma [H], state kv [B, H, F, V], z [B, H, F].
 */
export interface HybridInputs {
  q: tf.Tensor;
  k: tf.Tensor;
  v: tf.Tensor;
  fq: tf.Tensor;
  fk: tf.Tensor;
  /** Window weights in (0, 1) per head: [H]. */
  gamma: tf.Tensor;
  /** Window length w (query i sees keys i-w+1..i through the window). */
  window: number;
  /** Linear state of the tokens before the S keys (each at least w before every query). */
  state?: HybridState;
}

/** Running linear-attention state: kv = sum phi_k(k_j) v_j^T [B, H, F, V], z = sum phi_k(k_j) [B, H, F]. */
export interface HybridState {
  kv: tf.Tensor;
  z: tf.Tensor;
}

/** Which algorithm: `dense` scores [T, S] per head; `blocked` O(T * w) window + chunked linear part. */
export type HybridPath = 'auto' | 'dense' | 'blocked';

const NEG = -1e9;

/** Score entries per head of the blocked path (queries padded to whole blocks of w, bands of 2w keys). */
export function blockedScoreCount(T: number, window: number): number {
  return Math.ceil(T / window) * window * 2 * window;
}

/** o [B, T, H, V]. `auto` takes the blocked path when it computes fewer scores than the dense one. */
export function hybridAttention(inp: HybridInputs, path: HybridPath = 'auto'): tf.Tensor {
  const [, T] = inp.q.shape as [number, number];
  const S = inp.k.shape[1]!;
  const P = S - T;
  if (P < 0) throw new TsformerError(`hybridAttention: ${S} keys for ${T} queries (the queries must be the last keys)`, 'shape');
  const blocked = path === 'blocked' || (path === 'auto' && P <= inp.window && blockedScoreCount(T, inp.window) < T * S);
  return blocked ? hybridBlocked(inp) : hybridDense(inp);
}

/** Host masks [T, S]: window (0 <= d < w) and linear (d >= w), 1 where the key takes part. */
function denseMasks(T: number, S: number, w: number): { win: Float32Array; lin: Float32Array; winAdd: Float32Array } {
  const P = S - T;
  const win = new Float32Array(T * S);
  const lin = new Float32Array(T * S);
  const winAdd = new Float32Array(T * S).fill(NEG);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < S; j++) {
      const d = P + i - j;
      if (d >= 0 && d < w) {
        win[i * S + j] = 1;
        winAdd[i * S + j] = 0;
      } else if (d >= w) lin[i * S + j] = 1;
    }
  }
  return { win, lin, winAdd };
}

/** Unnormalized weights (a + b) [B, H, T, S] and the state terms of the dense path. */
function denseTerms(inp: HybridInputs): { weights: tf.Tensor; stateNum?: tf.Tensor; stateDen?: tf.Tensor } {
  const [B, T, H, D] = inp.q.shape as [number, number, number, number];
  const S = inp.k.shape[1]!;
  const { win, lin, winAdd } = denseMasks(T, S, inp.window);
  const heads = (t: tf.Tensor) => t.transpose([0, 2, 1, 3]); // [B, T|S, H, X] -> [B, H, T|S, X]
  const q = heads(inp.q); // [B, H, T, D]
  const fq = heads(inp.fq); // [B, H, T, F]
  const s = tf.matMul(q, heads(inp.k), false, true).mul(1 / Math.sqrt(D)).add(tf.tensor(winAdd, [T, S])); // [B, H, T, S]
  const m = s.max(-1, true); // [B, H, T, 1]
  const a = s.sub(m).exp().mul(tf.tensor(win, [T, S])).mul(inp.gamma.reshape([1, H, 1, 1])); // [B, H, T, S]
  const b = tf.matMul(fq, heads(inp.fk), false, true).mul(tf.tensor(lin, [T, S])); // [B, H, T, S]
  const weights = a.add(b);
  if (!inp.state) return { weights };
  return {
    weights,
    stateNum: tf.matMul(fq, inp.state.kv), // [B, H, T, V]
    stateDen: tf.matMul(fq, inp.state.z.expandDims(-1)).reshape([B, H, T]), // [B, H, T]
  };
}

/** The dense path: [T, S] scores per head. Reference for the blocked one, and the decode path. */
export function hybridDense(inp: HybridInputs): tf.Tensor {
  return tf.tidy(() => {
    const [B, T, H] = inp.q.shape as [number, number, number, number];
    const { weights, stateNum, stateDen } = denseTerms(inp);
    let num = tf.matMul(weights, inp.v.transpose([0, 2, 1, 3])); // [B, H, T, V]
    let den = weights.sum(-1); // [B, H, T]
    if (stateNum && stateDen) {
      num = num.add(stateNum);
      den = den.add(stateDen);
    }
    const V = num.shape[3]!;
    return num.div(den.expandDims(-1)).transpose([0, 2, 1, 3]).reshape([B, T, H, V]); // [B, T, H, V]
  });
}

/**
 * The normalized attention weights [B, H, T, S] (window and linear terms over the S keys divided by
 * the shared normalizer, state terms included in the normalizer): what the optional attention-map
 * loss of stage 1 compares with the teacher's softmax. Dense, O(T * S).
 */
export function hybridWeights(inp: HybridInputs): tf.Tensor {
  return tf.tidy(() => {
    const { weights, stateDen } = denseTerms(inp);
    let den = weights.sum(-1, true); // [B, H, T, 1]
    if (stateDen) den = den.add(stateDen.expandDims(-1));
    return weights.div(den);
  });
}

/**
 * The blocked path, O(T * w * (D + F) + T * F * V) time and no [T, S] tensor. Queries are cut into
 * blocks of L = w rows; keys get L - P zeros in front (so the P cached keys end key block 0) and
 * the queries' keys fill blocks 1..nB. Query block b sees, by distance d = L + r - c to the band
 * of key blocks b and b+1 (column c in [0, 2L), query row r):
 *
 *   window terms   r < c <= r + L           (exp scores, masked max)
 *   linear, intra  c <= r                    (phi_q . phi_k inside the band's first block)
 *   linear, inter  key blocks 0..b-1        (an exclusive prefix sum of per-block phi_k^T v)
 *
 * Needs P <= w (a decoding cache holds at most w keys).
 */
export function hybridBlocked(inp: HybridInputs): tf.Tensor {
  const [B, T, H, D] = inp.q.shape as [number, number, number, number];
  const S = inp.k.shape[1]!;
  const V = inp.v.shape[3]!;
  const F = inp.fq.shape[3]!;
  const L = inp.window;
  const P = S - T;
  if (P > L) throw new TsformerError(`hybridBlocked: ${P} keys before the queries, at most the window (${L})`, 'shape');
  const nB = Math.ceil(T / L);
  const Tp = nB * L;
  const padLeft = L - P;
  const padRight = Tp - T;
  const Kp = (nB + 1) * L;
  const BH = B * H;

  // Host masks [nB*L, 2L] from key/query reality and the distance d = L + r - c.
  const win = new Float32Array(nB * L * 2 * L);
  const winAdd = new Float32Array(nB * L * 2 * L).fill(NEG);
  const lin = new Float32Array(nB * L * 2 * L);
  // 1 on padded query rows: keeps their (discarded) normalizer away from 0, so no 0/0 reaches the gradients
  const padRows = new Float32Array(nB * L);
  for (let b = 0; b < nB; b++) {
    for (let r = 0; r < L; r++) {
      if (b * L + r >= T) {
        padRows[b * L + r] = 1;
        continue;
      }
      for (let c = 0; c < 2 * L; c++) {
        const j = b * L + c; // padded key index
        if (j < padLeft || j >= padLeft + S) continue; // padded key
        const idx = (b * L + r) * 2 * L + c;
        if (c > r && c <= r + L) {
          win[idx] = 1;
          winAdd[idx] = 0;
        } else if (c <= r) lin[idx] = 1;
      }
    }
  }

  return tf.tidy(() => {
    // Queries: [B, T, H, X] -> [B*H, nB, L, X]
    const qBlocks = (t: tf.Tensor, X: number) =>
      t
        .pad([[0, 0], [0, padRight], [0, 0], [0, 0]]) // [B, Tp, H, X]
        .transpose([0, 2, 1, 3]) // [B, H, Tp, X]
        .reshape([BH, nB, L, X]); // [B*H, nB, L, X]
    // Keys: [B, S, H, X] -> padded [B*H, Kp, X]
    const kPadded = (t: tf.Tensor, X: number) =>
      t
        .pad([[0, 0], [padLeft, padRight], [0, 0], [0, 0]]) // [B, Kp, H, X]
        .transpose([0, 2, 1, 3]) // [B, H, Kp, X]
        .reshape([BH, Kp, X]); // [B*H, Kp, X]
    // Band of key blocks b and b+1 for each query block b: [B*H, nB, 2L, X]
    const band = (p: tf.Tensor, X: number) => {
      const prev = p.slice([0, 0, 0], [BH, Tp, X]).reshape([BH, nB, L, X]); // key blocks 0..nB-1: [B*H, nB, L, X]
      const cur = p.slice([0, L, 0], [BH, Tp, X]).reshape([BH, nB, L, X]); // key blocks 1..nB: [B*H, nB, L, X]
      return tf.concat([prev, cur], 2); // [B*H, nB, 2L, X]
    };
    const q = qBlocks(inp.q, D).mul(1 / Math.sqrt(D)); // [B*H, nB, L, D]
    const fq = qBlocks(inp.fq, F); // [B*H, nB, L, F]
    const kp = kPadded(inp.k, D); // [B*H, Kp, D]
    const vp = kPadded(inp.v, V); // [B*H, Kp, V]
    const fkp = kPadded(inp.fk, F); // [B*H, Kp, F]
    const gamma = tf.tile(inp.gamma.reshape([1, H]), [B, 1]).reshape([BH, 1, 1, 1]); // [B*H, 1, 1, 1]

    const s = tf.matMul(q, band(kp, D), false, true).add(tf.tensor(winAdd, [nB, L, 2 * L])); // [B*H, nB, L, 2L]
    const m = s.max(-1, true); // [B*H, nB, L, 1]
    const a = s.sub(m).exp().mul(tf.tensor(win, [nB, L, 2 * L])).mul(gamma); // [B*H, nB, L, 2L]
    const bIntra = tf.matMul(fq, band(fkp, F), false, true).mul(tf.tensor(lin, [nB, L, 2 * L])); // [B*H, nB, L, 2L]
    const weights = a.add(bIntra);
    let num = tf.matMul(weights, band(vp, V)); // [B*H, nB, L, V]
    let den = weights.sum(-1); // [B*H, nB, L]

    // Inter-block linear terms: key blocks 0..b-1 for query block b (pads have phi_k = 0, v = 0).
    const fkBlocks = fkp.slice([0, 0, 0], [BH, Tp, F]).reshape([BH, nB, L, F]); // [B*H, nB, L, F]
    const vBlocks = vp.slice([0, 0, 0], [BH, Tp, V]).reshape([BH, nB, L, V]); // [B*H, nB, L, V]
    let kvPrefix = exclusivePrefixSum(tf.matMul(fkBlocks, vBlocks, true, false).reshape([BH, nB, F * V])).reshape([BH, nB, F, V]); // [B*H, nB, F, V]
    let zPrefix = exclusivePrefixSum(fkBlocks.sum(2)); // [B*H, nB, F]
    if (inp.state) {
      kvPrefix = kvPrefix.add(inp.state.kv.reshape([BH, 1, F, V])); // [B, H, F, V] -> [B*H, 1, F, V]
      zPrefix = zPrefix.add(inp.state.z.reshape([BH, 1, F])); // [B, H, F] -> [B*H, 1, F]
    }
    num = num.add(tf.matMul(fq, kvPrefix)); // [B*H, nB, L, V]
    den = den.add(tf.matMul(fq, zPrefix.expandDims(-1)).reshape([BH, nB, L])); // [B*H, nB, L]

    den = den.add(tf.tensor(padRows, [nB, L]));
    const o = num.div(den.expandDims(-1)); // [B*H, nB, L, V]
    return o
      .reshape([B, H, Tp, V]) // [B, H, Tp, V]
      .transpose([0, 2, 1, 3]) // [B, Tp, H, V]
      .slice([0, 0, 0, 0], [B, T, H, V]); // [B, T, H, V]
  });
}

/**
 * x [N, nB, X] -> sum over earlier blocks [N, nB, X] (block 0 gets zeros). Runs the cumsum on the
 * last axis: tfjs 4.22's Cumsum gradient on an inner axis comes back transposed.
 */
function exclusivePrefixSum(x: tf.Tensor): tf.Tensor {
  return tf.cumsum(x.transpose([0, 2, 1]), 2, true).transpose([0, 2, 1]); // [N, X, nB] -> [N, nB, X]
}

/**
 * Folds the first n of the S keys into the linear state: kv + sum_{j<n} phi_k(k_j) v_j^T, z + sum_{j<n}
 * phi_k(k_j). fk [B, S, H, F], v [B, S, H, V]; `state` absent means zeros. Returns new tensors.
 */
export function absorbIntoState(fk: tf.Tensor, v: tf.Tensor, n: number, state?: HybridState): HybridState {
  const [B, , H, F] = fk.shape as [number, number, number, number];
  const V = v.shape[3]!;
  return tf.tidy(() => {
    let kv: tf.Tensor;
    let z: tf.Tensor;
    if (n > 0) {
      const f = fk.slice([0, 0, 0, 0], [B, n, H, F]).transpose([0, 2, 1, 3]); // [B, H, n, F]
      const vv = v.slice([0, 0, 0, 0], [B, n, H, V]).transpose([0, 2, 1, 3]); // [B, H, n, V]
      kv = tf.matMul(f, vv, true, false); // [B, H, F, V]
      z = f.sum(2); // [B, H, F]
      if (state) {
        kv = kv.add(state.kv);
        z = z.add(state.z);
      }
    } else if (state) {
      kv = state.kv.clone();
      z = state.z.clone();
    } else {
      kv = tf.zeros([B, H, F, V]);
      z = tf.zeros([B, H, F]);
    }
    return { kv, z };
  });
}

/**
 * The definition in float64 host loops (the test oracle): o [B, T, H, V] from row-major arrays in
 * the layout of `HybridInputs`.
 */
export function hybridNaive(args: {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
  fq: ArrayLike<number>;
  fk: ArrayLike<number>;
  gamma: ArrayLike<number>;
  /** [B, T, S, H, D, V, F] */
  dims: [number, number, number, number, number, number, number];
  window: number;
  kv0?: ArrayLike<number>;
  z0?: ArrayLike<number>;
}): Float64Array {
  const [B, T, S, H, D, V, F] = args.dims;
  const P = S - T;
  const o = new Float64Array(B * T * H * V);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const qi = (x: number) => args.q[((b * T + i) * H + h) * D + x]!;
        const fqi = (x: number) => args.fq[((b * T + i) * H + h) * F + x]!;
        const score = (j: number) => {
          let s = 0;
          for (let x = 0; x < D; x++) s += qi(x) * args.k[((b * S + j) * H + h) * D + x]!;
          return s / Math.sqrt(D);
        };
        let m = -Infinity;
        for (let j = 0; j < S; j++) {
          const d = P + i - j;
          if (d >= 0 && d < args.window) m = Math.max(m, score(j));
        }
        const num = new Float64Array(V);
        let den = 0;
        for (let j = 0; j < S; j++) {
          const d = P + i - j;
          let wgt = 0;
          if (d >= 0 && d < args.window) wgt = args.gamma[h]! * Math.exp(score(j) - m);
          else if (d >= args.window) for (let x = 0; x < F; x++) wgt += fqi(x) * args.fk[((b * S + j) * H + h) * F + x]!;
          else continue;
          den += wgt;
          for (let y = 0; y < V; y++) num[y] = num[y]! + wgt * args.v[((b * S + j) * H + h) * V + y]!;
        }
        if (args.kv0 && args.z0) {
          for (let x = 0; x < F; x++) {
            den += fqi(x) * args.z0[(b * H + h) * F + x]!;
            for (let y = 0; y < V; y++) num[y] = num[y]! + fqi(x) * args.kv0[((b * H + h) * F + x) * V + y]!;
          }
        }
        for (let y = 0; y < V; y++) o[((b * T + i) * H + h) * V + y] = num[y]! / den;
      }
    }
  }
  return o;
}
