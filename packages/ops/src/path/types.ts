import { checkShape, tf, TsformerError } from '@tsformer/core';

/**
 * The keys, values and (PaTH-FoX) gates of the tokens seen so far, as the decode step and the
 * prefill carry them: every key is already transformed up to the latest token,
 * k_j <- H_t ... H_{j+1} k_j, so a new query reads them with a plain dot product.
 */
export interface PathState {
  /** `[B, H, S, D]`: the S past keys, transformed up to the latest token. */
  keys: tf.Tensor;
  /** `[B, H, S, V]`: the S past values, as given. */
  values: tf.Tensor;
  /** `[B, H, S]`, PaTH-FoX only: sum of log f_s over s = j+1 .. latest token, per past key j (<= 0). */
  logGates?: tf.Tensor;
}

/** Options every PaTH function takes. */
export interface PathOptions {
  /** Multiplies the logits `q^T (H ... H) k`. Default `D^-0.5`. */
  scale?: number;
  /**
   * PaTH-FoX log forget gates `log f_t <= 0`, `[B, T, H]` (`[B, H]` for the decode step). The
   * logit of (i, j) gets `sum_{s=j+1..i} log f_s`. Absent: plain PaTH.
   */
  g?: tf.Tensor;
}

/** Options of the blockwise (training / prefill) form. */
export interface PathBlockwiseOptions extends PathOptions {
  /** Tokens per block (the UT block size). Default 64. `T` need not be a multiple of it. */
  blockSize?: number;
  /**
   * Tokens before this call (prefill after a cache): their transformed keys, values and gates. The
   * new queries attend to them too, and their keys are moved on through the new tokens' transforms.
   * The caller keeps ownership.
   */
  past?: PathState;
  /** Also return the state after the last token (past and new tokens). Default false. */
  outputState?: boolean;
}

/** What the sequence-level functions return; the caller owns the tensors. */
export interface PathResult {
  /** `[B, T, H, V]` */
  o: tf.Tensor;
  /** The keys/values/gates after the last token, when asked for (`outputState`). */
  state?: PathState;
}

/** The sizes of one call. */
export interface PathDims {
  B: number;
  T: number;
  H: number;
  /** key / query / w width */
  D: number;
  /** value width */
  V: number;
}

/**
 * Checks `q, k, w: [B, T, H, D]`, `v: [B, T, H, V]`, `beta, g: [B, T, H]` and returns their
 * sizes. Errors name `op` and the offending tensor.
 */
export function checkPathInputs(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  w: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
): PathDims {
  const known = checkShape(`${op} q`, q, ['B', 'T', 'H', 'D']);
  checkShape(`${op} k`, k, ['B', 'T', 'H', 'D'], known);
  checkShape(`${op} w`, w, ['B', 'T', 'H', 'D'], known);
  const withV = checkShape(`${op} v`, v, ['B', 'T', 'H', 'V'], known);
  checkShape(`${op} beta`, beta, ['B', 'T', 'H'], withV);
  if (g) checkShape(`${op} g`, g, ['B', 'T', 'H'], withV);
  const dims = withV as unknown as PathDims;
  if (dims.T < 1) throw new TsformerError(`${op}: the sequence is empty (T = 0)`, 'shape');
  return dims;
}

/**
 * Checks a carried state against the sizes of the new tokens (`B, H, D, V`) and whether gates are
 * in use: a gated call needs `logGates`, an ungated one must not have them. Returns S.
 */
export function checkPathState(op: string, state: PathState, sizes: Record<string, number>, gated: boolean): number {
  const known = checkShape(`${op} past.keys`, state.keys, ['B', 'H', 'S', 'D'], sizes);
  checkShape(`${op} past.values`, state.values, ['B', 'H', 'S', 'V'], known);
  if (gated && !state.logGates) throw new TsformerError(`${op}: g is given but past.logGates is missing`, 'shape');
  if (!gated && state.logGates) throw new TsformerError(`${op}: past.logGates is given but g is not`, 'shape');
  if (state.logGates) checkShape(`${op} past.logGates`, state.logGates, ['B', 'H', 'S'], known);
  return known.S!;
}

/** The logit scale: `scale`, or `D^-0.5`. */
export function logitScale(op: string, D: number, scale: number | undefined): number {
  if (scale === undefined) return 1 / Math.sqrt(D);
  if (!Number.isFinite(scale)) throw new TsformerError(`${op}: scale must be a finite number, got ${scale}`, 'config');
  return scale;
}

/** Additive mask value: exp(-1e9 - max) is exactly 0 in float32. */
export const MASKED = -1e9;
