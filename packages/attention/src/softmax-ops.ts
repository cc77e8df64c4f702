import { tf } from '@tsformer/core';

/**
 * Stateless math of the softmax shell: which keys a query sees, how scores become weights (the
 * normalizer slot), and the dense path that scores every query against every key. The banded
 * sliding-window path is in `window.ts`; the shell (`softmax.ts`) picks one.
 *
 * Layout: q [B, T, H, D], k and v [B, S, Hkv, D] (keys already rotated), outputs [B, T, H, D].
 * Query head h reads kv head floor(h / G) with G = H / Hkv.
 */

/** How scores become attention weights, and which keys are visible. */
export interface ScoreSpec {
  /**
   * `softmax`: weights are a softmax over the visible keys of each row.
   * `sigmoid`: each visible key weighs sigmoid(score + sigmoidBias) on its own, with no row
   * normalization (Ramapuram et al. 2024).
   */
  score: 'softmax' | 'sigmoid';
  /** Added to every score before the sigmoid; unused by softmax. */
  sigmoidBias: number;
  /** Sliding window: query i sees keys j with pos_i - window < pos_j <= pos_i. Undefined: full causal. */
  window?: number;
  /** Additive score bias [H, Tq, Tk] for query and key positions (ALiBi and the like). */
  scoreBias?: (qPositions: Int32Array, kPositions: Int32Array) => tf.Tensor;
  /**
   * When `scoreBias` is ALiBi's -slope_h (pos_q - pos_k): the slopes [H], so a fused kernel can
   * compute the bias itself. Leave undefined for any other bias.
   */
  alibiSlopes?: ArrayLike<number>;
  /** Applied to the weights (attention dropout while training); leave undefined when it is the identity. */
  dropout?: (p: tf.Tensor) => tf.Tensor;
}

/** Additive mask value: exp(-1e9 - max) is exactly 0 in float32. */
export const NEG = -1e9;

/** Whether a key at kPos is visible from a query at qPos (causal, and inside the window if any). */
export function visible(qPos: number, kPos: number, window: number | undefined): boolean {
  return kPos <= qPos && (window === undefined || kPos > qPos - window);
}

/** Additive mask [T, S]: 0 where the key is visible (causal, within `window` if given), -1e9 elsewhere. */
export function causalMask(qPositions: Int32Array, kPositions: Int32Array, window?: number): tf.Tensor {
  const T = qPositions.length;
  const S = kPositions.length;
  const m = new Float32Array(T * S);
  for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) if (!visible(qPositions[i]!, kPositions[j]!, window)) m[i * S + j] = NEG;
  return tf.tensor(m, [T, S]);
}

/**
 * The mask tensor `normalize` wants, from a 0/1 visibility array: additive (0 / -1e9) for softmax,
 * multiplicative (1 / 0) for sigmoid, so masked keys get a weight of exactly 0 with either.
 */
export function maskTensor(allowed: Float32Array, shape: number[], score: ScoreSpec['score']): tf.Tensor {
  if (score === 'sigmoid') return tf.tensor(allowed, shape);
  const add = new Float32Array(allowed.length);
  for (let i = 0; i < allowed.length; i++) if (allowed[i] === 0) add[i] = NEG;
  return tf.tensor(add, shape);
}

/**
 * The normalizer slot: scores (scaled, position-biased) -> weights over the last axis. `mask` comes
 * from `maskTensor` and broadcasts against `scores`. Dropout (if any) is applied to the weights.
 *   softmax: p = softmax(s + mask)
 *   sigmoid: p = sigmoid(s + b) * mask   (a masked key contributes exactly 0, and gets no gradient)
 */
export function normalize(scores: tf.Tensor, mask: tf.Tensor, spec: ScoreSpec): tf.Tensor {
  return tf.tidy(() => {
    const p = spec.score === 'softmax' ? tf.softmax(scores.add(mask), -1) : tf.sigmoid(scores.add(spec.sigmoidBias)).mul(mask);
    return spec.dropout ? spec.dropout(p) : p;
  });
}

/**
 * Dense path (and the reference for the banded one): every query against every key, [T, S]
 * scores per head, masked by positions (causal, and the band when `spec.window` is set).
 */
export function denseAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, qPositions: Int32Array, kPositions: Int32Array, spec: ScoreSpec): tf.Tensor {
  const [B, T, H, D] = q.shape as [number, number, number, number];
  const [, S, Hkv] = k.shape as [number, number, number, number];
  const G = H / Hkv;
  const allowed = new Float32Array(T * S);
  for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) if (visible(qPositions[i]!, kPositions[j]!, spec.window)) allowed[i * S + j] = 1;
  return tf.tidy(() => {
    // Group query heads by their kv head so K/V are never repeated in memory: head h = kv * G + g.
    const qg = q.transpose([0, 2, 1, 3]).reshape([B, Hkv, G * T, D]); // [B, Hkv, G*T, D]
    const kh = k.transpose([0, 2, 1, 3]); // [B, Hkv, S, D]
    const vh = v.transpose([0, 2, 1, 3]); // [B, Hkv, S, D]
    let scores = tf.matMul(qg, kh, false, true).mul(1 / Math.sqrt(D)); // [B, Hkv, G*T, S]
    scores = scores.reshape([B, H, T, S]); // [B, H, T, S]
    if (spec.scoreBias) scores = scores.add(spec.scoreBias(qPositions, kPositions)); // + [H, T, S]
    const p = normalize(scores, maskTensor(allowed, [T, S], spec.score), spec); // [B, H, T, S]
    const o = tf.matMul(p.reshape([B, Hkv, G * T, S]), vh); // [B, Hkv, G*T, D]
    return o.reshape([B, H, T, D]).transpose([0, 2, 1, 3]); // [B, T, H, D]
  });
}
