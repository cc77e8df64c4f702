import { describe, expect, it } from 'vitest';
import { Rope, llama3InverseFrequencies, ropeConfigSchema, ropeFrequencies } from './index.js';

// Llama 3.1 8B's rope_scaling: factor 8, low_freq_factor 1, high_freq_factor 4, original 8192,
// theta 500000, head dim 128. Pair i has w_i = 500000^(-i/64) and wavelength 2 pi / w_i; it makes
// 8192 / wavelength turns over the original context. Numbers worked out by hand from HF's
// `_compute_llama3_parameters`, not by the code under test:
//   i = 20: wavelength 379.41 (21.59 turns > 4): unchanged
//   i = 30: wavelength 2948.30 (2.7785 turns, between 1 and 4): s = (2.7785 - 1) / 3 = 0.59285,
//           w' = (1 - s) w / 8 + s w = 0.0021311195 * 0.64374 = 0.00137189357
//   i = 40: wavelength 22910.58 (0.358 turns < 1): divided by 8
describe('llama3 scaling', () => {
  const s = { type: 'llama3', factor: 8, originalMaxPositions: 8192, lowFreqFactor: 1, highFreqFactor: 4 } as const;

  it('keeps fast pairs, divides slow pairs by factor, blends by turns between', () => {
    const w = llama3InverseFrequencies(128, 500000, s);
    const base = (i: number) => 500000 ** (-i / 64);
    expect(w.length).toBe(64);
    expect(w[0]).toBe(1);
    expect(w[20]! / base(20)).toBeCloseTo(1, 14);
    expect(w[30]).toBeCloseTo(0.0013718935677611, 15);
    expect(w[40]! / (base(40) / 8)).toBeCloseTo(1, 14);
    expect(w[63]! / (base(63) / 8)).toBeCloseTo(1, 14);
    // monotone: never faster than the original, never slower than original / factor
    for (let i = 0; i < 64; i++) {
      expect(w[i]!).toBeLessThanOrEqual(base(i) * (1 + 1e-15));
      expect(w[i]!).toBeGreaterThanOrEqual((base(i) / 8) * (1 - 1e-15));
    }
  });

  it('is a rope scaling type of the config schema, with HF defaults and no attention factor', () => {
    const cfg = ropeConfigSchema.parse({ type: 'rope', theta: 500000, scaling: { type: 'llama3', factor: 8, originalMaxPositions: 8192 } });
    expect(cfg.scaling).toEqual(s);
    const f = ropeFrequencies(128, 500000, cfg.scaling, 0);
    expect(f.attentionFactor).toBe(1);
    expect(f.invFreq[30]).toBeCloseTo(0.0013718935677611, 15);
    const rope = new Rope({ headDim: 128, theta: 500000, scaling: cfg.scaling });
    expect(rope.lengthDependent).toBe(false);
    expect(Array.from(rope.invFreq)).toEqual(Array.from(f.invFreq));
  });

  it('names bad fields', () => {
    const bad = (scaling: object) => ropeConfigSchema.safeParse({ type: 'rope', scaling }).error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(bad({ type: 'llama3', factor: 8, originalMaxPositions: 8192, lowFreqFactor: 4, highFreqFactor: 4 })).toEqual(['scaling.highFreqFactor: highFreqFactor must be greater than lowFreqFactor']);
    expect(bad({ type: 'llama3', factor: 8 })?.[0]).toMatch(/^scaling\.originalMaxPositions/);
    expect(bad({ type: 'llama3', factor: 8, originalMaxPositions: 8192, low_freq_factor: 1 })?.[0]).toMatch(/low_freq_factor/);
  });
});
