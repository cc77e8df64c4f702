/**
 * The spec of the softmax shell's core, as plain loops over host arrays in float64: for batch b,
 * head h (kv head g = floor(h / G)) and query i,
 *
 *   s_ij = q_i . k_j / sqrt(D) + bias_h(pos_i, pos_j)        for visible j:
 *                                                            pos_j <= pos_i (and pos_j > pos_i - window)
 *   softmax: o_i = sum_j exp(s_ij) / sum_j' exp(s_ij') v_j
 *   sigmoid: o_i = sum_j sigmoid(s_ij + sigmoidBias) v_j    (no row normalization)
 *
 * Slow and obvious: the test oracle of the dense and banded paths.
 */
export interface NaiveAttentionArgs {
  /** [B][T][H][D] */
  q: number[][][][];
  /** [B][S][Hkv][D] */
  k: number[][][][];
  /** [B][S][Hkv][D] */
  v: number[][][][];
  qPositions: ArrayLike<number>;
  kPositions: ArrayLike<number>;
  score: 'softmax' | 'sigmoid';
  /** Added before the sigmoid. Default 0. */
  sigmoidBias?: number;
  /** Sliding window. Default: full causal. */
  window?: number;
  /** Additive score bias of head h for a query and a key position. Default none. */
  bias?: (h: number, qPos: number, kPos: number) => number;
}

/** Returns o as a flat [B, T, H, D] array. */
export function naiveAttention(a: NaiveAttentionArgs): Float64Array {
  const B = a.q.length;
  const T = a.q[0]!.length;
  const H = a.q[0]![0]!.length;
  const D = a.q[0]![0]![0]!.length;
  const S = a.k[0]!.length;
  const G = H / a.k[0]![0]!.length;
  const out = new Float64Array(B * T * H * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / G);
      for (let i = 0; i < T; i++) {
        const pi = a.qPositions[i]!;
        const js: number[] = [];
        const s: number[] = [];
        for (let j = 0; j < S; j++) {
          const pj = a.kPositions[j]!;
          if (pj > pi || (a.window !== undefined && pj <= pi - a.window)) continue;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += a.q[b]![i]![h]![d]! * a.k[b]![j]![g]![d]!;
          js.push(j);
          s.push(dot / Math.sqrt(D) + (a.bias ? a.bias(h, pi, pj) : 0));
        }
        let w: number[];
        if (a.score === 'softmax') {
          const mx = Math.max(...s);
          const e = s.map((z) => Math.exp(z - mx));
          const sum = e.reduce((acc, z) => acc + z, 0);
          w = e.map((z) => z / sum);
        } else {
          w = s.map((z) => 1 / (1 + Math.exp(-(z + (a.sigmoidBias ?? 0)))));
        }
        for (let d = 0; d < D; d++) {
          let acc = 0;
          js.forEach((j, n) => (acc += w[n]! * a.v[b]![j]![g]![d]!));
          out[((b * T + i) * H + h) * D + d] = acc;
        }
      }
    }
  }
  return out;
}
