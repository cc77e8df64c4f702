import { describe, expect, it } from 'vitest';
import { tensorLeak } from '@tsformer/core';
import { Alibi, alibiSlopes, createPositional } from './index.js';

describe('ALiBi slopes', () => {
  const close = (got: Float64Array, want: number[]) => {
    expect(got.length).toBe(want.length);
    want.forEach((w, i) => expect(got[i]).toBeCloseTo(w, 15));
  };

  it('H = 8 (a power of two): 1/2, 1/4, ..., 1/256', () => {
    close(alibiSlopes(8), [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]);
  });

  it('H = 12: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from the 16-head list', () => {
    close(alibiSlopes(12), [
      0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
      0.7071067811865476, 0.3535533905932738, 0.1767766952966369, 0.08838834764831845,
    ]);
  });

  it('H = 6: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3 from the 8-head list', () => {
    close(alibiSlopes(6), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
  });

  it('H = 1 and bad counts', () => {
    close(alibiSlopes(1), [0.00390625]);
    expect(() => alibiSlopes(0)).toThrow(/positive integer number of heads/);
  });
});

describe('ALiBi score bias', () => {
  const encoding = createPositional({ type: 'alibi' }, 16);
  const alibi = encoding as Alibi;

  it('is -slope_h * (q - k), shape [H, Tq, Tk], and has no rotation', async () => {
    expect(encoding.rotate).toBeUndefined();
    const q = Int32Array.of(3, 4);
    const k = Int32Array.of(0, 1, 2, 3, 4);
    const b = alibi.scoreBias(2, q, k);
    expect(b.shape).toEqual([2, 2, 5]);
    const v = (await b.array()) as number[][][];
    const slopes = [2 ** -4, 2 ** -8];
    for (let h = 0; h < 2; h++) for (let i = 0; i < 2; i++) for (let j = 0; j < 5; j++) expect(v[h]![i]![j]).toBeCloseTo(-slopes[h]! * (q[i]! - k[j]!), 7);
    expect(v[0]![0]!).toEqual([-0.1875, -0.125, -0.0625, 0, 0.0625]); // 2^-4 * (-3, -2, -1, 0, 1): the last is masked by the shell
  });

  it('uses absolute positions (a decode step against a cache)', async () => {
    const b = (await alibi.scoreBias(12, Int32Array.of(100), Int32Array.from({ length: 101 }, (_, j) => j)).array()) as number[][][];
    expect(b[8]![0]![0]).toBeCloseTo(-Math.SQRT1_2 * 100, 4);
    expect(b[3]![0]![100]).toBe(0);
    expect(b[3]![0]![90]).toBeCloseTo(-0.0625 * 10, 6);
  });

  it('leaks nothing', async () => {
    expect(await tensorLeak(() => alibi.scoreBias(6, Int32Array.of(4, 5), Int32Array.of(0, 1, 2, 3, 4, 5)).dispose())).toBe(0);
  });
});
