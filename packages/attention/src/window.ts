import { TsformerError, tf } from '@tsformer/core';
import { maskTensor, normalize, visible, type ScoreSpec } from './softmax-ops.js';

/**
 * Sliding-window attention without a [T, S] score matrix.
 *
 * Queries are cut into blocks of L = window rows. With strictly increasing positions, query i
 * (whose own key is key P + i, after P earlier keys from a cache) sees only keys whose index is
 * in (P + i - L, P + i], so block b needs exactly the keys of its own block and of the previous
 * one. Keys get L - P zeros in front (the cache prefix, at most its last L keys, fills the rest
 * of block "-1") and the sequence is padded to nB = ceil(T / L) blocks; each query block is
 * scored against a band of 2L keys, masked by the absolute positions. All blocks go through one
 * batched product:
 *
 *   q  [B*Hkv, nB, L*G, D]  x  band(k) [B*Hkv, nB, 2L, D]^T  ->  scores [B*Hkv, nB, L*G, 2L]
 *
 * Time is O(B * H * T * L * D) and memory O(B * H * T * (L + D)): the largest tensors are the
 * scores and the weights made from them, B * H * nB * L * 2L = 2 * B * H * T' * window numbers
 * with T' = nB * L (a dense [T, T] is never built, forward or backward).
 */

/**
 * Whether the banded path is exact for these positions: key positions strictly increasing and the
 * query positions equal to the last T key positions (the keys of the queries themselves). Then a
 * visible key is always within `window` indices of its query.
 */
export function bandable(qPositions: Int32Array, kPositions: Int32Array): boolean {
  const T = qPositions.length;
  const P = kPositions.length - T;
  if (P < 0) return false;
  for (let j = 1; j < kPositions.length; j++) if (kPositions[j]! <= kPositions[j - 1]!) return false;
  for (let i = 0; i < T; i++) if (qPositions[i] !== kPositions[P + i]) return false;
  return true;
}

/** Score entries per head of the banded path (T padded to whole blocks, 2 blocks of keys each). */
export function bandedScoreCount(T: number, window: number): number {
  return Math.ceil(T / window) * window * 2 * window;
}

/**
 * Banded sliding-window attention: q [B, T, H, D], k and v [B, S, Hkv, D] with S = P + T (P keys
 * from a cache, then the queries' own keys) -> o [B, T, H, D]. Equals `denseAttention` with the
 * same spec whenever `bandable(qPositions, kPositions)`.
 */
