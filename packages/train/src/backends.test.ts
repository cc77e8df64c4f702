import { afterAll, describe, expect, it } from 'vitest';
import { Rng, relativeError, selectBackend, tensorLeak, tf } from '@tsformer/core';
import { DecoderLM } from '@tsformer/model';
import { AdamW, adamwConfigSchema, sparseCrossEntropy, trainStep } from './index.js';

// The wasm backend runs its own kernels (and our routed matmuls); cpu is the reference.
const cfg = { vocabSize: 256, dModel: 32, nLayers: 2, maxSeqLen: 16, attention: { type: 'mha' as const, numHeads: 4, numKvHeads: 2 } };
const rng = Rng.seeded(3);
const ids = Array.from({ length: 2 * 16 }, () => rng.int(256));
const targets = Array.from({ length: 2 * 16 }, () => rng.int(256));

async function lossAndGrads(backend: 'cpu' | 'wasm'): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
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

  it('gives the loss and every parameter gradient of the cpu reference', async () => {
    const ref = await lossAndGrads('cpu');
    const got = await lossAndGrads('wasm');
    expect(got.loss).toBeCloseTo(ref.loss, 5);
    for (const [name, g] of ref.grads) expect(relativeError(got.grads.get(name)!, g), name).toBeLessThan(1e-5);
  });

  it('runs a training step without leaking tensors', async () => {
    await selectBackend('wasm');
    const m = new DecoderLM(cfg, { seed: 2 });
    const opt = new AdamW(m.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-3 }));
    const batch = { inputs: Int32Array.from(ids), targets: Int32Array.from(targets), batchSize: 2, seqLen: 16 };
    expect(await tensorLeak(() => trainStep(m, opt, [batch], { lr: 1e-3, clipGradNorm: 1 }))).toBe(0);
    m.dispose();
    opt.dispose();
  });
});
