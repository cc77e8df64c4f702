import { describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { Rope, type RopeOptions } from './index.js';

type Spec = Omit<RopeOptions, 'headDim'>;

/**
 * The angle of pair i at position p, straight from each scaling's defining formula (float64).
 * `seqLen` is the call's largest position + 1 (only dynamic NTK uses it).
 */
function naiveAngle(spec: Spec, R: number, i: number, p: number, seqLen: number): number {
  const theta = spec.theta ?? 10000;
  const e = (2 * i) / R; // frequency exponent of pair i
  const s = spec.scaling;
  if (!s) return p / theta ** e;
  switch (s.type) {
    case 'linear':
      return p / s.factor / theta ** e;
    case 'ntk':
      return p / (theta * s.factor ** (R / (R - 2))) ** e;
    case 'dynamic': {
      const base = seqLen > s.originalMaxPositions ? theta * ((s.factor * seqLen) / s.originalMaxPositions - (s.factor - 1)) ** (R / (R - 2)) : theta;
      return p / base ** e;
    }
    case 'yarn': {
      // pair index that turns `r` times over the original context
      const dimAt = (r: number) => (R * Math.log(s.originalMaxPositions / (2 * Math.PI * r))) / (2 * Math.log(theta));
      const trunc = s.truncate ?? true;
      const lo = Math.max(trunc ? Math.floor(dimAt(s.betaFast ?? 32)) : dimAt(s.betaFast ?? 32), 0);
      let hi = Math.min(trunc ? Math.ceil(dimAt(s.betaSlow ?? 1)) : dimAt(s.betaSlow ?? 1), R - 1);
      if (hi === lo) hi += 0.001;
      const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo))); // 0: keep the frequency, 1: divide it by factor
      const extrapolated = 1 / theta ** e;
      const interpolated = extrapolated / s.factor;
      return p * (interpolated * ramp + extrapolated * (1 - ramp));
    }
    case 'llama3': {
      // turns of pair i over the original context: > highFreqFactor keeps, < lowFreqFactor divides by factor, blends between
      const w = 1 / theta ** e;
      const turns = (s.originalMaxPositions * w) / (2 * Math.PI);
      const [lo, hi] = [s.lowFreqFactor ?? 1, s.highFreqFactor ?? 4];
      const t = Math.min(1, Math.max(0, (turns - lo) / (hi - lo)));
      return p * w * ((1 - t) / s.factor + t);
    }
  }
}

function naiveAttentionFactor(spec: Spec): number {
  const s = spec.scaling;
  return s?.type === 'yarn' ? (s.attentionFactor ?? 0.1 * Math.log(s.factor) + 1) : 1;
}

/** The rotation of one head vector, one pair at a time. */
function naiveRotate(x: number[], p: number, spec: Spec, seqLen: number): number[] {
  const D = x.length;
  let R = Math.floor((spec.fraction ?? 1) * D);
  R -= R % 2;
  const m = naiveAttentionFactor(spec);
  const out = x.slice();
  for (let i = 0; i < R / 2; i++) {
    const [a, b] = (spec.layout ?? 'half') === 'half' ? [i, i + R / 2] : [2 * i, 2 * i + 1];
    const th = naiveAngle(spec, R, i, p, seqLen);
    out[a] = m * (x[a]! * Math.cos(th) - x[b]! * Math.sin(th));
    out[b] = m * (x[b]! * Math.cos(th) + x[a]! * Math.sin(th));
  }
  return out;
}

/** Every head vector of a [B, T, H, D] array rotated naively; the call's seqLen is max(positions) + 1. */
function naiveRotateAll(xs: number[][][][], positions: Int32Array, spec: Spec): number[] {
  const seqLen = Math.max(...positions) + 1;
  return xs.flatMap((xb) => xb.flatMap((xt, t) => xt.flatMap((xh) => naiveRotate(xh, positions[t]!, spec, seqLen))));
}

