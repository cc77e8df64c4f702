import { TsformerError, tf, type Parameter } from '@tsformer/core';
import type { Attention } from '@tsformer/attention';
import { setTrainable } from '@tsformer/layers';
import type { DecoderLM } from '@tsformer/model';
import { LolcatsAttention } from './lolcats.js';
import { gradStep, type GradStepResult, type Optimizer } from './step.js';
import type { StudentLM } from './student.js';
import { isLinearStudent, linearStudentHeads, PROJECTIONS } from './students.js';
import { asSoftmaxTeacher, softmaxHeads, softmaxWeights } from './teacher.js';

/**
 * Stage 1, attention transfer. Every converted layer learns to reproduce its own teacher layer's
 * per-head attention output (before o_proj) from the teacher's input to that layer
 * (teacher-forced: hidden states come from the teacher, never from other student layers), so
 * layers train independently and any subset can train on its own (shards) and merge afterwards.
 *
 *   x_l = attn_norm_l(h_l),  h_l the teacher's residual stream entering layer l
 *   loss = sum over layers l of  mean((student_heads_l(x_l) - teacher_heads_l(x_l))^2)
 *          + mapLoss * mean over rows of  -sum_j A_teacher log A_student   (LoLCATs students, optional)
 *
 * Trainable: LoLCATs — the feature maps and window factors; linear students — everything of the
 * layer except the q/k/v/o projections copied from the teacher. All else is frozen.
 */

/**
 * The teacher's attention inputs x_l = attn_norm_l(h_l) [B, T, dModel] for the given layers, from
 * token ids [B, T], the teacher in eval mode (no dropout). Runs the teacher up to the last layer
 * asked. The caller disposes the tensors.
 */
export function captureAttentionInputs(teacher: DecoderLM, ids: tf.Tensor, layers: readonly number[], positions?: Int32Array): Map<number, tf.Tensor> {
  const T = ids.shape[1]!;
  const pos = positions ?? Int32Array.from({ length: T }, (_, i) => i);
  const want = new Set(layers);
  const last = Math.max(-1, ...layers);
  const out = new Map<number, tf.Tensor>();
  const wasTraining = teacher.training;
  teacher.eval();
  try {
    tf.tidy(() => {
      let h = teacher.embed.forward(ids); // [B, T, D]
      for (let i = 0; i <= last; i++) {
        const block = teacher.layers.items[i];
        if (!block) throw new TsformerError(`layer ${i} is not in 0..${teacher.layers.items.length - 1}`, 'config');
        if (want.has(i)) out.set(i, tf.keep(block.attn_norm.forward(h)));
        h = block.forward(h, pos).y;
      }
    });
  } finally {
    teacher.train(wasTraining);
  }
  return out;
}

/** A student layer's per-head output before o_proj: x [B, T, dModel] -> [B, T, H, V]. */
export function studentHeads(attn: Attention, x: tf.Tensor, positions: Int32Array): tf.Tensor {
  if (attn instanceof LolcatsAttention) return attn.heads(x, positions);
  if (isLinearStudent(attn)) return linearStudentHeads(attn, x);
  throw new TsformerError(`"${attn.type}" attention is not a distillation student`, 'config');
}

/** The trainable parameter names of a converted layer in stage 1 (relative to the layer's attention). */
export function transferParameterFilter(attn: Attention): (name: string) => boolean {
  if (attn instanceof LolcatsAttention) return (n) => n.startsWith('feature_map_') || n === 'window_factors';
  if (isLinearStudent(attn)) return (n) => !PROJECTIONS.some((p) => n.startsWith(`${p}.`));
  throw new TsformerError(`"${attn.type}" attention is not a distillation student`, 'config');
}

export interface TransferOptions {
  /** The layers this run trains (a subset of the converted ones: a shard). Default all converted. */
  layers?: readonly number[];
  /** Weight of the attention-map cross-entropy (LoLCATs students only; dense, O(T^2)). Default 0. */
  mapLoss?: number;
}

export interface TransferStepResult extends GradStepResult {
  /** Output MSE per trained layer (mean over micro-batches), in `layers` order. */
  perLayer: number[];
}

export interface ParameterReport {
  trainable: number;
  total: number;
  /** trainable / total */
  share: number;
}

/** Trainable / total parameter counts of a model (each variable counted once). */
export function parameterReport(model: { namedParameters(): Array<[string, Parameter]> }): ParameterReport {
  const seen = new Set<tf.Variable>();
  let trainable = 0;
  let total = 0;
  for (const [, p] of model.namedParameters()) {
    if (seen.has(p.variable)) continue;
    seen.add(p.variable);
    total += p.variable.size;
    if (p.variable.trainable) trainable += p.variable.size;
  }
  return { trainable, total, share: total ? trainable / total : 0 };
}

/**
 * Stage 1 over a teacher and its student. Construction freezes the whole student, then unfreezes
 * the stage-1 parameters of the trained layers (see the module comment).
 */
