import { afterAll, describe, expect, it } from 'vitest';
import { Rng, TsformerError, relativeError, tensorLeak, tf, finiteDifferenceGradient, dot } from '@tsformer/core';
import { GatedRMSNorm } from './index.js';

/** The spec in float64: per row of length D, x / sqrt(mean(x^2) + eps) * w * silu(g). */
function naiveGatedRms(x: ArrayLike<number>, g: ArrayLike<number>, w: ArrayLike<number>, eps: number): number[] {
  const D = w.length;
  const y: number[] = [];
  for (let r = 0; r < x.length / D; r++) {
    let ms = 0;
    for (let d = 0; d < D; d++) ms += x[r * D + d]! ** 2 / D;
    for (let d = 0; d < D; d++) {
      const gi = g[r * D + d]!;
      y.push((x[r * D + d]! / Math.sqrt(ms + eps)) * w[d]! * (gi / (1 + Math.exp(-gi))));
    }
  }
  return y;
}

const made: GatedRMSNorm[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

describe('GatedRMSNorm', () => {
  const D = 8;
  const shape = [2, 3, 2, D]; // [B, T, H, D]
  const n = 2 * 3 * 2 * D;
  const xs = Rng.seeded(1).normalArray(n);
  const gs = Rng.seeded(2).normalArray(n, 2);
  const r = Rng.seeded(3).normalArray(n);

  it('has a ones weight without weight decay and eps 1e-5 by default', async () => {
    const m = new GatedRMSNorm(D);
    made.push(m);
    expect(m.eps).toBe(1e-5);
    expect(m.namedParameters().map(([k, p]) => [k, p.variable.shape, p.decay])).toEqual([['weight', [D], false]]);
    expect(Array.from(await m.weight.data())).toEqual(new Array(D).fill(1));
  });

  it('matches the float64 reference in output and in the gradients of x, gate and weight', async () => {
    const m = new GatedRMSNorm(D, 1e-5);
    made.push(m);
    m.weight.assign(tf.tensor(Rng.seeded(4).normalArray(D)));
    const ws = await m.weight.data();
    const x = tf.tensor(xs, shape);
    const g = tf.tensor(gs, shape);
    const y = m.forward(x, g);
    expect(y.shape).toEqual(shape);
    expect(relativeError(await y.data(), naiveGatedRms(xs, gs, ws, 1e-5))).toBeLessThan(1e-5);

    const loss = (xx: tf.Tensor, gg: tf.Tensor) => m.forward(xx, gg).mul(tf.tensor(r, shape)).sum() as tf.Scalar;
    const [dx, dg] = tf.grads(loss)([x, g]) as [tf.Tensor, tf.Tensor];
    const { value, grads } = tf.variableGrads(() => loss(x, g), [m.weight]);
    const refX = finiteDifferenceGradient((v) => dot(naiveGatedRms(v, gs, ws, 1e-5), r), xs);
    const refG = finiteDifferenceGradient((v) => dot(naiveGatedRms(xs, v, ws, 1e-5), r), gs);
    const refW = finiteDifferenceGradient((v) => dot(naiveGatedRms(xs, gs, v, 1e-5), r), ws);
    expect(relativeError(await dx.data(), refX)).toBeLessThan(1e-5);
    expect(relativeError(await dg.data(), refG)).toBeLessThan(1e-5);
    expect(relativeError(await grads[m.weight.name]!.data(), refW)).toBeLessThan(1e-5);
    tf.dispose([x, g, y, dx, dg, value, ...Object.values(grads)]);
  });

  it('leaks nothing in forward + backward', async () => {
    const m = new GatedRMSNorm(D);
    made.push(m);
    const x = tf.tensor(xs, shape);
    const g = tf.tensor(gs, shape);
    const step = () => {
      const { value, grads } = tf.variableGrads(() => m.forward(x, g).square().mean() as tf.Scalar, m.trainableVariables());
      tf.dispose([value, ...Object.values(grads)]);
    };
    expect(await tensorLeak(step)).toBe(0);
    tf.dispose([x, g]);
  });

  it('rejects bad shapes with errors naming the tensor', () => {
    const m = new GatedRMSNorm(D);
    made.push(m);
    const x = tf.zeros([2, D]);
    const xBad = tf.zeros([2, D + 1]);
    const gBad = tf.zeros([3, D]);
    expect(() => m.forward(xBad, xBad)).toThrow(/GatedRMSNorm input x/);
    expect(() => m.forward(x, gBad)).toThrow(TsformerError);
    expect(() => m.forward(x, gBad)).toThrow(/GatedRMSNorm gate/);
    const s = tf.scalar(1);
    expect(() => m.forward(s, s)).toThrow(/GatedRMSNorm input x/);
    tf.dispose([x, xBad, gBad, s]);
  });
});