const variants: Array<[string, number, Spec]> = [
  ['unscaled, half', 8, { theta: 500 }],
  ['unscaled, interleaved', 8, { theta: 500, layout: 'interleaved' }],
  ['partial 0.5, interleaved', 12, { fraction: 0.5, layout: 'interleaved' }],
  ['partial 0.75 (9 -> 8 dims), half', 12, { fraction: 0.75, theta: 1000 }],
  ['linear x4, interleaved', 8, { scaling: { type: 'linear', factor: 4 }, layout: 'interleaved' }],
  ['ntk x8, partial 0.5, half', 16, { fraction: 0.5, scaling: { type: 'ntk', factor: 8 } }],
  ['dynamic x2 (orig 16), half', 8, { scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 16 } }],
  ['dynamic x3 (orig 16), partial, interleaved', 10, { fraction: 0.8, layout: 'interleaved', scaling: { type: 'dynamic', factor: 3, originalMaxPositions: 16 } }],
  ['yarn x4, half', 16, { theta: 100, scaling: { type: 'yarn', factor: 4, originalMaxPositions: 64, betaFast: 8, betaSlow: 0.5 } }],
  ['llama3 x8 (orig 64), half', 16, { theta: 100, scaling: { type: 'llama3', factor: 8, originalMaxPositions: 64 } }],
  [
    'yarn x8 no truncate, own attention factor, partial, interleaved',
    24,
    { fraction: 2 / 3, layout: 'interleaved', scaling: { type: 'yarn', factor: 8, originalMaxPositions: 128, truncate: false, attentionFactor: 1.3 } },
  ],
];

describe.each(variants)('Rope %s', (_name, D, spec) => {
  const rope = new Rope({ headDim: D, ...spec });
  const x = tf.tensor(Rng.seeded(3).normalArray(2 * 5 * 3 * D), [2, 5, 3, D]); // [B, T, H, D]
  const positions = Int32Array.from([0, 3, 17, 40, 129]);

  it('matches the naive rotation', async () => {
    const y = await rope.rotate(x, positions).data();
    const want = naiveRotateAll((await x.array()) as number[][][][], positions, spec);
    expect(relativeError(y, want)).toBeLessThan(1e-6);
    // a decode step: one token far out (dynamic sees seqLen 1001)
    const x1 = tf.tensor(Rng.seeded(4).normalArray(D), [1, 1, 1, D]); // [B, T, H, D]
    const y1 = await rope.rotate(x1, Int32Array.of(1000)).data();
    expect(relativeError(y1, naiveRotateAll((await x1.array()) as number[][][][], Int32Array.of(1000), spec))).toBeLessThan(1e-6);
  });

  it('passes the dims after rotaryDim through unchanged', async () => {
    const y = (await rope.rotate(x, positions).array()) as number[][][][];
    const xs = (await x.array()) as number[][][][];
    expect(y[1]![2]![0]!.slice(rope.rotaryDim)).toEqual(xs[1]![2]![0]!.slice(rope.rotaryDim));
  });

  it('gradients of a rotated dot product match finite differences of the naive form', async () => {
    const q = tf.tensor(Rng.seeded(5).normalArray(3 * 2 * D), [1, 3, 2, D]); // [B, T, H, D]
    const k = tf.tensor(Rng.seeded(6).normalArray(3 * 2 * D), [1, 3, 2, D]);
    const qPos = Int32Array.of(5, 6, 70);
    const kPos = Int32Array.of(2, 9, 33);
    const [gq, gk] = tf.grads((a: tf.Tensor, b: tf.Tensor) => rope.rotate(a, qPos).mul(rope.rotate(b, kPos)).sum())([q, k]) as [tf.Tensor, tf.Tensor];
    const qs = Array.from(await q.data());
    const ks = Array.from(await k.data());
    // L(q, k) = sum over vectors of rot(q) . rot(k), in float64
    const loss = (qa: number[], ka: number[]) => {
      const nest = (a: number[]) => [[0, 1, 2].map((t) => [0, 1].map((h) => a.slice((t * 2 + h) * D, (t * 2 + h + 1) * D)))];
      const rq = naiveRotateAll(nest(qa), qPos, spec);
      const rk = naiveRotateAll(nest(ka), kPos, spec);
      return rq.reduce((acc, v, i) => acc + v * rk[i]!, 0);
    };
    const eps = 1e-4;
    const fd = (which: 'q' | 'k') =>
      (which === 'q' ? qs : ks).map((_, i) => {
        const plus = (which === 'q' ? qs : ks).slice();
        const minus = plus.slice();
        plus[i]! += eps;
        minus[i]! -= eps;
        return which === 'q' ? (loss(plus, ks) - loss(minus, ks)) / (2 * eps) : (loss(qs, plus) - loss(qs, minus)) / (2 * eps);
      });
    expect(relativeError(await gq.data(), fd('q'))).toBeLessThan(1e-5);
    expect(relativeError(await gk.data(), fd('k'))).toBeLessThan(1e-5);
  });

  it('leaks nothing, forward or backward', async () => {
    expect(await tensorLeak(() => rope.rotate(x, positions).dispose())).toBe(0);
    expect(await tensorLeak(() => tf.tidy(() => tf.grad((a: tf.Tensor) => rope.rotate(a, positions).square().sum())(x)).dispose())).toBe(0);
  });
});

