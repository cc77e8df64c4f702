import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { Rope, noPositional, type PositionalEncoding } from '@tsformer/positional';
import { SoftmaxAttention, attentionConfigSchema, createAttention, disposeCache, type AttentionCache } from './index.js';

const made: SoftmaxAttention[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

function make(numHeads: number, numKvHeads: number, positional: PositionalEncoding, dModel = 16, seed = 0): SoftmaxAttention {
  const cfg = attentionConfigSchema.parse({ type: 'mha', numHeads, numKvHeads });
  const m = createAttention(cfg, { dModel, positional, rng: Rng.seeded(seed), contextLength: 64 }) as SoftmaxAttention;
  made.push(m);
  return m;
}

const range = (n: number, from = 0) => Int32Array.from({ length: n }, (_, i) => i + from);

/**
 * The spec: per batch, head and query, softmax over visible keys of q.k/sqrt(D), weighted sum of
 * values, written as plain loops over host arrays (projections and RoPE from the module's layers).
 */
async function naive(m: SoftmaxAttention, x: tf.Tensor, positional: PositionalEncoding): Promise<Float32Array> {
  const [B, T] = x.shape as [number, number, number];
  const H = m.numHeads, Hkv = m.numKvHeads, D = m.headDim, G = H / Hkv;
  const pos = range(T);
  const rot = (t: tf.Tensor) => (positional.rotate ? positional.rotate(t, pos) : t);
  const q = (await rot(m.q_proj.forward(x).reshape([B, T, H, D])).array()) as number[][][][];
  const k = (await rot(m.k_proj.forward(x).reshape([B, T, Hkv, D])).array()) as number[][][][];
  const v = (await m.v_proj.forward(x).reshape([B, T, Hkv, D]).array()) as number[][][][];
  const o = new Float32Array(B * T * H * D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++) {
        const kv = Math.floor(h / G);
        const s = Array.from({ length: i + 1 }, (_, j) => q[b]![i]![h]!.reduce((acc, qd, d) => acc + qd * k[b]![j]![kv]![d]!, 0) / Math.sqrt(D));
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const sum = e.reduce((a, c) => a + c, 0);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j <= i; j++) acc += (e[j]! / sum) * v[b]![j]![kv]![d]!;
          o[((b * T + i) * H + h) * D + d] = acc;
        }
      }
  return m.o_proj.forward(tf.tensor(o, [B, T, H * D])).data() as Promise<Float32Array>;
}

/** A second, tensor-level reference (repeated kv heads, band-part mask) for gradients. */
function reference(m: SoftmaxAttention, x: tf.Tensor, positional: PositionalEncoding): tf.Tensor {
  return tf.tidy(() => {
    const [B, T] = x.shape as [number, number, number];
    const H = m.numHeads, Hkv = m.numKvHeads, D = m.headDim, G = H / Hkv;
    const pos = range(T);
    const rot = (t: tf.Tensor) => (positional.rotate ? positional.rotate(t, pos) : t);
    const q = rot(m.q_proj.forward(x).reshape([B, T, H, D])).transpose([0, 2, 1, 3]);
    const rep = (t: tf.Tensor) => t.reshape([B * T, Hkv, 1, D]).tile([1, 1, G, 1]).reshape([B, T, H, D]).transpose([0, 2, 1, 3]);
    const k = rep(rot(m.k_proj.forward(x).reshape([B, T, Hkv, D])));
    const v = rep(m.v_proj.forward(x).reshape([B, T, Hkv, D]));
    const allowed = tf.linalg.bandPart(tf.ones([T, T]), -1, 0);
    const s = tf.matMul(q, k, false, true).div(Math.sqrt(D)).add(tf.scalar(1).sub(allowed).mul(-1e9));
    const o = tf.matMul(tf.softmax(s), v).transpose([0, 2, 1, 3]).reshape([B, T, H * D]);
    return m.o_proj.forward(o);
  });
}

const rope = new Rope({ headDim: 4 });
const cases: Array<[string, number, number, PositionalEncoding]> = [
  ['MHA + RoPE', 4, 4, rope],
  ['GQA + RoPE', 4, 2, rope],
  ['MQA + NoPE', 4, 1, noPositional],
];

