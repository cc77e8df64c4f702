import { appendFileSync, existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Rng, TsformerError, type BackendName } from '@tsformer/core';
import { useBackend } from './backend.js';
import { DecoderLM, generate } from '@tsformer/model';
import { BatchLoader, PackedSequences, createTokenizer, evalBatches, loadTokens, type Tokenizer } from '@tsformer/data';
import { AdamW, NonFiniteError, Progress, trainLoop, type EvalLog, type LoopState, type StepLog } from '@tsformer/train';
import {
  CheckpointWriter,
  listCompleteSteps,
  openStepLocation,
  openStore,
  readResumeStep,
  readStep,
  stepDirName,
  type CheckpointStore,
  type S3StoreOptions,
} from '@tsformer/checkpoint';
import YAML from 'yaml';
import { checkConfigFiles, loadConfig, type RunConfig } from './config.js';
import { loadCheckpoint, savedConfigYaml, snapshotCheckpoint, type Trainable } from './checkpointing.js';
import type { Out } from './out.js';
import { reportAtEnd } from './report.js';

export interface TrainOptions {
  config: string;
  overrides?: string[];
  /**
   * `auto` = newest complete step of this run's checkpoint store that verifies (fresh start when
   * none); otherwise one step's location (`.../step-<N>`, a local path or `s3://...`).
   */
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
  /** The newest complete checkpoint this process saved (local path or s3:// URI), if any. */
  lastCheckpoint?: string;
}

export function runDirOf(config: RunConfig): string {
  return join(config.runsDir, config.name);
}

/** The S3 options of a run config (used when `checkpoint.dir` is `s3://...`). */
export function s3OptionsOf(config: RunConfig, out?: Out): S3StoreOptions {
  const s3 = config.checkpoint.s3;
  return {
    region: s3.region,
    endpoint: s3.endpoint,
    forcePathStyle: s3.forcePathStyle,
    requestChecksumCalculation: s3.requestChecksumCalculation,
    responseChecksumValidation: s3.responseChecksumValidation,
    partSize: Math.round(s3.partSizeMB * 1024 * 1024),
    attempts: s3.attempts,
    backoffMs: s3.backoffMs,
    onRetry: out ? (m) => out.warn(`warning: ${m}`) : undefined,
  };
}

/** Where a run's checkpoints go: `checkpoint.dir` (a path or s3://bucket/prefix), else `<runsDir>/<name>/checkpoints`. */
export function checkpointStoreOf(config: RunConfig, out?: Out): CheckpointStore {
  return openStore(config.checkpoint.dir ?? join(runDirOf(config), 'checkpoints'), { s3: s3OptionsOf(config, out) });
}

/** The step a run resumes from: its files (verified against the manifest) and where they are. */
interface ResumePoint {
  step: number;
  files: Map<string, Uint8Array>;
  where: string;
}

/**
 * Where to save, and which step to resume from (undefined = fresh start). Validates before anything
 * is created. With an explicit step location the run still saves to its own `checkpoint.dir`, so
 * a step can be moved (local -> S3, or to a new node) and picked up there.
 */
async function resolveResume(config: RunConfig, resume: string | undefined, out: Out): Promise<{ store: CheckpointStore; from?: ResumePoint }> {
  const store = checkpointStoreOf(config, out);
  if (resume === undefined) {
    const existing = await listCompleteSteps(store);
    if (existing.length > 0) {
      throw new TsformerError(
        `run "${config.name}" already has checkpoints in ${store.location} (newest step ${existing.at(-1)}): pass --resume auto to continue it, or set name=<another> to start a new run`,
        'config',
      );
    }
    return { store };
  }
  if (resume === 'auto') {
    const found = await readResumeStep(store, { onWarning: (m) => out.warn(`warning: ${m}`) });
    if (!found) {
      out.info(`no complete checkpoint in ${store.location}: starting from step 0`);
      return { store };
    }
    return { store, from: { ...found, where: `${store.location}/${stepDirName(found.step)}` } };
  }
  // one step's location
  const at = openStepLocation(resume, { s3: s3OptionsOf(config, out) });
  try {
    const files = await readStep(at.store, at.step);
    return { store, from: { step: at.step, files, where: `${at.store.location}/${stepDirName(at.step)}` } };
  } catch (e) {
    if (e instanceof TsformerError) throw new TsformerError(`--resume ${resume}: ${e.message}`, 'checkpoint');
    throw e;
  }
}

