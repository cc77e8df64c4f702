import { Module, TsformerError, init, matMul, tf, type Parameter, type Rng } from '@tsformer/core';
import { Dropout } from './dropout.js';
import { Linear } from './linear.js';

/**
 * LoRA (Hu et al., 2021) on a `Linear`:
 *
 *   y = x W (+ b) + (dropout(x) A B) * alpha / rank        A: [in, rank], B: [rank, out]
 *
 * A starts like PyTorch's default Linear init (kaiming-uniform with a = sqrt(5), i.e.
 * U(-1/sqrt(in), 1/sqrt(in))), B at zero, so an adapted layer starts out equal to the base.
 *
 * The adapter attaches *to the existing Linear*, in place: its factors are registered as child
 * modules of that Linear (`lora_A`, `lora_B`, `lora_dropout`), so their dotted paths are
 * PEFT-like (`layers.3.attn.q_proj.lora_A.weight`) while the base weight keeps its own name
 * (`layers.3.attn.q_proj.weight`), and whatever module holds the Linear calls the adapted forward
 * without knowing. (Module composes children by field, so a wrapper could not be swapped in.)
 * The base weight and bias are frozen. Each factor is a `Linear` without bias: `lora_A.weight` is
 * A [in, rank] and `lora_B.weight` is B [rank, out] (PEFT stores their transposes).
 */
export interface LoraOptions {
  /** Rank r of the update. Default 8. */
  rank?: number;
  /** Scale numerator: the update is multiplied by alpha / rank. Default 16. */
  alpha?: number;
  /** Dropout on the adapter's input (training only). Default 0. */
  dropout?: number;
}

/** Module.addModule is protected; LoRA registers its factors under an existing Linear through it. */
interface Attachable {
  addModule<M extends Module>(name: string, module: M): M;
}

const adapters = new WeakMap<Linear, LoraAdapter>();

/** The LoRA factors attached to one Linear. Created by `addLora`. */
export class LoraAdapter {
  readonly rank: number;
  readonly alpha: number;
  /** alpha / rank */
  readonly scaling: number;
  /** A: `lora_A.weight` [in, rank] */
  readonly lora_A: Linear;
  /** B: `lora_B.weight` [rank, out] */
  readonly lora_B: Linear;
  readonly dropout: Dropout;
  /** Whether `merge` has folded the update into the base weight (B is then zero). */
  merged = false;

  constructor(
    readonly base: Linear,
    rng: Rng,
    opts: LoraOptions = {},
  ) {
    this.rank = opts.rank ?? 8;
    this.alpha = opts.alpha ?? 16;
    if (!(Number.isInteger(this.rank) && this.rank > 0)) throw new TsformerError(`lora.rank must be a positive integer, got ${this.rank}`, 'config');
    if (!(this.alpha > 0)) throw new TsformerError(`lora.alpha must be positive, got ${this.alpha}`, 'config');
    this.scaling = this.alpha / this.rank;
    this.lora_A = new Linear(base.inFeatures, this.rank, rng, { std: 0 });
    this.lora_B = new Linear(this.rank, base.outFeatures, rng, { std: 0 });
    const a = init.uniform(rng, [base.inFeatures, this.rank], 1 / Math.sqrt(base.inFeatures)); // [in, rank]
    this.lora_A.weight.assign(a);
    a.dispose();
    this.dropout = new Dropout(opts.dropout ?? 0, rng);
  }

  /** The update (dropout(x) A B) * alpha / rank for x [..., in] -> [..., out]. */
  delta(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lora_B.forward(this.lora_A.forward(this.dropout.forward(x))).mul(this.scaling));
  }

  /** W + A B * alpha / rank: [in, out], a new tensor (the caller disposes it). */
  mergedWeight(): tf.Tensor {
    return tf.tidy(() => this.base.weight.add(matMul(this.lora_A.weight, this.lora_B.weight).mul(this.scaling)));
  }

  /**
   * Folds the update into the base weight (W := W + A B * alpha / rank) and zeroes B, so the layer
   * computes the same function with the adapter contributing nothing. Idempotent.
   */
  merge(): void {
    if (this.merged) return;
    const w = this.mergedWeight();
    this.base.weight.assign(w);
    w.dispose();
    tf.tidy(() => this.lora_B.weight.assign(tf.zerosLike(this.lora_B.weight)));
    this.merged = true;
  }
}

/**
 * Attaches a LoRA adapter to `linear` (in place, see `LoraOptions`): freezes its weight and bias,
 * registers `lora_A`, `lora_B`, `lora_dropout` under it and makes its `forward` add the update.
 * A Linear takes one adapter; a second call is an error.
 */
