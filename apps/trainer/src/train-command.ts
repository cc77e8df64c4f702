import { appendFileSync, existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Rng, TsformerError, selectBackend, type BackendName } from '@tsformer/core';
import { DecoderLM, generate } from '@tsformer/model';
import { BatchLoader, PackedSequences, createTokenizer, evalBatches, loadTokens, type Tokenizer } from '@tsformer/data';
import { AdamW, NonFiniteError, Progress, trainLoop, type EvalLog, type LoopState, type StepLog } from '@tsformer/train';
import { LocalStore, findResumeStep, listCompleteSteps, parseStepDirName, verifyStep, type CheckpointStore } from '@tsformer/checkpoint';
import YAML from 'yaml';
import { checkConfigFiles, loadConfig, type RunConfig } from './config.js';
import { describeStore, loadCheckpoint, saveCheckpoint, savedConfigYaml, type Trainable } from './checkpointing.js';
import type { Out } from './out.js';

export interface TrainOptions {
  config: string;
  overrides?: string[];
  /** `auto` = newest complete step of this run (fresh start when none); otherwise a step directory. */
  resume?: string;
  /** Overrides `backend` in the config. */
  backend?: BackendName;
  /** Stop with a checkpoint once this step is reached (a planned interruption). */
  stopAt?: number;
  out: Out;
  /** Aborting stops after the current step, with a checkpoint. */
  signal?: AbortSignal;
}

export interface TrainSummary {
  runDir: string;
  status: 'finished' | 'interrupted';
  step: number;
  tokensSeen: number;
  valLoss?: number;
  wallSeconds: number;
  sample?: string;
  backend: string;
}

export function runDirOf(config: RunConfig): string {
  return join(config.runsDir, config.name);
}

export function checkpointStoreOf(config: RunConfig): CheckpointStore {
  return new LocalStore(config.checkpoint.dir ?? join(runDirOf(config), 'checkpoints'));
}

/** Which step to resume from, or undefined for a fresh start. Validates before anything is created. */
async function resolveResume(config: RunConfig, resume: string | undefined, out: Out): Promise<{ store: CheckpointStore; step?: number }> {
  const store = checkpointStoreOf(config);
  if (resume === undefined) {
    const existing = existsSync(store.location) ? await listCompleteSteps(store) : [];
    if (existing.length > 0) {
      throw new TsformerError(
        `run "${config.name}" already has checkpoints in ${store.location} (newest step ${existing.at(-1)}): pass --resume auto to continue it, or set name=<another> to start a new run`,
        'config',
      );
    }
    return { store };
  }
  if (resume === 'auto') {
    if (!existsSync(store.location)) return { store };
    const step = await findResumeStep(store, { onWarning: (m) => out.warn(`warning: ${m}`) });
    return { store, step };
  }
  // an explicit step directory
  const step = parseStepDirName(basename(resume));
  if (step === undefined) throw new TsformerError(`--resume ${resume}: not a step directory (expected .../step-<N>)`, 'checkpoint');
  const explicit = new LocalStore(dirname(resume));
  await verifyStep(explicit, step);
  return { store: explicit, step };
}

/** Rejects resuming with a model or tokenizer different from the checkpoint's. */
function checkCompatible(config: RunConfig, savedYaml: string | undefined, where: string): void {
  if (!savedYaml) return;
  const saved = YAML.parse(savedYaml) as Partial<RunConfig>;
  const diffs: string[] = [];
  const compare = (prefix: string, a: unknown, b: unknown) => {
    if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
      for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) compare(`${prefix}.${k}`, (a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]);
    } else if (JSON.stringify(a) !== JSON.stringify(b)) diffs.push(`${prefix}: checkpoint has ${JSON.stringify(b)}, config has ${JSON.stringify(a)}`);
  };
  compare('model', config.model, saved.model);
  compare('data.tokenizer', config.data.tokenizer, saved.data?.tokenizer);
  if (diffs.length) throw new TsformerError(`cannot resume from ${where}: the config differs\n  ${diffs.join('\n  ')}`, 'config');
}

function metricsPath(runDir: string): string {
  return join(runDir, 'metrics.jsonl');
}

