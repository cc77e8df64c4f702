import { tf, TsformerError, type Rng, type RngState } from '@tsformer/core';
import type { DecoderLM } from '@tsformer/model';
import type { AdamW, LoopState } from '@tsformer/train';
import type { BatchLoader, LoaderState } from '@tsformer/data';
import {
  decodeSafetensors,
  encodeSafetensors,
  hostToTensors,
  pruneSteps,
  readStep,
  saveStep,
  stepDirName,
  tensorsToHost,
  type CheckpointStore,
} from '@tsformer/checkpoint';

/** What `trainer-state.json` holds: everything besides tensors needed to continue exactly. */
export interface TrainerState {
  format: 'tsformer-trainer-state/1';
  step: number;
  tokensSeen: number;
  optimizerStep: number;
  loader: LoaderState;
  rng: RngState;
  schedule: { type: string; step: number };
  backend: string;
  versions: { tsformer: string; tfjs: string; node: string };
  createdAt: string;
}

export interface Trainable {
  model: DecoderLM;
  optimizer: AdamW;
  loader: BatchLoader;
  rng: Rng;
  configYaml: string;
  scheduleType: string;
  backend: string;
}

export const TSFORMER_VERSION = '0.1.0';

/** Snapshots the run to host memory, then writes a complete step directory (manifest last). */
export async function saveCheckpoint(store: CheckpointStore, t: Trainable, state: LoopState, keepLast: number): Promise<string> {
  const model = encodeSafetensors(await tensorsToHost(t.model.stateDict()), { format: 'pt', producer: 'tsformer' });
  const optimizer = encodeSafetensors(await tensorsToHost(t.optimizer.stateDict()), { producer: 'tsformer' });
  const trainerState: TrainerState = {
    format: 'tsformer-trainer-state/1',
    step: state.step,
    tokensSeen: state.tokensSeen,
    optimizerStep: t.optimizer.step,
    loader: t.loader.state(),
    rng: t.rng.state(),
    schedule: { type: t.scheduleType, step: state.step },
    backend: t.backend,
    versions: { tsformer: TSFORMER_VERSION, tfjs: tf.version_core, node: process.versions.node },
    createdAt: new Date().toISOString(),
  };
  const dir = await saveStep(store, state.step, {
    'model.safetensors': model,
    'optimizer.safetensors': optimizer,
    'trainer-state.json': JSON.stringify(trainerState, null, 2),
    'config.yaml': t.configYaml,
  });
  await pruneSteps(store, keepLast);
  return dir;
}

/** Loads model weights of a verified step into `model` (and returns the raw files for more). */
export async function loadWeights(store: CheckpointStore, step: number, model: DecoderLM): Promise<Map<string, Uint8Array>> {
  const files = await readStep(store, step);
  const weights = requireFile(files, 'model.safetensors', store, step);
  const tensors = hostToTensors(decodeSafetensors(weights, `${stepDirName(step)}/model.safetensors`).tensors);
  try {
    model.loadStateDict(tensors);
  } finally {
    tf.dispose([...tensors.values()]);
  }
  return files;
}

/** Restores weights, optimizer moments, data cursor and RNG from a verified step. */
export async function loadCheckpoint(store: CheckpointStore, step: number, t: Trainable): Promise<LoopState> {
  const files = await loadWeights(store, step, t.model);
  const opt = hostToTensors(decodeSafetensors(requireFile(files, 'optimizer.safetensors', store, step), `${stepDirName(step)}/optimizer.safetensors`).tensors);
  let state: TrainerState;
  try {
    state = JSON.parse(new TextDecoder().decode(requireFile(files, 'trainer-state.json', store, step))) as TrainerState;
    t.optimizer.loadStateDict(opt, state.optimizerStep);
  } finally {
    tf.dispose([...opt.values()]);
  }
  t.loader.restore(state.loader);
  t.rng.restore(state.rng);
  return { step: state.step, tokensSeen: state.tokensSeen };
}

function requireFile(files: Map<string, Uint8Array>, name: string, store: CheckpointStore, step: number): Uint8Array {
  const f = files.get(name);
  if (!f) throw new TsformerError(`checkpoint ${describeStore(store)}/${stepDirName(step)} has no ${name}`, 'checkpoint');
  return f;
}

export function describeStore(store: CheckpointStore): string {
  return store.location;
}

export function savedConfigYaml(files: Map<string, Uint8Array>): string | undefined {
  const f = files.get('config.yaml');
  return f ? new TextDecoder().decode(f) : undefined;
}
