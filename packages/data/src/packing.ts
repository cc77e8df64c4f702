import { TsformerError } from '@tsformer/core';

/**
 * A token stream cut into fixed-length training windows without copying. Sequence `i` covers tokens
 * `[i * seqLen, i * seqLen + seqLen + 1)`: its inputs are the first `seqLen` of them and its targets
 * the last `seqLen` (the inputs shifted left by one). Consecutive windows share one boundary token,
 * so every token but the first is a target exactly once; the tail that fills no window is unused.
 */
export class PackedSequences {
  /** Number of windows: `floor((tokens.length - 1) / seqLen)`. */
  readonly length: number;

  constructor(
    /** The whole token stream (kept by reference, not copied). */
    readonly tokens: Int32Array,
    /** Tokens per input row. */
    readonly seqLen: number,
  ) {
    if (!Number.isInteger(seqLen) || seqLen < 1) {
      throw new TsformerError(`seqLen must be a positive integer, got ${seqLen}`, 'data');
    }
    if (tokens.length < seqLen + 1) {
      throw new TsformerError(
        `dataset too short: ${tokens.length} tokens, but seqLen ${seqLen} needs at least ${seqLen + 1} (inputs plus one shifted target)`,
        'data',
      );
    }
    this.length = Math.floor((tokens.length - 1) / seqLen);
  }

  #start(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) {
      throw new TsformerError(`sequence index ${i} out of range [0, ${this.length})`, 'data');
    }
    return i * this.seqLen;
  }

  /** Inputs of sequence `i`: a view, `(seqLen,)`. */
  inputs(i: number): Int32Array {
    const s = this.#start(i);
    return this.tokens.subarray(s, s + this.seqLen);
  }

  /** Targets of sequence `i` (inputs shifted by one): a view, `(seqLen,)`. */
  targets(i: number): Int32Array {
    const s = this.#start(i) + 1;
    return this.tokens.subarray(s, s + this.seqLen);
  }

  /** Copies sequence `i` into row `row` of row-major `(rows, seqLen)` input and target buffers. */
  copyInto(i: number, inputs: Int32Array, targets: Int32Array, row: number): void {
    const s = this.#start(i);
    const o = row * this.seqLen;
    inputs.set(this.tokens.subarray(s, s + this.seqLen), o);
    targets.set(this.tokens.subarray(s + 1, s + 1 + this.seqLen), o);
  }
}
