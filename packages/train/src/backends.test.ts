import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, selectBackend, tensorLeak, tf } from '@tsformer/core';
import { DecoderLM, type ModelConfigInput } from '@tsformer/model';
import { AdamW, adamwConfigSchema, sparseCrossEntropy, trainStep } from './index.js';

// The wasm backend runs its own kernels (and our routed matmuls); cpu is the reference. Every
// attention family runs here: their ops use kernels (slices, cumsums, triangular solves) whose
// wasm versions differ from cpu's.
const attentions: ModelConfigInput['attention'][] = [
  { type: 'mha', numHeads: 4, numKvHeads: 2 },
  { type: 'gla', numHeads: 2, chunkSize: 8 },
  { type: 'deltanet', numHeads: 2, chunkSize: 8 },
  { type: 'gated-deltanet', numHeads: 2, chunkSize: 8 },
  { type: 'path', numHeads: 2, blockSize: 8, forgetGate: true },
];
const modelCfg = (attention: ModelConfigInput['attention']): ModelConfigInput => ({ vocabSize: 256, dModel: 32, nLayers: 2, maxSeqLen: 16, attention });
const rng = Rng.seeded(3);
const ids = Array.from({ length: 2 * 16 }, () => rng.int(256));
const targets = Array.from({ length: 2 * 16 }, () => rng.int(256));

async function lossAndGrads(backend: 'cpu' | 'wasm', cfg: ModelConfigInput): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  await selectBackend(backend);
  const m = new DecoderLM(cfg, { seed: 1 });
  const x = tf.tensor2d(ids, [2, 16], 'int32');
  const t = tf.tensor2d(targets, [2, 16], 'int32');
  const { value, grads } = tf.variableGrads(() => sparseCrossEntropy(m.forward(x).logits, t), m.trainableVariables());
  const out = new Map<string, Float32Array>();
  for (const [n, p] of m.namedParameters()) out.set(n, (await grads[p.variable.name]!.data()) as Float32Array);
  const loss = (await value.data())[0]!;
  tf.dispose([x, t, value, ...Object.values(grads)]);
  m.dispose();
  return { loss, grads: out };
}

describe('wasm backend', () => {
  afterAll(() => selectBackend('cpu'));

  for (const attention of attentions) {
    const cfg = modelCfg(attention);
    it(`gives the loss and every parameter gradient of the cpu reference (${attention!.type})`, async () => {
      const ref = await lossAndGrads('cpu', cfg);
      const got = await lossAndGrads('wasm', cfg);
      expect(got.loss).toBeCloseTo(ref.loss, 5);
      for (const [name, g] of ref.grads) expect(relativeError(got.grads.get(name)!, g), name).toBeLessThan(1e-4);
    });

    it(`runs a training step without leaking tensors (${attention!.type})`, async () => {
      await selectBackend('wasm');
      const m = new DecoderLM(cfg, { seed: 2 });
      const opt = new AdamW(m.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-3 }));
      const batch = { inputs: Int32Array.from(ids), targets: Int32Array.from(targets), batchSize: 2, seqLen: 16 };
      expect(await tensorLeak(() => trainStep(m, opt, [batch], { lr: 1e-3, clipGradNorm: 1 }))).toBe(0);
      m.dispose();
      opt.dispose();
    });
  }
});
