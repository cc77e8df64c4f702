import { TsformerError, tf } from '@tsformer/core';
import type { LanguageModel } from '@tsformer/model';
import type { AdamW } from './adamw.js';
import { clipByGlobalNorm, globalNorm } from './clip.js';
import { sparseCrossEntropy } from './losses.js';

/** A batch of token ids, row-major [batchSize, seqLen]; targets are inputs shifted by one. */
export interface Batch {
  inputs: Int32Array;
  targets: Int32Array;
  batchSize: number;
  seqLen: number;
}

export interface StepResult {
  /** Mean loss over the step's micro-batches (nats per token). */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens in the step. */
  tokens: number;
}

/** Raised when the loss or the gradient norm is NaN or infinite; no update has been applied. */
export class NonFiniteError extends TsformerError {
  constructor(
    readonly what: 'loss' | 'gradient norm',
    readonly value: number,
  ) {
    super(`${what} is ${value}: training stopped before applying this update`, 'numeric');
  }
}

function batchTensors(b: Batch): { ids: tf.Tensor; targets: tf.Tensor } {
  return {
    ids: tf.tensor2d(b.inputs, [b.batchSize, b.seqLen], 'int32'),
    targets: tf.tensor2d(b.targets, [b.batchSize, b.seqLen], 'int32'),
  };
}

/** Mean cross-entropy of the model on one batch (a scalar tensor; the caller disposes it). */
export function batchLoss(model: LanguageModel, b: Batch): tf.Scalar {
  const { ids, targets } = batchTensors(b);
  const loss = tf.tidy(() => sparseCrossEntropy(model.forward(ids).logits, targets));
  tf.dispose([ids, targets]);
  return loss;
}

/**
 * One optimizer step: gradients of every micro-batch averaged, clipped by global norm, then AdamW.
 * Reads back only the loss and the norm (two scalars, asynchronously); if either is not finite,
 * throws `NonFiniteError` and leaves the weights untouched.
 */
export async function trainStep(model: LanguageModel, optimizer: AdamW, micro: Batch[], opts: { lr: number; clipGradNorm: number }): Promise<StepResult> {
  const named = model.namedParameters().filter(([, p]) => p.variable.trainable);
  const vars = named.map(([, p]) => p.variable);
  const nameOf = new Map(named.map(([n, p]) => [p.variable.name, n]));
  const acc = new Map<string, tf.Tensor>();
  let lossSum: tf.Tensor = tf.scalar(0);
  let tokens = 0;
  for (const b of micro) {
    const { ids, targets } = batchTensors(b);
    const { value, grads } = tf.variableGrads(() => sparseCrossEntropy(model.forward(ids).logits, targets).div(micro.length) as tf.Scalar, vars);
    tf.dispose([ids, targets]);
    for (const [vname, g] of Object.entries(grads)) {
      const name = nameOf.get(vname)!;
      const prev = acc.get(name);
      if (prev) {
        acc.set(name, prev.add(g));
        tf.dispose([prev, g]);
      } else acc.set(name, g);
    }
    const next = lossSum.add(value);
    tf.dispose([lossSum, value]);
    lossSum = next;
    tokens += b.batchSize * b.seqLen;
  }
  const norm = globalNorm(acc);
  // Where a fused AdamW exists (webgpu), clipping and the finite check run inside the update, which
  // is enqueued before the loss and the norm are read back: the GPU does not idle during the read.
  let applied = false;
  if (optimizer.hasFusedUpdate()) {
    const normAndLoss = tf.tidy(() => tf.stack([norm, lossSum])); // [2]
    try {
      applied = optimizer.applyGuarded(acc, opts.lr, { normAndLoss, maxNorm: opts.clipGradNorm });
    } catch (e) {
      tf.dispose([lossSum, norm, ...acc.values()]);
      throw e;
    } finally {
      normAndLoss.dispose();
    }
  }
  if (applied) {
    tf.dispose([...acc.values()]);
    try {
      const { loss, gradNorm } = await readFinite(lossSum, norm);
      return { loss, gradNorm, tokens };
    } catch (e) {
      if (e instanceof NonFiniteError) optimizer.undoStep(); // the guard left every weight as it was
      throw e;
    } finally {
      tf.dispose([lossSum, norm]);
    }
  }
  const { grads } = clipByGlobalNorm(acc, opts.clipGradNorm, norm);
  tf.dispose([...acc.values()]);
  try {
    const { loss, gradNorm } = await readFinite(lossSum, norm);
    optimizer.apply(grads, opts.lr);
    return { loss, gradNorm, tokens };
  } finally {
    tf.dispose([lossSum, norm, ...grads.values()]);
  }
}

/** Reads the loss and the norm back (asynchronously); throws NonFiniteError when either is not finite. */
async function readFinite(lossSum: tf.Tensor, norm: tf.Tensor): Promise<{ loss: number; gradNorm: number }> {
  const [lossData, normData] = await Promise.all([lossSum.data(), norm.data()]);
  const loss = lossData[0]!;
  const gradNorm = normData[0]!;
  if (!Number.isFinite(loss)) throw new NonFiniteError('loss', loss);
  if (!Number.isFinite(gradNorm)) throw new NonFiniteError('gradient norm', gradNorm);
  return { loss, gradNorm };
}

/** Mean loss over fixed batches, in eval mode (dropout off). */
export async function evaluate(model: LanguageModel, batches: Iterable<Batch>): Promise<{ loss: number; perplexity: number; batches: number }> {
  const wasTraining = model.training;
  model.eval();
  let total = 0;
  let n = 0;
  try {
    for (const b of batches) {
      const l = batchLoss(model, b);
      total += (await l.data())[0]!;
      l.dispose();
      n++;
    }
  } finally {
    model.train(wasTraining);
  }
  if (n === 0) throw new TsformerError('validation produced no batches (is the validation set shorter than one sequence?)', 'data');
  const loss = total / n;
  return { loss, perplexity: Math.exp(loss), batches: n };
}
