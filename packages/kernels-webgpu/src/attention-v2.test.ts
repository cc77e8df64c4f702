import { describe, expect, it } from 'vitest';
import { dkvProgramV2, dqProgramV2, forwardProgramV2, copies, scalarizeArrays, setV2Tuning, v2Fit, v2Takes, v2TuningFromFlags } from './attention-v2.js';

// Code generation of the v2 attention kernels (their arithmetic is checked in Chromium and on the H100).

describe('scalarizeArrays', () => {
  it('turns constant-indexed per-thread arrays into separate variables', () => {
    const body = 'var s: array<f32, 3>; s[0] = 0.0; s[2] = s[1] + qs[4]; var o: array<vec4<f32>, 2>; o[1] = vec4<f32>(s[0]);';
    expect(scalarizeArrays(body, ['s', 'o'])).toBe(
      'var s_0: f32; var s_1: f32; var s_2: f32; s_0 = 0.0; s_2 = s_1 + qs[4]; var o_0: vec4<f32>; var o_1: vec4<f32>; o_1 = vec4<f32>(s_0);',
    );
  });

  it('refuses an array indexed by an expression', () => {
    expect(() => scalarizeArrays('var s: array<f32, 4>; s[i] = 1.0;', ['s'])).toThrow(/s has a non-constant index/);
  });
});

