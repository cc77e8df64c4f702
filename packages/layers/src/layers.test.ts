import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf, type Module } from '@tsformer/core';
import { Dropout, Embedding, GeluMlp, LayerNorm, Linear, RMSNorm, SwiGLU } from './index.js';

const made: Module[] = [];
function keep<M extends Module>(m: M): M {
  made.push(m);
  return m;
}
afterAll(() => made.forEach((m) => m.dispose()));

/** Forward + backward through the module's parameters, everything disposed: used by the leak tests. */
function step(m: Module, f: () => tf.Tensor): void {
  const { value, grads } = tf.variableGrads(() => f().square().mean() as tf.Scalar, m.trainableVariables());
  value.dispose();
  Object.values(grads).forEach((g) => g.dispose());
}

const rng = Rng.seeded(0);
const x = tf.keep(tf.tensor(Rng.seeded(1).normalArray(2 * 3 * 8), [2, 3, 8]));

describe('Linear', () => {
  it('computes x W + b on any leading shape', async () => {
    const lin = keep(new Linear(8, 4, rng, { bias: true }));
    lin.bias!.assign(tf.tensor([1, 2, 3, 4]));
    const y = lin.forward(x);
    expect(y.shape).toEqual([2, 3, 4]);
    const W = (await lin.weight.array()) as number[][];
    const xs = (await x.array()) as number[][][];
    const ys = (await y.array()) as number[][][];
    const expected = xs[1]![2]!.reduce((acc, xi, i) => acc.map((a, j) => a + xi * W[i]![j]!), [1, 2, 3, 4]);
    expect(relativeError(ys[1]![2]!, expected)).toBeLessThan(1e-6);
    y.dispose();
  });
  it('has no bias by default and leaks nothing', async () => {
    const lin = keep(new Linear(8, 4, rng));
    expect(lin.namedParameters().map(([n]) => n)).toEqual(['weight']);
    expect(await tensorLeak(() => step(lin, () => lin.forward(x)))).toBe(0);
  });
});

describe('Embedding', () => {
  it('looks up rows and ties the output head', async () => {
    const emb = keep(new Embedding(10, 8, rng));
    const ids = tf.tensor2d([[1, 2], [3, 9]], undefined, 'int32');
    const h = emb.forward(ids);
    expect(h.shape).toEqual([2, 2, 8]);
    const W = (await emb.weight.array()) as number[][];
    expect(((await h.array()) as number[][][])[1]![1]).toEqual(W[9]);
    const logits = emb.attend(h);
    expect(logits.shape).toEqual([2, 2, 10]);
    const row = ((await logits.array()) as number[][][])[0]![0]!;
    const expected = W.map((w) => w.reduce((s, v, i) => s + v * W[1]![i]!, 0));
    expect(relativeError(row, expected)).toBeLessThan(1e-6);
    expect(emb.namedParameters()[0]![1].decay).toBe(false);
    expect(await tensorLeak(() => step(emb, () => emb.attend(emb.forward(ids))))).toBe(0);
    tf.dispose([ids, h, logits]);
  });
});

describe('norms', () => {
  it('RMSNorm normalizes to unit RMS', async () => {
    const n = keep(new RMSNorm(8, 1e-6));
    const y = n.forward(x);
    const ms = await y.square().mean(-1).data();
    ms.forEach((v) => expect(v).toBeCloseTo(1, 4));
    expect(await tensorLeak(() => step(n, () => n.forward(x)))).toBe(0);
    y.dispose();
  });
  it('LayerNorm gives zero mean, unit variance', async () => {
    const n = keep(new LayerNorm(8, 1e-6));
    const y = n.forward(x);
    const { mean, variance } = tf.moments(y, -1);
    (await mean.data()).forEach((v) => expect(Math.abs(v)).toBeLessThan(1e-5));
    (await variance.data()).forEach((v) => expect(v).toBeCloseTo(1, 3));
    expect(n.namedParameters().map(([k, p]) => [k, p.decay])).toEqual([['weight', false], ['bias', false]]);
    expect(await tensorLeak(() => step(n, () => n.forward(x)))).toBe(0);
    tf.dispose([y, mean, variance]);
  });
});

describe('MLPs', () => {
  it('SwiGLU matches down(silu(gate x) * up x) and uses HF names', async () => {
    const m = keep(new SwiGLU(8, 16, rng));
    expect(m.namedParameters().map(([k]) => k)).toEqual(['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']);
    const y = m.forward(x);
    const ref = tf.tidy(() => {
      const g = tf.matMul(x.reshape([6, 8]), m.gate_proj.weight);
      const u = tf.matMul(x.reshape([6, 8]), m.up_proj.weight);
      return tf.matMul(g.mul(tf.sigmoid(g)).mul(u), m.down_proj.weight).reshape([2, 3, 8]);
    });
    expect(relativeError(await y.data(), await ref.data())).toBeLessThan(1e-5);
    expect(await tensorLeak(() => step(m, () => m.forward(x)))).toBe(0);
    tf.dispose([y, ref]);
  });
  it('GELU MLP has the right shape and leaks nothing', async () => {
    const m = keep(new GeluMlp(8, 16, rng));
    const y = m.forward(x);
    expect(y.shape).toEqual([2, 3, 8]);
    expect(await tensorLeak(() => step(m, () => m.forward(x)))).toBe(0);
    y.dispose();
  });
});

describe('Dropout', () => {
  it('is identity in eval mode, scales kept units in training, and is reproducible from the RNG', async () => {
    const ones = tf.ones([1000]);
    const d1 = keep(new Dropout(0.25, Rng.seeded(9)));
    const d2 = keep(new Dropout(0.25, Rng.seeded(9)));
    const a = await d1.forward(ones).data();
    const b = await d2.forward(ones).data();
    expect(Array.from(a)).toEqual(Array.from(b));
    const zeros = a.filter((v) => v === 0).length;
    expect(zeros).toBeGreaterThan(180);
    expect(zeros).toBeLessThan(320);
    a.filter((v) => v !== 0).forEach((v) => expect(v).toBeCloseTo(1 / 0.75, 5));
    d1.eval();
    expect(d1.forward(ones)).toBe(ones);
    expect(await tensorLeak(() => tf.tidy(() => d2.forward(ones)).dispose())).toBe(0);
    ones.dispose();
  });
});
