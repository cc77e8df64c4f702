import { describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { Rope, createPositional, positionalConfigSchema } from './index.js';

/** Direct transcription of the half-split rotation, one vector at a time. */
function naiveRope(x: number[], pos: number, theta: number): number[] {
  const D = x.length;
  const out = new Array<number>(D);
  for (let i = 0; i < D / 2; i++) {
    const a = pos / Math.pow(theta, (2 * i) / D);
    out[i] = x[i]! * Math.cos(a) - x[i + D / 2]! * Math.sin(a);
    out[i + D / 2] = x[i + D / 2]! * Math.cos(a) + x[i]! * Math.sin(a);
  }
  return out;
}

describe('Rope', () => {
  const rope = new Rope({ headDim: 8, theta: 500 });
  const x = tf.tensor(Rng.seeded(3).normalArray(2 * 5 * 3 * 8), [2, 5, 3, 8]); // [B, T, H, D]
  const positions = Int32Array.from([7, 8, 9, 10, 11]);

  it('matches the naive rotation', async () => {
    const y = (await rope.rotate(x, positions).array()) as number[][][][];
    const xs = (await x.array()) as number[][][][];
    for (const [b, t, h] of [[0, 0, 0], [1, 4, 2], [0, 2, 1]] as const) {
      expect(relativeError(y[b]![t]![h]!, naiveRope(xs[b]![t]![h]!, positions[t]!, 500))).toBeLessThan(1e-6);
    }
  });

  it('preserves norms and makes q.k depend only on relative position', async () => {
    const q = tf.tensor(Rng.seeded(4).normalArray(8), [1, 1, 1, 8]);
    const k = tf.tensor(Rng.seeded(5).normalArray(8), [1, 1, 1, 8]);
    const dot = async (pq: number, pk: number) =>
      (await rope.rotate(q, Int32Array.of(pq)).mul(rope.rotate(k, Int32Array.of(pk))).sum().data())[0]!;
    expect(await dot(10, 3)).toBeCloseTo(await dot(107, 100), 4);
    const n0 = (await q.norm().data())[0]!;
    expect((await rope.rotate(q, Int32Array.of(1234)).norm().data())[0]).toBeCloseTo(n0, 5);
  });

  it('leaks nothing and rejects wrong shapes', async () => {
    expect(await tensorLeak(() => rope.rotate(x, positions).dispose())).toBe(0);
    expect(() => rope.rotate(x, Int32Array.of(1, 2))).toThrow(/2 positions for a sequence of 5/);
    expect(() => new Rope({ headDim: 7 })).toThrow(/even head dim/);
  });

  it('is built from config; unknown keys are rejected', () => {
    const cfg = positionalConfigSchema.parse({ type: 'rope' });
    expect(cfg).toEqual({ type: 'rope', theta: 10000 });
    expect((createPositional(cfg, 16) as Rope).headDim).toBe(16);
    expect(createPositional({ type: 'none' }, 16).rotate).toBeUndefined();
    expect(positionalConfigSchema.safeParse({ type: 'rope', thetaa: 1 }).success).toBe(false);
  });
});
