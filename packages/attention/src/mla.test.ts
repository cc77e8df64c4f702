import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { Rope, noPositional, type PositionalEncoding } from '@tsformer/positional';
import {
  MlaAttention,
  SoftmaxAttention,
  attentionConfigSchema,
  attentionHeadDim,
  createAttention,
  disposeCache,
  kvCacheNumbersPerToken,
  type AttentionCache,
  type MlaCache,
} from './index.js';

const B = 2;
const T = 6;
const D = 16;
const base = { type: 'mla', numHeads: 4, kvLoraRank: 6, qkNopeHeadDim: 4, qkRopeHeadDim: 4, vHeadDim: 3 } as const;

const made: MlaAttention[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

/**
 * Builds an MLA layer and redraws its parameters at unit scale (weights N(0, 1/fan_in), norm gains
 * around 1, biases around 0), so scores are far from uniform and every parameter matters.
 */
function make(extra: { qLoraRank?: number; bias?: boolean }, positional: PositionalEncoding, seed = 0): MlaAttention {
  const cfg = attentionConfigSchema.parse({ ...base, ...extra });
  const m = createAttention(cfg, { dModel: D, positional, rng: Rng.seeded(seed), contextLength: 64 }) as MlaAttention;
  const rng = Rng.seeded(seed + 100);
  for (const [name, p] of m.namedParameters()) {
    const v = p.variable;
    const z = rng.normalArray(v.size);
    const scale = name.endsWith('layernorm.weight') ? 0.3 : name.endsWith('.bias') ? 0.2 : 1 / Math.sqrt(v.shape[0]!);
    const offset = name.endsWith('layernorm.weight') ? 1 : 0;
    const t = tf.tensor(Array.from(z, (e) => offset + scale * e), v.shape);
    v.assign(t);
    t.dispose();
  }
  made.push(m);
  return m;
}

const range = (n: number, from = 0) => Int32Array.from({ length: n }, (_, i) => i + from);

// ---- the spec: plain float64 loops over tokens, heads and positions ----

type Mat = number[][]; // [in][out]
const linear = (v: number[], w: Mat, b?: number[]): number[] =>
  w[0]!.map((_, o) => v.reduce((acc, vi, i) => acc + vi * w[i]![o]!, b ? b[o]! : 0));
const rmsNorm = (v: number[], g: number[], eps: number): number[] => {
  const r = 1 / Math.sqrt(v.reduce((a, e) => a + e * e, 0) / v.length + eps);
  return v.map((e, i) => e * r * g[i]!);
};
/** Half-split RoPE of one vector (dimension i pairs with i + n/2). */
const ropeVec = (v: number[], pos: number, theta: number): number[] => {
  const n = v.length;
  const out = v.slice();
  for (let i = 0; i < n / 2; i++) {
    const a = pos * Math.pow(theta, (-2 * i) / n);
    out[i] = v[i]! * Math.cos(a) - v[i + n / 2]! * Math.sin(a);
    out[i + n / 2] = v[i + n / 2]! * Math.cos(a) + v[i]! * Math.sin(a);
  }
  return out;
};
const dot = (a: number[], b: number[]) => a.reduce((acc, e, i) => acc + e * b[i]!, 0);

/**
 * MLA by its definition, from x and the raw weights: q_h = [q_nope_h | R q_rope_h],
 * k_h = [c_kv W_uk_h | R k_rope] (one rope key for all heads), v_h = c_kv W_uv_h, causal softmax
 * over absolute positions with scale 1/sqrt(qkNope + qkRope), y = concat_h(o_h) W_o.
 */
async function naive(m: MlaAttention, x: tf.Tensor, positional: PositionalEncoding, positions: Int32Array): Promise<number[]> {
  const sd = m.stateDict();
  const P = async (name: string) => (sd.has(name) ? ((await sd.get(name)!.array()) as never) : undefined);
  const H = m.numHeads, R = m.kvLoraRank, nope = m.qkNopeHeadDim, rope = m.qkRopeHeadDim, V = m.vHeadDim;
  const eps = m.kv_a_layernorm.eps;
  const rot = (v: number[], pos: number) => (positional.rotate ? ropeVec(v, pos, (positional as Rope).theta) : v);
  const xs = (await x.array()) as number[][][];
  const [Wq, bq, Wqa, bqa, gqa, Wqb] = await Promise.all(['q_proj.weight', 'q_proj.bias', 'q_a_proj.weight', 'q_a_proj.bias', 'q_a_layernorm.weight', 'q_b_proj.weight'].map(P));
  const [Wkva, bkva, gkv, Wkvb, Wo, bo] = await Promise.all(['kv_a_proj_with_mqa.weight', 'kv_a_proj_with_mqa.bias', 'kv_a_layernorm.weight', 'kv_b_proj.weight', 'o_proj.weight', 'o_proj.bias'].map(P));
  const y: number[] = [];
  for (let b = 0; b < B; b++) {
    // per token: per-head queries and keys, values
    const qs: number[][][] = [], ks: number[][][] = [], vs: number[][][] = [];
    for (let t = 0; t < xs[b]!.length; t++) {
      const xt = xs[b]![t]!;
      const q = m.qLoraRank ? linear(rmsNorm(linear(xt, Wqa!, bqa), gqa!, eps), Wqb!) : linear(xt, Wq!, bq);
      const kva = linear(xt, Wkva!, bkva);
      const c = rmsNorm(kva.slice(0, R), gkv!, eps);
      const kRope = rot(kva.slice(R), positions[t]!);
      const kv = linear(c, Wkvb!);
      qs.push([]), ks.push([]), vs.push([]);
      for (let h = 0; h < H; h++) {
        const qh = q.slice(h * (nope + rope), (h + 1) * (nope + rope));
        qs[t]!.push([...qh.slice(0, nope), ...rot(qh.slice(nope), positions[t]!)]);
        ks[t]!.push([...kv.slice(h * (nope + V), h * (nope + V) + nope), ...kRope]);
        vs[t]!.push(kv.slice(h * (nope + V) + nope, (h + 1) * (nope + V)));
      }
    }
    for (let i = 0; i < qs.length; i++) {
      const o: number[] = [];
      for (let h = 0; h < H; h++) {
        const visible = qs.map((_, j) => j).filter((j) => positions[j]! <= positions[i]!);
        const s = visible.map((j) => dot(qs[i]![h]!, ks[j]![h]!) / Math.sqrt(nope + rope));
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const sum = e.reduce((a, c) => a + c, 0);
        for (let d = 0; d < V; d++) o.push(visible.reduce((acc, j, n) => acc + (e[n]! / sum) * vs[j]![h]![d]!, 0));
      }
      y.push(...linear(o, Wo!, bo));
    }
  }
  return y;
}

/**
 * A second, tensor-level reference for gradients: projections straight from the variables, an
 * explicit loop over heads, the rope key concatenated to every head's key, a band-part mask.
 */
function reference(m: MlaAttention, x: tf.Tensor, positional: PositionalEncoding): tf.Tensor {
  return tf.tidy(() => {
    const sd = m.stateDict();
    const H = m.numHeads, R = m.kvLoraRank, nope = m.qkNopeHeadDim, rope = m.qkRopeHeadDim, V = m.vHeadDim, qk = nope + rope;
    const eps = m.kv_a_layernorm.eps;
    const lin = (t: tf.Tensor, name: string) => {
      const y = tf.matMul(t, sd.get(`${name}.weight`)!);
      return sd.has(`${name}.bias`) ? y.add(sd.get(`${name}.bias`)!) : y;
    };
    const rms = (t: tf.Tensor, name: string) => t.div(t.square().mean(-1, true).add(eps).sqrt()).mul(sd.get(`${name}.weight`)!);
    const rot = (t: tf.Tensor) => (positional.rotate ? positional.rotate(t, range(T)) : t);
    const x2 = x.reshape([B * T, D]);
    const q = (m.qLoraRank ? lin(rms(lin(x2, 'q_a_proj'), 'q_a_layernorm'), 'q_b_proj') : lin(x2, 'q_proj')).reshape([B, T, H * qk]);
    const kva = lin(x2, 'kv_a_proj_with_mqa');
    const kv = lin(rms(kva.slice([0, 0], [-1, R]), 'kv_a_layernorm'), 'kv_b_proj').reshape([B, T, H * (nope + V)]);
    const kRope = rot(kva.slice([0, R], [-1, rope]).reshape([B, T, 1, rope])).reshape([B, T, rope]);
    const mask = tf.scalar(1).sub(tf.linalg.bandPart(tf.ones([T, T]), -1, 0)).mul(-1e9);
    const outs: tf.Tensor[] = [];
    for (let h = 0; h < H; h++) {
      const qNope = q.slice([0, 0, h * qk], [-1, -1, nope]);
      const qRope = rot(q.slice([0, 0, h * qk + nope], [-1, -1, rope]).reshape([B, T, 1, rope])).reshape([B, T, rope]);
      const qh = tf.concat([qNope, qRope], -1);
      const kh = tf.concat([kv.slice([0, 0, h * (nope + V)], [-1, -1, nope]), kRope], -1);
      const vh = kv.slice([0, 0, h * (nope + V) + nope], [-1, -1, V]);
      const s = tf.matMul(qh, kh, false, true).div(Math.sqrt(qk)).add(mask);
      outs.push(tf.matMul(tf.softmax(s), vh));
    }
    return lin(tf.concat(outs, -1).reshape([B * T, H * V]), 'o_proj').reshape([B, T, D]);
  });
}

/** Runs the cached path over x in pieces [start, len]; returns the outputs [B, T, D] and the last cache. */
async function decode(m: MlaAttention, x: tf.Tensor, pieces: ReadonlyArray<readonly [number, number]>, offset: number): Promise<{ rows: number[][][]; cache: MlaCache }> {
  let cache: AttentionCache = m.initCache();
  const rows: number[][][] = [[], []];
  for (const [start, len] of pieces) {
    const xt = x.slice([0, start, 0], [B, len, D]);
    const out = m.forward(xt, { positions: range(len, start + offset), cache, training: false });
    disposeCache(cache);
    xt.dispose();
    cache = out.cache!;
    ((await out.y.array()) as number[][][]).forEach((r, b) => rows[b]!.push(...r));
    out.y.dispose();
  }
  return { rows, cache: cache as MlaCache };
}

const rope = new Rope({ headDim: base.qkRopeHeadDim });
const cases: Array<[string, { qLoraRank?: number; bias?: boolean }, PositionalEncoding]> = [
  ['q latent (qLoraRank 8) + RoPE', { qLoraRank: 8 }, rope],
  ['no q latent + RoPE, with biases', { bias: true }, rope],
  ['q latent (qLoraRank 8) + NoPE, with biases', { qLoraRank: 8, bias: true }, noPositional],
  ['no q latent + NoPE', {}, noPositional],
];

describe.each(cases)('MLA, %s', (_name, extra, positional) => {
  const x = tf.keep(tf.tensor(Rng.seeded(11).normalArray(B * T * D), [B, T, D])); // [B, T, D]

  it('matches the naive float64 loops (expanded form, absolute positions)', async () => {
    const m = make(extra, positional);
    const positions = range(T, 5);
    const { y, cache } = m.forward(x, { positions, training: false });
    expect(cache).toBeUndefined();
    expect(y.shape).toEqual([B, T, D]);
    expect(relativeError(await y.data(), await naive(m, x, positional, positions))).toBeLessThan(1e-5);
    y.dispose();
  });

  it('has the gradients of the per-head reference (all parameters and x)', async () => {
    const m = make(extra, positional);
    const r = tf.tensor(Rng.seeded(12).normalArray(B * T * D), [B, T, D]);
    const vars = m.trainableVariables();
    expect(vars.length).toBe(m.namedParameters().length);
    const g1 = tf.variableGrads(() => m.forward(x, { positions: range(T), training: true }).y.mul(r).sum() as tf.Scalar, vars);
    const g2 = tf.variableGrads(() => reference(m, x, positional).mul(r).sum() as tf.Scalar, vars);
    for (const v of vars) {
      expect(relativeError(await g1.grads[v.name]!.data(), await g2.grads[v.name]!.data()), v.name).toBeLessThan(1e-5);
    }
    const gx1 = tf.grad((xx: tf.Tensor) => m.forward(xx, { positions: range(T), training: true }).y.mul(r).sum())(x);
    const gx2 = tf.grad((xx: tf.Tensor) => reference(m, xx, positional).mul(r).sum())(x);
    expect(relativeError(await gx1.data(), await gx2.data())).toBeLessThan(1e-5);
    tf.dispose([r, g1.value, g2.value, gx1, gx2, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
  });

  it('decodes in the absorbed form (prefill 2, then 1 at a time; or all at once) exactly like the expanded forward', async () => {
    const m = make(extra, positional);
    const offset = 3;
    const { y: full } = m.forward(x, { positions: range(T, offset), training: false });
    const fullRows = (await full.array()) as number[][][];
    for (const pieces of [[[0, 2], [2, 1], [3, 1], [4, 1], [5, 1]], [[0, T]]] as const) {
      const { rows, cache } = await decode(m, x, pieces, offset);
      expect(cache.length).toBe(T);
      expect(Array.from(cache.positions)).toEqual(Array.from(range(T, offset)));
      for (let b = 0; b < B; b++) expect(relativeError(rows[b]!.flat(), fullRows[b]!.flat())).toBeLessThan(1e-5);
      disposeCache(cache);
    }
    full.dispose();
  });

  it('caches only the latent and the rope key: kvLoraRank + qkRopeHeadDim numbers per token', async () => {
    const m = make(extra, positional);
    const { cache } = await decode(m, x, [[0, 2], [2, 1], [3, 1]], 0);
    expect(cache.kind).toBe('mla');
    expect(cache.tensors).toEqual([cache.latent, cache.kRope]);
    expect(cache.latent!.shape).toEqual([B, 4, base.kvLoraRank]);
    expect(cache.kRope!.shape).toEqual([B, 4, base.qkRopeHeadDim]);
    const numbers = cache.tensors.reduce((n, t) => n + t.size, 0);
    expect(numbers / (B * cache.length)).toBe(base.kvLoraRank + base.qkRopeHeadDim);
    expect(numbers / (B * cache.length)).toBe(kvCacheNumbersPerToken(attentionConfigSchema.parse({ ...base, ...extra }), D));
    disposeCache(cache);
  });

  it('is causal: changing a future token leaves earlier outputs unchanged', async () => {
    const m = make(extra, positional);
    const x2 = tf.concat([x.slice([0, 0, 0], [B, 4, D]), tf.randomNormal([B, 2, D], 0, 5, 'float32', 1)], 1);
    const a = m.forward(x, { positions: range(T), training: false }).y.slice([0, 0, 0], [B, 4, D]);
    const b = m.forward(x2, { positions: range(T), training: false }).y.slice([0, 0, 0], [B, 4, D]);
    expect(Array.from(await a.data())).toEqual(Array.from(await b.data()));
    tf.dispose([x2, a, b]);
  });

  it('leaks no tensors in forward + backward or in decoding', async () => {
    const m = make(extra, positional);
    const vars = m.trainableVariables();
    expect(
      await tensorLeak(() => {
        const { value, grads } = tf.variableGrads(() => m.forward(x, { positions: range(T), training: true }).y.square().mean() as tf.Scalar, vars);
        tf.dispose([value, ...Object.values(grads)]);
      }),
    ).toBe(0);
    expect(
      await tensorLeak(async () => {
        const { cache } = await decode(m, x, [[0, 2], [2, 1], [3, 1]], 0);
        disposeCache(cache);
      }),
    ).toBe(0);
  });
});

describe('MLA with a length-dependent rotation (dynamic NTK)', () => {
  /** A rotation whose angles depend on the call's largest position, as dynamic NTK scaling's do. */
  const dynamic = (lengthDependent: boolean): PositionalEncoding => ({
    type: 'test-dynamic',
    lengthDependent,
    rotate: (t, pos) => new Rope({ headDim: base.qkRopeHeadDim, theta: 20 + 30 * Math.max(...pos) }).rotate(t, pos),
  });

  it('caches keys unrotated: decode step t equals the expanded forward over the first t + 1 tokens', async () => {
    const x = tf.tensor(Rng.seeded(13).normalArray(B * T * D), [B, T, D]); // [B, T, D]
    const errors: number[] = [];
    for (const lengthDependent of [true, false]) {
      const m = make({ qLoraRank: 8 }, dynamic(lengthDependent));
      const { rows, cache } = await decode(m, x, [[0, 2], [2, 1], [3, 1], [4, 1], [5, 1]], 0);
      let worst = 0;
      for (let t = 2; t < T; t++) {
        const prefix = x.slice([0, 0, 0], [B, t + 1, D]);
        const y = m.forward(prefix, { positions: range(t + 1), training: false }).y;
        const last = y.slice([0, t, 0], [B, 1, D]); // [B, 1, D]
        worst = Math.max(worst, relativeError([...rows[0]![t]!, ...rows[1]![t]!], await last.data()));
        tf.dispose([prefix, y, last]);
      }
      errors.push(worst);
      disposeCache(cache);
    }
    expect(errors[0]).toBeLessThan(1e-5);
    expect(errors[1]).toBeGreaterThan(1e-3); // rotated-once keys would be stale
    x.dispose();
  });
});

describe('MLA config', () => {
  it('fills defaults and names Hugging Face DeepSeek parameters', () => {
    const cfg = attentionConfigSchema.parse(base);
    expect(cfg).toEqual({ ...base, bias: false, normEps: 1e-6, dropout: 0 });
    const shapes = (m: MlaAttention) => Object.fromEntries(m.namedParameters().map(([n, p]) => [n, p.variable.shape]));
    expect(shapes(make({}, noPositional))).toEqual({
      'q_proj.weight': [16, 32],
      'kv_a_proj_with_mqa.weight': [16, 10],
      'kv_a_layernorm.weight': [6],
      'kv_b_proj.weight': [6, 28],
      'o_proj.weight': [12, 16],
    });
    expect(shapes(make({ qLoraRank: 8, bias: true }, noPositional))).toEqual({
      'q_a_proj.weight': [16, 8],
      'q_a_proj.bias': [8],
      'q_a_layernorm.weight': [8],
      'q_b_proj.weight': [8, 32],
      'kv_a_proj_with_mqa.weight': [16, 10],
      'kv_a_proj_with_mqa.bias': [10],
      'kv_a_layernorm.weight': [6],
      'kv_b_proj.weight': [6, 28],
      'o_proj.weight': [12, 16],
      'o_proj.bias': [16],
    });
  });

  it('rejects unknown keys and non-positive or fractional dims, naming the field', () => {
    const unknown = attentionConfigSchema.safeParse({ ...base, kvLoraRnak: 4 });
    expect(unknown.success).toBe(false);
    expect(unknown.error!.issues[0]!.message).toMatch(/kvLoraRnak/);
    for (const field of ['numHeads', 'qLoraRank', 'kvLoraRank', 'qkNopeHeadDim', 'qkRopeHeadDim', 'vHeadDim']) {
      for (const bad of [0, -2, 1.5]) {
        const r = attentionConfigSchema.safeParse({ ...base, [field]: bad });
        expect(r.success, `${field}=${bad}`).toBe(false);
        expect(r.error!.issues[0]!.path).toEqual([field]);
        expect(r.error!.issues[0]!.message).toBe(`${field} must be a positive integer (got ${bad})`);
      }
    }
    const missing = attentionConfigSchema.safeParse({ type: 'mla', numHeads: 4, kvLoraRank: 6, qkNopeHeadDim: 4, vHeadDim: 3 });
    expect(missing.error!.issues.map((i) => i.path.join('.'))).toEqual(['qkRopeHeadDim']);
    expect(attentionConfigSchema.safeParse({ ...base, normEps: 0 }).success).toBe(false);
  });

  it('builds its positional encoding for qkRopeHeadDim, and rejects a foreign cache or a wrong input', () => {
    expect(attentionHeadDim(attentionConfigSchema.parse(base), 512)).toBe(base.qkRopeHeadDim);
    const m = make({}, noPositional);
    const x = tf.zeros([1, 2, D]);
    expect(() => m.forward(x, { positions: range(2), cache: { kind: 'kv', length: 0, tensors: [] }, training: false })).toThrow(/mla attention got a "kv" cache/);
    expect(() => m.forward(x, { positions: range(3), training: false })).toThrow(/3 positions for 2 tokens/);
    const bad = tf.zeros([1, 2, 8]);
    expect(() => m.forward(bad, { positions: range(2), training: false })).toThrow(/attention input: expected shape \[B, T, 16\], got \[1, 2, 8\]/);
    tf.dispose([x, bad]);
  });
});

describe('kvCacheNumbersPerToken', () => {
  it('counts per token and layer: 2 * numKvHeads * headDim for mha, kvLoraRank + qkRopeHeadDim for mla', () => {
    const n = (cfg: object) => kvCacheNumbersPerToken(attentionConfigSchema.parse(cfg), 512);
    expect(n({ type: 'mha', numHeads: 8 })).toBe(1024); // MHA
    expect(n({ type: 'mha', numHeads: 8, numKvHeads: 2 })).toBe(256); // GQA
    expect(n({ type: 'mha', numHeads: 8, numKvHeads: 1 })).toBe(128); // MQA
    expect(n({ type: 'mla', numHeads: 8, kvLoraRank: 128, qkNopeHeadDim: 64, qkRopeHeadDim: 32, vHeadDim: 64 })).toBe(160);
  });

  it('agrees with the tensors an mha cache really holds', () => {
    const cfg = attentionConfigSchema.parse({ type: 'mha', numHeads: 4, numKvHeads: 2 });
    const m = createAttention(cfg, { dModel: D, positional: noPositional, rng: Rng.seeded(0), contextLength: 64 }) as SoftmaxAttention;
    const x = tf.zeros([B, 3, D]);
    const out = m.forward(x, { positions: range(3), cache: m.initCache(), training: false });
    const numbers = out.cache!.tensors.reduce((s, t) => s + t.size, 0);
    expect(numbers / (B * 3)).toBe(kvCacheNumbersPerToken(cfg, D));
    disposeCache(out.cache);
    tf.dispose([x, out.y]);
    m.dispose();
  });
});
