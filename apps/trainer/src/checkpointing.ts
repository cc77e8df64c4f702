/**
 * What the trainer puts in a checkpoint step and how it gets it back:
 *
 *   model.safetensors (or model-0000i-of-0000n.safetensors + model.safetensors.index.json above checkpoint.maxShardMB)
 *   optimizer.safetensors   AdamW moments keyed by parameter name (`<param>.exp_avg`, `<param>.exp_avg_sq`)
 *   trainer-state.json      step, tokens, optimizer step, data cursor, RNG, schedule, backend, versions, git commit
 *   config.yaml             the resolved run config
 *   manifest.json           written last by @tsformer/checkpoint (sizes and sha256)
 *
 * Saving is split in two: `snapshotCheckpoint` copies everything to host memory and encodes it
 * (the only part that holds up training), and a `CheckpointWriter` writes the bytes in the background.
 */
import { execFileSync } from 'node:child_process';
import { tf, TsformerError, type Rng, type RngState } from '@tsformer/core';
import type { DecoderLM } from '@tsformer/model';
import type { AdamW, LoopState } from '@tsformer/train';
import type { BatchLoader, LoaderState } from '@tsformer/data';
import {
  decodeSafetensors,
  decodeShardedSafetensors,
  encodeSafetensors,
  encodeShardedSafetensors,
  hostToTensors,
  readStep,
  stepDirName,
  tensorsToHost,
  type CheckpointStore,
  type HostTensor,
  type StepFiles,
} from '@tsformer/checkpoint';

/** What `trainer-state.json` holds: everything besides tensors needed to continue exactly. */
export interface TrainerState {
  format: 'tsformer-trainer-state/1';
  step: number;
  tokensSeen: number;
  optimizerStep: number;
  loader: LoaderState;
  rng: RngState;
  /** The learning-rate schedule is a function of (step, total steps); both are recorded. */
  schedule: { type: string; step: number; totalSteps: number };
  backend: string;
  versions: { tsformer: string; tfjs: string; node: string };
  /** The source commit, when known (`TSFORMER_GIT_COMMIT`, or `git rev-parse HEAD`). */
  gitCommit?: string;
  createdAt: string;
}

export interface Trainable {
  model: DecoderLM;
  optimizer: AdamW;
  loader: BatchLoader;
  rng: Rng;
  configYaml: string;
  scheduleType: string;
  totalSteps: number;
  backend: string;
}

export const TSFORMER_VERSION = '0.1.0';

let gitCommitCache: string | null | undefined;

/** The git commit of the working directory, if it is a git checkout (cached; never throws). */
export function gitCommit(): string | undefined {
  if (gitCommitCache === undefined) {
    const fromEnv = process.env.TSFORMER_GIT_COMMIT;
    if (fromEnv && /^[0-9a-f]{7,40}$/i.test(fromEnv)) gitCommitCache = fromEnv;
    else {
      try {
        const out = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 2000 }).trim();
        gitCommitCache = /^[0-9a-f]{40}$/.test(out) ? out : null;
      } catch {
        gitCommitCache = null;
      }
    }
  }
  return gitCommitCache ?? undefined;
}

/** Options of `snapshotCheckpoint`. */
export interface SnapshotOptions {
  /** Shard the model above this many bytes. */
  maxShardBytes: number;
}

/**
 * Copies the run to host memory and encodes the step's files. Once this resolves, training may
 * change every tensor: the bytes are a snapshot.
 */
export async function snapshotCheckpoint(t: Trainable, state: LoopState, opts: SnapshotOptions): Promise<StepFiles> {
  const weights = await tensorsToHost(t.model.stateDict());
  const moments = await tensorsToHost(t.optimizer.stateDict());
  const trainerState: TrainerState = {
    format: 'tsformer-trainer-state/1',
    step: state.step,
    tokensSeen: state.tokensSeen,
    optimizerStep: t.optimizer.step,
    loader: t.loader.state(),
    rng: t.rng.state(),
    schedule: { type: t.scheduleType, step: state.step, totalSteps: t.totalSteps },
    backend: t.backend,
    versions: { tsformer: TSFORMER_VERSION, tfjs: tf.version_core, node: process.versions.node },
    ...(gitCommit() ? { gitCommit: gitCommit() } : {}),
    createdAt: new Date().toISOString(),
  };
  const files: StepFiles = {};
  for (const [name, bytes] of encodeShardedSafetensors(weights, { maxShardBytes: opts.maxShardBytes, metadata: { format: 'pt', producer: 'tsformer' } })) {
    files[name] = bytes;
  }
  files['optimizer.safetensors'] = encodeSafetensors(moments, { producer: 'tsformer' });
  files['trainer-state.json'] = `${JSON.stringify(trainerState, null, 2)}\n`;
  files['config.yaml'] = t.configYaml;
  return files;
}

