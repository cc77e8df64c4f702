import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { DecoderLM, type ModelConfigInput } from '@tsformer/model';
import {
  AdamW,
  NonFiniteError,
  Progress,
  adamwConfigSchema,
  clipByGlobalNorm,
  learningRate,
  scheduleConfigSchema,
  sparseCrossEntropy,
  trainConfigSchema,
  trainLoop,
  trainStep,
  type Batch,
  type BatchSource,
} from './index.js';

const made: Array<{ dispose(): void }> = [];
afterAll(() => made.forEach((m) => m.dispose()));

const modelCfg: ModelConfigInput = { vocabSize: 11, dModel: 16, nLayers: 2, maxSeqLen: 8, attention: { type: 'mha', numHeads: 2 }, dropout: 0.1 };

/** Batches cut from a fixed token stream in order; its state is a cursor. */
class Cycle implements BatchSource {
  cursor = 0;
  constructor(readonly tokens: number[], readonly batchSize = 2, readonly seqLen = 8) {}
  next(): Batch {
    const n = this.batchSize * this.seqLen;
    const inputs = new Int32Array(n);
    const targets = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      inputs[i] = this.tokens[(this.cursor + i) % this.tokens.length]!;
      targets[i] = this.tokens[(this.cursor + i + 1) % this.tokens.length]!;
    }
    this.cursor += n;
    return { inputs, targets, batchSize: this.batchSize, seqLen: this.seqLen };
  }
}

describe('sparseCrossEntropy', () => {
  it('equals the naive log-softmax loss and the one-hot reference gradient', async () => {
    const logits = tf.tensor(Rng.seeded(1).normalArray(2 * 3 * 5, 2), [2, 3, 5]);
    const targets = tf.tensor([[0, 4, 2], [1, 1, 3]], [2, 3], 'int32');
    const loss = (await sparseCrossEntropy(logits, targets).data())[0]!;
    const L = (await logits.array()) as number[][][];
    const T = (await targets.array()) as number[][];
    let naive = 0;
    L.forEach((row, b) => row.forEach((l, t) => (naive += Math.log(l.reduce((s, v) => s + Math.exp(v), 0)) - l[T[b]![t]!]!)));
    expect(loss).toBeCloseTo(naive / 6, 5);
    const g = tf.grad((x: tf.Tensor) => sparseCrossEntropy(x, targets))(logits);
    const gRef = tf.grad((x: tf.Tensor) => tf.losses.softmaxCrossEntropy(tf.oneHot(targets, 5), x))(logits);
    expect(relativeError(await g.data(), await gRef.data())).toBeLessThan(1e-5);
    expect(() => sparseCrossEntropy(logits, tf.zeros([2, 4], 'int32'))).toThrow(/do not match targets/);
    tf.dispose([logits, targets, g, gRef]);
  });
});

