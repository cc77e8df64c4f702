import { afterAll, describe, expect, it } from 'vitest';
import { Module, Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import {
  Linear,
  addLora,
  baseStateDict,
  freeze,
  injectLora,
  loraAdapters,
  loraOf,
  matchesPath,
  mergeLora,
  setTrainable,
  trainableParameters,
  trainableStateDict,
} from './index.js';

const made: Module[] = [];
afterAll(() => made.forEach((m) => m.dispose()));

const IN = 6;
const OUT = 5;
const R = 3;
const x = tf.keep(tf.tensor(Rng.seeded(1).normalArray(2 * 4 * IN), [2, 4, IN])); // [B, T, in]

/** Float64 host reference: y = x W + b + (x A B) * alpha / rank, row by row. */
function reference(xs: Float32Array, W: Float32Array, b: Float32Array | null, A: Float32Array, Bm: Float32Array, scale: number): Float64Array {
  const n = xs.length / IN;
  const y = new Float64Array(n * OUT);
  for (let r = 0; r < n; r++) {
    const xa = new Float64Array(R);
    for (let k = 0; k < R; k++) for (let i = 0; i < IN; i++) xa[k] = xa[k]! + xs[r * IN + i]! * A[i * R + k]!;
    for (let o = 0; o < OUT; o++) {
      let s = b ? b[o]! : 0;
      for (let i = 0; i < IN; i++) s += xs[r * IN + i]! * W[i * OUT + o]!;
      for (let k = 0; k < R; k++) s += xa[k]! * Bm[k * OUT + o]! * scale;
      y[r * OUT + o] = s;
    }
  }
  return y;
}

/** A module holding Linears at several depths, to test path patterns. */
class Toy extends Module {
  readonly q_proj: Linear;
  readonly inner: Inner;
  constructor(rng: Rng) {
    super();
    this.q_proj = this.addModule('q_proj', new Linear(IN, OUT, rng));
    this.inner = this.addModule('inner', new Inner(rng));
  }
  forward(t: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.inner.o_proj.forward(this.q_proj.forward(t)));
  }
}
class Inner extends Module {
  readonly o_proj: Linear;
  readonly k_proj: Linear;
  constructor(rng: Rng) {
    super();
    this.o_proj = this.addModule('o_proj', new Linear(OUT, IN, rng, { bias: true }));
    this.k_proj = this.addModule('k_proj', new Linear(IN, OUT, rng));
  }
}

