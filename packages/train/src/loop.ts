import type { AdamW } from './adamw.js';
import type { TrainConfig } from './config.js';
import { learningRate } from './schedule.js';
import { evaluate, trainStep, type Batch } from './step.js';
import type { LanguageModel } from '@tsformer/model';

export interface BatchSource {
  next(): Batch;
}

export interface LoopState {
  /** Optimizer steps done. */
  step: number;
  /** Training tokens consumed. */
  tokensSeen: number;
}

export interface StepLog {
  step: number;
  tokens: number;
  loss: number;
  lr: number;
  gradNorm: number;
  /** Throughput of this step (tokens / wall seconds, including the scalar read-back). */
  tokensPerSec: number;
  /** Seconds since the loop started (this process). */
  elapsed: number;
}

export interface EvalLog {
  step: number;
  tokens: number;
  valLoss: number;
  valPerplexity: number;
}

export interface LoopOptions {
  /** A DecoderLM, or any model with its surface (a distilled StudentLM). */
  model: LanguageModel;
  optimizer: AdamW;
  config: TrainConfig;
  train: BatchSource;
  /** Fresh iterable of fixed validation batches for each evaluation. */
  validation?: () => Iterable<Batch>;
  /** Where to start (mutated as the loop runs). */
  state: LoopState;
  /** Save every this many steps (and at the end); 0 = only at the end. */
  checkpointEvery: number;
  /** Stop (with a checkpoint) once this step is reached, as if interrupted. For resumable partial runs. */
  stopAt?: number;
  /** When aborted (SIGINT/SIGTERM), the loop checkpoints after the current step and returns. */
  signal?: AbortSignal;
  onStep?(log: StepLog): void | Promise<void>;
  onEval?(log: EvalLog): void | Promise<void>;
  /** Persists the run at the current state (weights, optimizer, data cursor, RNG). */
  checkpoint?(state: LoopState): Promise<void>;
}

export interface LoopResult extends LoopState {
  /** Stopped before `config.steps` (signal or stopAt). */
  interrupted: boolean;
  lastEval?: EvalLog;
}

/** The training loop: steps, evaluation and checkpoints on schedule. */
export async function trainLoop(o: LoopOptions): Promise<LoopResult> {
  const { config, state } = o;
  const t0 = performance.now();
  let lastEval: EvalLog | undefined;
  let lastSaved = state.step;
  const save = async () => {
    if (o.checkpoint && lastSaved !== state.step) await o.checkpoint(state);
    lastSaved = state.step;
  };
  const runEval = async () => {
    if (!o.validation) return;
    const r = await evaluate(o.model, o.validation());
    lastEval = { step: state.step, tokens: state.tokensSeen, valLoss: r.loss, valPerplexity: r.perplexity };
    await o.onEval?.(lastEval);
  };

  while (state.step < config.steps) {
    if (o.signal?.aborted || (o.stopAt !== undefined && state.step >= o.stopAt)) {
      await save();
      return { ...state, interrupted: true, lastEval };
    }
    const micro = Array.from({ length: config.gradAccum }, () => o.train.next());
    const lr = learningRate(config.schedule, config.optimizer.lr, state.step, config.steps);
    const ts = performance.now();
    const r = await trainStep(o.model, o.optimizer, micro, { lr, clipGradNorm: config.clipGradNorm });
    state.step++;
    state.tokensSeen += r.tokens;
    const now = performance.now();
    await o.onStep?.({
      step: state.step,
      tokens: state.tokensSeen,
      loss: r.loss,
      lr,
      gradNorm: r.gradNorm,
      tokensPerSec: r.tokens / ((now - ts) / 1000),
      elapsed: (now - t0) / 1000,
    });
    const last = state.step === config.steps;
    if (config.evalEvery > 0 && (state.step % config.evalEvery === 0 || last)) await runEval();
    if ((o.checkpointEvery > 0 && state.step % o.checkpointEvery === 0) || last) await save();
  }
  await save();
  return { ...state, interrupted: false, lastEval };
}
