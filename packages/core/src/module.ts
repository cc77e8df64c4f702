import { tf } from './tf.js';
import { TsformerError } from './errors.js';

/** A named trainable (or frozen) tensor and what the optimizer should know about it. */
export interface Parameter {
  readonly variable: tf.Variable;
  /** Whether AdamW applies decoupled weight decay (false for norms, biases and embeddings). */
  readonly decay: boolean;
}

export interface ParamOptions {
  /** Default true. Frozen parameters get no gradient. */
  trainable?: boolean;
  /** Default true for matrices, false otherwise (biases, norm gains). */
  decay?: boolean;
}

let variableCounter = 0;

/**
 * Base of every layer and model: owns named parameters and child modules, so each parameter has a
 * stable dotted path (`layers.3.attn.q_proj.weight`) that is its checkpoint key, LoRA target and
 * Hugging Face mapping. Forward signatures are each subclass's own.
 */
export abstract class Module {
  readonly #params = new Map<string, Parameter>();
  readonly #children = new Map<string, Module>();
  #training = true;

  /** Registers a parameter initialized from `init` (which this call takes ownership of and disposes). */
  protected addParam(name: string, init: tf.Tensor, opts: ParamOptions = {}): tf.Variable {
    this.#checkName(name);
    // tfjs variable names must be globally unique; our stable name is the dotted path, kept here.
    const decay = opts.decay ?? init.rank >= 2;
    const variable = tf.variable(init, opts.trainable ?? true, `tsf_${variableCounter++}_${name}`);
    init.dispose();
    this.#params.set(name, { variable, decay });
    return variable;
  }

  protected addModule<M extends Module>(name: string, module: M): M {
    this.#checkName(name);
    this.#children.set(name, module);
    module.train(this.#training);
    return module;
  }

  #checkName(name: string): void {
    if (!/^[A-Za-z0-9_]+$/.test(name)) throw new Error(`invalid parameter/module name "${name}"`);
    if (this.#params.has(name) || this.#children.has(name)) throw new Error(`duplicate parameter/module name "${name}"`);
  }

  get training(): boolean {
    return this.#training;
  }

  train(mode = true): this {
    this.#training = mode;
    for (const child of this.#children.values()) child.train(mode);
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Every parameter under this module with its dotted path, depth-first in registration order. */
  namedParameters(prefix = ''): Array<[string, Parameter]> {
    const out: Array<[string, Parameter]> = [];
    for (const [name, p] of this.#params) out.push([prefix + name, p]);
    for (const [name, child] of this.#children) out.push(...child.namedParameters(`${prefix}${name}.`));
    return out;
  }

  namedModules(prefix = ''): Array<[string, Module]> {
    const out: Array<[string, Module]> = [];
    for (const [name, child] of this.#children) {
      out.push([prefix + name, child], ...child.namedModules(`${prefix}${name}.`));
    }
    return out;
  }

  trainableVariables(): tf.Variable[] {
    return this.namedParameters()
      .map(([, p]) => p.variable)
      .filter((v) => v.trainable);
  }

  numParameters(trainableOnly = false): number {
    return this.namedParameters()
      .filter(([, p]) => !trainableOnly || p.variable.trainable)
      .reduce((n, [, p]) => n + p.variable.size, 0);
  }

  /** The parameters keyed by dotted path. The tensors are the live variables, not copies. */
  stateDict(): Map<string, tf.Variable> {
    return new Map(this.namedParameters().map(([name, p]) => [name, p.variable]));
  }

  /**
   * Assigns tensors into this module's parameters by dotted path. Shapes must match exactly;
   * with `strict` (default) missing and unexpected keys are errors too. Nothing is assigned unless
   * every check passes. The caller keeps ownership of the given tensors.
   */
  loadStateDict(state: ReadonlyMap<string, tf.Tensor> | Record<string, tf.Tensor>, opts: { strict?: boolean } = {}): void {
    const strict = opts.strict ?? true;
    const given = state instanceof Map ? state : new Map(Object.entries(state));
    const own = this.stateDict();
    const problems: string[] = [];
    for (const [name, variable] of own) {
      const t = given.get(name);
      if (!t) {
        if (strict) problems.push(`missing key "${name}" (expected shape [${variable.shape}])`);
        continue;
      }
      if (!sameShape(t.shape, variable.shape)) {
        problems.push(`shape mismatch for "${name}": checkpoint has [${t.shape}], model expects [${variable.shape}]`);
      }
      if (t.dtype !== variable.dtype) problems.push(`dtype mismatch for "${name}": ${t.dtype} vs ${variable.dtype}`);
    }
    if (strict) for (const name of given.keys()) if (!own.has(name)) problems.push(`unexpected key "${name}"`);
    if (problems.length > 0) {
      throw new TsformerError(`cannot load state dict:\n  ${problems.join('\n  ')}`, 'shape');
    }
    for (const [name, variable] of own) {
      const t = given.get(name);
      if (t) variable.assign(t);
    }
  }

  /** Disposes every parameter (and anything a subclass holds, via `disposeExtra`). */
  dispose(): void {
    for (const p of this.#params.values()) p.variable.dispose();
    for (const child of this.#children.values()) child.dispose();
  }
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
