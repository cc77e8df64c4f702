import { tf, type Parameter } from '@tsformer/core';
import { NonFiniteError, batchLoss, clipByGlobalNorm, evaluate, type Batch } from '@tsformer/train';
import type { LanguageModel } from './student.js';

/** What applies gradients: `@tsformer/train`'s AdamW fits (built from the same named parameters). */
export interface Optimizer {
  apply(grads: ReadonlyMap<string, tf.Tensor>, lr: number): void;
}

export interface GradStepResult {
  /** Mean of the micro-batch losses. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

/**
 * One optimizer step over named parameters: each micro-batch's loss (already scaled as the caller
 * wants it averaged: the step divides by the number of micro-batches) is differentiated with
 * respect to the parameters, gradients are summed, clipped by global norm and applied. A loss or
 * norm that is not finite throws `NonFiniteError` before any update.
 */
export async function gradStep(
  params: ReadonlyArray<[string, Parameter]>,
  micro: ReadonlyArray<() => tf.Scalar>,
  optimizer: Optimizer,
  opts: { lr: number; clipGradNorm: number; clipGroup?: (name: string) => string },
): Promise<GradStepResult> {
  const vars = params.map(([, p]) => p.variable);
  const nameOf = new Map(params.map(([n, p]) => [p.variable.name, n]));
  const acc = new Map<string, tf.Tensor>();
  let lossSum: tf.Tensor = tf.scalar(0);
  for (const f of micro) {
    const { value, grads } = tf.variableGrads(() => f().div(micro.length) as tf.Scalar, vars);
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
  }
  const { grads, norm } = clipGrouped(acc, opts.clipGradNorm, opts.clipGroup);
  tf.dispose([...acc.values()]);
  try {
    const [lossData, normData] = await Promise.all([lossSum.data(), norm.data()]);
    const loss = lossData[0]!;
    const gradNorm = normData[0]!;
    if (!Number.isFinite(loss)) throw new NonFiniteError('loss', loss);
    if (!Number.isFinite(gradNorm)) throw new NonFiniteError('gradient norm', gradNorm);
    optimizer.apply(grads, opts.lr);
    return { loss, gradNorm };
  } finally {
    tf.dispose([lossSum, norm, ...grads.values()]);
  }
}

/**
 * Clipping by global norm, either over all gradients or (with `group`) separately within each group
 * of names, so that groups train as if alone (stage-1 layers: shards equal one run). The norm
 * returned is the global one either way.
 */
function clipGrouped(grads: ReadonlyMap<string, tf.Tensor>, maxNorm: number, group?: (name: string) => string): { grads: Map<string, tf.Tensor>; norm: tf.Scalar } {
  if (!group) return clipByGlobalNorm(grads, maxNorm);
  const groups = new Map<string, Map<string, tf.Tensor>>();
  for (const [n, g] of grads) {
    const k = group(n);
    if (!groups.has(k)) groups.set(k, new Map());
    groups.get(k)!.set(n, g);
  }
  const out = new Map<string, tf.Tensor>();
  const norms: tf.Scalar[] = [];
  for (const part of groups.values()) {
    const r = clipByGlobalNorm(part, maxNorm);
    for (const [n, g] of r.grads) out.set(n, g);
    norms.push(r.norm);
  }
  const norm = tf.tidy(() => (norms.length ? tf.addN(norms.map((x) => x.square())) : tf.scalar(0)).sqrt() as tf.Scalar);
  tf.dispose(norms);
  return { grads: out, norm };
}

/** Mean next-token cross-entropy of `model` on a batch: `@tsformer/train`'s `batchLoss`, which takes any LanguageModel. */
export const lmLoss = batchLoss;

/** One language-modeling step (stage 2) over the model's trainable parameters. */
export async function lmStep(model: LanguageModel, optimizer: Optimizer, micro: readonly Batch[], opts: { lr: number; clipGradNorm: number }): Promise<GradStepResult & { tokens: number }> {
  const params = model.namedParameters().filter(([, p]) => p.variable.trainable);
  const r = await gradStep(params, micro.map((b) => () => lmLoss(model, b)), optimizer, opts);
  return { ...r, tokens: micro.reduce((n, b) => n + b.batchSize * b.seqLen, 0) };
}

/** Mean loss and perplexity over fixed batches, in eval mode: `@tsformer/train`'s `evaluate` (DecoderLM or StudentLM). */
export const lmEvaluate = evaluate;