export class AttentionTransfer {
  readonly layers: number[];
  readonly mapLoss: number;

  constructor(
    readonly teacher: DecoderLM,
    readonly student: StudentLM,
    opts: TransferOptions = {},
  ) {
    const layers = [...new Set(opts.layers ?? student.converted)].sort((a, b) => a - b);
    const missing = layers.filter((i) => !student.converted.includes(i));
    if (missing.length) throw new TsformerError(`attention transfer: layers ${missing.join(', ')} are not converted in the student (converted: ${student.converted.join(', ')})`, 'config');
    if (layers.length === 0) throw new TsformerError('attention transfer: no layers to train', 'config');
    this.layers = layers;
    this.mapLoss = opts.mapLoss ?? 0;
    if (this.mapLoss > 0) {
      const bad = layers.filter((i) => !(student.attention(i) instanceof LolcatsAttention));
      if (bad.length) throw new TsformerError(`attention transfer: mapLoss needs attention maps, which only LoLCATs students expose (layers ${bad.join(', ')})`, 'config');
    }
    for (const i of layers) asSoftmaxTeacher(teacher.layers.items[i]!.attn, i);
    setTrainable(student, false);
    for (const i of layers) {
      const attn = student.attention(i);
      setTrainable(attn, true, transferParameterFilter(attn));
    }
  }

  /** The parameters stage 1 trains, with their dotted names in the student. */
  trainableParameters(): Array<[string, Parameter]> {
    const prefixes = this.layers.map((i) => `layers.${i}.attn.`);
    return this.student.namedParameters().filter(([n, p]) => p.variable.trainable && prefixes.some((pre) => n.startsWith(pre)));
  }

  /** The trained layers' stage-1 parameters keyed by dotted name (live variables): a shard's result. */
  stateDict(): Map<string, tf.Variable> {
    return new Map(this.trainableParameters().map(([n, p]) => [n, p.variable]));
  }

  /** Trainable / total parameters of the student (each shared variable once). */
  report(): ParameterReport {
    return parameterReport(this.student);
  }

  /**
   * The loss of one batch from captured teacher inputs (see `captureAttentionInputs`) and the
   * teacher targets: total (scalar) and per layer ([L], output MSE only). Differentiable in the
   * student's parameters; call inside a tidy or gradient function.
   */
  loss(inputs: ReadonlyMap<number, tf.Tensor>, targets: ReadonlyMap<number, tf.Tensor>, positions: Int32Array, maps?: ReadonlyMap<number, tf.Tensor>): { total: tf.Scalar; perLayer: tf.Tensor } {
    const mses: tf.Scalar[] = [];
    let total: tf.Tensor = tf.scalar(0);
    for (const i of this.layers) {
      const x = inputs.get(i)!;
      const attn = this.student.attention(i);
      const mse = studentHeads(attn, x, positions).sub(targets.get(i)!).square().mean() as tf.Scalar;
      mses.push(mse);
      total = total.add(mse);
      if (this.mapLoss > 0 && maps) {
        const a = (attn as LolcatsAttention).weights(x, positions); // [B, H, T, T]
        const ce = maps.get(i)!.mul(a.add(1e-12).log()).sum(-1).mean().neg(); // mean over rows of -sum_j p log q
        total = total.add(ce.mul(this.mapLoss));
      }
    }
    return { total: total as tf.Scalar, perLayer: tf.stack(mses) };
  }

  /** Teacher targets: per-head outputs [B, T, H, D] (and attention maps when mapLoss > 0). The caller disposes them. */
  targets(inputs: ReadonlyMap<number, tf.Tensor>, positions: Int32Array): { heads: Map<number, tf.Tensor>; maps?: Map<number, tf.Tensor> } {
    const heads = new Map<number, tf.Tensor>();
    const maps = this.mapLoss > 0 ? new Map<number, tf.Tensor>() : undefined;
    for (const i of this.layers) {
      const t = asSoftmaxTeacher(this.teacher.layers.items[i]!.attn, i);
      heads.set(i, softmaxHeads(t, this.student.positionals[i]!, inputs.get(i)!, positions));
      if (maps) maps.set(i, softmaxWeights(t, this.student.positionals[i]!, inputs.get(i)!, positions));
    }
    return maps ? { heads, maps } : { heads };
  }

