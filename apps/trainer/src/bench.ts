import { Rng, availableBackends, selectBackend, tf, type BackendName } from '@tsformer/core';
import { DecoderLM } from '@tsformer/model';
import { AdamW, trainStep, type Batch } from '@tsformer/train';
import { loadConfig } from './config.js';
import type { Out } from './out.js';

export interface BenchOptions {
  config: string;
  overrides?: string[];
  /** Backends to measure; default every one that starts here. */
  backends?: BackendName[];
  /** Timed steps per backend (after warm-up). */
  steps: number;
  warmup: number;
  out: Out;
}

export interface BenchRow {
  backend: string;
  detail: string;
  msPerStep: number;
  tokensPerSec: number;
}

/**
 * Training throughput of a config's model on each backend: full steps (forward, backward, clip,
 * AdamW, the scalar read-back) on random tokens, timed after warm-up.
 */
export async function benchCommand(o: BenchOptions): Promise<BenchRow[]> {
  const { config } = loadConfig(o.config, o.overrides);
  const backends = o.backends ?? (await availableBackends());
  const rows: BenchRow[] = [];
  const { batchSize, gradAccum } = config.train;
  const T = config.data.seqLen;
  for (const name of backends) {
    const info = await selectBackend(name);
    const rng = Rng.seeded(config.seed);
    const model = new DecoderLM(config.model, { rng });
    const opt = new AdamW(model.namedParameters(), config.train.optimizer);
    const batch = (): Batch => {
      const n = batchSize * T;
      const inputs = new Int32Array(n);
      const targets = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        inputs[i] = rng.int(config.model.vocabSize);
        targets[i] = rng.int(config.model.vocabSize);
      }
      return { inputs, targets, batchSize, seqLen: T };
    };
    const step = () => trainStep(model, opt, Array.from({ length: gradAccum }, batch), { lr: 1e-4, clipGradNorm: config.train.clipGradNorm });
    for (let i = 0; i < o.warmup; i++) await step();
    const t0 = performance.now();
    for (let i = 0; i < o.steps; i++) await step();
    const ms = (performance.now() - t0) / o.steps;
    rows.push({ backend: info.name, detail: info.detail, msPerStep: ms, tokensPerSec: (batchSize * gradAccum * T) / (ms / 1000) });
    model.dispose();
    opt.dispose();
    o.out.info(`${info.name}: ${ms.toFixed(1)} ms/step`);
  }
  await tf.setBackend('cpu');
  const ref = rows.find((r) => r.backend === 'cpu');
  o.out.info(`\ntraining throughput: ${o.config} (batch ${batchSize} x ${gradAccum} x ${T} tokens, ${o.steps} timed steps after ${o.warmup} warm-up)\n`);
  o.out.info('| backend | detail | ms/step | tokens/s | vs cpu |');
  o.out.info('|---|---|---:|---:|---:|');
  for (const r of rows) {
    o.out.info(`| ${r.backend} | ${r.detail} | ${r.msPerStep.toFixed(1)} | ${Math.round(r.tokensPerSec).toLocaleString('en-US')} | ${ref ? (r.tokensPerSec / ref.tokensPerSec).toFixed(2) + 'x' : '-'} |`);
  }
  return rows;
}
