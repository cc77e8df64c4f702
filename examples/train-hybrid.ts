/**
 * A hybrid model built in code (no YAML): three Gated DeltaNet layers (no positional encoding)
 * and one softmax layer with RoPE, repeated; trained on a string for a few steps, then sampled.
 *
 *   npm run example examples/train-hybrid.ts -- --steps 150 --backend auto
 *
 * Prints the loss every 10 steps and a greedy sample; the last line is a JSON summary.
 */
import { Rng, selectBackend, type BackendName } from '@tsformer/core';
import { DecoderLM, generate, type ModelConfigInput } from '@tsformer/model';
import { AdamW, adamwConfigSchema, learningRate, scheduleConfigSchema, trainStep, type Batch } from '@tsformer/train';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
};
const steps = Number(arg('steps', '150'));
const backend = await selectBackend(arg('backend', 'auto') as BackendName);

const text = 'The quick brown fox jumps over the lazy dog. A stitch in time saves nine. '.repeat(40);
const bytes = new TextEncoder().encode(text); // byte-level tokens: vocabulary 256

// layers.pattern repeats over nLayers: gdn, gdn, gdn, softmax, gdn, gdn, gdn, softmax, ...
const config: ModelConfigInput = {
  vocabSize: 256,
  dModel: 64,
  nLayers: 4,
  maxSeqLen: 64,
  layers: {
    pattern: ['gdn', 'gdn', 'gdn', 'softmax'],
    defs: {
      gdn: { attention: { type: 'gated-deltanet', numHeads: 2, chunkSize: 16 }, positional: { type: 'none' } },
      softmax: { attention: { type: 'mha', numHeads: 2 }, positional: { type: 'rope' } },
    },
  },
};
const model = new DecoderLM(config, { seed: 1 });
const optimizer = new AdamW(model.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 3e-3 }));
const schedule = scheduleConfigSchema.parse({ type: 'cosine', warmupSteps: 10 });

// a batch of random windows of the string; targets are the inputs shifted by one byte
const rng = Rng.seeded(7);
const batchSize = 8;
const seqLen = 64;
function batch(): Batch {
  const inputs = new Int32Array(batchSize * seqLen);
  const targets = new Int32Array(batchSize * seqLen);
  for (let b = 0; b < batchSize; b++) {
    const start = rng.int(bytes.length - seqLen - 1);
    for (let t = 0; t < seqLen; t++) {
      inputs[b * seqLen + t] = bytes[start + t]!;
      targets[b * seqLen + t] = bytes[start + t + 1]!;
    }
  }
  return { inputs, targets, batchSize, seqLen };
}

console.log(`backend ${backend.name}; ${model.namedParameters().length} parameter tensors; layers ${['gdn', 'gdn', 'gdn', 'softmax'].join(', ')}`);
const losses: number[] = [];
for (let step = 0; step < steps; step++) {
  const lr = learningRate(schedule, 3e-3, step, steps);
  const r = await trainStep(model, optimizer, [batch()], { lr, clipGradNorm: 1 });
  losses.push(r.loss);
  if (step % 10 === 0 || step === steps - 1) console.log(`step ${step} loss ${r.loss.toFixed(4)} lr ${lr.toExponential(2)}`);
}

model.eval();
const prompt = new TextEncoder().encode('The quick ');
const out = await generate(model, prompt, { maxNewTokens: 40, temperature: 0 });
const sample = new TextDecoder().decode(Uint8Array.from([...prompt, ...out]));
console.log(`sample: ${JSON.stringify(sample)}`);
console.log(JSON.stringify({ backend: backend.name, firstLoss: losses[0], lastLoss: losses[losses.length - 1], sample }));
model.dispose();
optimizer.dispose();