describe('v2 kernel bodies', () => {
  const all = (on: boolean) => ({ forward: on, dq: on, dkv: on });
  const d = { B: 2, T: 100, H: 4, HKV: 2, D: 64 };
  const r = { sigmoid: false, sigmoidBias: 0, window: 0, scale: 0.125, alibi: false };
  for (const [name, make] of [
    ['forward', forwardProgramV2],
    ['dq', dqProgramV2],
    ['dkv', dkvProgramV2],
  ] as const) {
    it(`${name}: no per-thread arrays with scalars, arrays without; each choice (prefetch, vec4 scores, wide blocks, unrolling) its own key`, () => {
      const scalars = make(d, r, 4, { prefetch: all(true), scalars: true, fusedScores: false });
      const arrays = make(d, r, 4, { prefetch: all(true), scalars: false, fusedScores: false });
      const plain = make(d, r, 4, { prefetch: all(false), scalars: true, fusedScores: false });
      const fused = make(d, r, 4, { prefetch: all(true), scalars: true, fusedScores: true });
      const vec = make(d, r, 4, { prefetch: all(true), scalars: true, fusedScores: true, vecScores: true });
      const wide = make(d, r, 2, { prefetch: all(true), scalars: true, fusedScores: true, wide: { [name]: true } });
      const narrow = make(d, r, 2, { prefetch: all(true), scalars: true, fusedScores: true, wide: {} });
      expect(scalars.body).not.toMatch(/var (s|dp|o|dq|dk|dv|m|l|sv|dpv): array</);
      expect(vec.body).not.toMatch(/var (s|dp|o|dq|dk|dv|m|l|sv|dpv): array</);
      expect(arrays.body).toMatch(/var (s|dp): array</);
      // one key per distinct body: tfjs caches pipelines by key
      const unrolled = make(d, r, 2, { prefetch: all(true), scalars: true, fusedScores: true, unroll: 4 });
      expect(unrolled.body).toMatch(/for \(var c0 = 0u; c0 < D4; c0 \+= 4u\)/);
      expect(unrolled.body).toMatch(/let n = n0 \+ 3u;/);
      const cols = make(d, r, 2, { prefetch: all(true), scalars: true, fusedScores: true, cols: { [name]: 4 } });
      const programs = [scalars, arrays, plain, fused, vec, wide, narrow, unrolled, cols];
      for (const a of programs) for (const b of programs) expect(a.shaderKey === b.shaderKey).toBe(a.body === b.body);
      expect(new Set(programs.map((p) => p.shaderKey)).size).toBe(name === 'forward' ? 8 : 9);
      // cols: 2 x 4 score micro-tiles, blocks walk N = 32 rows; cols for another kernel change nothing
      expect(cols.body).toMatch(/const M = 16u; const N = 32u;/);
      expect(cols.body).toMatch(/s_7/);
      expect(cols.body).not.toMatch(/s_8/);
      const other = make(d, r, 2, { prefetch: all(true), scalars: true, fusedScores: true, wide: {}, cols: { [name === 'dq' ? 'dkv' : 'dq']: 4 } });
      expect(other.body).toBe(narrow.body);
      // vec4 score accumulators: fmas into vec4 lanes, no dot products in the score loops
      expect(vec.body).not.toMatch(/\+= dot\(/);
      expect(vec.body).toMatch(/sv_0 = fma\(/);
      expect(fused.body).toMatch(/s_0 \+= dot\(/);
      // wide: 128 threads with accumulator-side blocks of M = 32 rows against 64 threads and M = 16
      expect([wide.workgroupSize[0], narrow.workgroupSize[0]]).toEqual([128, 64]);
      expect(wide.body).toMatch(/const M = 32u; const N = 16u;/);
      expect(narrow.body).toMatch(/const M = 16u; const N = 16u;/);
      // the backward's fused score loop: S and dP accumulate in one loop over D (one loop fewer)
      const loops = (b: string) => b.split('for (var c = 0u; c < D4; c++)').length - 1;
      expect(loops(fused.body)).toBe(name === 'forward' ? loops(scalars.body) : loops(scalars.body) - 1);
      // the prefetching loop reads the next block's rows inside the loop, behind a bound check
      expect(scalars.body).toMatch(/if \((j0 \+ N < kHi|it \+ 1u < G \* NI)\)/);
      expect(plain.body).not.toMatch(/if \((j0 \+ N < kHi|it \+ 1u < G \* NI)\)/);
    });
  }
});

describe('dK/dV with P and dS in one workgroup tile', () => {
  const d = { B: 2, T: 100, H: 4, HKV: 2, D: 64 };
  const r = { sigmoid: false, sigmoidBias: 0, window: 0, scale: 0.125, alibi: false };
  const t = { prefetch: { forward: true, dq: true, dkv: false }, scalars: true, fusedScores: true, vecScores: true, wide: { dkv: true }, cols: { dkv: 2 as const }, unroll: 16 };
  it('declares one weight tile, accumulates dV and dK in separate loops between barriers, and has its own key', () => {
    const two = dkvProgramV2(d, r, 4, t);
    const one = dkvProgramV2(d, r, 4, { ...t, oneWeightTile: true });
    expect(two.body).toMatch(/var<workgroup> dst:/);
    expect(one.body).not.toMatch(/var<workgroup> dst:/);
    expect(one.body).not.toMatch(/\bdst\[/);
    const barriers = (b: string) => b.split('workgroupBarrier()').length - 1;
    expect(barriers(one.body)).toBe(barriers(two.body) + 2);
    // the loops over the N queries: one for dv and dk together against one each
    const loops = (b: string) => b.split('for (var n0 = 0u; n0 < N; n0 += 16u)').length - 1;
    expect([loops(two.body), loops(one.body)]).toEqual([1, 2]);
    expect(one.shaderKey).not.toBe(two.shaderKey);
    // the flag is dK/dV's only: the forward and dQ bodies and keys do not change
    for (const make of [forwardProgramV2, dqProgramV2]) {
      expect(make(d, r, 4, { ...t, oneWeightTile: true }).shaderKey).toBe(make(d, r, 4, t).shaderKey);
    }
  });

  it('lets 4 x 2 tiles at 128 threads (64 keys by 16 queries) fit 48 KiB where two tiles need 52', () => {
    const prev = setV2Tuning({ rows: { dkv: 4 }, cols: { dkv: 2 }, wide: { dkv: true }, oneWeightTile: false });
    try {
      expect(v2Fit(64, 49152, 'dkv')).toMatchObject({ R: 2, t: { wide: { dkv: true }, cols: { dkv: 2 } } });
      setV2Tuning({ oneWeightTile: true });
      expect(v2Fit(64, 49152, 'dkv')).toMatchObject({ R: 4, t: { wide: { dkv: true }, cols: { dkv: 2 }, oneWeightTile: true } });
      expect(v2Fit(64, 48000, 'dkv')?.R).toBe(2);
      // the default: its exact shape at D = 32 on SwiftShader's 32 KiB (the browser checks), 2 x 2
      // tiles at 128 threads at D = 64
      setV2Tuning(prev);
      expect(v2Fit(32, 32768, 'dkv')).toMatchObject({ R: 4, t: { wide: { dkv: true }, cols: { dkv: 2 }, oneWeightTile: true } });
      expect(v2Fit(64, 32768, 'dkv')).toMatchObject({ R: 2, t: { wide: { dkv: true }, cols: { dkv: 2 }, oneWeightTile: true } });
      expect(v2Fit(64, 49152, 'dkv')).toMatchObject({ R: 4, t: { wide: { dkv: true }, cols: { dkv: 2 }, oneWeightTile: true } });
    } finally {
      setV2Tuning(prev);
    }
  });
});

describe('v2TuningFromFlags', () => {
  const base = setV2Tuning({});
  it('applies each flag on top of the defaults and leaves the defaults alone', () => {
    const t = v2TuningFromFlags(['np', 'dot', 'w0', 'u1', 'arr'], base);
    expect(t).toMatchObject({ prefetch: { forward: false, dq: false, dkv: false }, vecScores: false, wide: {}, unroll: 1, scalars: false });
    expect(v2TuningFromFlags([], base)).toEqual(base);
    expect(setV2Tuning({})).toEqual(base);
    expect(v2TuningFromFlags(['pf', 'r4', 'w', 'u16'], base)).toMatchObject({ prefetch: { forward: true, dq: true, dkv: true }, rows: { forward: 4, dq: 4, dkv: 4 }, wide: { forward: true, dq: true, dkv: true }, unroll: 16 });
    const plain = { ...base, rows: {}, cols: {} };
    expect(v2TuningFromFlags(['c4kv'], plain).cols).toEqual({ dkv: 4 });
    expect(v2TuningFromFlags(['c4', 'c2f'], plain).cols).toEqual({ forward: 2, dq: 4, dkv: 4 });
    expect(v2TuningFromFlags(['c2b', 'r2f'], base)).toMatchObject({ rows: { forward: 2, dq: 4 }, cols: { forward: 2, dq: 2, dkv: 2 } });
    expect(v2TuningFromFlags(['r4f', 'c2f', 'wb', 'c4b'], base)).toMatchObject({ rows: { forward: 4 }, cols: { forward: 2, dq: 4, dkv: 4 }, wide: { dq: true, dkv: true } });
    expect(() => v2TuningFromFlags(['c4x'], base)).toThrow(/'c4x'/);
    expect(v2TuningFromFlags(['one', 'r4kv', 'c2kv'], base)).toMatchObject({ oneWeightTile: true, rows: { forward: 4, dq: 4, dkv: 4 }, cols: { dkv: 2 } });
    expect(v2TuningFromFlags(['one', 'two'], base).oneWeightTile).toBe(false);
    expect(base.cols).toEqual({ forward: 2, dq: 2, dkv: 2 });
  });

  it('names a flag it does not know', () => {
    expect(() => v2TuningFromFlags(['vecc'], base)).toThrow(/v2 tuning flag 'vecc'/);
  });
});

describe('v2Fit', () => {
  it('takes the tuned shape where the kernel\'s own workgroup memory fits the limit, else a smaller one', () => {
    const prev = setV2Tuning({ rows: { forward: 4, dq: 4, dkv: 4 }, cols: { forward: 2, dq: 4, dkv: 4 }, wide: { forward: true, dq: true, dkv: true }, oneWeightTile: false });
    try {
      // the 128-thread forward with 64 x 16 blocks: 17 + 9 + 4 + 2 KiB
      expect(v2Fit(64, 49152, 'forward')).toMatchObject({ R: 4, t: { wide: { forward: true }, cols: { forward: 2 } } });
      // dK/dV with 64 keys by 32 queries needs 70 KiB; 32 by 32 at 128 threads 43 KiB
      expect(v2Fit(64, 49152, 'dkv')).toMatchObject({ R: 2, t: { wide: { dkv: true }, cols: { dkv: 4 } } });
      // 32 KiB: dK/dV at 64 threads, 16 keys by 32 queries; 20 KiB: 16 x 16 blocks
      expect(v2Fit(64, 32768, 'dkv')).toMatchObject({ R: 2, t: { wide: { dkv: false }, cols: { dkv: 4 } } });
      expect(v2Fit(64, 20480, 'dkv')).toMatchObject({ R: 2, t: { wide: { dkv: false }, cols: { dkv: undefined } } });
      expect(v2Fit(64, 8192, 'dkv')).toBeUndefined();
      expect(v2Fit(48, 49152, 'forward')).toBeUndefined();
      expect([v2Takes(64, 20480), v2Takes(64, 8192), v2Takes(48, 49152)]).toEqual([true, false, false]);
    } finally {
      setV2Tuning(prev);
    }
  });
});

describe('copies', () => {
  it('writes a loop out the largest power of two times up to the asked that divides its trips', () => {
    expect([copies(16, 16), copies(16, 24), copies(32, 16), copies(8, 24), copies(1, 24), copies(4, 6)]).toEqual([16, 8, 16, 8, 1, 2]);
    const d = { B: 1, T: 40, H: 2, HKV: 2, D: 96 };
    const r = { sigmoid: false, sigmoidBias: 0, window: 0, scale: 0.1, alibi: false };
    const body = forwardProgramV2(d, r, 2, { prefetch: { forward: true, dq: true, dkv: true }, scalars: true, fusedScores: true, unroll: 16 }).body;
    expect(body).toMatch(/for \(var c0 = 0u; c0 < D4; c0 \+= 8u\)/);
    expect(body).toMatch(/for \(var n0 = 0u; n0 < N; n0 \+= 16u\)/);
  });
});
