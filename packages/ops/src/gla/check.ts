import { TsformerError, checkShape, type Tensor } from '@tsformer/core';

/** The sizes of one GLA call: batch, time, heads, key width, value width. */
export interface GlaDims {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
}

/** Options every GLA form accepts. */
export interface GlaOptions {
  /** Multiplies the queries. Default K^-0.5. */
  scale?: number;
  /** The state before the first token, [B, H, K, V]. Default zeros. Not disposed. */
  initialState?: Tensor;
}

/** What the sequence forms (`glaChunk`, `glaRecurrent`) return. The caller owns (disposes) both. */
export interface GlaOutput {
  /** [B, T, H, V] */
  o: Tensor;
  /** The state after the last token, [B, H, K, V]; present when `outputFinalState` is set. */
  finalState?: Tensor;
}

/**
 * Checks the shapes of q, k [B, T, H, K], v [B, T, H, V], g [B, T, H, K] and an optional
 * initial state [B, H, K, V]; throws a `TsformerError` naming the culprit. The sign of g
 * (log gates must be <= 0) is not checked: that would need a read-back from the device.
 */
export function checkGlaInputs(op: string, q: Tensor, k: Tensor, v: Tensor, g: Tensor, initialState?: Tensor): GlaDims {
  const d = checkShape(`${op} q`, q, ['B', 'T', 'H', 'K']);
  checkShape(`${op} k`, k, ['B', 'T', 'H', 'K'], d);
  checkShape(`${op} g`, g, ['B', 'T', 'H', 'K'], d);
  const dv = checkShape(`${op} v`, v, ['B', 'T', 'H', 'V'], d);
  if (initialState) checkShape(`${op} initialState`, initialState, ['B', 'H', 'K', 'V'], dv);
  const dims = { B: dv.B!, T: dv.T!, H: dv.H!, K: dv.K!, V: dv.V! };
  if (dims.T < 1) throw new TsformerError(`${op}: the sequence is empty (T = 0)`, 'shape');
  return dims;
}

/** The query scale of a call: the given one, or K^-0.5. */
export function queryScale(K: number, scale: number | undefined): number {
  return scale ?? 1 / Math.sqrt(K);
}
