/**
 * Helpers the attention tests share (not part of the package's API): host positions, decoding a
 * sequence in pieces through the cache, and redrawing a module's parameters at unit scale.
 */
import { Rng, tf, type Module } from '@tsformer/core';
import { disposeCache, type Attention, type AttentionCache } from './types.js';

/** Positions from..from+n-1. */
export const range = (n: number, from = 0): Int32Array => Int32Array.from({ length: n }, (_, i) => i + from);

/** The pieces [start, length] of a prefill of `prefill` tokens followed by single-token steps up to n. */
export const decodeSteps = (prefill: number, n: number): Array<[number, number]> => [
  [0, prefill],
  ...Array.from({ length: n - prefill }, (_, i) => [prefill + i, 1] as [number, number]),
];

/**
 * Runs x [B, T, D] through `m` in pieces [start, length] with a cache (positions from the start);
 * returns the concatenated outputs [B, T, D] and the final cache (the caller disposes both).
 */
export function decodeInPieces<C extends AttentionCache>(
  m: Attention,
  x: tf.Tensor,
  pieces: ReadonlyArray<readonly [number, number]>,
): { y: tf.Tensor; cache: C } {
  const [B, , D] = x.shape as [number, number, number];
  let cache: AttentionCache = m.initCache();
  const ys: tf.Tensor[] = [];
  for (const [s, n] of pieces) {
    const xs = x.slice([0, s, 0], [B, n, D]); // [B, n, D]
    const out = m.forward(xs, { positions: range(n, s), cache, training: false });
    xs.dispose();
    disposeCache(cache);
    cache = out.cache!;
    ys.push(out.y);
  }
  const y = tf.concat(ys, 1); // [B, T, D]
  tf.dispose(ys);
  return { y, cache: cache as C };
}

/**
 * Redraws every parameter of `m` as center + scale * N(0, 1), with (center, scale) from `draw`
 * (name, shape); the default draws weights at N(0, 1/fan_in), so that every parameter matters.
 */
export function redrawParams(
  m: Module,
  seed: number,
  draw: (name: string, shape: readonly number[]) => readonly [number, number] | undefined = () => undefined,
): void {
  const rng = Rng.seeded(seed);
  for (const [name, p] of m.namedParameters()) {
    const v = p.variable;
    const [center, scale] = draw(name, v.shape) ?? [0, 1 / Math.sqrt(v.shape[0]!)];
    const t = tf.tensor(Array.from(rng.normalArray(v.size), (e) => center + scale * e), v.shape);
    v.assign(t);
    t.dispose();
  }
}