/**
 * Checks checkpoint tensors against the model before anything is loaded: every parameter present
 * with the same shape, no unknown ones. The error names each parameter and both shapes.
 */
export function checkParameterShapes(model: DecoderLM, tensors: ReadonlyMap<string, HostTensor>, where: string): void {
  const expected = model.stateDict();
  const problems: string[] = [];
  for (const [name, t] of expected) {
    const saved = tensors.get(name);
    if (!saved) problems.push(`parameter "${name}" [${t.shape.join(', ')}] is missing from the checkpoint`);
    else if (saved.shape.join(',') !== t.shape.join(',')) {
      problems.push(`parameter "${name}": checkpoint has shape [${saved.shape.join(', ')}], the config gives [${t.shape.join(', ')}]`);
    }
  }
  for (const [name, t] of tensors) if (!expected.has(name)) problems.push(`checkpoint parameter "${name}" [${t.shape.join(', ')}] is not in the model`);
  if (problems.length > 0) {
    throw new TsformerError(`cannot resume from ${where}: the model does not match the checkpoint\n  ${problems.join('\n  ')}`, 'config');
  }
}

function loadHostInto(model: DecoderLM, tensors: ReadonlyMap<string, HostTensor>, where: string): void {
  checkParameterShapes(model, tensors, where);
  const loaded = hostToTensors(tensors);
  try {
    model.loadStateDict(loaded);
  } finally {
    tf.dispose([...loaded.values()]);
  }
}

/** Loads model weights of a verified step into `model` (and returns the raw files for more). */
export async function loadWeights(store: CheckpointStore, step: number, model: DecoderLM): Promise<Map<string, Uint8Array>> {
  const files = await readStep(store, step);
  const where = `${store.location}/${stepDirName(step)}`;
  loadHostInto(model, decodeShardedSafetensors(files, 'model', where).tensors, where);
  return files;
}

/** Parses `trainer-state.json` of a step, naming the step on any problem. */
export function parseTrainerState(files: ReadonlyMap<string, Uint8Array>, where: string): TrainerState {
  const raw = requireFile(files, 'trainer-state.json', where);
  let state: TrainerState;
  try {
    state = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw)) as TrainerState;
  } catch (e) {
    throw new TsformerError(`${where}/trainer-state.json is not valid JSON (${(e as Error).message})`, 'checkpoint');
  }
  if (state?.format !== 'tsformer-trainer-state/1' || !Number.isSafeInteger(state.step) || !Number.isSafeInteger(state.optimizerStep)) {
    throw new TsformerError(`${where}/trainer-state.json is not a tsformer trainer state (format tsformer-trainer-state/1 with step and optimizerStep)`, 'checkpoint');
  }
  return state;
}

/**
 * Restores weights, optimizer moments, data cursor and RNG from the files of a verified step
 * (`readStep`/`readResumeStep`). Shapes are checked before anything changes.
 */
export function loadCheckpoint(files: ReadonlyMap<string, Uint8Array>, t: Trainable, where: string): LoopState {
  const state = parseTrainerState(files, where);
  const weights = decodeShardedSafetensors(files, 'model', where).tensors;
  const moments = decodeSafetensors(requireFile(files, 'optimizer.safetensors', where), `${where}/optimizer.safetensors`).tensors;
  checkParameterShapes(t.model, weights, where);
  loadHostInto(t.model, weights, where);
  const opt = hostToTensors(moments);
  try {
    t.optimizer.loadStateDict(opt, state.optimizerStep);
  } finally {
    tf.dispose([...opt.values()]);
  }
  t.loader.restore(state.loader);
  t.rng.restore(state.rng);
  return { step: state.step, tokensSeen: state.tokensSeen };
}

function requireFile(files: ReadonlyMap<string, Uint8Array>, name: string, where: string): Uint8Array {
  const f = files.get(name);
  if (!f) throw new TsformerError(`checkpoint ${where} has no ${name}`, 'checkpoint');
  return f;
}

export function describeStore(store: CheckpointStore): string {
  return store.location;
}

export function savedConfigYaml(files: ReadonlyMap<string, Uint8Array>): string | undefined {
  const f = files.get('config.yaml');
  return f ? new TextDecoder().decode(f) : undefined;
}