export function bandedAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, qPositions: Int32Array, kPositions: Int32Array, spec: ScoreSpec): tf.Tensor {
  const L = spec.window;
  if (L === undefined) throw new TsformerError('bandedAttention needs a window', 'shape');
  if (!bandable(qPositions, kPositions)) {
    throw new TsformerError('bandedAttention: positions must increase strictly and the queries must be the last keys', 'shape');
  }
  const [B, T, H, D] = q.shape as [number, number, number, number];
  const [, S, Hkv] = k.shape as [number, number, number, number];
  const G = H / Hkv;
  // Keys more than L before the first query are invisible to every query: keep at most L of the prefix.
  const drop = Math.max(0, S - T - L);
  const P = S - T - drop;
  const kPos = kPositions.subarray(drop);
  const nB = Math.ceil(T / L);
  const Tp = nB * L; // queries padded to whole blocks
  const padLeft = L - P; // zeros before the keys, so the prefix fills key block "-1"
  const padRight = Tp - T;
  const Kp = (nB + 1) * L; // padded keys

  // Host side: positions of padded queries and keys (pads get positions that continue the
  // sequence, so a score bias stays finite; pads are masked anyway) and the band's visibility.
  const qPos = new Int32Array(Tp);
  const qReal = new Uint8Array(Tp);
  for (let i = 0; i < Tp; i++) {
    qPos[i] = i < T ? qPositions[i]! : qPositions[T - 1]! + (i - T + 1);
    qReal[i] = i < T ? 1 : 0;
  }
  const kp = new Int32Array(Kp);
  const kReal = new Uint8Array(Kp);
  const firstK = kPos[0]!;
  const lastK = kPos[kPos.length - 1]!;
  for (let j = 0; j < Kp; j++) {
    const r = j - padLeft; // index into the real keys
    kp[j] = r < 0 ? firstK + r : r < kPos.length ? kPos[r]! : lastK + (r - kPos.length + 1);
    kReal[j] = r >= 0 && r < kPos.length ? 1 : 0;
  }
  // Visibility [nB*L*G, 2L]: rows in (block, query, group) order, matching the layout of q below.
  const allowed = new Float32Array(nB * L * G * 2 * L);
  for (let b = 0; b < nB; b++) {
    for (let r = 0; r < L; r++) {
      const i = b * L + r;
      for (let c = 0; c < 2 * L; c++) {
        const j = b * L + c; // key block b-1 (c < L) or b (c >= L), in padded key indices
        if (!qReal[i] || !kReal[j] || !visible(qPos[i]!, kp[j]!, L)) continue;
        for (let g = 0; g < G; g++) allowed[((b * L + r) * G + g) * 2 * L + c] = 1;
      }
    }
  }

  return tf.tidy(() => {
    const BH = B * Hkv;
    const kk = drop > 0 ? k.slice([0, drop, 0, 0], [B, S - drop, Hkv, D]) : k; // [B, P + T, Hkv, D]
    const vv = drop > 0 ? v.slice([0, drop, 0, 0], [B, S - drop, Hkv, D]) : v;
    // Everything stays at rank <= 4: tfjs-wasm slices and transposes of rank 5 run a generic
    // element-by-element loop (~100x slower).
    // Queries: the G heads of one kv head sit next to each other in the last axis, so grouping by
    // kv head is a rank-4 transpose; rows come out in (query, group) order within each block.
    const qb = q
      .pad([[0, 0], [0, padRight], [0, 0], [0, 0]]) // [B, Tp, H, D]
      .reshape([B, Tp, Hkv, G * D]) // [B, Tp, Hkv, G*D]
      .transpose([0, 2, 1, 3]) // [B, Hkv, Tp, G*D]
      .reshape([BH, nB, L * G, D]) // [B*Hkv, nB, L*G, D]
      .mul(1 / Math.sqrt(D)); // scaling q is cheaper than scaling the scores
    // Keys and values: each block next to its predecessor, [B*Hkv, nB, 2L, D].
    const band = (t: tf.Tensor) => {
      const padded = t
        .pad([[0, 0], [padLeft, padRight], [0, 0], [0, 0]]) // [B, Kp, Hkv, D]
        .transpose([0, 2, 1, 3]) // [B, Hkv, Kp, D]
        .reshape([BH, Kp, D]); // [B*Hkv, Kp, D]
      const prev = padded.slice([0, 0, 0], [BH, Tp, D]).reshape([BH, nB, L, D]); // blocks -1 .. nB-2: [B*Hkv, nB, L, D]
      const cur = padded.slice([0, L, 0], [BH, Tp, D]).reshape([BH, nB, L, D]); // blocks 0 .. nB-1: [B*Hkv, nB, L, D]
      return tf.concat([prev, cur], 2); // [B*Hkv, nB, 2L, D]
    };
    const kb = band(kk);
    const vb = band(vv);
    // The largest tensors of the path: scores and weights, B*Hkv*nB*L*G*2L = 2 B H T' L numbers.
    let scores = tf
      .matMul(qb, kb, false, true) // [B*Hkv, nB, L*G, 2L]
      .reshape([B, Hkv, nB * L * G, 2 * L]); // [B, Hkv, nB*L*G, 2L]
    if (spec.scoreBias) {
      // The bias of each block's band from absolute positions. The positional interface takes
      // position lists, so it is asked once per block for [H, L, 2L] (O(H T L) numbers in all).
      const per: tf.Tensor[] = [];
      for (let b = 0; b < nB; b++) {
        const hb = spec.scoreBias(qPos.subarray(b * L, b * L + L), kp.subarray(b * L, b * L + 2 * L)); // [H, L, 2L]
        per.push(
          G === 1
            ? hb
            : hb
                .reshape([Hkv, G, L, 2 * L]) // [Hkv, G, L, 2L]
                .transpose([0, 2, 1, 3]) // [Hkv, L, G, 2L]
                .reshape([Hkv, L * G, 2 * L]), // [Hkv, L*G, 2L]
        );
      }
      scores = scores.add(tf.concat(per, 1)); // + [Hkv, nB*L*G, 2L]
    }
    const p = normalize(scores, maskTensor(allowed, [nB * L * G, 2 * L], spec.score), spec); // [B, Hkv, nB*L*G, 2L]
    const o = tf.matMul(p.reshape([BH, nB, L * G, 2 * L]), vb); // [B*Hkv, nB, L*G, D]
    return o
      .reshape([B, Hkv, Tp, G * D]) // [B, Hkv, Tp, G*D]
      .transpose([0, 2, 1, 3]) // [B, Tp, Hkv, G*D]
      .reshape([B, Tp, H, D]) // [B, Tp, H, D]
      .slice([0, 0, 0, 0], [B, T, H, D]); // [B, T, H, D]
  });
}
