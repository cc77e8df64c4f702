import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, tensorLeak, tf } from '@tsformer/core';
import { SoftmaxAttention, disposeCache, type AttentionCache } from '@tsformer/attention';
import { DecoderLM } from '@tsformer/model';
import { AdamW, trainConfigSchema, trainLoop, type Batch } from '@tsformer/train';
import {
  AttentionTransfer,
  LolcatsAttention,
  StudentLM,
  attentionErrors,
  buildStudent,
  captureAttentionInputs,
  layersToConvert,
  lmEvaluate,
  lmStep,
  loadPartialState,
  mergeShardStates,
  mergeStudentLora,
  parameterReport,
  parseLayers,
  prepareStage2,
  stage2StateDict,
  worstLayers,
} from './index.js';

const V = 24;
const B = 2;
const T = 12;
const teacher = new DecoderLM(
  { vocabSize: V, dModel: 16, nLayers: 3, maxSeqLen: 32, attention: { type: 'mha', numHeads: 4, numKvHeads: 2 }, positional: { type: 'rope', theta: 100 } },
  { seed: 1 },
);
teacher.eval();
const students: StudentLM[] = [];
const optimizers: AdamW[] = [];
afterAll(() => {
  students.forEach((s) => s.dispose());
  optimizers.forEach((o) => o.dispose());
  teacher.dispose();
});

const rng = Rng.seeded(5);
const ids = (seed: number) => tf.keep(tf.tensor2d(Int32Array.from(Rng.seeded(seed).uniformArray(B * T, 0, V), Math.floor), [B, T], 'int32'));
const batchA = ids(1);
const batchB = ids(2);
const heldOut = ids(3);
function lmBatch(seed: number): Batch {
  const r = Rng.seeded(seed);
  const seq = Int32Array.from(r.uniformArray(B * (T + 1), 0, V), Math.floor);
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) {
    inputs[b * T + t] = seq[b * (T + 1) + t]!;
    targets[b * T + t] = seq[b * (T + 1) + t + 1]!;
  }
  return { inputs, targets, batchSize: B, seqLen: T };
}
function student(convert: number[], extra: Record<string, unknown> = {}, seed = 0): StudentLM {
  const s = buildStudent(teacher, { convert, student: { type: 'lolcats', featureDim: 4, window: 4, ...extra }, seed });
  students.push(s);
  return s;
}
const logits = async (m: { forward(ids: tf.Tensor): { logits: tf.Tensor } }, x: tf.Tensor) => {
  const l = m.forward(x).logits;
  const d = await l.data();
  l.dispose();
  return d;
};
const adamw = (params: ReturnType<AttentionTransfer['trainableParameters']>, lr: number) => {
  const o = new AdamW(params, { type: 'adamw', lr, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0 });
  optimizers.push(o);
  return o;
};

describe('layer selection', () => {
  it('parses a:b ranges, lists and all; subtracts kept softmax layers', () => {
    expect(parseLayers('1:3', 6)).toEqual([1, 2]);
    expect(parseLayers('4:', 6)).toEqual([4, 5]);
    expect(parseLayers(':2', 6)).toEqual([0, 1]);
    expect(parseLayers('0,3,4:6', 6)).toEqual([0, 3, 4, 5]);
    expect(parseLayers('all', 3)).toEqual([0, 1, 2]);
    expect(() => parseLayers('2:2', 6)).toThrow(/empty range/);
    expect(() => parseLayers('7', 6)).toThrow(/not in 0..5/);
    expect(() => parseLayers('x', 6)).toThrow(/not a layer index/);
    expect(layersToConvert(4, { keepSoftmax: [1] })).toEqual([0, 2, 3]);
    expect(layersToConvert(4, { layers: '2:', keepSoftmax: [3] })).toEqual([2]);
    expect(worstLayers([{ layer: 0, mse: 1, teacherVariance: 1, relative: 0.5 }, { layer: 2, mse: 1, teacherVariance: 1, relative: 0.9 }, { layer: 1, mse: 1, teacherVariance: 1, relative: 0.1 }], 2)).toEqual([0, 2]);
  });
});

