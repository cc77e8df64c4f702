import { checkShape, tf, TsformerError } from '@tsformer/core';

/** Options every DeltaNet / Gated DeltaNet function takes. */
export interface DeltaOptions {
  /** Multiplies the read-out `S_t^T q_t`. Default `K^-0.5`. */
  scale?: number;
  /** The state before the first token, `[B, H, K, V]`. Default zeros. The caller keeps ownership. */
  initialState?: tf.Tensor;
}

/** Options of the chunked (training) form. */
export interface DeltaChunkOptions extends DeltaOptions {
  /** Tokens per chunk (the WY block size). Default 64. `T` need not be a multiple of it. */
  chunkSize?: number;
}

/** What every function returns; the caller owns (and disposes) both tensors. */
export interface DeltaResult {
  /** `[B, T, H, V]` (`[B, H, V]` for the single-token steps). */
  o: tf.Tensor;
  /** The state after the last token, `[B, H, K, V]`. */
  finalState: tf.Tensor;
}

/** The sizes of one call. */
export interface DeltaDims {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
}

/**
 * Checks the inputs of a sequence-level op (`q, k: [B, T, H, K]`, `v: [B, T, H, V]`,
 * `beta, g: [B, T, H]`, `initialState: [B, H, K, V]`) and returns their sizes. Errors name `op`
 * and the offending tensor.
 */
export function checkDeltaInputs(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  initialState: tf.Tensor | undefined,
): DeltaDims {
  const known = checkShape(`${op} q`, q, ['B', 'T', 'H', 'K']);
  checkShape(`${op} k`, k, ['B', 'T', 'H', 'K'], known);
  const withV = checkShape(`${op} v`, v, ['B', 'T', 'H', 'V'], known);
  checkShape(`${op} beta`, beta, ['B', 'T', 'H'], withV);
  if (g) checkShape(`${op} g`, g, ['B', 'T', 'H'], withV);
  if (initialState) checkShape(`${op} initialState`, initialState, ['B', 'H', 'K', 'V'], withV);
  const dims = withV as unknown as DeltaDims;
  if (dims.T < 1) throw new TsformerError(`${op}: the sequence is empty (T = 0)`, 'shape');
  return dims;
}

/** The read-out scale: `opts.scale`, or `K^-0.5`. */
export function readoutScale(op: string, K: number, scale: number | undefined): number {
  if (scale === undefined) return 1 / Math.sqrt(K);
  if (!Number.isFinite(scale)) throw new TsformerError(`${op}: scale must be a finite number, got ${scale}`, 'config');
  return scale;
}

/**
 * Splits `x` into its `x.shape[axis]` pieces of size 1 along `axis`, by recursive halving. Same
 * result as `tf.split(x, n, axis)`, but tfjs-wasm's Slice copies its whole input to the host on
 * every call, so n direct slices cost n full copies; halving costs about 2 log2(n). (It also never
 * splits into a single piece, whose Split gradient tfjs 4.22 gets wrong.)
 */
export function splitAll(x: tf.Tensor, axis: number): tf.Tensor[] {
  const n = x.shape[axis]!;
  if (n === 1) return [x];
  const half = n >> 1;
  const [lo, hi] = tf.split(x, [half, n - half], axis) as [tf.Tensor, tf.Tensor];
  return [...splitAll(lo, axis), ...splitAll(hi, axis)];
}
