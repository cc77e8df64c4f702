import { describe, expect, it } from 'vitest';
import { tf, tensorLeak } from '@tsformer/core';
import { flashAttention, flashAttentionComposite } from './attention.js';
import { rmsNormComposite } from './rmsnorm.js';
import { ropeComposite } from './rope.js';
import { sparseCrossEntropyComposite } from './xent.js';
import { adamwUpdateComposite } from './adamw.js';
import { randn, relRms, geometricSlopes } from './checks.js';

// The composite definitions (the kernels' oracles) against plain float64 loops, on cpu.

const arr = (t: tf.Tensor) => Array.from(t.dataSync());
const rel = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let n = 0;
  let d = 0;
  for (let i = 0; i < b.length; i++) {
    n += (a[i]! - b[i]!) ** 2;
    d += b[i]! ** 2;
  }
  return Math.sqrt(n / d);
};

function attentionLoops(q: number[], k: number[], v: number[], [B, T, H, Hkv, D]: number[], o: { window?: number; slopes?: number[]; sigmoidBias?: number }) {
  const G = H! / Hkv!;
  const out = new Float64Array(B! * T! * H! * D!);
  for (let b = 0; b < B!; b++)
    for (let h = 0; h < H!; h++)
      for (let i = 0; i < T!; i++) {
        const w: number[] = [];
        const js: number[] = [];
        for (let j = 0; j <= i; j++) {
          if (o.window && i - j >= o.window) continue;
          let s = 0;
          for (let d = 0; d < D!; d++) s += q[((b * T! + i) * H! + h) * D! + d]! * k[((b * T! + j) * Hkv! + Math.floor(h / G)) * D! + d]!;
          w.push(s / Math.sqrt(D!) - (o.slopes ? o.slopes[h]! * (i - j) : 0));
          js.push(j);
        }
        let p: number[];
        if (o.sigmoidBias !== undefined) p = w.map((s) => 1 / (1 + Math.exp(-(s + o.sigmoidBias!))));
        else {
          const m = Math.max(...w);
          const e = w.map((s) => Math.exp(s - m));
          const z = e.reduce((a, c) => a + c, 0);
          p = e.map((x) => x / z);
        }
        for (let d = 0; d < D!; d++) {
          let acc = 0;
          js.forEach((j, n) => (acc += p[n]! * v[((b * T! + j) * Hkv! + Math.floor(h / G)) * D! + d]!));
          out[((b * T! + i) * H! + h) * D! + d] = acc;
        }
      }
  return out;
}

describe('composite definitions', () => {
  it('attention: GQA, window, ALiBi, sigmoid match the loops; flashAttention is the composite off webgpu', async () => {
    const dims = [2, 11, 4, 2, 8];
    const q = randn([2, 11, 4, 8], 1);
    const k = randn([2, 11, 2, 8], 2);
    const v = randn([2, 11, 2, 8], 3);
    for (const o of [{}, { window: 3 }, { slopes: geometricSlopes(4) }, { sigmoidBias: -Math.log(11), window: 5 }]) {
      const opts = { window: o.window, alibiSlopes: o.slopes, score: o.sigmoidBias !== undefined ? ('sigmoid' as const) : ('softmax' as const), sigmoidBias: o.sigmoidBias };
      const y = flashAttentionComposite(q, k, v, opts);
      expect(rel(arr(y), attentionLoops(arr(q), arr(k), arr(v), dims, o))).toBeLessThan(1e-5);
      const z = flashAttention(q, k, v, opts);
      expect(await relRms(z, y)).toBe(0);
      tf.dispose([y, z]);
    }
    // causality: changing the last token leaves earlier outputs unchanged
    const q2 = tf.concat([q.slice([0, 0, 0, 0], [2, 10, 4, 8]), randn([2, 1, 4, 8], 9)], 1);
    const a = flashAttentionComposite(q, k, v).slice([0, 0, 0, 0], [2, 10, 4, 8]);
    const b = flashAttentionComposite(q2, k, v).slice([0, 0, 0, 0], [2, 10, 4, 8]);
    expect(await relRms(a, b)).toBe(0);
    expect(await tensorLeak(() => tf.dispose(flashAttentionComposite(q, k, v, { window: 3 })))).toBe(0);
  });

  it('rmsnorm (gated), rope, sparse cross-entropy and adamw match the loops', () => {
    const [N, D] = [5, 6];
    const x = randn([N, D], 4);
    const w = randn([D], 5);
    const g = randn([N, D], 6);
    const xs = arr(x);
    const want = new Float64Array(N * D);
    for (let n = 0; n < N; n++) {
      let ss = 0;
      for (let d = 0; d < D; d++) ss += xs[n * D + d]! ** 2;
      const r = 1 / Math.sqrt(ss / D + 1e-5);
      for (let d = 0; d < D; d++) {
        const gg = arr(g)[n * D + d]!;
        want[n * D + d] = xs[n * D + d]! * r * arr(w)[d]! * (gg / (1 + Math.exp(-gg)));
      }
    }
    expect(rel(arr(rmsNormComposite(x, w, 1e-5, g)), want)).toBeLessThan(1e-6);

    // rope, half layout with R = 4 of D = 6: dims 4, 5 pass through
    const xr = randn([1, 2, 1, 6], 7);
    const ang = [0.3, -1.1, 2.0, 0.7]; // [T=2, P=2]
    const y = arr(ropeComposite(xr, tf.tensor(ang.map(Math.cos), [2, 2]), tf.tensor(ang.map(Math.sin), [2, 2]), 'half'));
    const xa = arr(xr);
    for (let t = 0; t < 2; t++)
      for (let i = 0; i < 2; i++) {
        const [c, s] = [Math.cos(ang[t * 2 + i]!), Math.sin(ang[t * 2 + i]!)];
        const [a, b] = [xa[t * 6 + i]!, xa[t * 6 + i + 2]!];
        expect(y[t * 6 + i]).toBeCloseTo(a * c - b * s, 5);
        expect(y[t * 6 + i + 2]).toBeCloseTo(b * c + a * s, 5);
        expect(y[t * 6 + 4 + i]).toBe(xa[t * 6 + 4 + i]);
      }

    const logits = randn([3, 7], 8);
    const la = arr(logits);
    const targets = [6, 0, 3];
    let loss = 0;
    for (let n = 0; n < 3; n++) {
      const row = la.slice(n * 7, n * 7 + 7);
      const m = Math.max(...row);
      loss += m + Math.log(row.reduce((a, z) => a + Math.exp(z - m), 0)) - row[targets[n]!]!;
    }
    expect(sparseCrossEntropyComposite(logits, tf.tensor1d(targets, 'int32')).dataSync()[0]).toBeCloseTo(loss / 3, 5);

    const h = { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 2 };
    const u = adamwUpdateComposite(tf.tensor1d([1]), tf.tensor1d([0.2]), tf.tensor1d([0.04]), tf.tensor1d([0.5]), h);
    const m2 = 0.9 * 0.2 + 0.1 * 0.5;
    const v2 = 0.95 * 0.04 + 0.05 * 0.25;
    const p2 = 1 - 0.01 * (m2 / (1 - 0.81) / (Math.sqrt(v2 / (1 - 0.95 ** 2)) + 1e-8) + 0.1);
    expect(u.p.dataSync()[0]).toBeCloseTo(p2, 6);
    expect(u.v.dataSync()[0]).toBeCloseTo(v2, 7);
  });
});