export function addLora(linear: Linear, rng: Rng, opts: LoraOptions = {}): LoraAdapter {
  if (adapters.has(linear)) throw new TsformerError('this Linear already has a LoRA adapter', 'config');
  const adapter = new LoraAdapter(linear, rng, opts);
  const host = linear as unknown as Attachable;
  host.addModule('lora_A', adapter.lora_A);
  host.addModule('lora_B', adapter.lora_B);
  host.addModule('lora_dropout', adapter.dropout);
  linear.weight.trainable = false;
  if (linear.bias) linear.bias.trainable = false;
  const baseForward = Linear.prototype.forward;
  linear.forward = (x: tf.Tensor) => tf.tidy(() => baseForward.call(linear, x).add(adapter.delta(x)));
  adapters.set(linear, adapter);
  return adapter;
}

/** The adapter attached to `linear`, if any. */
export function loraOf(linear: Linear): LoraAdapter | undefined {
  return adapters.get(linear);
}

/**
 * Whether a dotted module path matches a pattern. A pattern is a dotted path where `*` matches one
 * segment and `**` any number of segments (zero included); a pattern without a leading `**`
 * may also match the end of the path, so `q_proj` matches `layers.3.attn.q_proj`, and
 * `layers.*.attn.o_proj` every layer's output projection.
 */
export function matchesPath(path: string, pattern: string): boolean {
  const p = path.split('.');
  const q = pattern.split('.');
  const match = (i: number, j: number): boolean => {
    if (j === q.length) return i === p.length;
    if (q[j] === '**') return match(i, j + 1) || (i < p.length && match(i + 1, j));
    return i < p.length && (q[j] === '*' || q[j] === p[i]) && match(i + 1, j + 1);
  };
  for (let start = 0; start < p.length; start++) if (match(start, 0)) return true;
  return false;
}

/**
 * Attaches LoRA to every `Linear` under `model` whose dotted module path matches one of `patterns`
 * (see `matchesPath`), skipping the adapters' own factors. Returns the adapters by module path.
 * No match at all is an error naming the patterns (a typo should not train nothing).
 */
export function injectLora(model: Module, patterns: readonly string[], rng: Rng, opts: LoraOptions = {}): Map<string, LoraAdapter> {
  const out = new Map<string, LoraAdapter>();
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof Linear) || /(^|\.)lora_[AB]$/.test(path)) continue;
    if (!patterns.some((pat) => matchesPath(path, pat))) continue;
    if (adapters.has(m)) {
      out.set(path, adapters.get(m)!);
      continue;
    }
    out.set(path, addLora(m, rng, opts));
  }
  if (out.size === 0) throw new TsformerError(`lora: no Linear module matches ${patterns.map((p) => `"${p}"`).join(', ')}`, 'config');
  return out;
}

/** Every adapter under `model`, by the dotted path of the Linear it adapts. */
export function loraAdapters(model: Module): Map<string, LoraAdapter> {
  const out = new Map<string, LoraAdapter>();
  for (const [path, m] of model.namedModules()) if (m instanceof Linear && adapters.has(m)) out.set(path, adapters.get(m)!);
  return out;
}

/** Merges every adapter under `model` into its base weight (see `LoraAdapter.merge`); returns how many. */
export function mergeLora(model: Module): number {
  const all = loraAdapters(model);
  for (const a of all.values()) a.merge();
  return all.size;
}

/** Whether a parameter path belongs to a LoRA adapter. */
export function isLoraParameter(name: string): boolean {
  return /(^|\.)lora_[AB]\./.test(name);
}

/** The state dict without adapter factors: after `mergeLora`, the base model's own layout. */
export function baseStateDict(model: Module): Map<string, tf.Variable> {
  return new Map([...model.stateDict()].filter(([name]) => !isLoraParameter(name)));
}

/**
 * Marks parameters frozen or trainable (`Variable.trainable`, which `Module.trainableVariables`,
 * the optimizer and the train step read). With `match`, only parameters whose dotted name it
 * accepts. Returns how many parameters it touched. A variable shared by several modules is one
 * variable: freezing it freezes it for all of them.
 */
export function setTrainable(model: Module, trainable: boolean, match: (name: string) => boolean = () => true): number {
  let n = 0;
  for (const [name, p] of model.namedParameters()) {
    if (!match(name)) continue;
    p.variable.trainable = trainable;
    n++;
  }
  return n;
}

/** Freezes every parameter under `model`. */
export function freeze(model: Module): void {
  setTrainable(model, false);
}

/** The trainable parameters with their dotted names (what an optimizer and a stage checkpoint need). */
export function trainableParameters(model: Module): Array<[string, Parameter]> {
  return model.namedParameters().filter(([, p]) => p.variable.trainable);
}

/** The trainable parameters keyed by dotted name (live variables): what to save when only adapters train. */
export function trainableStateDict(model: Module): Map<string, tf.Variable> {
  return new Map(trainableParameters(model).map(([name, p]) => [name, p.variable]));
}
