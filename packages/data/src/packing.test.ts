import { describe, expect, it } from 'vitest';
import { PackedSequences } from './packing.js';

const arange = (n: number): Int32Array => Int32Array.from({ length: n }, (_, i) => i);

describe('PackedSequences', () => {
  it('shifts targets by one and ends the last sequence exactly on the last token', () => {
    const seqs = new PackedSequences(arange(13), 4); // 12 targets = 3 windows, nothing left over
    expect(seqs.length).toBe(3);
    expect(Array.from(seqs.inputs(0))).toEqual([0, 1, 2, 3]);
    expect(Array.from(seqs.targets(0))).toEqual([1, 2, 3, 4]);
    expect(Array.from(seqs.inputs(1))).toEqual([4, 5, 6, 7]);
    expect(Array.from(seqs.inputs(2))).toEqual([8, 9, 10, 11]);
    expect(Array.from(seqs.targets(2))).toEqual([9, 10, 11, 12]);
    expect(() => seqs.inputs(3)).toThrow(/out of range/);
    expect(() => seqs.targets(-1)).toThrow(/out of range/);
  });

  it('counts floor((n - 1) / seqLen) windows', () => {
    expect(new PackedSequences(arange(16), 4).length).toBe(3); // 3 tokens left over
    expect(new PackedSequences(arange(17), 4).length).toBe(4);
    expect(new PackedSequences(arange(5), 4).length).toBe(1);
    expect(new PackedSequences(arange(2), 1).length).toBe(1);
  });

  it('rejects a data set shorter than seqLen + 1, naming both numbers', () => {
    expect(() => new PackedSequences(arange(4), 4)).toThrow(/4 tokens.*seqLen 4.*at least 5/);
    expect(() => new PackedSequences(arange(10), 0)).toThrow(/seqLen/);
  });

  it('copies a sequence into a row of batch buffers', () => {
    const seqs = new PackedSequences(arange(13), 4);
    const inputs = new Int32Array(8).fill(-1);
    const targets = new Int32Array(8).fill(-1);
    seqs.copyInto(2, inputs, targets, 1);
    expect(Array.from(inputs)).toEqual([-1, -1, -1, -1, 8, 9, 10, 11]);
    expect(Array.from(targets)).toEqual([-1, -1, -1, -1, 9, 10, 11, 12]);
  });
});
