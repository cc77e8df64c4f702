import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf, type Module } from '@tsformer/core';
import { attentionConfigSchema, createAttention, disposeCache, SoftmaxAttention, type AttentionCache } from '@tsformer/attention';
import { createPositional, positionalConfigSchema } from '@tsformer/positional';
import { HedgehogFeatureMap, LolcatsAttention, expandKvHeads, hybridNaive, softmaxHeads, softmaxOutput, softmaxWeights, type LolcatsCache } from './index.js';

const made: Module[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

const B = 2;
const T = 11;
const DM = 16;
const H = 4;
const HKV = 2;
const HD = 4;
const range = (n: number, from = 0) => Int32Array.from({ length: n }, (_, i) => i + from);
const positional = createPositional(positionalConfigSchema.parse({ type: 'rope', theta: 100 }), HD);
const x = tf.keep(tf.tensor(Rng.seeded(1).normalArray(B * T * DM), [B, T, DM])); // [B, T, dModel]

/** A GQA softmax teacher with unit-scale weights (so attention is far from uniform). */
function teacher(seed: number, extra: Record<string, unknown> = {}): SoftmaxAttention {
  const cfg = attentionConfigSchema.parse({ type: 'mha', numHeads: H, numKvHeads: HKV, ...extra });
  const t = createAttention(cfg, { dModel: DM, positional, rng: Rng.seeded(seed), contextLength: 64 }) as SoftmaxAttention;
  const rng = Rng.seeded(seed + 1);
  for (const [, p] of t.namedParameters()) {
    if (p.variable.rank < 2) continue;
    const w = tf.tensor(rng.normalArray(p.variable.size, 1 / Math.sqrt(p.variable.shape[0]!)), p.variable.shape);
    p.variable.assign(w);
    w.dispose();
  }
  made.push(t);
  return t;
}

function student(t: SoftmaxAttention, cfg: Record<string, unknown>, seed = 3, share = false): LolcatsAttention {
  const s = LolcatsAttention.fromTeacher(t, positional, { type: 'lolcats', featureDim: 3, window: 4, ...cfg }, Rng.seeded(seed), { share });
  made.push(s);
  return s;
}

describe('Hedgehog feature map', () => {
  it('is [softmax(x W_h), softmax(-x W_h)] per head (kaiming and identity init)', async () => {
    const xs = tf.tensor(Rng.seeded(2).normalArray(B * 3 * H * HD), [B, 3, H, HD]); // [B, T, H, D]
    for (const [init, f] of [['kaiming', 5], ['identity', HD], ['identity', 2]] as const) {
      const fm = new HedgehogFeatureMap(H, HD, Rng.seeded(4), { featureDim: f, init });
      made.push(fm);
      const W = (await fm.weight.data()) as Float32Array;
      if (init === 'identity') for (let h = 0; h < H; h++) for (let i = 0; i < HD; i++) for (let j = 0; j < f; j++) expect(W[(h * HD + i) * f + j]).toBe(i === j ? 1 : 0);
      else expect(Math.max(...Array.from(W, Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(HD));
      const y = fm.forward(xs);
      expect(y.shape).toEqual([B, 3, H, 2 * f]);
      const xd = (await xs.data()) as Float32Array;
      const ref: number[] = [];
      for (let r = 0; r < B * 3; r++) for (let h = 0; h < H; h++) {
        const z = Array.from({ length: f }, (_, j) => {
          let s = 0;
          for (let i = 0; i < HD; i++) s += xd[(r * H + h) * HD + i]! * W[(h * HD + i) * f + j]!;
          return s;
        });
        const sm = (v: number[]) => {
          const m = Math.max(...v);
          const e = v.map((a) => Math.exp(a - m));
          const tot = e.reduce((a, b) => a + b, 0);
          return e.map((a) => a / tot);
        };
        ref.push(...sm(z), ...sm(z.map((a) => -a)));
      }
      expect(relativeError(await y.data(), ref)).toBeLessThan(1e-6);
      y.dispose();
    }
    xs.dispose();
  });
});

describe('LoLCATs attention', () => {
  it('keeps the teacher: heads are the teacher softmax when every key is inside the window', async () => {
    for (const extra of [{}, { qkNorm: true, outputGate: true }]) {
      const t = teacher(5, extra);
      const s = student(t, { window: T }, 6);
      const ys = s.forward(x, { positions: range(T), training: false }).y;
      const yt = t.forward(x, { positions: range(T), training: false }).y;
      expect(relativeError(await ys.data(), await yt.data())).toBeLessThan(1e-5);
      // the teacher heads through the rest of the layer are the teacher's own output
      const th = softmaxHeads(t, positional, x, range(T));
      const yh = softmaxOutput(t, x, th);
      expect(relativeError(await yh.data(), await yt.data())).toBeLessThan(1e-5);
      tf.dispose([ys, yt, th, yh]);
    }
  });

  it('computes the hybrid definition on the teacher projections (float64 reference), both paths', async () => {
    const t = teacher(7);
    const s = student(t, {}, 8);
    const host = tf.tidy(() => {
      const p = s.project(x, range(T));
      const k = expandKvHeads(p.k, H);
      return [p.q, k, expandKvHeads(p.v, H), s.feature_map_q.forward(p.q), s.feature_map_k.forward(k), s.gamma()].map((a) => a.dataSync());
    });
    const ref = hybridNaive({ q: host[0]!, k: host[1]!, v: host[2]!, fq: host[3]!, fk: host[4]!, gamma: host[5]!, dims: [B, T, T, H, HD, HD, 6], window: 4 });
    for (const path of ['dense', 'blocked'] as const) {
      s.path = path;
      const o = s.heads(x, range(T));
      expect(o.shape).toEqual([B, T, H, HD]);
      expect(relativeError(await o.data(), ref), path).toBeLessThan(1e-5);
      o.dispose();
    }
    // and it is not the teacher (the linear part replaces attention beyond the window)
    const th = softmaxHeads(t, positional, x, range(T));
    const o = s.heads(x, range(T));
    expect(relativeError(await o.data(), await th.data())).toBeGreaterThan(1e-2);
    tf.dispose([th, o]);
    expect((await s.gamma().data())[0]).toBeCloseTo(0.1, 6);
  });

  it('shares or copies the teacher projections', async () => {
    const t = teacher(9);
    const shared = student(t, {}, 10, true);
    const copied = student(t, {}, 10, false);
    expect(shared.q_proj).toBe(t.q_proj);
    expect(copied.q_proj).not.toBe(t.q_proj);
    expect(relativeError(await copied.o_proj.weight.data(), await t.o_proj.weight.data())).toBe(0);
    expect(copied.namedParameters().map(([n]) => n)).toEqual(['window_factors', 'q_proj.weight', 'k_proj.weight', 'v_proj.weight', 'o_proj.weight', 'feature_map_q.weight', 'feature_map_k.weight']);
    expect(copied.feature_map_k.weight.shape).toEqual([H, HD, 3]);
  });

  for (const path of ['auto', 'blocked', 'dense'] as const) {
    it(`decodes (prefill then 1 at a time; 1 at a time; three pieces) like the full forward, memory constant (${path})`, async () => {
      const s = student(teacher(11), {}, 12);
      s.path = path;
      const full = s.forward(x, { positions: range(T), training: false }).y;
      const fullData = await full.data();
      const plans: Array<Array<[number, number]>> = [
        [[0, 3], ...Array.from({ length: T - 3 }, (_, i) => [3 + i, 1] as [number, number])],
        Array.from({ length: T }, (_, i) => [i, 1] as [number, number]),
        [[0, 5], [5, 2], [7, 4]],
      ];
      for (const plan of plans) {
        let cache: AttentionCache = s.initCache();
        const ys: tf.Tensor[] = [];
        for (const [from, n] of plan) {
          const xs = x.slice([0, from, 0], [B, n, DM]); // [B, n, dModel]
          const out = s.forward(xs, { positions: range(n, from), cache, training: false });
          xs.dispose();
          disposeCache(cache);
          cache = out.cache!;
          ys.push(out.y);
          const c = cache as LolcatsCache;
          expect(c.k!.shape).toEqual([B, Math.min(4, from + n), HKV, HD]);
          if (from + n > 4) expect(c.kv!.shape).toEqual([B, H, 6, HD]);
        }
        const y = tf.concat(ys, 1); // [B, T, dModel]
        expect(cache.length).toBe(T);
        expect(relativeError(await y.data(), fullData), JSON.stringify(plan)).toBeLessThan(1e-5);
        tf.dispose([y, ...ys]);
        disposeCache(cache);
      }
      full.dispose();
    });
  }

  it('is causal: changing token 6 changes no output before it', async () => {
    const s = student(teacher(13), {}, 14);
    const x2 = tf.tidy(() => x.add(tf.oneHot([6], T).reshape([1, T, 1]).mul(3))); // bump [1, T, 1] at token 6
    const a = (await s.forward(x, { positions: range(T), training: false }).y.array()) as number[][][];
    const b = (await s.forward(x2, { positions: range(T), training: false }).y.array()) as number[][][];
    for (let t = 0; t < T; t++) {
      const err = relativeError(b[0]![t]!, a[0]![t]!);
      if (t < 6) expect(err).toBeLessThan(1e-6);
      else if (t === 6) expect(err).toBeGreaterThan(1e-3);
    }
    x2.dispose();
  });

  it('trains feature maps and window factors: blocked gradients equal dense ones, nothing leaks', async () => {
    const s = student(teacher(15), { featureMapInit: 'identity', featureDim: HD }, 16);
    const vars = [s.feature_map_q.weight, s.feature_map_k.weight, s.window_factors];
    const w = tf.tensor(Rng.seeded(17).normalArray(B * T * H * HD), [B, T, H, HD]);
    const grads = async (path: 'dense' | 'blocked') => {
      s.path = path;
      const r = tf.variableGrads(() => s.heads(x, range(T)).mul(w).sum() as tf.Scalar, vars);
      const out = await Promise.all(vars.map((v) => r.grads[v.name]!.data()));
      tf.dispose([r.value, ...Object.values(r.grads)]);
      return out;
    };
    const gd = await grads('dense');
    const gb = await grads('blocked');
    for (let i = 0; i < vars.length; i++) {
      expect(relativeError(gb[i]!, gd[i]!)).toBeLessThan(1e-5);
      expect(relativeError(gd[i]!, new Float32Array(gd[i]!.length))).toBeGreaterThan(0);
    }
    const leak = await tensorLeak(() => {
      const r = tf.variableGrads(() => s.forward(x, { positions: range(T), training: true }).y.square().mean() as tf.Scalar, vars);
      tf.dispose([r.value, ...Object.values(r.grads)]);
      let cache: AttentionCache = s.initCache();
      for (let i = 0; i < 6; i++) {
        const xs = x.slice([0, i, 0], [B, 1, DM]);
        const out = s.forward(xs, { positions: range(1, i), cache, training: false });
        disposeCache(cache);
        cache = out.cache!;
        tf.dispose([xs, out.y]);
      }
      disposeCache(cache);
    });
    expect(leak).toBe(0);
    w.dispose();
  });

  it('gives normalized hybrid weights and teacher softmax weights (rows sum to 1, causal)', async () => {
    const t = teacher(18);
    const s = student(t, {}, 19);
    for (const a of [s.weights(x, range(T)), softmaxWeights(t, positional, x, range(T))]) {
      expect(a.shape).toEqual([B, H, T, T]);
      const rows = a.sum(-1);
      expect(Math.max(...Array.from(await rows.data(), (v) => Math.abs(v - 1)))).toBeLessThan(1e-5);
      expect(((await a.array()) as number[][][][])[0]![1]![2]![3]).toBe(0);
      tf.dispose([a, rows]);
    }
  });

  it('rejects teachers it cannot convert', () => {
    const sig = createAttention(attentionConfigSchema.parse({ type: 'mha', numHeads: H, score: 'sigmoid' }), { dModel: DM, positional, rng: Rng.seeded(0), contextLength: 64 });
    made.push(sig);
    expect(() => LolcatsAttention.fromTeacher(sig, positional, { type: 'lolcats' }, Rng.seeded(0))).toThrow(/score: sigmoid/);
    const gla = createAttention(attentionConfigSchema.parse({ type: 'gla', numHeads: 2 }), { dModel: DM, positional, rng: Rng.seeded(0), contextLength: 64 });
    made.push(gla);
    expect(() => LolcatsAttention.fromTeacher(gla, positional, { type: 'lolcats' }, Rng.seeded(0))).toThrow(/"gla" attention/);
    const alibi = createPositional(positionalConfigSchema.parse({ type: 'alibi' }), HD);
    expect(() => LolcatsAttention.fromTeacher(teacher(20), alibi, { type: 'lolcats' }, Rng.seeded(0))).toThrow(/score-bias/);
  });
});