function flatten(prefix: string, v: unknown, out: Map<string, string>): void {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flatten(prefix ? `${prefix}.${k}` : k, x, out);
  } else out.set(prefix, JSON.stringify(v));
}

/**
 * Rejects resuming with a model or tokenizer different from the checkpoint's (parameter shapes are
 * checked when the weights load); returns the other settings that changed (`key: old -> new`).
 */
function checkCompatible(config: RunConfig, savedYaml: string | undefined, where: string): string[] {
  if (!savedYaml) return [];
  const saved = new Map<string, string>();
  const now = new Map<string, string>();
  flatten('', YAML.parse(savedYaml), saved);
  flatten('', config, now);
  const fixed = (k: string) => k.startsWith('model.') || k.startsWith('data.tokenizer.');
  const diffs: string[] = [];
  const changed: string[] = [];
  for (const k of [...new Set([...saved.keys(), ...now.keys()])].sort()) {
    const a = saved.get(k);
    const b = now.get(k);
    if (a === b) continue;
    if (fixed(k)) diffs.push(`${k}: checkpoint has ${a ?? '(unset)'}, config has ${b ?? '(unset)'}`);
    else changed.push(`${k}: ${a ?? '(unset)'} -> ${b ?? '(unset)'}`);
  }
  if (diffs.length) throw new TsformerError(`cannot resume from ${where}: the config differs\n  ${diffs.join('\n  ')}`, 'config');
  return changed;
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
  const { store, from } = await resolveResume(config, o.resume, o.out);

  const backend = await useBackend(config.backend);
  o.out.info(`backend: ${backend.name} (${backend.detail})`);
  const tokenizer = await makeTokenizer(config);
  const trainSeqs = (await loadSplit(config, tokenizer, 'train'))!;
  const valSeqs = await loadSplit(config, tokenizer, 'validation');
  const loader = new BatchLoader({ sequences: trainSeqs, batchSize: config.train.batchSize, seed: config.seed });

  const rng = Rng.seeded(config.seed);
  const model = new DecoderLM(config.model, { rng });
  const optimizer = new AdamW(model.namedParameters(), config.train.optimizer);
  const t: Trainable = {
    model,
    optimizer,
    loader,
    rng,
    configYaml: yaml,
    scheduleType: config.train.schedule.type,
    totalSteps: config.train.steps,
    backend: backend.name,
  };
  let releaseLock = () => {};
  let writer: CheckpointWriter | undefined;
  try {
    let state: LoopState = { step: 0, tokensSeen: 0 };
    if (from !== undefined) {
      // parameter shapes first (each mismatch named with both shapes), then the rest of the model config
      state = loadCheckpoint(from.files, t, from.where);
      const changed = checkCompatible(config, savedConfigYaml(from.files), from.where);
      o.out.info(`resumed from ${from.where} at step ${state.step} (${state.tokensSeen.toLocaleString('en-US')} tokens seen)`);
      if (changed.length > 0) o.out.info(`settings changed since that checkpoint:\n  ${changed.join('\n  ')}`);
      if (from.where !== `${store.location}/${stepDirName(from.step)}`) o.out.info(`saving checkpoints to ${store.location}`);
    }

    const runDir = runDirOf(config);
    mkdirSync(join(runDir, 'samples'), { recursive: true });
    releaseLock = acquireRunLock(runDir);
    writeFileSync(join(runDir, 'config.yaml'), yaml);
    if (from !== undefined) truncateMetrics(runDir, state.step);
    else writeFileSync(metricsPath(runDir), '');
    const log = (rec: object) => appendFileSync(metricsPath(runDir), `${JSON.stringify(rec)}\n`);

    o.out.info(
      `model: ${model.numParameters().toLocaleString('en-US')} parameters, ${config.model.nLayers} layers, d=${config.model.dModel}; ` +
        `data: ${trainSeqs.length.toLocaleString('en-US')} train sequences of ${config.data.seqLen} tokens` +
        (valSeqs ? `, ${valSeqs.length.toLocaleString('en-US')} validation` : ''),
    );
    const progress = new Progress(config.train.steps, config.train.logEvery, o.out.stream, o.out.tty);
    writer = new CheckpointWriter(store, {
      keepLast: config.checkpoint.keepLast,
      keepEvery: config.checkpoint.keepEvery,
      background: config.checkpoint.background,
      onSaved: (i) => {
        log({ type: 'checkpoint', step: i.step, dir: i.dir, bytes: i.bytes, seconds: Number(i.seconds.toFixed(3)) });
        const rate = i.seconds > 0 ? `, ${(i.bytes / 1e6 / i.seconds).toFixed(1)} MB/s` : '';
        progress.note(`step ${i.step}: saved checkpoint ${store.location}/${i.dir} (${(i.bytes / 1e6).toFixed(2)} MB in ${i.seconds.toFixed(2)} s${rate})`);
      },
      onError: (step, e) => {
        log({ type: 'checkpoint-failed', step, error: e.message });
        progress.note(`warning: checkpoint ${stepDirName(step)} was not saved (${e.message}); training goes on and the next checkpoint tries again`);
      },
    });
    const maxShardBytes = Math.round(config.checkpoint.maxShardMB * 1024 * 1024);
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
        onStep: async (s: StepLog) => {
          progress.update(s);
          if (s.step % config.train.logEvery === 0 || s.step === config.train.steps) log({ type: 'train', ...s });
          // A step on the cpu/wasm/tensorflow backends never leaves the JavaScript thread: give the
          // event loop a turn so that signals (SIGTERM) are seen. While a checkpoint is being written
          // in the background, keep turning it for up to 20 ms: each file operation or request of the
          // save needs a turn to continue, so one turn per step stretched a 10 MB local save over
          // ~100 steps (and left the previous step as the newest complete one all that time).
          const until = performance.now() + 20;
          do await new Promise<void>((resolve) => setImmediate(resolve));
          while (writer?.inFlight !== undefined && performance.now() < until);
        },
        onEval: (e: EvalLog) => {
          lastEval = e;
          log({ type: 'eval', ...e });
          progress.note(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}, perplexity ${e.valPerplexity.toFixed(3)}`);
        },
        checkpoint: async (s: LoopState) => {
          // training waits only for the snapshot (and for the previous upload, if still running)
          const files = await snapshotCheckpoint(t, s, { maxShardBytes });
          await writer!.save(s.step, files);
        },
      });
    } catch (e) {
      progress.done();
      if (e instanceof NonFiniteError) {
        await writer.flush().catch((err: Error) => o.out.warn(`warning: ${err.message}`));
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
    // the last checkpoint may still be uploading: wait for it before saying it is there
    await writer.flush();
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
    if (writer.lastSaved !== undefined) summary.lastCheckpoint = `${store.location}/${stepDirName(writer.lastSaved)}`;
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
      const why = o.signal?.aborted ? `interrupted by ${typeof o.signal.reason === 'string' ? o.signal.reason : 'a signal'}: ` : '';
      // the loop saved this step, unless nothing was trained since the start (or the resume point)
      const saved =
        writer.lastSaved === result.step
          ? `checkpoint ${store.location}/${stepDirName(result.step)} is complete`
          : from !== undefined && from.step === result.step
            ? `no step trained since ${from.where}, nothing new to save`
            : 'no step trained yet, nothing saved';
      o.out.info(`${why}stopped at step ${result.step}; ${saved}; continue with: tsformer train --config ${o.config} --resume auto`);
    }
    writeFileSync(join(runDir, 'summary.json'), `${JSON.stringify({ ...summary, sample: undefined }, null, 2)}\n`);
    reportAtEnd(runDir, o.out);
    o.out.info(
      `${summary.status} at step ${summary.step} in ${wallSeconds.toFixed(1)} s` + (summary.valLoss !== undefined ? `; validation loss ${summary.valLoss.toFixed(4)} nats/${config.data.tokenizer.type === 'byte' ? 'byte' : 'token'}` : ''),
    );
    return summary;
  } finally {
    // never leave with an upload in flight (a failure was reported already)
    await writer?.flush().catch(() => undefined);
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
