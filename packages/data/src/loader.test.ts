import { describe, expect, it } from 'vitest';
import { BatchLoader, evalBatches, type Batch, type LoaderState } from './loader.js';
import { PackedSequences } from './packing.js';

const SEQ_LEN = 3;

/** Tokens 0..n so that sequence i starts with token i * SEQ_LEN: each row names its sequence. */
function sequences(count: number): PackedSequences {
  return new PackedSequences(
    Int32Array.from({ length: count * SEQ_LEN + 1 }, (_, i) => i),
    SEQ_LEN,
  );
}

/** The sequence index of each row of a batch. */
const rows = (b: Batch): number[] => Array.from({ length: b.batchSize }, (_, r) => b.inputs[r * b.seqLen]! / SEQ_LEN);
const take = (loader: BatchLoader, n: number): Batch[] => Array.from({ length: n }, () => loader.next());

describe('BatchLoader', () => {
  it('returns row-major (batchSize, seqLen) inputs with targets shifted by one', () => {
    const b = new BatchLoader({ sequences: sequences(10), batchSize: 4, seed: 0 }).next();
    expect(b.batchSize).toBe(4);
    expect(b.seqLen).toBe(SEQ_LEN);
    expect(b.inputs.length).toBe(4 * SEQ_LEN);
    expect(b.targets.length).toBe(4 * SEQ_LEN);
    for (let i = 0; i < b.inputs.length; i++) expect(b.targets[i]).toBe(b.inputs[i]! + 1);
    for (const r of rows(b)) expect(Number.isInteger(r) && r >= 0 && r < 10).toBe(true);
  });

  it('is deterministic for a seed and differs between seeds', () => {
    const a = take(new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 7 }), 30).map(rows);
    const b = take(new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 7 }), 30).map(rows);
    const c = take(new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 8 }), 30).map(rows);
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
  });

  it('visits every sequence exactly once per epoch, in a new order each epoch', () => {
    const loader = new BatchLoader({ sequences: sequences(48), batchSize: 6, seed: 3 });
    expect(loader.batchesPerEpoch).toBe(8);
    const epochs = [0, 1, 2].map(() => take(loader, 8).flatMap(rows));
    for (const seen of epochs) expect([...seen].sort((x, y) => x - y)).toEqual(Array.from({ length: 48 }, (_, i) => i));
    expect(epochs[1]).not.toEqual(epochs[0]);
    expect(epochs[0]).not.toEqual(Array.from({ length: 48 }, (_, i) => i));
  });

  it('drops the remainder: a batch never spans two epochs', () => {
    const loader = new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 1 });
    expect(loader.batchesPerEpoch).toBe(12);
    const batches = take(loader, 25);
    expect(batches.map((b) => b.epoch)).toEqual([...Array<number>(12).fill(0), ...Array<number>(12).fill(1), 2]);
    const first = batches.slice(0, 12).flatMap(rows);
    expect(new Set(first).size).toBe(48); // 2 of the 50 left out, none repeated
  });

  it('rolls over to the next epoch right after the last full batch', () => {
    const loader = new BatchLoader({ sequences: sequences(10), batchSize: 3, seed: 5 });
    take(loader, 2);
    expect(loader.state()).toEqual({ epoch: 0, cursor: 6, seed: 5 });
    take(loader, 1);
    expect(loader.epoch).toBe(1);
    expect(loader.state()).toEqual({ epoch: 1, cursor: 0, seed: 5 });
    expect(loader.next().epoch).toBe(1);
  });

  it('continues identically from a saved state, across an epoch boundary', () => {
    const straight = new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 11 });
    take(straight, 7);
    const saved = JSON.parse(JSON.stringify(straight.state())) as LoaderState;
    const expected = take(straight, 10); // batches 8..17: crosses into epoch 1 after batch 12

    const restored = new BatchLoader({ sequences: sequences(50), batchSize: 4, seed: 11 });
    take(restored, 2); // a different position, overwritten by restore
    restored.restore(saved);
    expect(restored.epoch).toBe(0);
    const got = take(restored, 10);
    expect(got.map((b) => b.epoch)).toEqual(expected.map((b) => b.epoch));
    expect(got.map((b) => b.epoch)).toContain(1);
    expect(got.map((b) => Array.from(b.inputs))).toEqual(expected.map((b) => Array.from(b.inputs)));
    expect(got.map((b) => Array.from(b.targets))).toEqual(expected.map((b) => Array.from(b.targets)));
  });

  it('rejects a state from another seed or out of range', () => {
    const loader = new BatchLoader({ sequences: sequences(20), batchSize: 4, seed: 1 });
    expect(() => loader.restore({ epoch: 0, cursor: 0, seed: 2 })).toThrow(/seed 2.*seed 1/);
    expect(() => loader.restore({ epoch: 0, cursor: 21, seed: 1 })).toThrow(/cursor 21/);
    expect(() => loader.restore({ epoch: -1, cursor: 0, seed: 1 })).toThrow(/epoch/);
    expect(() => loader.restore({ epoch: 0, cursor: 1.5, seed: 1 })).toThrow(/cursor must be an integer/);
    expect(() => loader.restore({ epoch: 0, seed: 1 } as unknown as LoaderState)).toThrow(/cursor/);
    expect(loader.state()).toEqual({ epoch: 0, cursor: 0, seed: 1 }); // untouched by the failures
  });

  it('keeps index order without shuffling and rejects a batch larger than the data', () => {
    const loader = new BatchLoader({ sequences: sequences(9), batchSize: 4, seed: 1, shuffle: false });
    expect(take(loader, 3).map(rows)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [0, 1, 2, 3],
    ]);
    expect(() => new BatchLoader({ sequences: sequences(3), batchSize: 4, seed: 1 })).toThrow(/batchSize 4 exceeds the 3 sequences/);
  });
});

describe('evalBatches', () => {
  it('yields every full batch in index order', () => {
    const batches = [...evalBatches(sequences(10), 3)];
    expect(batches.map(rows)).toEqual([
      [0, 1, 2],
      [3, 4, 5],
      [6, 7, 8],
    ]);
    expect([...evalBatches(sequences(10), 3)].map((b) => Array.from(b.inputs))).toEqual(batches.map((b) => Array.from(b.inputs)));
  });

  it('spreads a capped number of batches over the whole set', () => {
    const batches = [...evalBatches(sequences(24), 2, 3)]; // 12 batches available, take 0, 4, 8
    expect(batches.map(rows)).toEqual([
      [0, 1],
      [8, 9],
      [16, 17],
    ]);
    expect(() => [...evalBatches(sequences(2), 3)]).toThrow(/no batch of 3/);
  });
});
