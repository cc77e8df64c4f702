/**
 * Helpers the attention tests share (not part of the package's API): host positions, decoding a
 * sequence in pieces through the cache, and redrawing a module's parameters at unit scale.
 */
import { expect } from 'vitest';
import { Rng, relativeError, tensorLeak, tf, type Module } from '@tsformer/core';
import { disposeCache, type Attention, type AttentionCache } from '../types.js';

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

/** The pieces of the layer tests share: the layer, its forward, a reference built from its weights. */
export interface LayerUnderTest {
  m: Attention;
  /** The reference output for x: [B, T, D] (built from the layer's weights and the op's naive form). */
  reference: (x: tf.Tensor) => tf.Tensor;
}

const fullForward = (m: Attention, x: tf.Tensor, training: boolean): tf.Tensor =>
  m.forward(x, { positions: range(x.shape[1]!), training }).y;

/** The layer's output equals its reference (relative RMS error below 1e-4). */
export async function expectMatchesReference({ m, reference }: LayerUnderTest, x: tf.Tensor): Promise<void> {
  const y = fullForward(m, x, true);
  const r = reference(x);
  expect(y.shape).toEqual(x.shape);
  expect(relativeError(await y.data(), await r.data())).toBeLessThan(1e-4);
  tf.dispose([y, r]);
}

/**
 * The gradients of <y, w> (w a fixed random tensor) with respect to every parameter and to x equal
 * the reference's, and every parameter gets a nonzero gradient.
 */
export async function expectReferenceGradients({ m, reference }: LayerUnderTest, x: tf.Tensor): Promise<void> {
  const w = tf.tensor(Rng.seeded(12).normalArray(x.size), x.shape);
  const vars = m.trainableVariables();
  expect(vars.length).toBe(m.namedParameters().length);
  const g1 = tf.variableGrads(() => fullForward(m, x, true).mul(w).sum() as tf.Scalar, vars);
  const g2 = tf.variableGrads(() => reference(x).mul(w).sum() as tf.Scalar, vars);
  for (const [name, p] of m.namedParameters()) {
    const a = await g1.grads[p.variable.name]!.data();
    const b = await g2.grads[p.variable.name]!.data();
    expect(relativeError(a, b), name).toBeLessThan(1e-4);
    expect(relativeError(b, new Float32Array(b.length)), `${name} has a gradient`).toBeGreaterThan(0);
  }
  const gx1 = tf.grad((xx: tf.Tensor) => fullForward(m, xx, true).mul(w).sum())(x);
  const gx2 = tf.grad((xx: tf.Tensor) => reference(xx).mul(w).sum())(x);
  expect(relativeError(await gx1.data(), await gx2.data())).toBeLessThan(1e-4);
  tf.dispose([w, g1.value, g2.value, gx1, gx2, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
}

/**
 * Causality: bumping token `at` of x leaves every earlier output unchanged and changes output `at`
 * (and, with `laterChange`, every later output too).
 */
export async function expectCausal(m: Attention, x: tf.Tensor, at: number, laterChange = false): Promise<void> {
  const [B, T] = x.shape as [number, number, number];
  const bump = tf.tidy(() => tf.oneHot([at], T).reshape([1, T, 1]).mul(3)); // [1, T, 1]
  const x2 = x.add(bump);
  const ya = fullForward(m, x, false);
  const yb = fullForward(m, x2, false);
  const a = (await ya.array()) as number[][][];
  const b = (await yb.array()) as number[][][];
  for (let i = 0; i < B; i++) {
    for (let t = 0; t < T; t++) {
      const err = relativeError(b[i]![t]!, a[i]![t]!);
      if (t < at) expect(err, `token ${t}`).toBeLessThan(1e-6);
      else if (t === at || laterChange) expect(err, `token ${t}`).toBeGreaterThan(1e-3);
    }
  }
  tf.dispose([bump, x2, ya, yb]);
}

/** A forward + backward pass, and decoding x in `pieces`, leave no tensor behind. */
export async function expectNoLeaks(m: Attention, x: tf.Tensor, pieces: ReadonlyArray<readonly [number, number]>): Promise<void> {
  const vars = m.trainableVariables();
  expect(
    await tensorLeak(() => {
      const { value, grads } = tf.variableGrads(() => fullForward(m, x, true).square().mean() as tf.Scalar, vars);
      tf.dispose([value, ...Object.values(grads)]);
    }),
  ).toBe(0);
  expect(
    await tensorLeak(() => {
      const { y, cache } = decodeInPieces(m, x, pieces);
      y.dispose();
      disposeCache(cache);
    }),
  ).toBe(0);
}
