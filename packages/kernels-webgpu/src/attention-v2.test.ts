import { describe, expect, it } from 'vitest';
import { dkvProgramV2, dqProgramV2, forwardProgramV2, scalarizeArrays, setV2Tuning, v2TuningFromFlags } from './attention-v2.js';

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
      const programs = [scalars, arrays, plain, fused, vec, wide, narrow, unrolled];
      for (const a of programs) for (const b of programs) expect(a.shaderKey === b.shaderKey).toBe(a.body === b.body);
      expect(new Set(programs.map((p) => p.shaderKey)).size).toBe(name === 'forward' ? 7 : 8);
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

describe('v2TuningFromFlags', () => {
  const base = setV2Tuning({});
  it('applies each flag on top of the defaults and leaves the defaults alone', () => {
    const t = v2TuningFromFlags(['np', 'dot', 'w0', 'u1', 'arr'], base);
    expect(t).toMatchObject({ prefetch: { forward: false, dq: false, dkv: false }, vecScores: false, wide: {}, unroll: 1, scalars: false });
    expect(v2TuningFromFlags([], base)).toEqual(base);
    expect(setV2Tuning({})).toEqual(base);
    expect(v2TuningFromFlags(['pf', 'r4', 'w', 'u16'], base)).toMatchObject({ prefetch: { forward: true, dq: true, dkv: true }, rows: { forward: 4, dq: 4, dkv: 4 }, wide: { forward: true, dq: true, dkv: true }, unroll: 16 });
  });

  it('names a flag it does not know', () => {
    expect(() => v2TuningFromFlags(['vecc'], base)).toThrow(/v2 tuning flag 'vecc'/);
  });
});