/** On resume, drops metric lines logged after the checkpoint (they will be logged again). */
function truncateMetrics(runDir: string, step: number): void {
  const p = metricsPath(runDir);
  if (!existsSync(p)) return;
  const kept = readFileSync(p, 'utf8')
    .split('\n')
    .filter((l) => l.trim() && (JSON.parse(l) as { step: number }).step <= step);
  writeFileSync(p, kept.map((l) => `${l}\n`).join(''));
}

export async function loadSplit(config: RunConfig, tokenizer: Tokenizer, split: 'train' | 'validation'): Promise<PackedSequences | undefined> {
  const ds = split === 'train' ? config.data.train : config.data.validation;
  if (!ds) return undefined;
  return new PackedSequences(await loadTokens(ds, tokenizer), config.data.seqLen);
}

export async function makeTokenizer(config: RunConfig): Promise<Tokenizer> {
  const tokenizer = await createTokenizer(config.data.tokenizer);
  if (tokenizer.vocabSize > config.model.vocabSize) {
    throw new TsformerError(`model.vocabSize (${config.model.vocabSize}) is smaller than the tokenizer's vocabulary (${tokenizer.vocabSize})`, 'config');
  }
  return tokenizer;
}

/** `tsformer train`: validate, (resume,) train with progress/metrics/checkpoints, then sample. */
export async function trainCommand(o: TrainOptions): Promise<TrainSummary> {
  const overrides = [...(o.overrides ?? []), ...(o.backend ? [`backend=${o.backend}`] : [])];
  const { config, yaml } = loadConfig(o.config, overrides);
  checkConfigFiles(config);
  const { store, step: resumeStep } = await resolveResume(config, o.resume, o.out);

  const backend = await selectBackend(config.backend);
  o.out.info(`backend: ${backend.name} (${backend.detail})`);
  const tokenizer = await makeTokenizer(config);
  const trainSeqs = (await loadSplit(config, tokenizer, 'train'))!;
  const valSeqs = await loadSplit(config, tokenizer, 'validation');
  const loader = new BatchLoader({ sequences: trainSeqs, batchSize: config.train.batchSize, seed: config.seed });

  const rng = Rng.seeded(config.seed);
  const model = new DecoderLM(config.model, { rng });
  const optimizer = new AdamW(model.namedParameters(), config.train.optimizer);
  const t: Trainable = { model, optimizer, loader, rng, configYaml: yaml, scheduleType: config.train.schedule.type, backend: backend.name };
  let releaseLock = () => {};
  try {
    let state: LoopState = { step: 0, tokensSeen: 0 };
    if (resumeStep !== undefined) {
      const files = await (await import('@tsformer/checkpoint')).readStep(store, resumeStep);
      checkCompatible(config, savedConfigYaml(files), `${describeStore(store)} step ${resumeStep}`);
      state = await loadCheckpoint(store, resumeStep, t);
      o.out.info(`resumed from ${describeStore(store)} at step ${state.step} (${state.tokensSeen.toLocaleString('en-US')} tokens seen)`);
    }

    const runDir = runDirOf(config);
    mkdirSync(join(runDir, 'samples'), { recursive: true });
    releaseLock = acquireRunLock(runDir);
    writeFileSync(join(runDir, 'config.yaml'), yaml);
    if (resumeStep !== undefined) truncateMetrics(runDir, state.step);
    else writeFileSync(metricsPath(runDir), '');
    const log = (rec: object) => appendFileSync(metricsPath(runDir), `${JSON.stringify(rec)}\n`);

    o.out.info(
      `model: ${model.numParameters().toLocaleString('en-US')} parameters, ${config.model.nLayers} layers, d=${config.model.dModel}; ` +
        `data: ${trainSeqs.length.toLocaleString('en-US')} train sequences of ${config.data.seqLen} tokens` +
        (valSeqs ? `, ${valSeqs.length.toLocaleString('en-US')} validation` : ''),
    );
    const progress = new Progress(config.train.steps, config.train.logEvery, o.out.stream, o.out.tty);
    const started = performance.now();
    let lastEval: EvalLog | undefined;
    let result;
    try {
      result = await trainLoop({
        model,
        optimizer,
        config: config.train,
        train: loader,
        validation: valSeqs ? () => evalBatches(valSeqs, config.train.batchSize, config.train.evalBatches) : undefined,
        state,
        checkpointEvery: config.checkpoint.every,
        stopAt: o.stopAt,
        signal: o.signal,
        onStep: (s: StepLog) => {
          progress.update(s);
          if (s.step % config.train.logEvery === 0 || s.step === config.train.steps) log({ type: 'train', ...s });
        },
        onEval: (e: EvalLog) => {
          lastEval = e;
          log({ type: 'eval', ...e });
          progress.note(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}, perplexity ${e.valPerplexity.toFixed(3)}`);
        },
        checkpoint: async (s: LoopState) => {
          const dir = await saveCheckpoint(store, t, s, config.checkpoint.keepLast);
          log({ type: 'checkpoint', step: s.step, dir });
          progress.note(`step ${s.step}: saved checkpoint ${join(describeStore(store), dir)}`);
        },
      });
    } catch (e) {
      progress.done();
      if (e instanceof NonFiniteError) {
        const steps = await listCompleteSteps(store).catch(() => []);
        const last = steps.at(-1);
        throw new TsformerError(
          `training stopped at step ${state.step + 1}: the ${e.what} is ${e.value}. Nothing was saved for this step; ` +
            (last !== undefined ? `the last good checkpoint is step ${last} in ${store.location} (continue with --resume auto, e.g. with a lower train.optimizer.lr)` : 'no checkpoint had been saved yet'),
          'numeric',
        );
      }
      throw e;
    }
    progress.done();
    const wallSeconds = (performance.now() - started) / 1000;
    const summary: TrainSummary = {
      runDir,
      status: result.interrupted ? 'interrupted' : 'finished',
      step: result.step,
      tokensSeen: result.tokensSeen,
      valLoss: lastEval?.valLoss,
      wallSeconds,
      backend: backend.name,
    };
    if (!result.interrupted) {
      const prompt = tokenizer.encode(config.sample.prompt);
      const tokens = await generate(model, prompt, {
        maxNewTokens: config.sample.maxNewTokens,
        temperature: config.sample.temperature,
        topK: config.sample.topK || undefined,
        topP: config.sample.topP,
        rng: Rng.seeded(config.seed, 7),
      });
      summary.sample = config.sample.prompt + tokenizer.decode(tokens);
      writeFileSync(join(runDir, 'samples', `step-${result.step}.txt`), `${summary.sample}\n`);
      o.out.info(`\nsample (step ${result.step}, temperature ${config.sample.temperature}):\n${summary.sample}\n`);
    } else {
      o.out.info(`stopped at step ${result.step}; continue with: tsformer train --config ${o.config} --resume auto`);
    }
    writeFileSync(join(runDir, 'summary.json'), `${JSON.stringify({ ...summary, sample: undefined }, null, 2)}\n`);
    o.out.info(
      `${summary.status} at step ${summary.step} in ${wallSeconds.toFixed(1)} s` + (summary.valLoss !== undefined ? `; validation loss ${summary.valLoss.toFixed(4)} nats/${config.data.tokenizer.type === 'byte' ? 'byte' : 'token'}` : ''),
    );
    return summary;
  } finally {
    releaseLock();
    model.dispose();
    optimizer.dispose();
  }
}

/**
 * One training process per run directory: `train.lock` holds the owner's pid. A lock whose process
 * is gone (a crash, a preempted node's leftover) is taken over.
 */
function acquireRunLock(runDir: string): () => void {
  const lock = join(runDir, 'train.lock');
  const take = () => writeFileSync(lock, String(process.pid), { flag: 'wx' });
  try {
    take();
  } catch {
    const pid = Number(readFileSync(lock, 'utf8'));
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = pid !== process.pid;
    } catch {
      alive = false;
    }
    if (alive) throw new TsformerError(`run directory ${runDir} is being trained by process ${pid} (${lock}); stop it first`, 'config');
    unlinkSync(lock);
    take();
  }
  return () => {
    try {
      unlinkSync(lock);
    } catch {
      // already gone
    }
  };
}
