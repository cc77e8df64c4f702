import { Rng, TsformerError } from '@tsformer/core';
import type { PackedSequences } from './packing.js';

/** One training batch; `inputs` and `targets` are row-major `(batchSize, seqLen)` and owned by the caller. */
export interface Batch {
  readonly inputs: Int32Array;
  readonly targets: Int32Array;
  readonly batchSize: number;
  readonly seqLen: number;
  /** The epoch this batch was drawn from. */
  readonly epoch: number;
}

/** Where a BatchLoader stands: plain JSON, stored in checkpoints. */
export interface LoaderState {
  /** The epoch the next batch comes from. */
  epoch: number;
  /** How many sequences of that epoch's order have been served (not batches, so the batch size may change on resume). */
  cursor: number;
  /** The loader's seed; a state only restores into a loader with the same one. */
  seed: number;
}

export interface BatchLoaderOptions {
  sequences: PackedSequences;
  /** Sequences per batch (no default). */
  batchSize: number;
  /** Seeds every epoch's order (no default). */
  seed: number;
  /** Default true. When false every epoch visits the sequences in index order. */
  shuffle?: boolean;
}

function checkPositiveInt(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 1) throw new TsformerError(`${what} must be a positive integer, got ${value}`, 'data');
}

/** A batch whose row `b` is sequence `indexOf(b)`. */
function fillBatch(sequences: PackedSequences, indexOf: (b: number) => number, batchSize: number, epoch: number): Batch {
  const seqLen = sequences.seqLen;
  const inputs = new Int32Array(batchSize * seqLen); // (B, T)
  const targets = new Int32Array(batchSize * seqLen); // (B, T)
  for (let b = 0; b < batchSize; b++) sequences.copyInto(indexOf(b), inputs, targets, b);
  return { inputs, targets, batchSize, seqLen, epoch };
}

/**
 * Deterministic, resumable batches of packed sequences. Epoch `e` visits every sequence once in an
 * order that depends on `(seed, e)` alone, so `{ epoch, cursor, seed }` is the whole state. A batch
 * never spans two epochs: the last `length % batchSize` sequences of each epoch's order are dropped
 * (a different set each epoch when shuffling).
 */
export class BatchLoader {
  readonly sequences: PackedSequences;
  readonly batchSize: number;
  readonly seed: number;
  /** Whether epochs are shuffled (default true). */
  readonly shuffle: boolean;
  #epoch = 0;
  #cursor = 0;
  /** The order of `#orderEpoch`, computed lazily and kept for the epoch's duration. */
  #order: Uint32Array | undefined;
  #orderEpoch = -1;

  constructor(opts: BatchLoaderOptions) {
    checkPositiveInt(opts.batchSize, 'batchSize');
    if (!Number.isInteger(opts.seed)) throw new TsformerError(`seed must be an integer, got ${opts.seed}`, 'data');
    if (opts.batchSize > opts.sequences.length) {
      throw new TsformerError(
        `batchSize ${opts.batchSize} exceeds the ${opts.sequences.length} sequences of length ${opts.sequences.seqLen} in the dataset: not one full batch per epoch`,
        'data',
      );
    }
    this.sequences = opts.sequences;
    this.batchSize = opts.batchSize;
    this.seed = opts.seed;
    this.shuffle = opts.shuffle ?? true;
  }

  /** The epoch the next batch comes from. */
  get epoch(): number {
    return this.#epoch;
  }

  get batchesPerEpoch(): number {
    return Math.floor(this.sequences.length / this.batchSize);
  }

  #orderOf(epoch: number): Uint32Array {
    if (this.#order === undefined || this.#orderEpoch !== epoch) {
      const order = new Uint32Array(this.sequences.length);
      for (let i = 0; i < order.length; i++) order[i] = i;
      if (this.shuffle) Rng.seeded(this.seed, epoch).shuffle(order);
      this.#order = order;
      this.#orderEpoch = epoch;
    }
    return this.#order;
  }

  /** The next batch; rolls over to the next epoch when fewer than `batchSize` sequences remain. */
  next(): Batch {
    if (this.#cursor + this.batchSize > this.sequences.length) {
      this.#epoch++;
      this.#cursor = 0;
    }
    const order = this.#orderOf(this.#epoch);
    const from = this.#cursor;
    const batch = fillBatch(this.sequences, (b) => order[from + b]!, this.batchSize, this.#epoch);
    this.#cursor += this.batchSize;
    // Roll over eagerly, so `epoch` and `state()` after an epoch's last batch already name the next one.
    if (this.#cursor + this.batchSize > this.sequences.length) {
      this.#epoch++;
      this.#cursor = 0;
    }
    return batch;
  }

  state(): LoaderState {
    return { epoch: this.#epoch, cursor: this.#cursor, seed: this.seed };
  }

  /** Continues from a `state()` of a loader with the same seed over the same sequences. */
  restore(state: LoaderState): void {
    const s = state as Partial<Record<keyof LoaderState, unknown>> | null;
    if (s === null || typeof s !== 'object') throw new TsformerError(`invalid loader state ${JSON.stringify(state)}: expected an object`, 'data');
    for (const key of ['epoch', 'cursor', 'seed'] as const) {
      if (!Number.isInteger(s[key])) throw new TsformerError(`invalid loader state: ${key} must be an integer, got ${JSON.stringify(s[key])}`, 'data');
    }
    const { epoch, cursor, seed } = state;
    if (seed !== this.seed) {
      throw new TsformerError(`loader state was saved with seed ${seed}, but this loader has seed ${this.seed}`, 'data');
    }
    if (epoch < 0) throw new TsformerError(`invalid loader state: epoch ${epoch} is negative`, 'data');
    if (cursor < 0 || cursor > this.sequences.length) {
      throw new TsformerError(
        `invalid loader state: cursor ${cursor} is outside [0, ${this.sequences.length}] (the dataset has ${this.sequences.length} sequences; was it changed?)`,
        'data',
      );
    }
    this.#epoch = epoch;
    this.#cursor = cursor;
  }
}

/**
 * Fixed, unshuffled batches for validation loss, in index order and with the training batch shape.
 * With `maxBatches` smaller than the number of full batches, the batches taken are spread evenly
 * over the whole set (always the same ones), so a capped evaluation still sees all of it.
 */
export function* evalBatches(sequences: PackedSequences, batchSize: number, maxBatches = Infinity): Generator<Batch> {
  checkPositiveInt(batchSize, 'batchSize');
  if (maxBatches !== Infinity) checkPositiveInt(maxBatches, 'maxBatches');
  const available = Math.floor(sequences.length / batchSize);
  if (available === 0) {
    throw new TsformerError(
      `evaluation set too small: ${sequences.length} sequences of length ${sequences.seqLen} make no batch of ${batchSize}`,
      'data',
    );
  }
  const count = Math.min(available, maxBatches);
  for (let b = 0; b < count; b++) {
    const batchIndex = Math.floor((b * available) / count);
    yield fillBatch(sequences, (row) => batchIndex * batchSize + row, batchSize, 0);
  }
}
