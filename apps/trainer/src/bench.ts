import { Rng, availableBackends, tf, type BackendName } from '@tsformer/core';
import { useBackend } from './backend.js';
import { DecoderLM, layerSpecs } from '@tsformer/model';
import { AdamW, trainStep, type Batch } from '@tsformer/train';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { TsformerError } from '@tsformer/core';
import { loadConfig, type RunConfig } from './config.js';
import type { Out } from './out.js';

export interface BenchOptions {
  config: string;
  overrides?: string[];
  /** Backends to measure; default every one that starts here. */
  backends?: BackendName[];
  /** Timed steps per backend (after warm-up). */
  steps: number;
  warmup: number;
  /**
   * Directory of the TypeScript peer (@genai-fi/nanogpt, installed by ../shared/peer/setup.sh) to
   * measure beside ours on its cpu backend, same model shape, same machine, same run.
   */
  peer?: string;
  /** Text file the peer trains on (bytes are tokens). */
  peerText?: string;
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
    const info = await useBackend(name);
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
  if (o.peer) rows.push(await benchPeer(o.peer, o.peerText ?? config.data.train.path, config, o.out));
  const ref = rows.find((r) => r.backend === 'cpu');
  const peer = rows.find((r) => r.backend.startsWith('peer'));
  const ratio = (r: BenchRow, to: BenchRow | undefined) => (to ? `${(r.tokensPerSec / to.tokensPerSec).toFixed(2)}x` : '-');
  o.out.info(`\ntraining throughput: ${o.config} (batch ${batchSize} x ${gradAccum} x ${T} tokens, ${o.steps} timed steps after ${o.warmup} warm-up)\n`);
  o.out.info(`| backend | detail | ms/step | tokens/s | vs cpu |${peer ? ' vs peer |' : ''}`);
  o.out.info(`|---|---|---:|---:|---:|${peer ? '---:|' : ''}`);
  for (const r of rows) {
    o.out.info(`| ${r.backend} | ${r.detail} | ${r.msPerStep.toFixed(1)} | ${Math.round(r.tokensPerSec).toLocaleString('en-US')} | ${ratio(r, ref)} |${peer ? ` ${ratio(r, peer)} |` : ''}`);
  }
  return rows;
}

/** Runs the peer's own training loop on its cpu backend and reads throughput between its logged steps. */
function benchPeer(dir: string, text: string, config: RunConfig, out: Out): BenchRow {
  const entry = join(dir, 'peer-entry.mjs');
  if (!existsSync(entry)) throw new TsformerError(`--peer ${dir}: no peer-entry.mjs there (install it with ../shared/peer/setup.sh)`, 'config');
  const att = layerSpecs(config.model)[0]!.attention;
  const shape = { nLayer: config.model.nLayers, nHead: att.numHeads, nEmbed: config.model.dModel, blockSize: config.data.seqLen };
  out.info(`peer: @genai-fi/nanogpt on cpu, ${JSON.stringify(shape)} batch ${config.train.batchSize} (it logs every 10 steps; this takes a while)`);
  const p = spawnSync(process.execPath, [entry, 'cpu', '2', JSON.stringify(shape), String(config.train.batchSize), resolve(text)], { cwd: dir, encoding: 'utf8', maxBuffer: 1 << 26 });
  const logs = p.stdout
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('wall_ms'))
    .map((l) => JSON.parse(l) as { wall_ms: number; step: number });
  if (logs.length < 2) throw new TsformerError(`peer run produced ${logs.length} logged steps (need 2):\n${p.stderr.slice(-2000)}`, 'bench');
  const first = logs[0]!;
  const last = logs.at(-1)!;
  const steps = last.step - first.step;
  const ms = (last.wall_ms - first.wall_ms) / steps;
  return { backend: 'peer (cpu)', detail: '@genai-fi/nanogpt 1.3.0, tfjs cpu', msPerStep: ms, tokensPerSec: (config.train.batchSize * config.data.seqLen) / (ms / 1000) };
}