  /**
   * One stage-1 optimizer step over micro-batches of token ids [B, T] (int32). Gradients are
   * clipped per layer (each layer's own global norm), so a layer trains the same in any shard.
   */
  async step(optimizer: Optimizer, micro: readonly tf.Tensor[], opts: { lr: number; clipGradNorm: number }): Promise<TransferStepResult> {
    const per = tf.zeros([this.layers.length]);
    let perSum = per;
    const held: tf.Tensor[] = [];
    const fns = micro.map((ids) => {
      const T = ids.shape[1]!;
      const positions = Int32Array.from({ length: T }, (_, i) => i);
      const inputs = captureAttentionInputs(this.teacher, ids, this.layers, positions);
      const { heads, maps } = this.targets(inputs, positions);
      held.push(...inputs.values(), ...heads.values(), ...(maps ? maps.values() : []));
      return () => {
        const { total, perLayer } = this.loss(inputs, heads, positions, maps);
        const next = tf.keep(perSum.add(perLayer.div(micro.length)));
        if (perSum !== per) perSum.dispose();
        perSum = next;
        return total;
      };
    });
    try {
      // each layer clipped on its own: a layer's update never depends on the other layers trained with it
      const r = await gradStep(this.trainableParameters(), fns, optimizer, { ...opts, clipGroup: (n) => /^layers\.\d+\./.exec(n)?.[0] ?? n });
      const perLayer = Array.from(await perSum.data());
      return { ...r, perLayer };
    } finally {
      tf.dispose([per, ...(perSum !== per ? [perSum] : []), ...held]);
    }
  }
}

export interface LayerError {
  layer: number;
  /** Mean squared error of the student's per-head output against the teacher's. */
  mse: number;
  /** Variance of the teacher's per-head output (over every element). */
  teacherVariance: number;
  /** mse / teacherVariance */
  relative: number;
}

/**
 * Per-layer attention-output error on held-out batches of token ids [B, T] (teacher-forced, as in
 * stage 1): absolute MSE and relative to the variance of the teacher's output. Eval mode.
 */
export async function attentionErrors(teacher: DecoderLM, student: StudentLM, batches: Iterable<tf.Tensor>, layers: readonly number[] = student.converted): Promise<LayerError[]> {
  const sums = layers.map(() => ({ se: 0, n: 0, s1: 0, s2: 0 }));
  const wasTraining = student.training;
  student.eval();
  try {
    for (const ids of batches) {
      const T = ids.shape[1]!;
      const positions = Int32Array.from({ length: T }, (_, i) => i);
      const inputs = captureAttentionInputs(teacher, ids, layers, positions);
      try {
        for (const [k, i] of layers.entries()) {
          const t = asSoftmaxTeacher(teacher.layers.items[i]!.attn, i);
          const stats = tf.tidy(() => {
            const target = softmaxHeads(t, student.positionals[i]!, inputs.get(i)!, positions); // [B, T, H, D]
            const pred = studentHeads(student.attention(i), inputs.get(i)!, positions); // [B, T, H, D]
            return tf.stack([pred.sub(target).square().sum(), target.sum(), target.square().sum(), tf.scalar(target.size)]);
          });
          const [se, s1, s2, n] = Array.from(await stats.data());
          stats.dispose();
          const acc = sums[k]!;
          acc.se += se!;
          acc.s1 += s1!;
          acc.s2 += s2!;
          acc.n += n!;
        }
      } finally {
        tf.dispose([...inputs.values()]);
      }
    }
  } finally {
    student.train(wasTraining);
  }
  return layers.map((layer, k) => {
    const { se, n, s1, s2 } = sums[k]!;
    if (n === 0) throw new TsformerError('attentionErrors: no batches', 'data');
    const mse = se / n;
    const mean = s1 / n;
    const teacherVariance = Math.max(s2 / n - mean * mean, 0);
    return { layer, mse, teacherVariance, relative: teacherVariance > 0 ? mse / teacherVariance : Infinity };
  });
}

/** The k layers with the largest relative error (to keep as softmax), ascending by index. */
export function worstLayers(errors: readonly LayerError[], k: number): number[] {
  if (!(Number.isInteger(k) && k >= 0)) throw new TsformerError(`worstLayers: k must be a non-negative integer, got ${k}`, 'config');
  return [...errors]
    .sort((a, b) => b.relative - a.relative)
    .slice(0, k)
    .map((e) => e.layer)
    .sort((a, b) => a - b);
}

/**
 * Merges shard results (stage-1 state dicts of disjoint layers) into one. A key present in two
 * shards is an error naming it: shards must not overlap.
 */
export function mergeShardStates<T extends tf.Tensor>(shards: Iterable<ReadonlyMap<string, T>>): Map<string, T> {
  const out = new Map<string, T>();
  let k = 0;
  for (const shard of shards) {
    for (const [name, t] of shard) {
      if (out.has(name)) throw new TsformerError(`shard ${k} repeats "${name}": shards must cover disjoint layers`, 'checkpoint');
      out.set(name, t);
    }
    k++;
  }
  return out;
}

/**
 * Loads a (merged) stage state into a student by name: every key must be one of the student's
 * parameters with the same shape (missing keys are fine: layers not in the state keep theirs).
 */
export function loadPartialState(student: StudentLM, state: ReadonlyMap<string, tf.Tensor>): void {
  const own = student.stateDict();
  const unknown = [...state.keys()].filter((k) => !own.has(k));
  if (unknown.length) throw new TsformerError(`state has keys the student lacks: ${unknown.slice(0, 5).join(', ')}${unknown.length > 5 ? ', ...' : ''}`, 'checkpoint');
  student.loadStateDict(state, { strict: false });
}
