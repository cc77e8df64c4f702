import { afterAll, describe, expect, it } from 'vitest';
import { tf } from './tf.js';
import { Module } from './module.js';
import { init } from './init.js';
import { Rng } from './rng.js';
import { tensorLeak } from './testing.js';
import { checkShape } from './shape.js';
import { selectBackend } from './backend.js';

class Leaf extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  constructor(rng: Rng) {
    super();
    this.weight = this.addParam('weight', init.normal(rng, [3, 2], 0.1));
    this.bias = this.addParam('bias', init.zeros([2]));
  }
}
class Tree extends Module {
  readonly a: Leaf;
  readonly b: Leaf;
  constructor(rng: Rng) {
    super();
    this.a = this.addModule('a', new Leaf(rng));
    this.b = this.addModule('b', new Leaf(rng));
  }
}

describe('Module', () => {
  const made: Module[] = [];
  afterAll(() => made.forEach((m) => m.dispose()));

  it('names parameters by stable dotted paths and marks decay groups', () => {
    const t = new Tree(Rng.seeded(0));
    made.push(t);
    expect(t.namedParameters().map(([n, p]) => [n, p.decay])).toEqual([
      ['a.weight', true],
      ['a.bias', false],
      ['b.weight', true],
      ['b.bias', false],
    ]);
    expect(t.numParameters()).toBe(16);
  });

  it('propagates train/eval mode to children', () => {
    const t = new Tree(Rng.seeded(0));
    made.push(t);
    t.eval();
    expect(t.a.training).toBe(false);
    t.train();
    expect(t.b.training).toBe(true);
  });

  it('round-trips a state dict and rejects wrong shapes, missing and unexpected keys', () => {
    const src = new Tree(Rng.seeded(1));
    const dst = new Tree(Rng.seeded(2));
    made.push(src, dst);
    dst.loadStateDict(src.stateDict());
    expect(dst.a.weight.arraySync()).toEqual(src.a.weight.arraySync());

    const bad = new Map<string, tf.Tensor>(src.stateDict());
    const wrong = tf.zeros([2, 3]);
    bad.set('a.weight', wrong);
    expect(() => dst.loadStateDict(bad)).toThrow(/shape mismatch for "a.weight": checkpoint has \[2,3\], model expects \[3,2\]/);
    bad.delete('a.weight');
    expect(() => dst.loadStateDict(bad)).toThrow(/missing key "a.weight"/);
    bad.set('a.weight', src.a.weight);
    bad.set('c.weight', wrong);
    expect(() => dst.loadStateDict(bad)).toThrow(/unexpected key "c.weight"/);
    expect(() => dst.loadStateDict(bad, { strict: false })).not.toThrow();
    wrong.dispose();
  });

  it('initializes identically from the same seed', () => {
    const a = new Tree(Rng.seeded(5));
    const b = new Tree(Rng.seeded(5));
    made.push(a, b);
    expect(a.b.weight.arraySync()).toEqual(b.b.weight.arraySync());
  });

  it('tensorLeak detects a leak and passes a tidy function', async () => {
    expect(await tensorLeak(() => tf.tidy(() => tf.ones([2]).add(1)).dispose())).toBe(0);
    const leaked: tf.Tensor[] = [];
    expect(await tensorLeak(() => leaked.push(tf.ones([2])))).toBe(2);
    leaked.forEach((t) => t.dispose());
  });
});

describe('checkShape', () => {
  it('names the tensor, the spec and the actual shape', () => {
    expect(checkShape('x', [2, 3, 4], ['B', 'T', 4])).toEqual({ B: 2, T: 3 });
    expect(() => checkShape('attn input x', [2, 3, 5], ['B', 'T', 4])).toThrow(/attn input x: expected shape \[B, T, 4\], got \[2, 3, 5\]/);
    expect(() => checkShape('k', [2, 3], ['B', 'T'], { B: 4 })).toThrow(/dimension 0 \(B\) is 2, not 4/);
  });
});

describe('selectBackend', () => {
  it('starts cpu and wasm, and explains how to get an absent backend', async () => {
    expect((await selectBackend('wasm')).name).toBe('wasm');
    expect((await selectBackend('cpu')).name).toBe('cpu');
    await expect(selectBackend('tensorflow')).rejects.toThrow(/tfjs-node-gpu.*CUDA 11.2/);
    await expect(selectBackend('nope' as 'cpu')).rejects.toThrow(/unknown backend "nope"/);
    await selectBackend('cpu');
  });
});
