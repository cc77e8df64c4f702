import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Rng, TsformerError, type BackendName } from '@tsformer/core';
import { useBackend } from './backend.js';
import { DecoderLM, generate, type LanguageModel } from '@tsformer/model';
import { evalBatches } from '@tsformer/data';
import { evaluate } from '@tsformer/train';
import { findResumeStep, openStore, verifyStep } from '@tsformer/checkpoint';
import YAML from 'yaml';
import { resolveConfig, type RunConfig } from './config.js';
import { loadWeights } from './checkpointing.js';
import { s3OptionsOf } from './train-command.js';
import { loadSplit, makeTokenizer } from './train-command.js';
import type { Out } from './out.js';
import { isDistillRun, loadDistilledRun } from './distill-command.js';

export interface LoadedRun {
  config: RunConfig;
  model: DecoderLM;
  step: number;
}

/** Rebuilds a run's model from its directory: the saved config and a verified checkpoint. */
export async function loadRun(runDir: string, opts: { step?: number; backend?: BackendName; out: Out }): Promise<LoadedRun> {
  const cfgPath = join(runDir, 'config.yaml');
  if (!existsSync(cfgPath)) throw new TsformerError(`${runDir} is not a run directory (no config.yaml)`, 'config');
  const { config } = resolveConfig(YAML.parse(readFileSync(cfgPath, 'utf8')), cfgPath);
  // checkpoint.dir may be s3://bucket/prefix; without one, the checkpoints sit in the run directory given.
  const store = openStore(config.checkpoint.dir ?? join(runDir, 'checkpoints'), { s3: s3OptionsOf(config, opts.out) });
  let step = opts.step;
  if (step === undefined) step = await findResumeStep(store, { onWarning: (m) => opts.out.warn(`warning: ${m}`) });
  else await verifyStep(store, step);
  if (step === undefined) throw new TsformerError(`run ${runDir} has no complete checkpoint in ${store.location}`, 'checkpoint');
  const backend = await useBackend(opts.backend ?? config.backend);
  opts.out.info(`backend: ${backend.name} (${backend.detail}); checkpoint: step ${step}`);
  const model = new DecoderLM(config.model, { seed: config.seed });
  try {
    await loadWeights(store, step, model);
  } catch (e) {
    model.dispose();
    throw e;
  }
  model.eval();
  return { config, model, step };
}

/** What sample and eval read: a training run's model, or a distillation run's student. */
interface InspectedRun {
  config: RunConfig;
  model: LanguageModel;
  /** How the output names the weights: `step 300`, or the distilled student's stage and form. */
  label: string;
  step: number;
  dispose(): void;
}

async function inspectRun(run: string, o: { step?: number; backend?: BackendName; out: Out }): Promise<InspectedRun> {
  if (isDistillRun(run)) {
    if (o.step !== undefined) throw new TsformerError(`--step: ${run} is a distillation run; sample and eval read its finished stage 2 (merged when merge-lora has run)`, 'config');
    return loadDistilledRun(run, o);
  }
  const r = await loadRun(run, o);
  return { ...r, label: `step ${r.step}`, dispose: () => r.model.dispose() };
}

export interface SampleOptions {
  run: string;
  prompt?: string;
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  step?: number;
  backend?: BackendName;
  out: Out;
}

/** `tsformer sample`: continue a prompt with a run's checkpoint (or a distillation run's student). */
export async function sampleCommand(o: SampleOptions): Promise<string> {
  const { config, model, label, dispose } = await inspectRun(o.run, o);
  try {
    const tokenizer = await makeTokenizer(config);
    const prompt = o.prompt ?? config.sample.prompt;
    const tokens = await generate(model, tokenizer.encode(prompt), {
      maxNewTokens: o.maxNewTokens ?? config.sample.maxNewTokens,
      temperature: o.temperature ?? config.sample.temperature,
      topK: (o.topK ?? config.sample.topK) || undefined,
      topP: o.topP ?? config.sample.topP,
      rng: Rng.seeded(o.seed ?? config.seed, 7),
    });
    const text = prompt + tokenizer.decode(tokens);
    o.out.info(`--- sample (${label}) ---\n${text}`);
    return text;
  } finally {
    dispose();
  }
}

export interface EvalOptions {
  run: string;
  step?: number;
  /** Batches to evaluate; default: the whole validation split. */
  batches?: number;
  backend?: BackendName;
  out: Out;
}

/** `tsformer eval`: validation loss and perplexity of a run's checkpoint (or a distillation run's student). */
export async function evalCommand(o: EvalOptions): Promise<{ loss: number; perplexity: number; step: number }> {
  const { config, model, step, label, dispose } = await inspectRun(o.run, o);
  try {
    const tokenizer = await makeTokenizer(config);
    const val = await loadSplit(config, tokenizer, 'validation');
    if (!val) throw new TsformerError(`run ${o.run} has no data.validation split to evaluate`, 'config');
    const r = await evaluate(model, evalBatches(val, config.train.batchSize, o.batches ?? Infinity));
    const unit = config.data.tokenizer.type === 'byte' ? 'nats/byte' : 'nats/token';
    o.out.info(`${label}: validation loss ${r.loss.toFixed(4)} ${unit} (${(r.loss / Math.LN2).toFixed(4)} bits), perplexity ${r.perplexity.toFixed(3)}, over ${r.batches} batches`);
    return { loss: r.loss, perplexity: r.perplexity, step };
  } finally {
    dispose();
  }
}
