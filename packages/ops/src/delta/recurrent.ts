/**
 * The recurrent (decode) form of DeltaNet and Gated DeltaNet: one token at a time with the state
 * as a batch of [K, V] matrices, products as batched matmuls. `deltaStep`/`gatedDeltaStep` advance
 * one token (the decode path); `deltaRecurrent`/`gatedDeltaRecurrent` run them over a sequence in
 * the ops' layout (prefill, or T = 1 decode with the same shapes as training).
 */
import { checkShape, matMul, tf } from '@tsformer/core';
import { checkDeltaInputs, readoutScale, splitAll, type DeltaOptions, type DeltaResult } from './types.js';

/**
 * One DeltaNet token. q, k: [B, H, K]; v: [B, H, V]; beta: [B, H]; `initialState` [B, H, K, V]
 * (default zeros). Returns o: [B, H, V] and the new state.
 */
export function deltaStep(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, opts: DeltaOptions = {}): DeltaResult {
  return step('deltaStep', q, k, v, beta, undefined, opts);
}

/** One Gated DeltaNet token; g: [B, H] is the log decay. Shapes as `deltaStep`. */
export function gatedDeltaStep(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor,
  opts: DeltaOptions = {},
): DeltaResult {
  return step('gatedDeltaStep', q, k, v, beta, g, opts);
}

/** DeltaNet over a sequence, token by token. Shapes as `deltaNaive`. */
export function deltaRecurrent(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, beta: tf.Tensor, opts: DeltaOptions = {}): DeltaResult {
  return sequence('deltaRecurrent', q, k, v, beta, undefined, opts);
}

/** Gated DeltaNet over a sequence, token by token. Shapes as `gatedDeltaNaive`. */
export function gatedDeltaRecurrent(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor,
  opts: DeltaOptions = {},
): DeltaResult {
  return sequence('gatedDeltaRecurrent', q, k, v, beta, g, opts);
}

function step(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaOptions,
): DeltaResult {
  const known = checkShape(`${op} q`, q, ['B', 'H', 'K']);
  checkShape(`${op} k`, k, ['B', 'H', 'K'], known);
  const sizes = checkShape(`${op} v`, v, ['B', 'H', 'V'], known);
  checkShape(`${op} beta`, beta, ['B', 'H'], sizes);
  if (g) checkShape(`${op} g`, g, ['B', 'H'], sizes);
  if (opts.initialState) checkShape(`${op} initialState`, opts.initialState, ['B', 'H', 'K', 'V'], sizes);
  const { B, H, K, V } = sizes as { B: number; H: number; K: number; V: number };
  const scale = readoutScale(op, K, opts.scale);
  const [o, finalState] = tf.tidy(() => {
    const S0 = opts.initialState ?? tf.zeros([B, H, K, V]);
    const [out, S] = advance(q, k, v, beta, g, S0.reshape([B * H, K, V]), scale); // [B*H, K, V]
    return [out.reshape([B, H, V]), S.reshape([B, H, K, V])] as [tf.Tensor, tf.Tensor];
  });
  return { o, finalState };
}

function sequence(
  op: string,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  opts: DeltaOptions,
): DeltaResult {
  const { B, T, H, K, V } = checkDeltaInputs(op, q, k, v, beta, g, opts.initialState);
  const scale = readoutScale(op, K, opts.scale);
  const [o, finalState] = tf.tidy(() => {
    const tokens = (x: tf.Tensor): tf.Tensor[] => splitAll(x, 1); // T x [B, 1, H, *]
    const qs = tokens(q);
    const ks = tokens(k);
    const vs = tokens(v);
    const betas = tokens(beta);
    const gs = g ? tokens(g) : undefined;
    let S = opts.initialState ? opts.initialState.reshape([B * H, K, V]) : tf.zeros([B * H, K, V]); // [B*H, K, V]
    const outs: tf.Tensor[] = [];
    for (let t = 0; t < T; t++) {
      const [out, next] = advance(qs[t]!, ks[t]!, vs[t]!, betas[t]!, gs?.[t], S, scale);
      outs.push(out.reshape([B, H, V])); // [B, H, V]
      S = next;
    }
    return [tf.stack(outs, 1), S.reshape([B, H, K, V])] as [tf.Tensor, tf.Tensor]; // [B, T, H, V]
  });
  return { o, finalState };
}

/**
 * One token on a [B*H, K, V] state: decay, predict v from k, write the scaled error back along k,
 * read out along q. Inputs hold B*H rows ([B, H, *] or [B, 1, H, *]); returns o: [B*H, 1, V] and
 * the new state.
 */
function advance(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  beta: tf.Tensor,
  g: tf.Tensor | undefined,
  S: tf.Tensor,
  scale: number,
): [tf.Tensor, tf.Tensor] {
  const [BH, K, V] = S.shape as [number, number, number];
  const decayed = g ? S.mul(g.exp().reshape([BH, 1, 1])) : S; // [B*H, K, V]
  const kRow = k.reshape([BH, 1, K]); // [B*H, 1, K]
  const predicted = matMul(kRow, decayed); // S^T k as a row: [B*H, 1, V]
  const u = v.reshape([BH, 1, V]).sub(predicted).mul(beta.reshape([BH, 1, 1])); // [B*H, 1, V]
  const next = decayed.add(matMul(kRow, u, true, false)); // k u^T: [B*H, K, V]
  const out = matMul(q.reshape([BH, 1, K]), next).mul(scale); // [B*H, 1, V]
  return [out, next];
}