describe('Rope layouts and relative positions', () => {
  it('interleaved is half conjugated by the pair permutation', async () => {
    for (const [D, fraction] of [[8, 1], [12, 0.5], [10, 0.7]] as const) {
      const half = new Rope({ headDim: D, fraction, scaling: { type: 'yarn', factor: 4, originalMaxPositions: 32 } });
      const inter = new Rope({ headDim: D, fraction, layout: 'interleaved', scaling: { type: 'yarn', factor: 4, originalMaxPositions: 32 } });
      const R = half.rotaryDim;
      // half dim k holds interleaved dim perm[k]: the first halves are the even dims, then the odd ones
      const perm = Array.from({ length: D }, (_, k) => (k < R / 2 ? 2 * k : k < R ? 2 * (k - R / 2) + 1 : k));
      const x = tf.tensor(Rng.seeded(7).normalArray(2 * 4 * 3 * D), [2, 4, 3, D]); // [B, T, H, D]
      const pos = Int32Array.of(1, 2, 50, 999);
      const viaHalf = half.rotate(tf.gather(x, perm, 3), pos); // rotate in the half layout
      const viaInter = tf.gather(inter.rotate(x, pos), perm, 3);
      expect(relativeError(await viaHalf.data(), await viaInter.data())).toBeLessThan(1e-6);
    }
  });

  const relative: Array<[string, Spec]> = [
    ['unscaled', { theta: 10000 }],
    ['linear', { scaling: { type: 'linear', factor: 4 }, fraction: 0.5 }],
    ['ntk', { scaling: { type: 'ntk', factor: 8 }, layout: 'interleaved' }],
    ['yarn', { scaling: { type: 'yarn', factor: 16, originalMaxPositions: 256 } }],
    ['dynamic below originalMaxPositions', { scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 4096 } }],
  ];
  it.each(relative)('%s: q.k after rotation depends only on the position difference', async (_name, spec) => {
    const rope = new Rope({ headDim: 16, ...spec });
    const q = tf.tensor(Rng.seeded(8).normalArray(16), [1, 1, 1, 16]); // [B, T, H, D]
    const k = tf.tensor(Rng.seeded(9).normalArray(16), [1, 1, 1, 16]);
    const dot = async (pq: number, pk: number) => (await rope.rotate(q, Int32Array.of(pq)).mul(rope.rotate(k, Int32Array.of(pk))).sum().data())[0]!;
    const ref = await dot(10, 3);
    for (const shift of [1, 97, 2000]) expect(Math.abs((await dot(10 + shift, 3 + shift)) - ref)).toBeLessThan(1e-5 * Math.max(1, Math.abs(ref)));
    // and it does change with the difference
    expect(Math.abs((await dot(10, 4)) - ref)).toBeGreaterThan(1e-3);
  });

  it('preserves norms unless YaRN scales them by its attention factor', async () => {
    const q = tf.tensor(Rng.seeded(10).normalArray(16), [1, 1, 1, 16]); // [B, T, H, D]
    const n0 = (await q.norm().data())[0]!;
    const plain = new Rope({ headDim: 16, scaling: { type: 'ntk', factor: 2 } });
    expect((await plain.rotate(q, Int32Array.of(1234)).norm().data())[0]).toBeCloseTo(n0, 5);
    const yarn = new Rope({ headDim: 16, scaling: { type: 'yarn', factor: 4, originalMaxPositions: 64 } });
    expect((await yarn.rotate(q, Int32Array.of(1234)).norm().data())[0]).toBeCloseTo(n0 * (0.1 * Math.log(4) + 1), 5);
  });
});