describe.each(cases)('%s', (_name, H, Hkv, positional) => {
  const x = tf.keep(tf.tensor(Rng.seeded(11).normalArray(2 * 6 * 16), [2, 6, 16])); // [B, T, D]

  it('matches the naive loops', async () => {
    const m = make(H, Hkv, positional);
    const { y } = m.forward(x, { positions: range(6), training: false });
    expect(y.shape).toEqual([2, 6, 16]);
    expect(relativeError(await y.data(), await naive(m, x, positional))).toBeLessThan(1e-5);
    y.dispose();
  });

  it('has the gradients of the reference', async () => {
    const m = make(H, Hkv, positional);
    const r = tf.tensor(Rng.seeded(12).normalArray(2 * 6 * 16), [2, 6, 16]);
    const vars = m.trainableVariables();
    const g1 = tf.variableGrads(() => m.forward(x, { positions: range(6), training: true }).y.mul(r).sum() as tf.Scalar, vars);
    const g2 = tf.variableGrads(() => reference(m, x, positional).mul(r).sum() as tf.Scalar, vars);
    for (const v of vars) {
      expect(relativeError(await g1.grads[v.name]!.data(), await g2.grads[v.name]!.data())).toBeLessThan(1e-5);
    }
    const gx1 = tf.grad((xx: tf.Tensor) => m.forward(xx, { positions: range(6), training: true }).y.mul(r).sum())(x);
    const gx2 = tf.grad((xx: tf.Tensor) => reference(m, xx, positional).mul(r).sum())(x);
    expect(relativeError(await gx1.data(), await gx2.data())).toBeLessThan(1e-5);
    tf.dispose([r, g1.value, g2.value, gx1, gx2, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
  });

  it('decodes token by token (and after a prefill) exactly like the full forward', async () => {
    const m = make(H, Hkv, positional);
    const { y: full } = m.forward(x, { positions: range(6), training: false });
    const fullRows = (await full.array()) as number[][][];
    let cache: AttentionCache = m.initCache() as AttentionCache;
    // prefill 2 tokens, then 4 single steps
    const pieces: number[][][] = [[], []];
    for (const [start, len] of [[0, 2], [2, 1], [3, 1], [4, 1], [5, 1]] as const) {
      const out = m.forward(x.slice([0, start, 0], [2, len, 16]), { positions: range(len, start), cache, training: false });
      disposeCache(cache);
      cache = out.cache!;
      const rows = (await out.y.array()) as number[][][];
      rows.forEach((r, b) => pieces[b]!.push(...r));
      out.y.dispose();
    }
    expect(cache.length).toBe(6);
    for (let b = 0; b < 2; b++) expect(relativeError(pieces[b]!.flat(), fullRows[b]!.flat())).toBeLessThan(1e-5);
    disposeCache(cache);
    full.dispose();
  });

  it('is causal: changing a future token leaves earlier outputs unchanged', async () => {
    const m = make(H, Hkv, positional);
    const x2 = tf.concat([x.slice([0, 0, 0], [2, 4, 16]), tf.randomNormal([2, 2, 16], 0, 5, 'float32', 1)], 1);
    const a = m.forward(x, { positions: range(6), training: false }).y.slice([0, 0, 0], [2, 4, 16]);
    const b = m.forward(x2, { positions: range(6), training: false }).y.slice([0, 0, 0], [2, 4, 16]);
    expect(Array.from(await a.data())).toEqual(Array.from(await b.data()));
    tf.dispose([x2, a, b]);
  });

  it('leaks no tensors in forward + backward or in decoding', async () => {
    const m = make(H, Hkv, positional);
    const vars = m.trainableVariables();
    expect(
      await tensorLeak(() => {
        const { value, grads } = tf.variableGrads(() => m.forward(x, { positions: range(6), training: true }).y.square().mean() as tf.Scalar, vars);
        tf.dispose([value, ...Object.values(grads)]);
      }),
    ).toBe(0);
    expect(
      await tensorLeak(() => {
        let cache: AttentionCache = m.initCache();
        for (let t = 0; t < 3; t++) {
          const xt = x.slice([0, t, 0], [2, 1, 16]);
          const out = m.forward(xt, { positions: range(1, t), cache, training: false });
          disposeCache(cache);
          xt.dispose();
          cache = out.cache!;
          out.y.dispose();
        }
        disposeCache(cache);
      }),
    ).toBe(0);
  });
});

describe('config', () => {
  it('rejects unknown keys, unknown types and heads that do not divide', () => {
    expect(attentionConfigSchema.safeParse({ type: 'mha', numHeads: 4, numKvHead: 2 }).success).toBe(false);
    expect(attentionConfigSchema.safeParse({ type: 'flash', numHeads: 4 }).success).toBe(false);
    expect(() => make(4, 3, noPositional)).toThrow(/numKvHeads \(3\) must divide attention.numHeads \(4\)/);
    expect(() => make(3, 3, noPositional)).toThrow(/must divide dModel/);
  });
  it('rejects an input of the wrong shape, naming it', () => {
    const m = make(4, 4, noPositional);
    const bad = tf.zeros([2, 3, 8]);
    expect(() => m.forward(bad, { positions: range(3), training: false })).toThrow(/attention input: expected shape \[B, T, 16\], got \[2, 3, 8\]/);
    bad.dispose();
  });
});
