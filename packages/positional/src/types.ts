import type { tf } from '@tsformer/core';

/**
 * A positional encoding as the attention shell sees it. It is built by the model from config and
 * passed into each attention module; attention never builds its own.
 *
 * `positions` are absolute token positions of the rows of q (and of k for `rotate`), shared by the
 * batch, on the host so masks and tables are built without a device read-back.
 */
export interface PositionalEncoding {
  readonly type: string;
  /** Rotates q [B, T, H, D] (or k [B, T, Hkv, D]) at the given positions (length T). */
  rotate?(x: tf.Tensor, positions: Int32Array): tf.Tensor;
  /** Additive score bias [H, Tq, Tk] for query and key positions (e.g. ALiBi). */
  scoreBias?(numHeads: number, qPositions: Int32Array, kPositions: Int32Array): tf.Tensor;
  /**
   * When `scoreBias` is ALiBi's linear bias -slope_h (q - k): the slopes, one per head, so a fused
   * attention kernel can add the bias itself instead of reading an [H, Tq, Tk] tensor.
   */
  linearBiasSlopes?(numHeads: number): Float64Array;
  /**
   * True when `rotate`'s angles depend on the largest position of the call (dynamic NTK scaling).
   * A key rotated in an earlier call then does not match the current queries: the shell should cache
   * keys unrotated and rotate all cached keys with their positions at every call. Default false.
   */
  readonly lengthDependent?: boolean;
  dispose?(): void;
}

/** NoPE: no positional signal at all (`{ type: none }`). */
export const noPositional: PositionalEncoding = { type: 'none' };
