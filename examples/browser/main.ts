/**
 * tsformer in a web page: builds a small hybrid model (GLA + sliding-window softmax), trains it a
 * few steps on a string and generates, on the `cpu` backend (no Node, no native modules).
 *
 * Build the bundle, then open index.html (from any static server, or file://):
 *
 *   npx esbuild examples/browser/main.ts --bundle --format=iife --conditions=@tsformer/source --outfile=examples/browser/bundle.js
 *
 * (An application that installs the published packages leaves out `--conditions`: it gets dist.)
 * The page shows the losses and the sample; `globalThis.tsformerExample(steps)` returns them.
 */
import { Rng, selectBackend, tf } from '@tsformer/core';
import { DecoderLM, generate } from '@tsformer/model';
import { AdamW, adamwConfigSchema, trainStep, type Batch } from '@tsformer/train';

export interface ExampleResult {
  backend: string;
  losses: number[];
  /** Greedy continuation with the KV/recurrent cache and without it (must agree). */
  cached: number[];
  uncached: number[];
  sample: string;
  /** Tensors left over by the training steps and the generations (counted after the model and optimizer exist). */
  leakedTensors: number;
}

export async function runExample(steps = 12): Promise<ExampleResult> {
  const backend = await selectBackend('cpu');
  const model = new DecoderLM(
    {
      vocabSize: 256,
      dModel: 32,
      nLayers: 2,
      maxSeqLen: 32,
      layers: {
        pattern: ['linear', 'local'],
        defs: {
          linear: { attention: { type: 'gla', numHeads: 2, chunkSize: 8 }, positional: { type: 'none' } },
          local: { attention: { type: 'mha', numHeads: 2, window: 8 }, positional: { type: 'rope' } },
        },
      },
    },
    { seed: 3 },
  );
  const optimizer = new AdamW(model.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-2 }));
  const before = tf.memory().numTensors;
  const bytes = new TextEncoder().encode('hello browser, hello tensors. '.repeat(8));
  const rng = Rng.seeded(1);
  const T = 32, B = 4;
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    const batch: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T), batchSize: B, seqLen: T };
    for (let b = 0; b < B; b++) {
      const start = rng.int(bytes.length - T - 1);
      for (let t = 0; t < T; t++) [batch.inputs[b * T + t], batch.targets[b * T + t]] = [bytes[start + t]!, bytes[start + t + 1]!];
    }
    losses.push((await trainStep(model, optimizer, [batch], { lr: 1e-2, clipGradNorm: 1 })).loss);
  }
  model.eval();
  const prompt = new TextEncoder().encode('hello ');
  const cached = await generate(model, prompt, { maxNewTokens: 12, temperature: 0 });
  const uncached = await generate(model, prompt, { maxNewTokens: 12, temperature: 0, useCache: false });
  const leakedTensors = tf.memory().numTensors - before;
  model.dispose();
  optimizer.dispose();
  const sample = new TextDecoder().decode(Uint8Array.from([...prompt, ...cached]));
  return { backend: backend.name, losses, cached, uncached, sample, leakedTensors };
}

(globalThis as unknown as { tsformerExample: typeof runExample }).tsformerExample = runExample;

// On a page with <pre id="out">: run and show the result.
const out = typeof document !== 'undefined' ? document.getElementById('out') : null;
if (out) {
  out.textContent = 'training...';
  runExample().then(
    (r) => (out.textContent = `backend ${r.backend}\nloss ${r.losses.map((l) => l.toFixed(3)).join(' ')}\nsample ${JSON.stringify(r.sample)}`),
    (e) => (out.textContent = `error: ${(e as Error).stack ?? e}`),
  );
}
