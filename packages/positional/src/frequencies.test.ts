import { describe, expect, it } from 'vitest';
import { relativeError, tf } from '@tsformer/core';
import { Rope, dynamicNtkTheta, ntkTheta, ropeFrequencies, rotaryDimFor, yarnAttentionFactor, yarnCorrectionRange } from './index.js';

// Numbers worked out by hand from the HF formulas (modeling_rope_utils.py), not by the code under test.

describe('YaRN, factor 4, originalMaxPositions 2048, rotary dim 64, theta 10000', () => {
  // correction dim of r turns: 64 ln(2048 / (2 pi r)) / (2 ln 10000)
  //   r = 32 (betaFast): 8.064 -> floor 8;  r = 1 (betaSlow): 20.105 -> ceil 21
  const scaling = { type: 'yarn', factor: 4, originalMaxPositions: 2048, betaFast: 32, betaSlow: 1, truncate: true } as const;

  it('has correction range [8, 21] and attention factor 0.1 ln 4 + 1', () => {
    expect(yarnCorrectionRange(64, 10000, 2048, 32, 1)).toEqual([8, 21]);
    const [lo, hi] = yarnCorrectionRange(64, 10000, 2048, 32, 1, false);
    expect(lo).toBeCloseTo(8.064000845, 8);
    expect(hi).toBeCloseTo(20.105200672, 8);
    expect(yarnAttentionFactor(4)).toBeCloseTo(1.138629436111989, 14);
    expect(yarnAttentionFactor(1)).toBe(1);
  });

  it('keeps frequencies below dim 8, divides them by 4 from dim 21, ramps linearly between', () => {
    const { invFreq, attentionFactor } = ropeFrequencies(64, 10000, scaling, 0);
    expect(invFreq.length).toBe(32);
    expect(attentionFactor).toBeCloseTo(1.138629436111989, 14);
    expect(invFreq[0]).toBe(1);
    expect(invFreq[8]).toBeCloseTo(0.1, 15); // 10000^(-16/64), untouched
    // pair 14: ramp (14 - 8) / 13 = 6/13, so 10000^(-28/64) * (1 - 6/13 + 6/(13*4)) = 10^-1.75 * 17/26
    expect(invFreq[14]).toBeCloseTo(0.011627211527177574, 15);
    expect(invFreq[21]! / (10000 ** (-42 / 64) / 4)).toBeCloseTo(1, 14);
    expect(invFreq[31]! / (10000 ** (-62 / 64) / 4)).toBeCloseTo(1, 14);
    for (let i = 0; i < 32; i++) {
      const ramp = Math.min(1, Math.max(0, (i - 8) / 13));
      expect(invFreq[i]! / (10000 ** (-i / 32) * (1 - ramp + ramp / 4))).toBeCloseTo(1, 13);
    }
  });

  it('is what a partial Rope (head dim 128, fraction 0.5) uses', () => {
    const rope = new Rope({ headDim: 128, fraction: 0.5, scaling: { type: 'yarn', factor: 4, originalMaxPositions: 2048 } });
    expect(rope.rotaryDim).toBe(64);
    expect(relativeError(rope.invFreq, ropeFrequencies(64, 10000, scaling, 0).invFreq)).toBeLessThan(1e-15);
    expect(rope.attentionFactor).toBeCloseTo(1.138629436111989, 14);
  });
});

describe('YaRN correction range clipping (as HF: to [0, R - 1], though the ramp has R/2 entries)', () => {
  it('rotary dim 16, theta 100', () => {
    // originalMaxPositions 2048: 16 ln(2048 / 64 pi) / (2 ln 100) = 4.032 -> 4; 16 ln(2048 / 2 pi) / (2 ln 100) = 10.053 -> 11
    expect(yarnCorrectionRange(16, 100, 2048, 32, 1)).toEqual([4, 11]);
    // so the last pair (7) is only 3/7 of the way to fully interpolated
    const { invFreq } = ropeFrequencies(16, 100, { type: 'yarn', factor: 8, originalMaxPositions: 2048, betaFast: 32, betaSlow: 1, truncate: true }, 0);
    expect(invFreq[7]! / 100 ** (-14 / 16)).toBeCloseTo(1 - 3 / 7 + 3 / 7 / 8, 13);
    // originalMaxPositions 1e6: 14.787 -> 14 and 20.807 -> 21, clipped to 15
    expect(yarnCorrectionRange(16, 100, 1e6, 32, 1)).toEqual([14, 15]);
  });
});

