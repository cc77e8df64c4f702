import { TsformerError, fused, tf, type Parameter } from '@tsformer/core';
import { z } from 'zod';

export const adamwConfigSchema = z
  .object({
    type: z.literal('adamw'),
    /** Peak learning rate. */
    lr: z.number().positive(),
    /** Default [0.9, 0.95]. */
    betas: z.tuple([z.number().min(0).max(1), z.number().min(0).max(1)]).default([0.9, 0.95]),
    /** Default 1e-8. */
    eps: z.number().positive().default(1e-8),
    /** Decoupled weight decay, applied to matrices only (not norms, biases, embeddings). Default 0.1. */
    weightDecay: z.number().min(0).default(0.1),
  })
  .strict();
export type AdamWConfig = z.infer<typeof adamwConfigSchema>;

interface Slot {
  param: Parameter;
  m: tf.Variable;
  v: tf.Variable;
}

/**
 * AdamW (Loshchilov & Hutter) with decoupled weight decay:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)  +  lr * wd * p   (wd only where param.decay)
 * Moments are keyed by parameter name, so saved state never depends on variable order.
 */
export class AdamW {
  readonly #slots = new Map<string, Slot>();
  /** Number of updates applied so far (t in the bias correction). */
  step = 0;

  constructor(
    params: ReadonlyArray<[string, Parameter]>,
    readonly config: AdamWConfig,
  ) {
    for (const [name, param] of params) {
      if (!param.variable.trainable) continue;
      // tidy: the zeros tensor the variable is made from is released (the variable keeps its data)
      const zeros = () => tf.tidy(() => tf.variable(tf.zerosLike(param.variable), false));
      this.#slots.set(name, { param, m: zeros(), v: zeros() });
    }
  }

  /** Applies one update. `grads` are keyed by parameter name; missing ones are skipped. */
  apply(grads: ReadonlyMap<string, tf.Tensor>, lr: number): void {
    this.step++;
    // the fused update (one kernel per parameter) where one is registered for the active backend
    if (this.#fused(grads, lr, undefined)) return;
    const [b1, b2] = this.config.betas;
    const c1 = 1 - Math.pow(b1, this.step);
    const c2 = 1 - Math.pow(b2, this.step);
    tf.tidy(() => {
      for (const [name, slot] of this.#slots) {
        const g = grads.get(name);
        if (!g) continue;
        const p = slot.param.variable;
        const weightDecay = slot.param.decay ? this.config.weightDecay : 0;
        const m = slot.m.mul(b1).add(g.mul(1 - b1));
        const v = slot.v.mul(b2).add(g.square().mul(1 - b2));
        slot.m.assign(m);
        slot.v.assign(v);
        let update = m.div(c1).div(v.div(c2).sqrt().add(this.config.eps));
        if (weightDecay > 0) update = update.add(p.mul(this.config.weightDecay));
        p.assign(p.sub(update.mul(lr)));
      }
    });
  }

  /** Whether a fused AdamW is registered for the active backend (then `applyGuarded` can run). */
  hasFusedUpdate(): boolean {
    return fused('adamw') !== undefined;
  }

  /**
   * One update with global-norm clipping and a finite guard folded into a fused kernel (see
   * `FusedOps.adamw` in @tsformer/core): `grads` unclipped, `guard.normAndLoss` [2] the pre-clip norm
   * and the loss. Where the norm or the loss is not finite, every parameter and moment stays as it
   * was (decided on the device, so the caller need not read anything back first; it should then
   * call `undoStep()`). Returns false, having changed nothing, when no fused AdamW is registered for
   * the active backend: the caller then clips and calls `apply`.
   */
  applyGuarded(grads: ReadonlyMap<string, tf.Tensor>, lr: number, guard: { normAndLoss: tf.Tensor; maxNorm: number }): boolean {
    this.step++;
    let done = false;
    try {
      done = this.#fused(grads, lr, guard);
    } finally {
      if (!done) this.step--;
    }
    return done;
  }

  /** The fused update at `this.step` where a fused AdamW is registered; false (nothing changed) otherwise. */
  #fused(grads: ReadonlyMap<string, tf.Tensor>, lr: number, guard: { normAndLoss: tf.Tensor; maxNorm: number } | undefined): boolean {
    const kernel = fused('adamw');
    if (!kernel) return false;
    const [b1, b2] = this.config.betas;
    return tf.tidy(() => {
      const slots: Slot[] = [];
      const items: Array<{ p: tf.Tensor; m: tf.Tensor; v: tf.Tensor; g: tf.Tensor; weightDecay: number }> = [];
      for (const [name, slot] of this.#slots) {
        const g = grads.get(name);
        if (!g) continue;
        slots.push(slot);
        items.push({ p: slot.param.variable, m: slot.m, v: slot.v, g, weightDecay: slot.param.decay ? this.config.weightDecay : 0 });
      }
      const out = kernel(items, { lr, beta1: b1, beta2: b2, eps: this.config.eps, step: this.step }, guard);
      if (!out) return false;
      slots.forEach((slot, i) => {
        slot.m.assign(out[i]!.m);
        slot.v.assign(out[i]!.v);
        slot.param.variable.assign(out[i]!.p);
      });
      return true;
    });
  }

  /** Takes back the step count of an update whose guard found a non-finite step (nothing else changed). */
  undoStep(): void {
    this.step = Math.max(0, this.step - 1);
  }

  /** Moments keyed `<param>.exp_avg` / `<param>.exp_avg_sq` (live variables, not copies). */
  stateDict(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [name, s] of this.#slots) {
      out.set(`${name}.exp_avg`, s.m);
      out.set(`${name}.exp_avg_sq`, s.v);
    }
    return out;
  }

  /** Restores moments and the step count; every moment must be present with the right shape. */
  loadStateDict(state: ReadonlyMap<string, tf.Tensor>, step: number): void {
    const problems: string[] = [];
    for (const [name, s] of this.#slots) {
      for (const [key, slot] of [[`${name}.exp_avg`, s.m], [`${name}.exp_avg_sq`, s.v]] as const) {
        const t = state.get(key);
        if (!t) problems.push(`missing optimizer state "${key}"`);
        else if (t.shape.join(',') !== slot.shape.join(',')) problems.push(`optimizer state "${key}" has shape [${t.shape}], expected [${slot.shape}]`);
      }
    }
    const known = new Set(this.stateDict().keys());
    for (const key of state.keys()) if (!known.has(key)) problems.push(`unexpected optimizer state "${key}"`);
    if (problems.length) throw new TsformerError(`cannot load optimizer state:\n  ${problems.join('\n  ')}`, 'checkpoint');
    for (const [name, s] of this.#slots) {
      s.m.assign(state.get(`${name}.exp_avg`)!);
      s.v.assign(state.get(`${name}.exp_avg_sq`)!);
    }
    this.step = step;
  }

  dispose(): void {
    for (const s of this.#slots.values()) {
      s.m.dispose();
      s.v.dispose();
    }
  }
}
