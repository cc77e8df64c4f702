import { Rng, TsformerError, type Parameter } from '@tsformer/core';
import { baseStateDict, injectLora, mergeLora, setTrainable, trainableParameters, trainableStateDict, type LoraAdapter } from '@tsformer/layers';
import type { tf } from '@tsformer/core';
import type { StudentLM } from './student.js';
import { transferParameterFilter } from './transfer.js';

/**
 * Stage 2, low-rank linearizing: LoRA on the q/k/v/o projections of every converted layer, trained
 * with next-token cross-entropy (`lmStep`), everything else frozen; the stage-1 parameters
 * (feature maps and window factors, or a linear student's gates and norms) stay frozen unless
 * `trainStudentParams`.
 */
export interface Stage2Options {
  /** LoRA rank. Default 8. */
  rank?: number;
  /** LoRA alpha (the update is scaled by alpha / rank). Default 16. */
  alpha?: number;
  /** Dropout on the adapters' input. Default 0. */
  dropout?: number;
  /** Projection names under each converted layer's attention. Default q_proj, k_proj, v_proj, o_proj. */
  targets?: readonly string[];
  /** Also train the stage-1 parameters of the converted layers. Default false. */
  trainStudentParams?: boolean;
  /** Seed of the adapters' A init. Default 0. */
  seed?: number;
}

/**
 * Freezes the student, attaches LoRA to the target projections of the converted layers and returns
 * the adapters (by module path) and the trainable parameters (what the optimizer gets and what a
 * stage-2 checkpoint holds). Calling it again finds the existing adapters.
 */
export function prepareStage2(student: StudentLM, opts: Stage2Options = {}): { adapters: Map<string, LoraAdapter>; trainable: Array<[string, Parameter]> } {
  if (student.converted.length === 0) throw new TsformerError('stage 2: the student has no converted layers', 'config');
  const targets = opts.targets ?? ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
  setTrainable(student, false);
  if (student.sharedProjections) {
    throw new TsformerError('stage 2: this student shares its projections with the teacher (shareProjections), so LoRA would change the teacher; build it with copies', 'config');
  }
  const patterns = student.converted.flatMap((i) => targets.map((t) => `layers.${i}.attn.${t}`));
  const adapters = injectLora(student, patterns, Rng.seeded(opts.seed ?? 0), { rank: opts.rank ?? 8, alpha: opts.alpha ?? 16, dropout: opts.dropout ?? 0 });
  for (const a of adapters.values()) {
    a.lora_A.weight.trainable = true;
    a.lora_B.weight.trainable = true;
  }
  if (opts.trainStudentParams) {
    for (const i of student.converted) {
      const attn = student.attention(i);
      const keep = transferParameterFilter(attn);
      setTrainable(attn, true, (n) => keep(n) && !/(^|\.)lora_[AB]\./.test(n));
    }
  }
  return { adapters, trainable: trainableParameters(student) };
}

/** The trainable parameters by name (live variables): a stage-2 checkpoint saves only these. */
export function stage2StateDict(student: StudentLM): Map<string, tf.Variable> {
  return trainableStateDict(student);
}

/**
 * Folds every adapter into its base projection (W := W + A B alpha / rank, B := 0) and returns the
 * student's parameters without adapter factors: the merged student in the teacher's layout plus
 * the converted layers' own parameters.
 */
export function mergeStudentLora(student: StudentLM): Map<string, tf.Variable> {
  mergeLora(student);
  return baseStateDict(student);
}