describe('AdamW', () => {
  it('holds exactly its moments: building and disposing an optimizer leaves no tensor behind', async () => {
    const w = tf.variable(tf.tensor([[1, -2]]));
    made.push(w);
    const cfg = adamwConfigSchema.parse({ type: 'adamw', lr: 0.1 });
    const before = tf.memory().numTensors;
    const opt = new AdamW([['w', { variable: w, decay: true }]], cfg);
    expect(tf.memory().numTensors - before).toBe(2); // exp_avg and exp_avg_sq
    opt.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('matches a hand-written update, with decay only where the parameter asks for it', async () => {
    const w = tf.variable(tf.tensor([[1, -2]]));
    const b = tf.variable(tf.tensor([0.5]));
    const cfg = adamwConfigSchema.parse({ type: 'adamw', lr: 0.1, weightDecay: 0.5 });
    const opt = new AdamW([['w', { variable: w, decay: true }], ['b', { variable: b, decay: false }]], cfg);
    made.push(opt, w, b);
    const gw = [0.3, -0.1];
    const gb = [2];
    // naive reference
    const [b1, b2] = cfg.betas;
    let pw = [1, -2], pb = [0.5];
    const mw = [0, 0], vw = [0, 0], mb = [0], vb = [0];
    for (let t = 1; t <= 2; t++) {
      const lr = t === 1 ? 0.1 : 0.05;
      const upd = (p: number[], g: number[], m: number[], v: number[], decay: boolean) =>
        p.map((x, i) => {
          m[i] = b1 * m[i]! + (1 - b1) * g[i]!;
          v[i] = b2 * v[i]! + (1 - b2) * g[i]! ** 2;
          const u = m[i]! / (1 - b1 ** t) / (Math.sqrt(v[i]! / (1 - b2 ** t)) + cfg.eps);
          return x - lr * (u + (decay ? cfg.weightDecay * x : 0));
        });
      pw = upd(pw, gw, mw, vw, true);
      pb = upd(pb, gb, mb, vb, false);
      const grads = new Map([['w', tf.tensor([gw])], ['b', tf.tensor(gb)]]);
      opt.apply(grads, lr);
      tf.dispose([...grads.values()]);
    }
    expect(relativeError(await w.data(), pw)).toBeLessThan(1e-6);
    expect(relativeError(await b.data(), pb)).toBeLessThan(1e-6);
    expect([...opt.stateDict().keys()]).toEqual(['w.exp_avg', 'w.exp_avg_sq', 'b.exp_avg', 'b.exp_avg_sq']);
    expect(() => opt.loadStateDict(new Map(), 2)).toThrow(/missing optimizer state "w.exp_avg"/);
  });
});

describe('schedule and clipping', () => {
  it('warms up linearly then decays by cosine to the floor', () => {
    const cfg = scheduleConfigSchema.parse({ type: 'cosine', warmupSteps: 10, minLrRatio: 0.1 });
    expect(learningRate(cfg, 1, 0, 100)).toBeCloseTo(0.1);
    expect(learningRate(cfg, 1, 9, 100)).toBeCloseTo(1);
    expect(learningRate(cfg, 1, 10, 100)).toBeCloseTo(1);
    expect(learningRate(cfg, 1, 99, 100)).toBeCloseTo(0.1);
    expect(learningRate(cfg, 1, 54.5, 100)).toBeCloseTo(0.55);
    expect(learningRate(scheduleConfigSchema.parse({ type: 'constant' }), 3, 50, 100)).toBe(3);
  });
  it('clips by the global norm', async () => {
    const g = new Map([['a', tf.tensor([3, 0])], ['b', tf.tensor([4])]]);
    const { grads, norm } = clipByGlobalNorm(g, 1);
    expect((await norm.data())[0]).toBeCloseTo(5);
    expect(Array.from(await grads.get('a')!.data())[0]).toBeCloseTo(0.6, 5);
    expect(Array.from(await grads.get('b')!.data())[0]).toBeCloseTo(0.8, 5);
    tf.dispose([...g.values(), ...grads.values(), norm]);
  });
});

describe('trainStep and trainLoop', () => {
  const tokens = Array.from({ length: 64 }, (_, i) => (i * 7) % 11);
  const trainCfg = trainConfigSchema.parse({
    steps: 12,
    batchSize: 2,
    gradAccum: 2,
    optimizer: { type: 'adamw', lr: 0.01 },
    schedule: { type: 'cosine', warmupSteps: 2 },
    evalEvery: 0,
  });

  it('a whole training step (2 micro-batches, clip, AdamW) leaks no tensors', async () => {
    const model = new DecoderLM(modelCfg, { seed: 1 });
    const opt = new AdamW(model.namedParameters(), trainCfg.optimizer);
    made.push(model, opt);
    const src = new Cycle(tokens);
    expect(await tensorLeak(() => trainStep(model, opt, [src.next(), src.next()], { lr: 0.01, clipGradNorm: 1 }))).toBe(0);
  });

  it('learns a repeating sequence', async () => {
    const model = new DecoderLM({ ...modelCfg, dropout: 0 }, { seed: 2 });
    const opt = new AdamW(model.namedParameters(), trainCfg.optimizer);
    made.push(model, opt);
    const losses: number[] = [];
    await trainLoop({
      model,
      optimizer: opt,
      config: { ...trainCfg, steps: 60, optimizer: { ...trainCfg.optimizer, lr: 0.02 } },
      train: new Cycle(tokens),
      state: { step: 0, tokensSeen: 0 },
      checkpointEvery: 0,
      onStep: (s) => void losses.push(s.loss),
    });
    expect(losses[0]).toBeGreaterThan(2);
    expect(losses.at(-1)!).toBeLessThan(0.5 * losses[0]!);
  });

  it('stops on a NaN loss without touching the weights', async () => {
    const model = new DecoderLM(modelCfg, { seed: 3 });
    const opt = new AdamW(model.namedParameters(), trainCfg.optimizer);
    made.push(model, opt);
    model.norm.weight.assign(tf.fill([16], NaN));
    const before = await model.embed.weight.data();
    const src = new Cycle(tokens);
    await expect(trainStep(model, opt, [src.next()], { lr: 0.01, clipGradNorm: 1 })).rejects.toBeInstanceOf(NonFiniteError);
    expect(Array.from(await model.embed.weight.data())).toEqual(Array.from(before));
    expect(opt.step).toBe(0);
  });

  it('stopping at step k and resuming from saved state gives bit-identical weights and losses (with dropout)', async () => {
    const run = async (stopAt?: number, from?: { weights: Map<string, Float32Array>; moments: Map<string, Float32Array>; step: number; cursor: number; rng: [number, number, number, number] }) => {
      const rng = Rng.seeded(9);
      const model = new DecoderLM(modelCfg, { rng });
      const opt = new AdamW(model.namedParameters(), trainCfg.optimizer);
      made.push(model, opt);
      const src = new Cycle(tokens);
      const state = { step: 0, tokensSeen: 0 };
      if (from) {
        const sd = new Map([...model.stateDict()].map(([k, v]) => [k, tf.tensor(from.weights.get(k)!, v.shape)]));
        model.loadStateDict(sd);
        const od = new Map([...opt.stateDict()].map(([k, v]) => [k, tf.tensor(from.moments.get(k)!, v.shape)]));
        opt.loadStateDict(od, from.step);
        tf.dispose([...sd.values(), ...od.values()]);
        src.cursor = from.cursor;
        rng.restore(from.rng);
        state.step = from.step;
      }
      const losses: number[] = [];
      await trainLoop({ model, optimizer: opt, config: trainCfg, train: src, state, checkpointEvery: 0, stopAt, onStep: (s) => void losses.push(s.loss) });
      const weights = new Map<string, Float32Array>();
      for (const [k, v] of model.stateDict()) weights.set(k, (await v.data()) as Float32Array);
      const moments = new Map<string, Float32Array>();
      for (const [k, v] of opt.stateDict()) moments.set(k, (await v.data()) as Float32Array);
      return { weights, moments, losses, step: state.step, cursor: src.cursor, rng: rng.state() as [number, number, number, number] };
    };
    const straight = await run();
    const first = await run(5);
    expect(first.step).toBe(5);
    const resumed = await run(undefined, first);
    expect([...first.losses, ...resumed.losses]).toEqual(straight.losses);
    for (const [k, w] of straight.weights) expect(Array.from(resumed.weights.get(k)!), k).toEqual(Array.from(w));
  });
});

describe('Progress', () => {
  it('prints plain periodic lines when not a terminal', () => {
    let text = '';
    const p = new Progress(20, 10, { write: (s: string) => (text += s) }, false);
    for (let step = 1; step <= 20; step++) p.update({ step, tokens: step * 100, loss: 2, lr: 1e-3, gradNorm: 1, tokensPerSec: 1000, elapsed: step });
    p.note('val loss 1.9');
    const lines = text.trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^step 10\/20 {2}loss 2\.0000 .* 1,000 tok\/s {2}ETA 10s$/);
  });
  it('redraws one line on a terminal', () => {
    let text = '';
    const p = new Progress(4, 10, { write: (s: string) => (text += s) }, true);
    p.update({ step: 1, tokens: 1, loss: 2, lr: 1e-3, gradNorm: 1, tokensPerSec: 10, elapsed: 1 });
    expect(text.startsWith('\r\x1b[2K[======>')).toBe(true);
  });
});