describe('StudentLM', () => {
  it('is the teacher when nothing is converted, and when every key falls in the window', async () => {
    const ref = await logits(teacher, batchA);
    const none = student([]);
    expect(none.namedParameters().map(([n]) => n)).toEqual(teacher.namedParameters().map(([n]) => n));
    expect(relativeError(await logits(none, batchA), ref)).toBe(0);
    const wide = student([0, 2], { window: T });
    expect(relativeError(await logits(wide, batchA), ref)).toBeLessThan(1e-5);
    const names = wide.namedParameters().map(([n]) => n);
    expect(names).toContain('layers.2.attn.feature_map_q.weight');
    expect(names).toContain('layers.0.attn.window_factors');
    expect(names).not.toContain('layers.1.attn.feature_map_q.weight');
    expect(wide.attention(1)).toBe(teacher.layers.items[1]!.attn);
    expect(wide.attention(0)).toBeInstanceOf(LolcatsAttention);
    // a narrow window changes the function
    expect(relativeError(await logits(student([0, 2]), batchA), ref)).toBeGreaterThan(1e-3);
  });

  it('decodes with per-layer caches like its full forward', async () => {
    const s = student([0, 1, 2], {}, 3);
    const full = await logits(s, batchA);
    let caches: AttentionCache[] = s.initCaches();
    const outs: tf.Tensor[] = [];
    for (const [from, n] of [[0, 5], [5, 1], [6, 1], [7, 5]] as const) {
      const piece = batchA.slice([0, from], [B, n]);
      const r = s.forward(piece, { caches });
      piece.dispose();
      caches.forEach(disposeCache);
      caches = r.caches!;
      outs.push(r.logits);
    }
    const y = tf.concat(outs, 1); // [B, T, V]
    expect(relativeError(await y.data(), full)).toBeLessThan(1e-5);
    tf.dispose([y, ...outs]);
    caches.forEach(disposeCache);
  });

  it('decodes a hybrid of kept softmax and Gated DeltaNet layers like its full forward', async () => {
    const s = buildStudent(teacher, { convert: [0, 2], student: { type: 'gated-deltanet', chunkSize: 4 }, seed: 4 });
    students.push(s);
    const full = await logits(s, batchA);
    let caches: AttentionCache[] = s.initCaches();
    expect(caches.map((c) => c.kind)).toEqual(['deltanet', 'kv', 'deltanet']);
    const outs: tf.Tensor[] = [];
    for (const [from, n] of [[0, 6], [6, 1], [7, 5]] as const) {
      const piece = batchA.slice([0, from], [B, n]);
      const r = s.forward(piece, { caches });
      piece.dispose();
      caches.forEach(disposeCache);
      caches = r.caches!;
      outs.push(r.logits);
    }
    const y = tf.concat(outs, 1); // [B, T, V]
    expect(relativeError(await y.data(), full)).toBeLessThan(1e-4);
    tf.dispose([y, ...outs]);
    caches.forEach(disposeCache);
  });

  it('trains through trainLoop like a DecoderLM: its own parameters move, the teacher\'s do not', async () => {
    const s = buildStudent(teacher, { convert: [1], student: { type: 'gla', chunkSize: 4 }, seed: 6 });
    students.push(s);
    const own = s.ownParameters();
    const opt = adamw(own, 0.02);
    const teacherBefore = await teacher.embed.weight.data();
    const ownBefore = await own[0]![1].variable.data();
    let n = 0;
    const losses: number[] = [];
    const evals: number[] = [];
    const config = trainConfigSchema.parse({ steps: 6, batchSize: B, optimizer: { type: 'adamw', lr: 0.02 }, schedule: { type: 'constant' }, evalEvery: 3 });
    const before = tf.memory().numTensors;
    const r = await trainLoop({
      model: s,
      optimizer: opt,
      config,
      train: { next: () => lmBatch(100 + n++) },
      validation: () => [lmBatch(7)],
      state: { step: 0, tokensSeen: 0 },
      checkpointEvery: 0,
      onStep: (l) => void losses.push(l.loss),
      onEval: (e) => void evals.push(e.valLoss),
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(r.step).toBe(6);
    expect(losses).toHaveLength(6);
    expect(evals.length).toBeGreaterThanOrEqual(2);
    expect(evals.every(Number.isFinite)).toBe(true);
    expect(relativeError(await own[0]![1].variable.data(), ownBefore)).toBeGreaterThan(1e-4);
    expect(Array.from(await teacher.embed.weight.data())).toEqual(Array.from(teacherBefore));
  });

  it('disposes only what it owns', async () => {
    const before = tf.memory().numTensors;
    const s = buildStudent(teacher, { convert: [0, 1], student: { type: 'lolcats', featureDim: 4, window: 4 } });
    s.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const l = teacher.forward(batchA).logits; // the teacher still works
    expect(l.shape).toEqual([B, T, V]);
    l.dispose();
  });
});

describe('stage 1: attention transfer', () => {
  it('captures the teacher-forced attention inputs', async () => {
    const got = captureAttentionInputs(teacher, batchA, [0, 2]);
    expect([...got.keys()]).toEqual([0, 2]);
    const ref = tf.tidy(() => {
      const h0 = teacher.embed.forward(batchA);
      const h1 = teacher.layers.items[0]!.forward(h0, Int32Array.from({ length: T }, (_, i) => i)).y;
      const h2 = teacher.layers.items[1]!.forward(h1, Int32Array.from({ length: T }, (_, i) => i)).y;
      return [teacher.layers.items[0]!.attn_norm.forward(h0), teacher.layers.items[2]!.attn_norm.forward(h2)];
    });
    expect(relativeError(await got.get(0)!.data(), await ref[0]!.data())).toBe(0);
    expect(relativeError(await got.get(2)!.data(), await ref[1]!.data())).toBeLessThan(1e-6);
    tf.dispose([...got.values(), ...ref]);
  });

  it('trains only feature maps and window factors, lowers the per-layer error, leaves the teacher alone', async () => {
    const s = student([0, 1, 2], {}, 4);
    const tr = new AttentionTransfer(teacher, s);
    const names = tr.trainableParameters().map(([n]) => n);
    expect(names.every((n) => /attn\.(feature_map_[qk]\.weight|window_factors)$/.test(n))).toBe(true);
    expect(names.length).toBe(9);
    const rep = tr.report();
    expect(rep.trainable).toBe(3 * (2 * 4 * 4 * 4 + 4));
    expect(rep.total).toBe(parameterReport(teacher).total + rep.trainable);
    expect(rep.share).toBeCloseTo(rep.trainable / rep.total, 12);
    const teacherBefore = await logits(teacher, batchA);
    const e0 = await attentionErrors(teacher, s, [heldOut]);
    const opt = adamw(tr.trainableParameters(), 0.05);
    let first: number[] = [];
    let last: number[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await tr.step(opt, [batchA, batchB], { lr: 0.05, clipGradNorm: 1 });
      expect(r.perLayer.length).toBe(3);
      if (i === 0) first = r.perLayer;
      last = r.perLayer;
    }
    for (let l = 0; l < 3; l++) expect(last[l]!).toBeLessThan(first[l]!);
    const e1 = await attentionErrors(teacher, s, [heldOut]);
    expect(e1.map((e) => e.layer)).toEqual([0, 1, 2]);
    for (const e of e1) expect(e.relative).toBeCloseTo(e.mse / e.teacherVariance, 10);
    expect(e1.reduce((a, e) => a + e.mse, 0)).toBeLessThan(e0.reduce((a, e) => a + e.mse, 0));
    expect(relativeError(await logits(teacher, batchA), teacherBefore)).toBe(0);
    const leak = await tensorLeak(() => tr.step(opt, [batchA], { lr: 0, clipGradNorm: 1 }));
    expect(leak).toBe(0);
  });

  it('trains shards independently; merged shard states reproduce the per-shard layers', async () => {
    const a = student([0, 1, 2], {}, 6);
    const b = student([0, 1, 2], {}, 6);
    const trA = new AttentionTransfer(teacher, a, { layers: parseLayers('0:1', 3) });
    const trB = new AttentionTransfer(teacher, b, { layers: parseLayers('1:3', 3) });
    expect(trA.trainableParameters().every(([n]) => n.startsWith('layers.0.'))).toBe(true);
    expect(trB.trainableParameters().every(([n]) => !n.startsWith('layers.0.'))).toBe(true);
    const oa = adamw(trA.trainableParameters(), 0.05);
    const ob = adamw(trB.trainableParameters(), 0.05);
    for (let i = 0; i < 3; i++) {
      await trA.step(oa, [batchA], { lr: 0.05, clipGradNorm: 1 });
      await trB.step(ob, [batchA], { lr: 0.05, clipGradNorm: 1 });
    }
    expect(() => mergeShardStates([trA.stateDict(), trA.stateDict()])).toThrow(/repeats "layers.0.attn/);
    const merged = mergeShardStates([trA.stateDict(), trB.stateDict()]);
    expect(merged.size).toBe(9);
    const c = student([0, 1, 2], {}, 99);
    loadPartialState(c, merged);
    const [ea, eb, ec] = await Promise.all([attentionErrors(teacher, a, [heldOut], [0]), attentionErrors(teacher, b, [heldOut], [1, 2]), attentionErrors(teacher, c, [heldOut])]);
    expect(ec[0]!.mse).toBeCloseTo(ea[0]!.mse, 8);
    expect(ec[1]!.mse).toBeCloseTo(eb[0]!.mse, 8);
    expect(ec[2]!.mse).toBeCloseTo(eb[1]!.mse, 8);
    expect(() => loadPartialState(c, new Map([['layers.9.attn.window_factors', merged.values().next().value!]]))).toThrow(/lacks/);
  });

  it('adds the attention-map cross-entropy when asked (LoLCATs only), and the GLA student trains its gates', async () => {
    const s = student([1], {}, 7);
    const tr = new AttentionTransfer(teacher, s, { mapLoss: 0.5 });
    const opt = adamw(tr.trainableParameters(), 0.01);
    const r = await tr.step(opt, [batchA], { lr: 0.01, clipGradNorm: 1 });
    expect(r.loss).toBeGreaterThan(r.perLayer[0]!); // the map term adds to the output MSE
    const gla = buildStudent(teacher, { convert: [1], student: { type: 'gla', gateLowRank: 4, chunkSize: 4 } });
    students.push(gla);
    expect(() => new AttentionTransfer(teacher, gla, { mapLoss: 1 })).toThrow(/only LoLCATs students/);
    const trG = new AttentionTransfer(teacher, gla);
    const names = trG.trainableParameters().map(([n]) => n);
    expect(names).toContain('layers.1.attn.gk_proj_a.weight');
    expect(names.some((n) => /attn\.[qkvo]_proj\./.test(n))).toBe(false);
    const og = adamw(trG.trainableParameters(), 0.01);
    const rg = await trG.step(og, [batchA], { lr: 0.01, clipGradNorm: 1 });
    expect(Number.isFinite(rg.loss)).toBe(true);
  });
});

describe('stage 2: LoRA on the converted layers', () => {
  it('trains only adapters on q/k/v/o of converted layers, lowers the LM loss, saves adapters only, merges exactly', async () => {
    const s = student([0, 2], {}, 8);
    const { adapters, trainable } = prepareStage2(s);
    expect([...adapters.keys()]).toEqual(['layers.0.attn.q_proj', 'layers.0.attn.k_proj', 'layers.0.attn.v_proj', 'layers.0.attn.o_proj', 'layers.2.attn.q_proj', 'layers.2.attn.k_proj', 'layers.2.attn.v_proj', 'layers.2.attn.o_proj']);
    expect(trainable.every(([n]) => /^layers\.[02]\.attn\.[qkvo]_proj\.lora_[AB]\.weight$/.test(n))).toBe(true);
    const r = 8;
    // q: 16 -> 16, k/v: 16 -> 8, o: 16 -> 16
    expect(parameterReport(s).trainable).toBe(2 * (r * (16 + 16) + 2 * r * (16 + 8) + r * (16 + 16)));
    expect([...stage2StateDict(s).keys()]).toEqual(trainable.map(([n]) => n));
    const teacherBefore = await logits(teacher, batchA);
    const opt = adamw(trainable, 0.02);
    const batches = [lmBatch(1), lmBatch(2)];
    const before = await lmEvaluate(s, batches);
    for (let i = 0; i < 10; i++) await lmStep(s, opt, batches, { lr: 0.02, clipGradNorm: 1 });
    const after = await lmEvaluate(s, batches);
    expect(after.loss).toBeLessThan(before.loss);
    expect(relativeError(await logits(teacher, batchA), teacherBefore)).toBe(0);
    const leak = await tensorLeak(() => lmStep(s, opt, [batches[0]!], { lr: 0, clipGradNorm: 1 }));
    expect(leak).toBe(0);
    const pre = await logits(s, batchA);
    const merged = mergeStudentLora(s);
    expect([...merged.keys()].some((n) => n.includes('lora_'))).toBe(false);
    expect(merged.has('layers.0.attn.q_proj.weight')).toBe(true);
    expect(relativeError(await logits(s, batchA), pre)).toBeLessThan(1e-5);
  });

  it('can also train the stage-1 parameters; refuses a student sharing the teacher projections', () => {
    const s = student([1], {}, 9);
    const { trainable } = prepareStage2(s, { rank: 2, trainStudentParams: true, targets: ['q_proj', 'v_proj'] });
    const names = trainable.map(([n]) => n);
    expect(names).toContain('layers.1.attn.feature_map_k.weight');
    expect(names).toContain('layers.1.attn.v_proj.lora_B.weight');
    expect(names.some((n) => n.includes('k_proj.lora'))).toBe(false);
    const shared = buildStudent(teacher, { convert: [1], shareProjections: true, student: { type: 'lolcats', featureDim: 4, window: 4 } });
    students.push(shared);
    expect(shared.attention(1)).toBeInstanceOf(LolcatsAttention);
    expect((shared.attention(1) as LolcatsAttention).q_proj).toBe((teacher.layers.items[1]!.attn as SoftmaxAttention).q_proj);
    expect(() => prepareStage2(shared)).toThrow(/shares its projections/);
  });
});
