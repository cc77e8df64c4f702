import { TsformerError, tf } from '@tsformer/core';
import type { PositionalEncoding } from './types.js';

/**
 * ALiBi head slopes (Press et al., "Train Short, Test Long"). For H a power of two the geometric
 * sequence slope_h = 2^(-8(h+1)/H), h = 0..H-1. Otherwise, with n the largest power of two below H:
 * the n slopes of n heads, then the slopes of 2n heads at even indices (0, 2, 4, ..., which fall
 * between the first ones) until H slopes are taken.
 */
export function alibiSlopes(numHeads: number): Float64Array {
  if (!Number.isInteger(numHeads) || numHeads <= 0) throw new TsformerError(`ALiBi needs a positive integer number of heads, got ${numHeads}`, 'config');
  const geometric = (n: number) => Array.from({ length: n }, (_, h) => Math.pow(2, (-8 * (h + 1)) / n));
  const n = Math.pow(2, Math.floor(Math.log2(numHeads)));
  if (n === numHeads) return Float64Array.from(geometric(n));
  const extra = alibiSlopes(2 * n).filter((_, j) => j % 2 === 0).slice(0, numHeads - n);
  return Float64Array.from([...geometric(n), ...extra]);
}

/**
 * ALiBi: no rotation; each head h adds -slope_h * (i - j) to the score of query position i and key
 * position j, a penalty linear in the distance. Keys after the query get the same formula (a positive
 * bias); the shell's causal mask removes them.
 */
export class Alibi implements PositionalEncoding {
  readonly type = 'alibi';

  /** The slopes of `scoreBias`, one per head. */
  linearBiasSlopes(numHeads: number): Float64Array {
    return alibiSlopes(numHeads);
  }

  /** Bias [H, Tq, Tk]: -slope_h * (qPositions[i] - kPositions[j]) = slope_h * (kPositions[j] - qPositions[i]). */
  scoreBias(numHeads: number, qPositions: Int32Array, kPositions: Int32Array): tf.Tensor {
    const slopes = alibiSlopes(numHeads);
    const Tq = qPositions.length;
    const Tk = kPositions.length;
    // The offsets k - q (so a zero distance gives +0) are built once on the host; the per-head
    // products happen on the device.
    const offset = new Float32Array(Tq * Tk);
    for (let i = 0; i < Tq; i++) for (let j = 0; j < Tk; j++) offset[i * Tk + j] = kPositions[j]! - qPositions[i]!;
    return tf.tidy(() => tf.tensor(Float32Array.from(slopes), [numHeads, 1, 1]).mul(tf.tensor(offset, [1, Tq, Tk]))); // [H, Tq, Tk]
  }
}