describe('LoRA', () => {
  it('starts equal to the base layer (B = 0) with A ~ U(-1/sqrt(in), 1/sqrt(in))', async () => {
    const lin = new Linear(IN, OUT, Rng.seeded(2), { bias: true });
    made.push(lin);
    const before = lin.forward(x);
    const a = addLora(lin, Rng.seeded(3), { rank: R, alpha: 6 });
    const after = lin.forward(x);
    expect(relativeError(await after.data(), await before.data())).toBe(0);
    const A = await a.lora_A.weight.data();
    expect(a.lora_A.weight.shape).toEqual([IN, R]);
    expect(a.lora_B.weight.shape).toEqual([R, OUT]);
    expect(Math.max(...Array.from(A, Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(IN));
    expect(Math.max(...Array.from(A, Math.abs))).toBeGreaterThan(0.2 / Math.sqrt(IN));
    expect(Array.from(await a.lora_B.weight.data()).every((v) => v === 0)).toBe(true);
    expect(loraOf(lin)).toBe(a);
    expect(() => addLora(lin, Rng.seeded(3))).toThrow(/already has a LoRA adapter/);
    tf.dispose([before, after]);
  });

  it('computes x W + b + (x A B) alpha/rank, with PEFT-like names and a frozen base', async () => {
    const lin = new Linear(IN, OUT, Rng.seeded(4), { bias: true });
    made.push(lin);
    const a = addLora(lin, Rng.seeded(5), { rank: R, alpha: 6 });
    const Bn = tf.tensor(Rng.seeded(6).normalArray(R * OUT), [R, OUT]);
    a.lora_B.weight.assign(Bn);
    Bn.dispose();
    expect(lin.namedParameters().map(([n, p]) => `${n}:${p.variable.trainable}`)).toEqual([
      'weight:false',
      'bias:false',
      'lora_A.weight:true',
      'lora_B.weight:true',
    ]);
    const y = lin.forward(x);
    const ref = reference(await x.data() as Float32Array, await lin.weight.data() as Float32Array, await lin.bias!.data() as Float32Array,
      await a.lora_A.weight.data() as Float32Array, await a.lora_B.weight.data() as Float32Array, 2);
    expect(y.shape).toEqual([2, 4, OUT]);
    expect(relativeError(await y.data(), ref)).toBeLessThan(1e-6);
    y.dispose();
  });

  it('has the gradients of the reference for A, B and x; none for the frozen base', async () => {
    const lin = new Linear(IN, OUT, Rng.seeded(7));
    made.push(lin);
    const a = addLora(lin, Rng.seeded(8), { rank: R, alpha: 4 });
    const Bn = tf.tensor(Rng.seeded(9).normalArray(R * OUT), [R, OUT]);
    a.lora_B.weight.assign(Bn);
    Bn.dispose();
    const w = tf.tensor(Rng.seeded(10).normalArray(2 * 4 * OUT), [2, 4, OUT]); // [B, T, out]
    const vars = lin.trainableVariables();
    expect(vars).toEqual([a.lora_A.weight, a.lora_B.weight]);
    const g1 = tf.variableGrads(() => lin.forward(x).mul(w).sum() as tf.Scalar, vars);
    // Reference by the explicit formula with plain tf ops.
    const ref = () => tf.tidy(() => {
      const x2 = x.reshape([-1, IN]); // [N, in]
      const y = tf.matMul(x2, lin.weight).add(tf.matMul(tf.matMul(x2, a.lora_A.weight), a.lora_B.weight).mul(4 / R)); // [N, out]
      return y.reshape([2, 4, OUT]).mul(w).sum() as tf.Scalar; // [B, T, out]
    });
    const g2 = tf.variableGrads(ref, vars);
    for (const v of vars) {
      const ga = await g1.grads[v.name]!.data();
      expect(relativeError(ga, await g2.grads[v.name]!.data())).toBeLessThan(1e-6);
      expect(relativeError(ga, new Float32Array(ga.length))).toBeGreaterThan(0);
    }
    const gx1 = tf.grad((t: tf.Tensor) => lin.forward(t).mul(w).sum())(x);
    const gx2 = tf.grad((t: tf.Tensor) =>
      // [N, in] -> [N, out] -> [B, T, out]
      tf.matMul(t.reshape([-1, IN]), lin.weight).add(tf.matMul(tf.matMul(t.reshape([-1, IN]), a.lora_A.weight), a.lora_B.weight).mul(4 / R)).reshape([2, 4, OUT]).mul(w).sum(),
    )(x);
    expect(relativeError(await gx1.data(), await gx2.data())).toBeLessThan(1e-6);
    tf.dispose([w, g1.value, g2.value, gx1, gx2, ...Object.values(g1.grads), ...Object.values(g2.grads)]);
  });

  it('merges W + A B alpha/rank into the base weight and keeps the function', async () => {
    const lin = new Linear(IN, OUT, Rng.seeded(11), { bias: true });
    made.push(lin);
    const a = addLora(lin, Rng.seeded(12), { rank: R, alpha: 16 });
    const Bn = tf.tensor(Rng.seeded(13).normalArray(R * OUT), [R, OUT]);
    a.lora_B.weight.assign(Bn);
    Bn.dispose();
    const W = (await lin.weight.data()) as Float32Array;
    const A = (await a.lora_A.weight.data()) as Float32Array;
    const Bm = (await a.lora_B.weight.data()) as Float32Array;
    const expected = new Float64Array(IN * OUT);
    for (let i = 0; i < IN; i++) for (let o = 0; o < OUT; o++) {
      let s = W[i * OUT + o]!;
      for (let k = 0; k < R; k++) s += (A[i * R + k]! * Bm[k * OUT + o]! * 16) / R;
      expected[i * OUT + o] = s;
    }
    const mw = a.mergedWeight();
    expect(relativeError(await mw.data(), expected)).toBeLessThan(1e-6);
    mw.dispose();
    const before = lin.forward(x);
    a.merge();
    a.merge(); // idempotent
    expect(relativeError(await lin.weight.data(), expected)).toBeLessThan(1e-6);
    expect(Array.from(await a.lora_B.weight.data()).every((v) => v === 0)).toBe(true);
    const after = lin.forward(x);
    expect(relativeError(await after.data(), await before.data())).toBeLessThan(1e-6);
    tf.dispose([before, after]);
  });

  it('applies dropout to the adapter input only while training', async () => {
    const lin = new Linear(IN, OUT, Rng.seeded(14));
    made.push(lin);
    const a = addLora(lin, Rng.seeded(15), { rank: R, dropout: 0.5 });
    const Bn = tf.tensor(Rng.seeded(16).normalArray(R * OUT), [R, OUT]);
    a.lora_B.weight.assign(Bn);
    Bn.dispose();
    const base = tf.tidy(() => tf.matMul(x.reshape([-1, IN]), lin.weight).reshape([2, 4, OUT])); // [B, T, out]
    lin.eval();
    const full = tf.tidy(() => base.add(tf.matMul(tf.matMul(x.reshape([-1, IN]), a.lora_A.weight), a.lora_B.weight).mul(a.scaling).reshape([2, 4, OUT]))); // [N, in] -> [B, T, out]
    const yEval = lin.forward(x);
    expect(relativeError(await yEval.data(), await full.data())).toBeLessThan(1e-6);
    lin.train();
    const yTrain = lin.forward(x);
    expect(relativeError(await yTrain.data(), await full.data())).toBeGreaterThan(1e-3);
    tf.dispose([base, full, yEval, yTrain]);
  });

  it('injects by dotted patterns, lists/saves only trainable parameters, merges all, and leaks nothing', async () => {
    expect(matchesPath('layers.3.attn.q_proj', 'q_proj')).toBe(true);
    expect(matchesPath('layers.3.attn.q_proj', 'layers.*.attn.q_proj')).toBe(true);
    expect(matchesPath('layers.3.attn.q_proj', 'layers.**.q_proj')).toBe(true);
    expect(matchesPath('layers.3.attn.q_proj', 'layers.2.*.q_proj')).toBe(false);
    expect(matchesPath('layers.3.attn.q_proj', 'k_proj')).toBe(false);
    expect(matchesPath('layers.3.attn.qq_proj', 'q_proj')).toBe(false);
    const toy = new Toy(Rng.seeded(17));
    made.push(toy);
    expect(() => injectLora(toy, ['v_proj'], Rng.seeded(0))).toThrow(/no Linear module matches "v_proj"/);
    freeze(toy);
    const found = injectLora(toy, ['q_proj', 'inner.o_proj'], Rng.seeded(18), { rank: 2, alpha: 4 });
    expect([...found.keys()]).toEqual(['q_proj', 'inner.o_proj']);
    expect([...loraAdapters(toy).keys()]).toEqual(['q_proj', 'inner.o_proj']);
    expect(trainableParameters(toy).map(([n]) => n)).toEqual(['q_proj.lora_A.weight', 'q_proj.lora_B.weight', 'inner.o_proj.lora_A.weight', 'inner.o_proj.lora_B.weight']);
    expect([...trainableStateDict(toy).keys()]).toEqual(trainableParameters(toy).map(([n]) => n));
    expect(toy.numParameters(true)).toBe(IN * 2 + 2 * OUT + OUT * 2 + 2 * IN);
    // the same patterns again find the existing adapters instead of stacking new ones
    expect(injectLora(toy, ['q_proj'], Rng.seeded(19)).get('q_proj')).toBe(found.get('q_proj'));
    for (const a of found.values()) {
      const Bn = tf.tensor(Rng.seeded(20).normalArray(a.lora_B.weight.size), a.lora_B.weight.shape);
      a.lora_B.weight.assign(Bn);
      Bn.dispose();
    }
    const leak = await tensorLeak(() => {
      const { value, grads } = tf.variableGrads(() => toy.forward(x).square().mean() as tf.Scalar, toy.trainableVariables());
      value.dispose();
      Object.values(grads).forEach((g) => g.dispose());
    });
    expect(leak).toBe(0);
    const before = toy.forward(x);
    expect(mergeLora(toy)).toBe(2);
    const after = toy.forward(x);
    expect(relativeError(await after.data(), await before.data())).toBeLessThan(1e-6);
    expect([...baseStateDict(toy).keys()]).toEqual(['q_proj.weight', 'inner.o_proj.weight', 'inner.o_proj.bias', 'inner.k_proj.weight']);
    expect(setTrainable(toy, true, (n) => n.startsWith('inner.k_proj'))).toBe(1);
    expect(toy.inner.k_proj.weight.trainable).toBe(true);
    tf.dispose([before, after]);
  });
});