describe('NTK and linear', () => {
  it('NTK x8 at rotary dim 8: theta 10000 * 8^(8/6) = 160000; the lowest frequency shrinks by exactly 8', () => {
    expect(ntkTheta(10000, 8, 8)).toBeCloseTo(160000, 6);
    const rope = new Rope({ headDim: 8, scaling: { type: 'ntk', factor: 8 } });
    const base = rope.baseFrequencies();
    for (let i = 0; i < 4; i++) expect(rope.invFreq[i]! / 160000 ** (-i / 4)).toBeCloseTo(1, 12);
    expect(base[3]! / rope.invFreq[3]!).toBeCloseTo(8, 10);
    expect(rope.invFreq[0]).toBe(1); // the fastest pair is unchanged
  });

  it('linear x4 divides every frequency by 4', () => {
    const rope = new Rope({ headDim: 8, theta: 500, scaling: { type: 'linear', factor: 4 } });
    const base = rope.baseFrequencies();
    rope.invFreq.forEach((f, i) => expect(f * 4).toBeCloseTo(base[i]!, 15));
  });

  it('rotary dims round down to even', () => {
    expect([rotaryDimFor(64, 1), rotaryDimFor(64, 0.25), rotaryDimFor(12, 0.75), rotaryDimFor(10, 0.3), rotaryDimFor(8, 0.2)]).toEqual([64, 16, 8, 2, 0]);
  });
});

describe('dynamic NTK, factor 2, originalMaxPositions 16, rotary dim 8', () => {
  const rope = new Rope({ headDim: 8, scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 16 } });
  // L = 17: theta' = 10000 * (2 * 17/16 - 1)^(8/6) = 10000 * 1.125^(4/3) = 11700.4715...
  const scaledTheta = 11700.47150466696;

  it('switches base once the sequence length exceeds originalMaxPositions', () => {
    expect(dynamicNtkTheta(10000, 2, 16, 8, 16)).toBe(10000);
    expect(dynamicNtkTheta(10000, 2, 16, 8, 17)).toBeCloseTo(scaledTheta, 8);
    expect(rope.lengthDependent).toBe(true);
    expect(relativeError(rope.frequencies(16).invFreq, rope.baseFrequencies())).toBe(0);
    const f17 = rope.frequencies(17).invFreq;
    for (let i = 0; i < 4; i++) expect(f17[i]! / scaledTheta ** (-i / 4)).toBeCloseTo(1, 12);
  });

  it('rotates with the length of the call: max(positions) + 1', async () => {
    const x = tf.ones([1, 1, 1, 8]); // [B, T, H, D]
    const angleOfPair3 = async (positions: Int32Array, row: number) => {
      const all = tf.ones([1, positions.length, 1, 8]); // [B, T, H, D]
      const y = (await rope.rotate(all, positions).array()) as number[][][][];
      const v = y[0]![row]![0]!; // pair 3 = dims 3 and 7 of (1, 1): angle a gives (cos a - sin a, cos a + sin a)
      return Math.atan2((v[7]! - v[3]!) / 2, (v[7]! + v[3]!) / 2);
    };
    const upTo = (n: number) => Int32Array.from({ length: n }, (_, i) => i);
    // position 5 inside a 16-token call: unscaled; inside a 17-token call: the scaled base
    expect(await angleOfPair3(upTo(16), 5)).toBeCloseTo(5 * 10000 ** (-3 / 4), 6);
    expect(await angleOfPair3(upTo(17), 5)).toBeCloseTo(5 * scaledTheta ** (-3 / 4), 6);
    // decode: a single token at position 15 (L = 16) is unscaled, at 16 (L = 17) scaled
    expect(await angleOfPair3(Int32Array.of(15), 0)).toBeCloseTo(15 * 10000 ** (-3 / 4), 6);
    expect(await angleOfPair3(Int32Array.of(16), 0)).toBeCloseTo(16 * scaledTheta ** (-3 / 4), 6);
    x.dispose();
  });

  it('static scalings do not depend on the length', () => {
    expect(new Rope({ headDim: 8, scaling: { type: 'yarn', factor: 2, originalMaxPositions: 16 } }).lengthDependent).toBe(false);
    expect(new Rope({ headDim: 8 }).lengthDependent).toBe(false);
  });
});
