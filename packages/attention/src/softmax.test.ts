import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { Rope, noPositional, type PositionalEncoding } from '@tsformer/positional';
import { SoftmaxAttention, softmaxAttentionSchema, type KvCache } from './softmax.js';
import { naiveAttention } from './softmax-naive.js';
import { attentionConfigSchema, createAttention } from './registry.js';
import { disposeCache, type AttentionCache } from './types.js';

const DMODEL = 16;
const CONTEXT = 64;
const made: SoftmaxAttention[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

function make(cfg: Record<string, unknown>, positional: PositionalEncoding, seed = 0): SoftmaxAttention {
  const parsed = softmaxAttentionSchema.parse({ type: 'mha', ...cfg });
  const m = new SoftmaxAttention(parsed, { dModel: DMODEL, positional, rng: Rng.seeded(seed), contextLength: CONTEXT });
  made.push(m);
  return m;
}

const range = (n: number, from = 0) => Int32Array.from({ length: n }, (_, i) => i + from);

/** An ALiBi-like positional stub (no rotation): bias -slope_h * (pos_i - pos_j), slope_h = 2^-(h+1). */
const alibiBias = (h: number, qp: number, kp: number) => -(2 ** -(h + 1)) * (qp - kp);
const alibiStub: PositionalEncoding = {
  type: 'alibi-stub',
  scoreBias(numHeads, qPositions, kPositions) {
    const [Tq, Tk] = [qPositions.length, kPositions.length];
    const out = new Float32Array(numHeads * Tq * Tk);
    for (let h = 0; h < numHeads; h++) for (let i = 0; i < Tq; i++) for (let j = 0; j < Tk; j++) out[(h * Tq + i) * Tk + j] = alibiBias(h, qPositions[i]!, kPositions[j]!);
    return tf.tensor(out, [numHeads, Tq, Tk]);
  },
};
const rope = new Rope({ headDim: 4, theta: 100 });

/** Half-split RoPE of one head vector, in float64. */
function ropeJs(x: number[], pos: number, theta: number): number[] {
  const half = x.length / 2;
  const out = x.slice();
  for (let i = 0; i < half; i++) {
    const a = pos * Math.pow(theta, (-2 * i) / x.length);
    out[i] = x[i]! * Math.cos(a) - x[i + half]! * Math.sin(a);
    out[i + half] = x[i + half]! * Math.cos(a) + x[i]! * Math.sin(a);
  }
  return out;
}

/** RMSNorm of one head vector with a gain, in float64. */
function rmsJs(x: number[], gain: ArrayLike<number>, eps: number): number[] {
  const r = 1 / Math.sqrt(x.reduce((a, z) => a + z * z, 0) / x.length + eps);
  return x.map((z, d) => z * r * gain[d]!);
}

interface Variant {
  name: string;
  cfg: Record<string, unknown>;
  positional: PositionalEncoding;
  T: number;
}

/**
 * The spec of the whole shell: projections from the module's Linear layers, then per-head
 * RMSNorm, RoPE, scores, normalizer, window, gate in float64 on the host (`naiveAttention` loops).
 */
async function naive(v: Variant, m: SoftmaxAttention, x: tf.Tensor, positions: Int32Array): Promise<Float32Array> {
  const [B, T] = x.shape as [number, number, number];
  const H = m.numHeads, Hkv = m.numKvHeads, D = m.headDim;
  const heads = async (lin: typeof m.q_proj, n: number) => {
    const t = tf.tidy(() => lin.forward(x).reshape([B, T, n, D])); // [B, T, n, D]
    const a = (await t.array()) as number[][][][];
    t.dispose();
    return a;
  };
  const q = await heads(m.q_proj, H);
  const k = await heads(m.k_proj, Hkv);
  const vv = await heads(m.v_proj, Hkv);
  const qGain = m.q_norm ? await m.q_norm.weight.data() : undefined;
  const kGain = m.k_norm ? await m.k_norm.weight.data() : undefined;
  const prep = (a: number[][][][], gain: ArrayLike<number> | undefined, eps: number) =>
    a.map((row) =>
      row.map((tok, t) =>
        tok.map((vec) => {
          const n = gain ? rmsJs(vec, gain, eps) : vec;
          return v.positional === rope ? ropeJs(n, positions[t]!, 100) : n;
        }),
      ),
    );
  const o = naiveAttention({
    q: prep(q, qGain, m.q_norm?.eps ?? 0),
    k: prep(k, kGain, m.k_norm?.eps ?? 0),
    v: vv,
    qPositions: positions,
    kPositions: positions,
    score: (v.cfg.score as 'softmax' | 'sigmoid' | undefined) ?? 'softmax',
    sigmoidBias: (v.cfg.sigmoidBias as number | undefined) ?? -Math.log(CONTEXT),
    window: v.cfg.window as number | undefined,
    bias: v.positional === alibiStub ? alibiBias : undefined,
  });
  if (m.g_proj) {
    const g = tf.tidy(() => m.g_proj!.forward(x)); // [B, T, H*D], same flat order as o [B, T, H, D]
    const gd = await g.data();
    g.dispose();
    for (let i = 0; i < o.length; i++) o[i] = o[i]! / (1 + Math.exp(-gd[i]!));
  }
  const ot = tf.tensor(Float32Array.from(o), [B, T, H * D]);
  const y = m.o_proj.forward(ot);
  const out = (await y.data()) as Float32Array;
  tf.dispose([ot, y]);
  return out;
}

/** A second, tensor-level reference for gradients: repeated kv heads, full [T, T] scores, band-part mask. */
function reference(v: Variant, m: SoftmaxAttention, x: tf.Tensor, positions: Int32Array): tf.Tensor {
  return tf.tidy(() => {
    const [B, T] = x.shape as [number, number, number];
    const H = m.numHeads, Hkv = m.numKvHeads, D = m.headDim, G = H / Hkv;
    const prep = (t: tf.Tensor, gain: tf.Tensor | undefined) => {
      const n = gain ? t.mul(t.square().mean(-1, true).add(1e-5).rsqrt()).mul(gain) : t;
      return v.positional.rotate ? v.positional.rotate(n, positions) : n;
    };
    const q = prep(m.q_proj.forward(x).reshape([B, T, H, D]), m.q_norm?.weight).transpose([0, 2, 1, 3]); // [B, H, T, D]
    const rep = (t: tf.Tensor) => t.reshape([B * T, Hkv, 1, D]).tile([1, 1, G, 1]).reshape([B, T, H, D]).transpose([0, 2, 1, 3]); // [B, H, T, D]
    const k = rep(prep(m.k_proj.forward(x).reshape([B, T, Hkv, D]), m.k_norm?.weight));
    const vv = rep(m.v_proj.forward(x).reshape([B, T, Hkv, D]));
    const window = v.cfg.window as number | undefined;
    const allowed = tf.linalg.bandPart(tf.ones([T, T]), window === undefined ? -1 : Math.min(window, T) - 1, 0); // positions are contiguous
    let s = tf.matMul(q, k, false, true).div(Math.sqrt(D)); // [B, H, T, T]
    if (v.positional.scoreBias) s = s.add(v.positional.scoreBias(H, positions, positions));
    const p = v.cfg.score === 'sigmoid' ? tf.sigmoid(s.add(m.sigmoidBias)).mul(allowed) : tf.softmax(s.add(tf.scalar(1).sub(allowed).mul(-1e9)));
    let o = tf.matMul(p, vv).transpose([0, 2, 1, 3]).reshape([B, T, H * D]); // [B, T, H*D]
    if (m.g_proj) o = o.mul(tf.sigmoid(m.g_proj.forward(x)));
    return m.o_proj.forward(o);
  });
}

const variants: Variant[] = [
  { name: 'MHA + RoPE', cfg: { numHeads: 4 }, positional: rope, T: 6 },
  { name: 'GQA + RoPE', cfg: { numHeads: 4, numKvHeads: 2 }, positional: rope, T: 6 },
  { name: 'MQA + NoPE', cfg: { numHeads: 4, numKvHeads: 1 }, positional: noPositional, T: 6 },
  { name: 'qk-norm + RoPE', cfg: { numHeads: 4, numKvHeads: 2, qkNorm: true }, positional: rope, T: 6 },
  { name: 'output gate + RoPE', cfg: { numHeads: 4, outputGate: true }, positional: rope, T: 6 },
  { name: 'sigmoid + RoPE (bias -ln n)', cfg: { numHeads: 4, score: 'sigmoid' }, positional: rope, T: 6 },
  { name: 'sigmoid + ALiBi stub (bias -1)', cfg: { numHeads: 4, numKvHeads: 2, score: 'sigmoid', sigmoidBias: -1 }, positional: alibiStub, T: 6 },
  { name: 'softmax + ALiBi stub', cfg: { numHeads: 4 }, positional: alibiStub, T: 6 },
  { name: 'window 4 (T a multiple) + softmax + RoPE', cfg: { numHeads: 4, window: 4 }, positional: rope, T: 16 },
  { name: 'window 3 (T not a multiple) + sigmoid + RoPE', cfg: { numHeads: 4, window: 3, score: 'sigmoid' }, positional: rope, T: 16 },
  { name: 'window 5 + GQA + ALiBi stub', cfg: { numHeads: 4, numKvHeads: 2, window: 5 }, positional: alibiStub, T: 16 },
  { name: 'window >= T + sigmoid + RoPE', cfg: { numHeads: 4, window: 20, score: 'sigmoid' }, positional: rope, T: 16 },
  {
    name: 'window 3 + MQA + qk-norm + gate + sigmoid + ALiBi stub',
    cfg: { numHeads: 4, numKvHeads: 1, window: 3, qkNorm: true, outputGate: true, score: 'sigmoid', sigmoidBias: -0.5 },
    positional: alibiStub,
    T: 16,
  },
];

describe.each(variants)('$name', (v) => {
  const T = v.T;
  const x = tf.keep(tf.tensor(Rng.seeded(11).normalArray(2 * T * DMODEL, 2), [2, T, DMODEL])); // [B, T, D]
  const pos = range(T, 3);
  // Prefill, then a chunk, then single tokens; with a window the first two are longer than it.
  const schedule: Array<[number, number]> = T === 6 ? [[0, 2], [2, 1], [3, 1], [4, 1], [5, 1]] : [[0, 5], [5, 8], [13, 1], [14, 1], [15, 1]];
  const seeded = (seed: number) => {
    const m = make(v.cfg, v.positional, seed);
    // Non-trivial norm gains, so a swapped or missing gain shows.
    if (m.q_norm && m.k_norm) {
      m.q_norm.weight.assign(tf.tensor(Rng.seeded(seed + 1).uniformArray(m.headDim, 0.5, 1.5)));
      m.k_norm.weight.assign(tf.tensor(Rng.seeded(seed + 2).uniformArray(m.headDim, 0.5, 1.5)));
    }
    return m;
  };

  it('matches the naive loops', async () => {
    const m = seeded(0);
    const { y } = m.forward(x, { positions: pos, training: false });
    expect(y.shape).toEqual([2, T, DMODEL]);
    expect(relativeError(await y.data(), await naive(v, m, x, pos))).toBeLessThan(1e-5);
    y.dispose();
  });

  it('has the gradients of the reference', async () => {
    const m = seeded(1);
    const r = tf.tensor(Rng.seeded(12).normalArray(2 * T * DMODEL), [2, T, DMODEL]);
    const vars = m.trainableVariables();
    const g1 = tf.variableGrads(() => m.forward(x, { positions: pos, training: true }).y.mul(r).sum() as tf.Scalar, vars);
    const g2 = tf.variableGrads(() => reference(v, m, x, pos).mul(r).sum() as tf.Scalar, vars);
    expect(Object.keys(g1.grads).length).toBe(vars.length);
    for (const w of vars) expect(relativeError(await g1.grads[w.name]!.data(), await g2.grads[w.name]!.data())).toBeLessThan(1e-5);
    const gx1 = tf.grad((xx: tf.Tensor) => m.forward(xx, { positions: pos, training: true }).y.mul(r).sum())(x);
    const gx2 = tf.grad((xx: tf.Tensor) => reference(v, m, xx, pos).mul(r).sum())(x);
    expect(relativeError(await gx1.data(), await gx2.data())).toBeLessThan(1e-5);
    tf.dispose([r, g1.value, g2.value, gx1, gx2, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
  });

  it('decodes chunk by chunk and token by token exactly like the full forward', async () => {
    const m = seeded(2);
    const { y: full } = m.forward(x, { positions: pos, training: false });
    const fullRows = (await full.array()) as number[][][];
    let cache = m.initCache();
    const pieces: number[][][] = [[], []];
    for (const [start, len] of schedule) {
      const xt = x.slice([0, start, 0], [2, len, DMODEL]);
      const out = m.forward(xt, { positions: pos.slice(start, start + len), cache, training: false });
      disposeCache(cache);
      xt.dispose();
      cache = out.cache as KvCache;
      // The cache counts every token; with a window it holds only the last `window` of them.
      const held = Math.min(start + len, m.window ?? Infinity);
      expect(cache.length).toBe(start + len);
      expect(cache.k!.shape).toEqual([2, held, m.numKvHeads, m.headDim]);
      expect(cache.v!.shape).toEqual([2, held, m.numKvHeads, m.headDim]);
      expect(Array.from(cache.positions)).toEqual(Array.from(pos.slice(start + len - held, start + len)));
      const rows = (await out.y.array()) as number[][][];
      rows.forEach((r, b) => pieces[b]!.push(...r));
      out.y.dispose();
    }
    for (let b = 0; b < 2; b++) expect(relativeError(pieces[b]!.flat(), fullRows[b]!.flat())).toBeLessThan(1e-5);
    disposeCache(cache);
    full.dispose();
  });

  it('is causal: changing future tokens leaves earlier outputs unchanged', async () => {
    const m = seeded(3);
    const keep = T - 2;
    const noise = tf.randomNormal([2, 2, DMODEL], 0, 5, 'float32', 1);
    const head = x.slice([0, 0, 0], [2, keep, DMODEL]);
    const x2 = tf.concat([head, noise], 1);
    const ya = m.forward(x, { positions: pos, training: false }).y;
    const yb = m.forward(x2, { positions: pos, training: false }).y;
    const a = ya.slice([0, 0, 0], [2, keep, DMODEL]);
    const b = yb.slice([0, 0, 0], [2, keep, DMODEL]);
    expect(Array.from(await a.data())).toEqual(Array.from(await b.data()));
    const lastA = await ya.slice([0, keep, 0], [2, 2, DMODEL]).data();
    const lastB = await yb.slice([0, keep, 0], [2, 2, DMODEL]).data();
    expect(relativeError(lastA, lastB)).toBeGreaterThan(1e-3); // the changed tokens did change
    tf.dispose([noise, head, x2, ya, yb, a, b]);
  });

  it('leaks no tensors in forward + backward or in decoding', async () => {
    const m = seeded(4);
    const vars = m.trainableVariables();
    expect(
      await tensorLeak(() => {
        const { value, grads } = tf.variableGrads(() => m.forward(x, { positions: pos, training: true }).y.square().mean() as tf.Scalar, vars);
        tf.dispose([value, ...Object.values(grads)]);
      }),
    ).toBe(0);
    expect(
      await tensorLeak(() => {
        let cache = m.initCache();
        for (const [start, len] of schedule) {
          const xt = x.slice([0, start, 0], [2, len, DMODEL]);
          const out = m.forward(xt, { positions: pos.slice(start, start + len), cache, training: false });
          disposeCache(cache);
          xt.dispose();
          cache = out.cache as KvCache;
          out.y.dispose();
        }
        disposeCache(cache);
      }),
    ).toBe(0);
  });
});

describe('shell options', () => {
  it('defaults keep plain causal softmax attention and add no parameters', () => {
    expect(softmaxAttentionSchema.parse({ type: 'mha', numHeads: 4 })).toEqual({
      type: 'mha',
      numHeads: 4,
      bias: false,
      dropout: 0,
      score: 'softmax',
      qkNorm: false,
      outputGate: false,
    });
    const m = make({ numHeads: 4 }, rope);
    expect(m.namedParameters().map(([n]) => n)).toEqual(['q_proj.weight', 'k_proj.weight', 'v_proj.weight', 'o_proj.weight']);
    expect(m.window).toBeUndefined();
  });

  it('names the new parameters q_norm, k_norm (one gain of headDim each) and g_proj', () => {
    const m = make({ numHeads: 4, numKvHeads: 2, qkNorm: true, outputGate: true, bias: true }, rope);
    const shapes = Object.fromEntries(m.namedParameters().map(([n, p]) => [n, p.variable.shape]));
    expect(shapes['q_norm.weight']).toEqual([4]);
    expect(shapes['k_norm.weight']).toEqual([4]);
    expect(shapes['g_proj.weight']).toEqual([DMODEL, 16]);
    expect(shapes['g_proj.bias']).toEqual([16]);
  });

  it('a windowed layer takes the banded path: forward + backward never build a [T, T] tensor', async () => {
    const m = make({ numHeads: 4, numKvHeads: 2, window: 8, score: 'sigmoid', outputGate: true }, alibiStub);
    const xs = tf.tensor(Rng.seeded(5).normalArray(64 * DMODEL), [1, 64, DMODEL]);
    const info = await tf.profile(() => {
      const { value, grads } = tf.variableGrads(() => m.forward(xs, { positions: range(64), training: true }).y.square().mean() as tf.Scalar, m.trainableVariables());
      tf.dispose([value, ...Object.values(grads)]);
    });
    const largest = Math.max(...info.kernels.flatMap((k) => k.outputShapes.map((s) => (s ?? []).reduce((a, b) => a * b, 1))));
    expect(largest).toBe(4 * 64 * 2 * 8); // the scores [B, Hkv, nB, L*G, 2L], not H * T * T = 16384
    xs.dispose();
  });

  it('takes -ln(contextLength) as the default sigmoid bias', () => {
    expect(make({ numHeads: 4, score: 'sigmoid' }, rope).sigmoidBias).toBeCloseTo(-Math.log(CONTEXT), 12);
    expect(make({ numHeads: 4, score: 'sigmoid', sigmoidBias: -2.5 }, rope).sigmoidBias).toBe(-2.5);
  });
});

describe('config', () => {
  const issues = (cfg: Record<string, unknown>) => {
    // Nested like a model config, so the dotted path shows.
    const r = z.object({ attention: attentionConfigSchema }).strict().safeParse({ attention: { type: 'mha', numHeads: 4, ...cfg } });
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };

  it('rejects unknown keys, unknown types and heads that do not divide', () => {
    expect(attentionConfigSchema.safeParse({ type: 'mha', numHeads: 4, numKvHead: 2 }).success).toBe(false);
    expect(attentionConfigSchema.safeParse({ type: 'flash', numHeads: 4 }).success).toBe(false);
    expect(issues({ numKvHeads: 3 })).toEqual(['attention.numKvHeads: attention.numKvHeads (3) must divide attention.numHeads (4)']);
    expect(() => new SoftmaxAttention({ ...softmaxAttentionSchema.parse({ type: 'mha', numHeads: 4 }), numKvHeads: 3 }, { dModel: 16, positional: noPositional, rng: Rng.seeded(0), contextLength: 8 })).toThrow(
      /numKvHeads \(3\) must divide attention.numHeads \(4\)/,
    );
    expect(() => make({ numHeads: 3 }, noPositional)).toThrow(/must divide dModel/);
  });

  it('rejects a window that is not a positive integer, naming the field', () => {
    for (const window of [0, -4, 2.5, '8', null]) {
      expect(issues({ window })).toEqual(['attention.window: attention.window must be a positive integer']);
    }
    expect(issues({ window: 1 })).toEqual([]);
    const cfg = softmaxAttentionSchema.parse({ type: 'mha', numHeads: 4 });
    expect(() => new SoftmaxAttention({ ...cfg, window: 0 }, { dModel: 16, positional: noPositional, rng: Rng.seeded(0), contextLength: 8 })).toThrow(
      /attention.window must be a positive integer, got 0/,
    );
  });

  it('rejects a bad sigmoidBias, naming the field', () => {
    for (const sigmoidBias of [Number.NaN, Infinity, '-1']) {
      expect(issues({ score: 'sigmoid', sigmoidBias })).toEqual(['attention.sigmoidBias: attention.sigmoidBias must be a finite number']);
    }
    expect(issues({ sigmoidBias: -1 })).toEqual(['attention.sigmoidBias: attention.sigmoidBias applies only to score: sigmoid']);
    expect(issues({ score: 'relu' })[0]).toMatch(/^attention.score: /);
    const cfg = softmaxAttentionSchema.parse({ type: 'mha', numHeads: 4, score: 'sigmoid' });
    expect(() => new SoftmaxAttention(cfg, { dModel: 16, positional: noPositional, rng: Rng.seeded(0), contextLength: 0 })).toThrow(/needs a context length >= 1.*set attention.sigmoidBias/);
  });

  it('rejects an input of the wrong shape, naming it', () => {
    const m = make({ numHeads: 4 }, noPositional);
    const bad = tf.zeros([2, 3, 8]);
    expect(() => m.forward(bad, { positions: range(3), training: false })).toThrow(/attention input: expected shape \[B, T, 16\], got \[2, 3, 8\]/);
    bad.dispose();
  });
});

describe('SWAN logit scaling', () => {
  const x = tf.keep(tf.tensor(Rng.seeded(21).normalArray(1 * 7 * 16), [1, 7, 16])); // [B, T, D]
  const pos = Int32Array.from({ length: 7 }, (_, i) => i);

  it('multiplies the logits of query n by log_a(a + n) outside training (and always, when asked)', async () => {
    const mk = (logitScale?: object) =>
      createAttention(attentionConfigSchema.parse({ type: 'mha', numHeads: 4, ...(logitScale ? { logitScale } : {}) }), {
        dModel: 16,
        positional: noPositional,
        rng: Rng.seeded(4),
        contextLength: 64,
      }) as SoftmaxAttention;
    const plain = mk();
    const scaled = mk({ base: 3 });
    const always = mk({ base: 3, when: 'always' });
    made.push(plain, scaled, always);
    // same init seed: identical weights
    const train = (m: SoftmaxAttention) => m.forward(x, { positions: pos, training: true }).y.data();
    expect(Array.from(await train(scaled))).toEqual(Array.from(await train(plain)));
    expect(Array.from(await train(always))).not.toEqual(Array.from(await train(plain)));
    // reference: plain attention with q pre-multiplied by the scale, via a scaled q_proj per position
    const y = await scaled.forward(x, { positions: pos, training: false }).y.data();
    const ref = await always.forward(x, { positions: pos, training: true }).y.data();
    expect(relativeError(y, ref)).toBeLessThan(1e-6);
    // query 0 is unscaled (log_a(a) = 1): its output equals the plain one
    const y0 = Array.from(y).slice(0, 16);
    const p0 = Array.from(await plain.forward(x, { positions: pos, training: false }).y.data()).slice(0, 16);
    expect(relativeError(y0, p0)).toBeLessThan(1e-6);
    // decoding equals the full forward
    let cache: AttentionCache = scaled.initCache();
    const rows: number[] = [];
    for (let t = 0; t < 7; t++) {
      const xt = x.slice([0, t, 0], [1, 1, 16]);
      const out = scaled.forward(xt, { positions: Int32Array.of(t), cache, training: false });
      disposeCache(cache);
      cache = out.cache!;
      rows.push(...(await out.y.data()));
      tf.dispose([xt, out.y]);
    }
    disposeCache(cache);
    expect(relativeError(rows, y)).toBeLessThan(1e-5);
  });

  it('rejects a base <= 1', () => {
    expect(() => attentionConfigSchema.parse({ type: 'mha', numHeads: 4, logitScale: { base: 1 } })).toThrow(/logitScale.base must be > 1/);
  });
});
