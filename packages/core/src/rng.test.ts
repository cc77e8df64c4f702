import { describe, expect, it } from 'vitest';
import { Rng } from './rng.js';

describe('Rng', () => {
  it('is reproducible from its seed and resumable from its state', () => {
    const a = Rng.seeded(42);
    const first = Array.from({ length: 5 }, () => a.nextUint32());
    const b = Rng.seeded(42);
    expect(Array.from({ length: 5 }, () => b.nextUint32())).toEqual(first);
    const saved = a.state();
    const next = Array.from({ length: 5 }, () => a.uniform());
    const c = Rng.fromState(JSON.parse(JSON.stringify(saved)));
    expect(Array.from({ length: 5 }, () => c.uniform())).toEqual(next);
  });

  it('serializes as unsigned 32-bit words at any point', () => {
    const r = Rng.seeded(1337);
    for (let i = 0; i < 1000; i++) {
      r.nextUint32();
      for (const w of r.state()) expect(w >>> 0).toBe(w);
    }
  });

  it('gives different streams for different seeds and stream ids', () => {
    expect(Rng.seeded(1).nextUint32()).not.toBe(Rng.seeded(2).nextUint32());
    expect(Rng.seeded(1, 0).nextUint32()).not.toBe(Rng.seeded(1, 1).nextUint32());
  });

  it('draws normals with about unit variance and uniforms in [0, 1)', () => {
    const r = Rng.seeded(7);
    const xs = r.normalArray(20000);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const varc = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(varc - 1)).toBeLessThan(0.05);
    const us = r.uniformArray(1000);
    expect(Math.min(...us)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...us)).toBeLessThan(1);
  });

  it('shuffles into a permutation', () => {
    const xs = Rng.seeded(3).shuffle(Array.from({ length: 100 }, (_, i) => i));
    expect([...xs].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(xs).not.toEqual(Array.from({ length: 100 }, (_, i) => i));
  });

  it('rejects a corrupt state', () => {
    expect(() => Rng.fromState([1, 2, 3] as unknown as [number, number, number, number])).toThrow(/invalid RNG state/);
  });
});
