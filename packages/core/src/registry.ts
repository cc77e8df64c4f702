import { TsformerError } from './errors.js';

/**
 * A typed map from a config `type:` to a component. Packages export registries built with this
 * (`{ mha: ..., mla: ... }`); config schemas are discriminated unions built from them.
 */
export class Registry<Entry> {
  readonly #entries = new Map<string, Entry>();
  constructor(readonly kind: string) {}

  register(type: string, entry: Entry): this {
    if (this.#entries.has(type)) throw new Error(`${this.kind} "${type}" is already registered`);
    this.#entries.set(type, entry);
    return this;
  }

  get(type: string): Entry {
    const e = this.#entries.get(type);
    if (!e) throw new TsformerError(`unknown ${this.kind} type "${type}" (known: ${this.types().join(', ')})`, 'config');
    return e;
  }

  has(type: string): boolean {
    return this.#entries.has(type);
  }

  types(): string[] {
    return [...this.#entries.keys()];
  }

  entries(): Array<[string, Entry]> {
    return [...this.#entries];
  }
}