describe('Rope shapes', () => {
  it('rejects wrong shapes and head dims', () => {
    const rope = new Rope({ headDim: 8, theta: 500 });
    const x = tf.zeros([2, 5, 3, 8]); // [B, T, H, D]
    expect(() => rope.rotate(x, Int32Array.of(1, 2))).toThrow(/2 positions for a sequence of 5/);
    expect(() => rope.rotate(tf.zeros([2, 5, 3, 6]), Int32Array.of(0, 1, 2, 3, 4))).toThrow(/RoPE input: expected shape \[B, T, H, 8\]/);
    expect(() => new Rope({ headDim: 7 })).toThrow(/even head dim/);
    expect(new Rope({ headDim: 7, fraction: 0.5 }).rotaryDim).toBe(2);
    expect(() => new Rope({ headDim: 8, fraction: 0.2 })).toThrow(/rounds to 0 rotary dims/);
    expect(() => new Rope({ headDim: 8, fraction: 0.25, scaling: { type: 'ntk', factor: 2 } })).toThrow(/ntk needs at least 4 rotary dims/);
    expect(() => new Rope({ headDim: 8, scaling: { type: 'linear', factor: 0.5 } })).toThrow(/scaling\.factor: factor must be >= 1/);
    expect(() => new Rope({ headDim: 8, fraction: 1.5 })).toThrow(/fraction: fraction must be in \(0, 1\]/);
    x.dispose();
  });

  it('takes an empty sequence', () => {
    const rope = new Rope({ headDim: 8, scaling: { type: 'dynamic', factor: 2, originalMaxPositions: 4 } });
    const y = rope.rotate(tf.zeros([1, 0, 2, 8]), new Int32Array(0)); // [B, 0, H, D]
    expect(y.shape).toEqual([1, 0, 2, 8]);
  });
});

describe('Rope table reuse', () => {
  it('reuses the tables for equal positions and recomputes them when the positions change', () => {
    const rope = new Rope({ headDim: 8 });
    const a = rope.tables(Int32Array.of(0, 1, 2));
    expect(rope.tables(Int32Array.of(0, 1, 2))).toBe(a);
    const b = rope.tables(Int32Array.of(5, 6, 7));
    expect(b).not.toBe(a);
    expect(b.cos[0]).toBeCloseTo(Math.cos(5), 6);
    const pos = Int32Array.of(1, 2);
    const c = rope.tables(pos);
    pos[0] = 9; // a caller reusing its array must not see stale tables
    expect(rope.tables(pos).cos[0]).toBeCloseTo(Math.cos(9), 6);
    expect(c.cos[0]).toBeCloseTo(Math.cos(1), 6);
  });
});
