import { describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf, finiteDifferenceGradient, dot } from '@tsformer/core';
import { l2Normalize } from './index.js';

/** The spec in float64: each row of length D divided by sqrt(sum of squares + eps). */
function naiveL2(x: ArrayLike<number>, D: number, eps: number): number[] {
  const y: number[] = [];
  for (let r = 0; r < x.length / D; r++) {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += x[r * D + d]! ** 2;
    for (let d = 0; d < D; d++) y.push(x[r * D + d]! / Math.sqrt(ss + eps));
  }
  return y;
}

describe('l2Normalize', () => {
  const shape = [2, 3, 4, 8];
  const n = 2 * 3 * 4 * 8;
  const xs = Rng.seeded(1).normalArray(n);
  const r = Rng.seeded(2).normalArray(n);

  for (const eps of [1e-6, 0.5]) {
    it(`matches the float64 reference in output and input gradient (eps = ${eps})`, async () => {
      const x = tf.tensor(xs, shape);
      const y = eps === 1e-6 ? l2Normalize(x) : l2Normalize(x, eps);
      expect(y.shape).toEqual(shape);
      expect(relativeError(await y.data(), naiveL2(xs, 8, eps))).toBeLessThan(1e-5);
      const dx = tf.grad((xx: tf.Tensor) => l2Normalize(xx, eps).mul(tf.tensor(r, shape)).sum() as tf.Scalar)(x);
      const ref = finiteDifferenceGradient((v) => dot(naiveL2(v, 8, eps), r), xs);
      expect(relativeError(await dx.data(), ref)).toBeLessThan(1e-5);
      tf.dispose([x, y, dx]);
    });
  }

  it('gives unit rows, maps zeros to zeros and leaks nothing', async () => {
    const x = tf.tensor(xs, shape);
    const norms = tf.tidy(() => l2Normalize(x).square().sum(-1));
    (await norms.data()).forEach((v) => expect(v).toBeCloseTo(1, 5));
    const zeros = tf.zeros([3, 4]);
    const z = l2Normalize(zeros);
    expect(Array.from(await z.data())).toEqual(new Array(12).fill(0));
    expect(await tensorLeak(() => tf.grad((xx: tf.Tensor) => l2Normalize(xx).sum() as tf.Scalar)(x).dispose())).toBe(0);
    tf.dispose([x, norms, zeros, z]);
  });
});
