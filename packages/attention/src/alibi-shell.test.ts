import { describe, expect, it } from 'vitest';
import { Rng, relativeError, tf } from '@tsformer/core';
import { Alibi, alibiSlopes } from '@tsformer/positional';
import { scoreAttention } from './softmax.js';
import { attentionConfigSchema, createAttention } from './registry.js';
import { disposeCache, type AttentionCache } from './types.js';

// The real ALiBi encoding (not a stub) through the shell: sigmoid and softmax scores, full and windowed.
describe('ALiBi in the softmax shell', () => {
  const H = 3, D = 4, T = 11, B = 1;
  const rnd = (seed: number, shape: number[]) => tf.tensor(Rng.seeded(seed).normalArray(shape.reduce((a, b) => a * b)), shape);
  const pos = Int32Array.from({ length: T }, (_, i) => i);
  const alibi = new Alibi();

  it.each([
    ['softmax', undefined],
    ['sigmoid', undefined],
    ['sigmoid', 4],
    ['softmax', 4],
  ] as const)('%s scores with window %s match float64 loops', async (score, window) => {
    const q = rnd(1, [B, T, H, D]), k = rnd(2, [B, T, H, D]), v = rnd(3, [B, T, H, D]);
    const bias = -Math.log(T);
    const o = scoreAttention(q, k, v, pos, pos, { score, sigmoidBias: bias, window, scoreBias: (qp, kp) => alibi.scoreBias(H, qp, kp) });
    const [Q, K, Vv] = (await Promise.all([q.array(), k.array(), v.array()])) as [number[][][][], number[][][][], number[][][][]];
    const slopes = alibiSlopes(H);
    const out = new Float64Array(T * H * D);
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++) {
        const js = Array.from({ length: i + 1 }, (_, j) => j).filter((j) => window === undefined || i - j < window);
        const s = js.map((j) => Q[0]![i]![h]!.reduce((a, x, d) => a + x * K[0]![j]![h]![d]!, 0) / Math.sqrt(D) - slopes[h]! * (i - j));
        let w: number[];
        if (score === 'softmax') {
          const m = Math.max(...s);
          const e = s.map((x) => Math.exp(x - m));
          const z = e.reduce((a, b) => a + b, 0);
          w = e.map((x) => x / z);
        } else w = s.map((x) => 1 / (1 + Math.exp(-(x + bias))));
        for (let d = 0; d < D; d++) out[(i * H + h) * D + d] = js.reduce((a, j, n) => a + w[n]! * Vv[0]![j]![h]![d]!, 0);
      }
    expect(relativeError(await o.data(), out)).toBeLessThan(1e-5);
    tf.dispose([q, k, v, o]);
  });

  it('decodes with a sliding-window cache exactly like the full forward (sigmoid + ALiBi)', async () => {
    const m = createAttention(attentionConfigSchema.parse({ type: 'mha', numHeads: 3, score: 'sigmoid', window: 4 }), {
      dModel: 12,
      positional: alibi,
      rng: Rng.seeded(5),
      contextLength: 16,
    });
    const x = rnd(9, [1, T, 12]);
    const full = await m.forward(x, { positions: pos, training: false }).y.data();
    let cache: AttentionCache = m.initCache();
    const rows: number[] = [];
    for (let t = 0; t < T; t++) {
      const xt = x.slice([0, t, 0], [1, 1, 12]);
      const r = m.forward(xt, { positions: Int32Array.of(t), cache, training: false });
      disposeCache(cache);
      cache = r.cache!;
      rows.push(...(await r.y.data()));
      tf.dispose([xt, r.y]);
    }
    disposeCache(cache);
    expect(relativeError(rows, full)).toBeLessThan(1e-5);
    x.dispose();
    m.dispose();
  });
});
