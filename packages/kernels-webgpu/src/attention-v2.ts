import { KernelProgram, cachedProgram } from './program.js';
import { constants, dsSnippet, keyOf, type Dims, type Resolved } from './attention-common.js';

/**
 * Register-blocked attention kernels (v2), FlashAttention-2 structure, fp32.
 *
 * Every kernel runs TY x 8 threads (tx = localIndex % 8, ty = localIndex / 8; TY = 8, or 16 where
 * V2Tuning.wide asks) on blocks of M = TY R rows (queries in the forward and dQ, keys in dK/dV) by
 * N = 8 C rows of the walked side (R, C = 2 or 4; see V2Tuning.rows and .cols; the defaults are
 * 4 x 2 at 64 threads in the forward, 4 x 2 at 128 threads in dQ, 2 x 4 at 128 threads in dK/dV).
 * The operand tiles (q, k, v, dO: M or N rows x D) sit in workgroup memory in their row layout, rows
 * padded to D + 4 floats so that 8 consecutive rows read at the same column hit 8 different bank
 * quads.
 *
 * Two micro-tile shapes per thread:
 *   - score tiles (S = q k^T, dP = dO v^T, reductions over D): R x C entries, rows ty + TY a, columns
 *     tx + 8b; per 4 channels a thread reads R + C vec4 and does R C dot products;
 *   - accumulator tiles (o, dq, dk, dv: M rows x D): R consecutive rows ty R + r by the vec4
 *     columns tx + 8c (D / 32 of them); the weight tile (P, dS) goes through workgroup memory,
 *     transposed so that the R weights of a thread's rows are one vecR load.
 *
 * Scores are s_ij = scale q_i . k_j - slope_h (i - j) (see attention.ts); q is scaled when staged.
 * The forward and dQ kernels take one (b, h, query block) per workgroup and walk the key blocks up
 * to the diagonal (from the window's start); the dK/dV kernel takes one (b, kv head, key block) and
 * walks, for each of the G query heads of its kv head, the query blocks from the diagonal to the
 * window's end (no atomics). The heaviest blocks are dispatched first.
 */

/**
 * A kernel's block shape: TY x 8 threads (ty = localIndex / 8, tx = localIndex % 8), each with an
 * R x C score micro-tile; M = TY R rows on the accumulator side (queries in the forward and dQ, keys
 * in dK/dV), N = 8 C on the other (the side walked block by block).
 */
interface Blocks {
  R: number;
  /** Walked-side rows per thread (score micro-tiles are R x C). */
  C: number;
  TY: number;
  M: number;
  N: number;
  threads: number;
}

function blocks(R: number, TY: number, C = R): Blocks {
  return { R, C, TY, M: TY * R, N: 8 * C, threads: 8 * TY };
}

/** Thread rows of a kernel: 16 where tuning.wide asks for it, else 8. */
const threadRows = (t: Partial<Pick<V2Tuning, 'wide'>>, kernel: V2Kernel) => (t.wide?.[kernel] ? 16 : 8);

/** Walked-side rows per thread of a kernel: tuning.cols where set, else R. */
const walkedRows = (t: Partial<Pick<V2Tuning, 'cols'>>, R: number, kernel: V2Kernel) => t.cols?.[kernel] ?? R;

/** A kernel's block shape under tuning t with R rows per thread. */
const shapeOf = (t: Partial<Pick<V2Tuning, 'wide' | 'cols'>>, R: number, kernel: V2Kernel) => blocks(R, threadRows(t, kernel), walkedRows(t, R, kernel));

/**
 * Workgroup bytes of a v2 kernel for a block shape (as declared in its body): padded operand tiles,
 * weight tiles and per-row scalars.
 */
function bytesV2(D: number, k: Blocks, kernel: V2Kernel, t: Partial<Pick<V2Tuning, 'oneWeightTile'>> = tuning): number {
  const tile = (rows: number) => rows * (D / 4 + 1) * 16;
  const weights = k.N * (k.M / k.R + 1) * k.R * 4;
  if (kernel === 'forward') return tile(k.M) + 2 * tile(k.N) + weights + 9 * k.M * 4 + 4;
  if (kernel === 'dq') return 2 * tile(k.M) + 2 * tile(k.N) + weights + 2 * k.M * 4 + 4;
  return 2 * tile(k.M) + 2 * tile(k.N) + (t.oneWeightTile ? 1 : 2) * weights + 2 * k.N * 4 + 4;
}

/** What a v2 kernel runs with on a device: rows per thread and the code-generation choices. */
export interface V2Fit {
  R: 2 | 4;
  t: V2Tuning;
}

/**
 * The block shape of a v2 kernel for head dim D on a device with `limit` bytes of workgroup memory:
 * the tuned one (rows, 128 threads, walked rows) where it fits, else the first that fits of 2 rows
 * per thread, then also 64 threads, then also C = R (16 x 16 blocks); undefined when none fits or
 * D is not a multiple of 32. (SwiftShader's 32 KiB takes the tuned forward, but dQ with 2 x 2 tiles
 * at 128 threads and dK/dV with 2 x 4 at 64; the H100's 48 KiB takes the tuned shapes.)
 */
export function v2Fit(D: number, limit: number, kernel: V2Kernel): V2Fit | undefined {
  if (D % 32 !== 0) return undefined;
  const wide = !!tuning.wide[kernel];
  const C = tuning.cols[kernel];
  const tries: Array<[R: 2 | 4, wide: boolean, C: 2 | 4 | undefined]> = [
    [tuning.rows[kernel] ?? 2, wide, C],
    [2, wide, C],
    [2, false, C],
    [2, false, undefined],
  ];
  for (const [R, w, c] of tries) {
    const t = { ...tuning, wide: { ...tuning.wide, [kernel]: w }, cols: { ...tuning.cols, [kernel]: c } };
    if (bytesV2(D, shapeOf(t, R, kernel), kernel, t) <= limit) return { R, t };
  }
  return undefined;
}

/** Whether the v2 kernels take head dim D on a device with `limit` bytes of workgroup memory. */
export function v2Takes(D: number, limit: number): boolean {
  return (['forward', 'dq', 'dkv'] as const).every((kernel) => v2Fit(D, limit, kernel) !== undefined);
}

export type V2Kernel = 'forward' | 'dq' | 'dkv';

/** Code-generation choices of the v2 kernels (for A/B runs; the defaults are the measured best). */
export interface V2Tuning {
  /**
   * Per kernel: read the next block's tiles into registers while computing the current one. Default:
   * forward and dQ yes, dK/dV no (H100, 16 x 16 blocks, GPU ms at T=1024 / 4096: dQ 1.18 / 17.8 with
   * against 1.44 / 22.3 without; dK/dV 1.97 / 31.1 with against 1.70 / 27.2 without: its prefetch,
   * q and dO, costs registers in the kernel that already holds the most).
   */
  prefetch: Record<V2Kernel, boolean>;
  /** Per-thread arrays (score and accumulator micro-tiles) as separate variables (default true). */
  scalars: boolean;
  /**
   * The backward's two score tiles (S and dP) in one loop over D instead of two (default true; on the
   * H100 dQ 1.70 -> 1.57 ms and dK/dV 2.62 -> 2.56 ms at T=1024, 25.8 -> 24.0 and 41.5 -> 40.2 at 4096).
   */
  fusedScores: boolean;
  /**
   * Rows per thread per kernel: 2 (the default) for 16 x 16 blocks, 4 for 32 x 32 blocks where
   * workgroup memory allows (fewer, larger workgroups).
   */
  rows: Partial<Record<V2Kernel, 2 | 4>>;
  /**
   * Score micro-tiles accumulate per channel lane in vec4 registers (one fma per 4 products, summed
   * across lanes after the loop over D) instead of `acc += dot(a, b)` (a multiply, three fmas and an
   * add per 4 products: without reassociation the driver cannot fold the add into the chain).
   */
  vecScores: boolean;
  /**
   * Per kernel: 128 threads in 16 x 8 instead of 64 in 8 x 8, each with the same micro-tiles, so a
   * workgroup holds twice the rows on its accumulator side (M = 16 R queries in the forward and dQ,
   * keys in dK/dV) and each tile of the walked side serves twice the rows.
   */
  wide: Partial<Record<V2Kernel, boolean>>;
  /**
   * Copies of the body per trip of the inner loops (over D in the score tiles, over the walked rows
   * in the accumulator updates), written out in the WGSL (the largest power of two up to it that
   * divides the loop's trips, see copies()); 1 leaves the unrolling to the driver.
   */
  unroll: number;
  /**
   * Per kernel: rows of the walked side per thread (2 or 4; default R), so that a block walks
   * N = 8 C rows (keys in the forward and dQ, queries in dK/dV) and score micro-tiles are R x C.
   */
  cols: Partial<Record<V2Kernel, 2 | 4>>;
  /**
   * dK/dV: P and dS take turns in one workgroup tile (P, then dV += P^T dO, then dS, then dK += dS^T
   * q: two more barriers per query block) instead of one tile each, so that 4 x 2 tiles at 128
   * threads (64 keys by 16 queries) fit 48 KiB.
   */
  oneWeightTile: boolean;
}

/**
 * The measured best on the H100 (twelfth run, GPU ms of forward+backward at T = 1024 / 4096 / 16384:
 * 3.21 / 47.8-48.0 / 751 against 3.60 / 52.9-53.0 / 836-838 for the eleventh run's defaults, which
 * were 16 x 16 blocks everywhere, a 128-thread forward and loops written out 8 times): 4 x 2 score
 * tiles in a 64-thread forward (32 queries by 16 keys), 2 x 4 tiles in a 128-thread dK/dV (32 keys
 * by 32 queries), vec4 score accumulators, inner loops written out 16 times; then 4 x 2 tiles in a
 * 128-thread dQ (64 queries by 16 keys: 12.85 against 15.07-15.20 ms at T=4096, 226 against 266-276
 * at 16384, in a later call of the same run). Thirteenth run: 4 x 2 tiles in the 128-thread dK/dV
 * too (64 keys by 16 queries), P and dS taking turns in one workgroup tile so that it fits 48 KiB
 * (dK/dV GPU ms 22.61 against 23.92 at T=4096, 355.7 against 377.2-377.4 at 16384; the single
 * tile at the old 2 x 4 shape alone was slower, 24.64 and 390.0: its two barriers more per block).
 */
const tuning: V2Tuning = {
  prefetch: { forward: true, dq: true, dkv: false },
  scalars: true,
  fusedScores: true,
  rows: { forward: 4, dq: 4, dkv: 4 },
  vecScores: true,
  wide: { dq: true, dkv: true },
  unroll: 16,
  cols: { forward: 2, dq: 2, dkv: 2 },
  oneWeightTile: true,
};

/** Sets some of the v2 code-generation choices for later calls; returns the previous ones. */
export function setV2Tuning(next: Partial<V2Tuning>): V2Tuning {
  // the inner loops run D / 4 (a multiple of 8) and N (16, 32 or 64) trips; see copies()
  if (next.unroll !== undefined && ![1, 2, 4, 8, 16, 32].includes(next.unroll)) throw new Error(`setV2Tuning: unroll must be 1, 2, 4, 8, 16 or 32, got ${next.unroll}`);
  const prev = { ...tuning };
  Object.assign(tuning, next);
  return prev;
}

const ALL = { forward: true, dq: true, dkv: true } as const;

/** Flag suffixes: every kernel, the forward, dQ, dK/dV, the backward's two. */
const KERNELS_OF: Record<'' | 'f' | 'q' | 'kv' | 'b', V2Kernel[]> = { '': ['forward', 'dq', 'dkv'], f: ['forward'], q: ['dq'], kv: ['dkv'], b: ['dq', 'dkv'] };

/**
 * The tuning named by dash-separated flags on top of `base` (for A/B runs, e.g. `np-arr`):
 * `np` / `pf` no prefetch / prefetch in every kernel, `arr` per-thread arrays, `sep` separate
 * backward score loops, `vec` / `dot` vec4 / dot-product score accumulators, `w` / `wq` / `wf` /
 * `wkv` / `wb` / `w0` 128-thread workgroups in every kernel / forward and dQ / forward / dK,dV / dQ
 * and dK,dV / none, `one` / `two` dK/dV's P and dS in one workgroup tile / in two, `u1`..`u32` unrolling, `r2` / `r4` rows per thread and `c2` / `c4` walked rows
 * per thread in every kernel, or with a suffix in the forward (`f`), dQ (`q`), dK/dV (`kv`) or both
 * backward kernels (`b`): `r4f-c2f` is 4 x 2 score micro-tiles in the forward.
 */
export function v2TuningFromFlags(flags: string[], base: V2Tuning): V2Tuning {
  const t: V2Tuning = { ...base, prefetch: { ...base.prefetch }, rows: { ...base.rows }, wide: { ...base.wide }, cols: { ...base.cols } };
  for (const f of flags) {
    if (f === 'np') t.prefetch = { forward: false, dq: false, dkv: false };
    else if (f === 'pf') t.prefetch = { ...ALL };
    else if (f === 'arr') t.scalars = false;
    else if (f === 'sep') t.fusedScores = false;
    else if (f === 'vec' || f === 'dot') t.vecScores = f === 'vec';
    else if (f === 'w') t.wide = { ...ALL };
    else if (f === 'wq') t.wide = { forward: true, dq: true };
    else if (f === 'wf') t.wide = { forward: true };
    else if (f === 'wkv') t.wide = { dkv: true };
    else if (f === 'wb') t.wide = { dq: true, dkv: true };
    else if (f === 'w0') t.wide = {};
    else if (f === 'one' || f === 'two') t.oneWeightTile = f === 'one';
    else if (/^u\d+$/.test(f)) t.unroll = Number(f.slice(1));
    else if (/^[rc][24](f|q|kv|b)?$/.test(f)) {
      const n = Number(f[1]) as 2 | 4;
      const which = KERNELS_OF[f.slice(2) as keyof typeof KERNELS_OF];
      for (const kk of which) (f[0] === 'r' ? t.rows : t.cols)[kk] = n;
    } else throw new Error(`v2 tuning flag '${f}' is not one of np, pf, arr, sep, vec, dot, w, wq, wf, wkv, wb, w0, one, two, u1..u32, r2/r4/c2/c4 (+f, q, kv, b)`);
  }
  return t;
}

/** The choices that change a kernel's WGSL (rows change it through R). */
export type V2CodeGen = Pick<V2Tuning, 'prefetch' | 'scalars' | 'fusedScores'> & Partial<Pick<V2Tuning, 'vecScores' | 'wide' | 'unroll' | 'cols' | 'oneWeightTile'>>;

/** The bits of a kernel's key that its WGSL depends on (the forward has no backward score loop). */
const tuningKey = (t: V2CodeGen, kernel: V2Kernel) =>
  (t.prefetch[kernel] ? 1 : 0) + (t.scalars ? 2 : 0) + (kernel !== 'forward' && t.fusedScores ? 4 : 0) + (t.vecScores ? 8 : 0) + (t.wide?.[kernel] ? 16 : 0) + 32 * ((t.unroll ?? 1) - 1) +
  (kernel === 'dkv' && t.oneWeightTile ? 1024 : 0);

/**
 * Rewrites the per-thread arrays `names` of a WGSL body (declared `var x: array<T, N>;`, every use
 * `x[constant]`) as N separate variables x_0 .. x_{N-1}: nothing then asks the driver's compiler
 * to keep an indexable array in registers.
 */
export function scalarizeArrays(body: string, names: string[]): string {
  let out = body;
  for (const name of names) {
    const decl = new RegExp(`var ${name}: array<(.+?), (\\d+)>;`, 'g');
    out = out.replace(decl, (_m, type: string, n: string) =>
      range(Number(n))
        .map((i) => `var ${name}_${i}: ${type};`)
        .join(' '),
    );
    out = out.replace(new RegExp(`\\b${name}\\[(\\d+)\\]`, 'g'), `${name}_$1`);
    if (new RegExp(`\\b${name}\\[`).test(out)) throw new Error(`scalarizeArrays: ${name} has a non-constant index`);
  }
  return out;
}

/** The per-thread arrays of the v2 kernels. */
const THREAD_ARRAYS = ['s', 'dp', 'o', 'dq', 'dk', 'dv', 'm', 'l', 'sv', 'dpv'];

const v2Body = (t: V2CodeGen, body: string) => (t.scalars ? scalarizeArrays(body, THREAD_ARRAYS) : body);

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Explicit zeros for a function-scope array declared in a loop body: WGSL zero-initializes it at
 * each declaration, but SwiftShader kept the previous iteration's values (checked on T > one block).
 */
const zero = (name: string, n: number) => range(n).map((i) => `${name}[${i}] = 0.0;`).join(' ');

/** Shared WGSL constants of the v2 kernels. */
function tileConstants(d: Dims, k: Blocks): string {
  return `
    const R = ${k.R}u; const M = ${k.M}u; const N = ${k.N}u;
    // a weight tile row: M / R vectors of R, plus one (its 8 writers tx + 8b sit 4 R + 4 floats apart at TY = 8)
    const PS = ${k.M / k.R + 1}u;
    const RS = D4 + 1u; // padded row stride of an operand tile, in vec4
    const NB = ${Math.ceil(d.T / k.M)}u; // blocks of M rows
  `;
}

/**
 * Tile moves in two halves, so that a thread's global loads are all in flight at once and can be
 * issued a whole block ahead (software pipelining): `fetch` reads `rows` rows of a [B, T, heads, D]
 * tensor (rows r0.., head hd; rows past T repeat row T - 1) into registers `reg0..`, `stash` writes
 * them into a padded tile. Each of the `threads` threads moves rows D4 / threads vec4 (an integer:
 * rows is a multiple of 16, threads 64 or 128 and D4 a multiple of 8).
 */
interface TileMove {
  /** Register name prefix. */
  reg: string;
  /** vec4 per thread. */
  n: number;
  threads: number;
}

function tileMove(reg: string, rows: number, D: number, threads: number): TileMove {
  return { reg, n: (rows * D) / 4 / threads, threads };
}

function declareRegs(m: TileMove): string {
  return range(m.n)
    .map((i) => `var ${m.reg}${i}: vec4<f32>;`)
    .join(' ');
}

function fetchTile(m: TileMove, src: string, heads: string, r0: string, scale = ''): string {
  return range(m.n)
    .map((i) => `{ let e = localIndex + ${i * m.threads}u; ${m.reg}${i} = ${src}[((b * T + min(${r0} + e / D4, T - 1u)) * ${heads} + hd) * D4 + e % D4]${scale}; }`)
    .join('\n        ');
}

function stashTile(m: TileMove, tile: string): string {
  return range(m.n)
    .map((i) => `{ let e = localIndex + ${i * m.threads}u; ${tile}[(e / D4) * RS + e % D4] = ${m.reg}${i}; }`)
    .join('\n        ');
}

/** Copies `rows` rows into a padded tile now (a fetch then a stash in one scope). */
function loadTile(tile: string, src: string, heads: string, r0: string, rows: number, D: number, threads: number, scale = ''): string {
  const m = tileMove(`ld_${tile}`, rows, D, threads);
  return `{
        ${declareRegs(m)}
        ${fetchTile(m, src, heads, r0, scale)}
        ${stashTile(m, tile)}
        }`;
}

/** `for (var v = 0u; v < bound; v++) { body }`, with u > 1 the body written u times per trip. */
function unrolled(v: string, bound: string, u: number, body: string): string {
  if (u <= 1) {
    return `for (var ${v} = 0u; ${v} < ${bound}; ${v}++) {
          ${body}
        }`;
  }
  return `for (var ${v}0 = 0u; ${v}0 < ${bound}; ${v}0 += ${u}u) {
          ${range(u)
            .map((i) => `{ let ${v} = ${v}0 + ${i}u;\n          ${body} }`)
            .join('\n          ')}
        }`;
}

/**
 * acc[a C + b] += A[row ty + TY a] . Bt[row tx + 8b] over D (a < R, b < C), both padded tiles (a
 * score micro-tile).
 */
function scoreTile(acc: string, A: string, Bt: string, k: Blocks, vec = false, u = 1): string {
  return scoreTiles([[acc, A, Bt]], k, vec, u);
}

/**
 * Several score micro-tiles (each acc += A . Bt as above) in one loop over D. With `vec` each entry
 * accumulates in a vec4 \`\${acc}v\` (lane k: the channels 4c + k), summed into acc after the loop.
 */
function scoreTiles(parts: Array<[acc: string, A: string, Bt: string]>, k: Blocks, vec = false, u = 1): string {
  const { R, C, TY } = k;
  const lines: string[] = [];
  const before: string[] = [];
  const after: string[] = [];
  parts.forEach(([acc, A, Bt], p) => {
    for (const a of range(R)) lines.push(`let a${p}_${a} = ${A}[(ty + ${TY * a}u) * RS + c];`);
    for (const b of range(C)) lines.push(`let b${p}_${b} = ${Bt}[(tx + ${8 * b}u) * RS + c];`);
    for (const a of range(R))
      for (const b of range(C)) {
        const i = a * C + b;
        if (!vec) {
          lines.push(`${acc}[${i}] += dot(a${p}_${a}, b${p}_${b});`);
          continue;
        }
        lines.push(`${acc}v[${i}] = fma(a${p}_${a}, b${p}_${b}, ${acc}v[${i}]);`);
        after.push(`${acc}[${i}] += (${acc}v[${i}].x + ${acc}v[${i}].y) + (${acc}v[${i}].z + ${acc}v[${i}].w);`);
      }
    if (vec) before.push(`var ${acc}v: array<vec4<f32>, ${R * C}>; ${range(R * C).map((i) => `${acc}v[${i}] = vec4<f32>(0.0);`).join(' ')}`);
  });
  return `${before.join('\n        ')}
        ${unrolled('c', 'D4', u, lines.join('\n          '))}
        ${after.join('\n        ')}`;
}

/**
 * acc[r DC + c] += w[n][ty R + r] * X[n][tx + 8c] over the N rows n of a padded tile X, w an [N][M]
 * weight tile of vecR (an accumulator micro-tile update). Several (acc, w, X) triples share the loop.
 */
function accumulate(R: number, DC: number, parts: Array<[acc: string, w: string, X: string]>, u = 1): string {
  const lines: string[] = [];
  parts.forEach(([acc, w, X], p) => {
    lines.push(`let w${p} = ${w}[n * PS + ty];`);
    for (const c of range(DC)) {
      lines.push(`let x${p}_${c} = ${X}[n * RS + tx + ${8 * c}u];`);
      for (const r of range(R)) lines.push(`${acc}[${r * DC + c}] = fma(vec4<f32>(w${p}[${r}]), x${p}_${c}, ${acc}[${r * DC + c}]);`);
    }
  });
  return unrolled('n', 'N', u, lines.join('\n          '));
}

/**
 * The head of the forward's and dQ's loop over key blocks j0 of N keys (kLo, kHi and g in scope): K
 * and V tiles into ks and vs, between barriers. With `prefetch` the next block's rows are read into
 * registers right after the stash, so their global loads overlap this block's arithmetic.
 */
function keyBlocks(k0: Blocks, D: number, prefetch: boolean): string {
  const k = tileMove('kr', k0.N, D, k0.threads);
  const v = tileMove('vr', k0.N, D, k0.threads);
  const fetch = (r0: string) => `{ let hd = g; ${fetchTile(k, 'K', 'HKV', r0)}
        ${fetchTile(v, 'V', 'HKV', r0)} }`;
  const stash = `${stashTile(k, 'ks')}
        ${stashTile(v, 'vs')}`;
  if (!prefetch) {
    return `${declareRegs(k)} ${declareRegs(v)}
        for (var j0 = (kLo / N) * N; j0 < kHi; j0 += N) {
          workgroupBarrier();
          ${fetch('j0')}
          ${stash}
          workgroupBarrier();`;
  }
  return `${declareRegs(k)} ${declareRegs(v)}
        let jFirst = (kLo / N) * N;
        ${fetch('jFirst')}
        for (var j0 = jFirst; j0 < kHi; j0 += N) {
          workgroupBarrier();
          ${stash}
          workgroupBarrier();
          if (j0 + N < kHi) { let jn = j0 + N; ${fetch('jn')} }`;
}

/**
 * The head of the dK/dV kernel's loop over (query head, query block of N): the blocks [jLo, iHi) of each
 * of the G query heads of kv head g as one sequence it = hh NI + n (h, i0 and slope in scope), the q
 * (scaled) and dO tiles into qs and dos, lse and delta into lset and deltat. With `prefetch` the
 * next pair's rows are read into registers while this one is computed.
 */
function queryBlocks(k: Blocks, D: number, prefetch: boolean): string {
  const q = tileMove('qr', k.N, D, k.threads);
  const o = tileMove('or', k.N, D, k.threads);
  const fetch = (hExpr: string, r0: string) => `{ let hd = ${hExpr}; ${fetchTile(q, 'Q', 'H', r0, ' * SCALE')}
        ${fetchTile(o, 'DO', 'H', r0)}
        if (localIndex < N) {
          let row = (b * H + hd) * T + min(${r0} + localIndex, T - 1u);
          lseR = LSE[row];
          deltaR = select(DELTA[row], 0.0, SIGMOID);
        } }`;
  const stash = `${stashTile(q, 'qs')}
        ${stashTile(o, 'dos')}
        if (localIndex < N) { lset[localIndex] = lseR; deltat[localIndex] = deltaR; }`;
  const head = `${declareRegs(q)} ${declareRegs(o)} var lseR = 0.0; var deltaR = 0.0;
        let NI = (iHi - jLo + N - 1u) / N;`;
  const position = `let h = g * G + it / NI; let i0 = jLo + (it % NI) * N;
          let slope = select(0.0, S[h], ALIBI);`;
  if (!prefetch) {
    return `${head}
        for (var it = 0u; it < G * NI; it++) {
          ${position}
          workgroupBarrier();
          ${fetch('h', 'i0')}
          ${stash}
          workgroupBarrier();`;
  }
  return `${head}
        ${fetch('g * G', 'jLo')}
        for (var it = 0u; it < G * NI; it++) {
          ${position}
          workgroupBarrier();
          ${stash}
          workgroupBarrier();
          if (it + 1u < G * NI) { let hn = g * G + (it + 1u) / NI; let inext = jLo + ((it + 1u) % NI) * N; ${fetch('hn', 'inext')} }`;
}

/** The scheduling order: blocks of equal weight together, the heaviest first. */
function blockOrder(heads: string, heavyFirst: 'low' | 'high'): string {
  return `let blk = wg / (B * ${heads});
        let hd = wg % ${heads};
        let b = (wg / ${heads}) % B;
        let blkIdx = ${heavyFirst === 'low' ? 'blk' : 'NB - 1u - blk'};`;
}

/** Copies of a loop body per trip: the largest power of two up to `u` that divides `trips`. */
export function copies(u: number, trips: number): number {
  let c = 1;
  while (c * 2 <= u && trips % (c * 2) === 0) c *= 2;
  return c;
}

/** What a v2 kernel's code generation derives from the shape, R and the tuning. */
function plan(d: Dims, R: number, t: V2CodeGen, kernel: V2Kernel) {
  const k = shapeOf(t, R, kernel);
  return {
    k,
    ...k,
    prefetch: t.prefetch[kernel],
    // copies per trip of the loops over D / 4 and over N: the largest power of two up to the
    // unrolling that divides the trips (D / 4 = 24 at D = 96 takes 8 copies of 16 asked)
    uc: copies(t.unroll ?? 1, d.D / 4),
    un: copies(t.unroll ?? 1, k.N),
    DC: d.D / 32,
    NB: Math.ceil(d.T / k.M),
  };
}

/**
 * Forward: o [B, T, H, D] then lse [B, H, T], packed. Per key block: S (R x C per thread, rows
 * ty + 8a, keys tx + 8b); the row max through workgroup memory (8 partial maxima per row); each
 * thread keeps the running max of its rows and a partial running sum over its own keys (summed
 * over the 8 threads of a row at the end); P^T into workgroup memory; then o = o corr + P V on the
 * accumulator tile (rows ty R + r).
 */
export function forwardProgramV2(d: Dims, r: Resolved, R: number, t: V2CodeGen = tuning): KernelProgram {
  const { k, M, N, C, TY, DC, NB, uc, un, prefetch } = plan(d, R, t, 'forward');
  const each = (f: (a: number, b: number) => string) =>
    range(R)
      .flatMap((a) => range(C).map((b) => f(a, b)))
      .join('\n          ');
  const key = keyOf('tsf_fa2_fwd', d, r, [R, k.C, tuningKey(t, 'forward')]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B * d.T * d.H * d.D + d.B * d.H * d.T],
    inputs: ['Q', 'K', 'V', 'S'],
    components: [4, 4, 4, 1],
    threads: k.threads,
    numGroups: d.B * d.H * NB,
    body: v2Body(t, `
      ${constants(d, r)}
      ${tileConstants(d, k)}
      var<workgroup> qs: array<vec4<f32>, ${M * (d.D / 4 + 1)}>;
      var<workgroup> ks: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> vs: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> pt: array<vec${R}<f32>, ${N * (M / R + 1)}>; // P^T: [key][query / R]
      var<workgroup> part: array<f32, ${M * 8}>; // per query row, one partial max (then sum) per tx
      var<workgroup> crow: array<f32, ${M}>; // per query row: the correction of o, then the final max
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NB) { return; }
        ${blockOrder('H', 'high')}
        let h = hd;
        let g = h / G;
        let tx = localIndex % 8u;
        let ty = localIndex / 8u;
        let iLo = blkIdx * M;
        let slope = select(0.0, S[h], ALIBI);
        ${loadTile('qs', 'Q', 'H', 'iLo', M, d.D, k.threads, ' * SCALE')}
        var o: array<vec4<f32>, ${R * DC}>; ${range(R * DC).map((i) => `o[${i}] = vec4<f32>(0.0);`).join(' ')}
        // rows ty + 8a: running max, partial running sum over keys tx + 8b
        var m: array<f32, ${R}>;
        var l: array<f32, ${R}>; ${zero('l', R)}
        ${range(R)
          .map((a) => `m[${a}] = MASKED;`)
          .join(' ')}
        let kHi = min(T, iLo + M);
        var kLo = 0u;
        if (WINDOW > 0u && iLo + 1u > WINDOW) { kLo = iLo + 1u - WINDOW; }
        ${keyBlocks(k, d.D, prefetch)}
          var s: array<f32, ${R * C}>; ${zero('s', R * C)}
          ${scoreTile('s', 'qs', 'ks', k, t.vecScores, uc)}
          ${each(
            (a, b) => `{
            let i = iLo + ty + ${TY * a}u; let j = j0 + tx + ${8 * b}u;
            var x = s[${a * C + b}];
            x -= slope * (f32(i) - f32(j)); // slope 0 without ALiBi
            x = select(MASKED, x, visible(i, j));
            s[${a * C + b}] = x;
          }`,
          )}
          if (!SIGMOID) {
            ${range(R)
              .map((a) => `part[(ty + ${TY * a}u) * 8u + tx] = ${range(C).reduce((acc, b) => (b === 0 ? `s[${a * C}]` : `max(${acc}, s[${a * C + b}])`), '')};`)
              .join('\n            ')}
          }
          workgroupBarrier();
          ${range(R)
            .map(
              (a) => `{
            let qi = ty + ${TY * a}u;
            var corr = 1.0;
            var mt = m[${a}];
            if (!SIGMOID) {
              for (var t = 0u; t < 8u; t++) { mt = max(mt, part[qi * 8u + t]); }
              corr = exp(m[${a}] - mt);
              m[${a}] = mt;
              l[${a}] *= corr;
            }
            ${range(C)
              .map(
                (b) => `{
              let x = s[${a * C + b}];
              let p = select(0.0, select(exp(x - mt), 1.0 / (1.0 + exp(-(x + SBIAS))), SIGMOID), x > MASKED);
              l[${a}] += p;
              pt[(tx + ${8 * b}u) * PS + qi / R][qi % R] = p;
            }`,
              )
              .join('\n            ')}
            if (tx == 0u) { crow[qi] = corr; }
          }`,
            )
            .join('\n          ')}
          workgroupBarrier();
          ${range(R)
            .map((rr) => `{ let cr = crow[ty * R + ${rr}u]; ${range(DC).map((c) => `o[${rr * DC + c}] *= cr;`).join(' ')} }`)
            .join('\n          ')}
          ${accumulate(R, DC, [['o', 'pt', 'vs']], un)}
        }
        // the row sums: 8 partial sums per row; the row max from the tx == 0 thread of the row
        workgroupBarrier();
        ${range(R)
          .map((a) => `part[(ty + ${TY * a}u) * 8u + tx] = l[${a}]; if (tx == 0u) { crow[ty + ${TY * a}u] = m[${a}]; }`)
          .join('\n        ')}
        workgroupBarrier();
        ${range(R)
          .map(
            (rr) => `{
          let qi = ty * R + ${rr}u;
          let i = iLo + qi;
          var lsum = 0.0;
          for (var t = 0u; t < 8u; t++) { lsum += part[qi * 8u + t]; }
          if (i < T) {
            let inv = select(1.0 / lsum, 1.0, SIGMOID);
            let base = ((b * T + i) * H + h) * D4 * 4u;
            ${range(DC)
              .map(
                (c) => `{ let col = base + (tx + ${8 * c}u) * 4u; let v = o[${rr * DC + c}] * inv;
              result[col] = v.x; result[col + 1u] = v.y; result[col + 2u] = v.z; result[col + 3u] = v.w; }`,
              )
              .join('\n            ')}
            if (tx == 0u) { result_1[(b * H + h) * T + i] = select(crow[qi] + log(lsum), 0.0, SIGMOID); }
          }
        }`,
          )
          .join('\n        ')}
      }`),
  }));
}

/**
 * dQ: per (b, h, query block), q (scaled) and dO resident; per key block S and dP (R x C per
 * thread), dS = P (dP - delta) into workgroup memory as dS^T, then dq += dS K; dq = scale * that.
 */
export function dqProgramV2(d: Dims, r: Resolved, R: number, t: V2CodeGen = tuning): KernelProgram {
  const { k, M, N, C, TY, DC, NB, uc, un, prefetch } = plan(d, R, t, 'dq');
  const key = keyOf('tsf_fa2_dq', d, r, [R, k.C, tuningKey(t, 'dq')]);
  return cachedProgram(key, () => ({
    key,
    outputShape: [d.B, d.T, d.H, d.D],
    inputs: ['Q', 'K', 'V', 'S', 'DO', 'LSE', 'DELTA'],
    components: [4, 4, 4, 1, 4, 1, 1],
    threads: k.threads,
    numGroups: d.B * d.H * NB,
    body: v2Body(t, `
      ${constants(d, r)}
      ${dsSnippet}
      ${tileConstants(d, k)}
      var<workgroup> qs: array<vec4<f32>, ${M * (d.D / 4 + 1)}>;
      var<workgroup> dos: array<vec4<f32>, ${M * (d.D / 4 + 1)}>;
      var<workgroup> ks: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> vs: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> dst: array<vec${R}<f32>, ${N * (M / R + 1)}>; // dS^T: [key][query / R]
      var<workgroup> lset: array<f32, ${M}>;
      var<workgroup> deltat: array<f32, ${M}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * H * NB) { return; }
        ${blockOrder('H', 'high')}
        let h = hd;
        let g = h / G;
        let tx = localIndex % 8u;
        let ty = localIndex / 8u;
        let iLo = blkIdx * M;
        let slope = select(0.0, S[h], ALIBI);
        ${loadTile('qs', 'Q', 'H', 'iLo', M, d.D, k.threads, ' * SCALE')}
        ${loadTile('dos', 'DO', 'H', 'iLo', M, d.D, k.threads)}
        if (localIndex < M) {
          let i = min(iLo + localIndex, T - 1u);
          lset[localIndex] = LSE[(b * H + h) * T + i];
          deltat[localIndex] = select(DELTA[(b * H + h) * T + i], 0.0, SIGMOID);
        }
        var dq: array<vec4<f32>, ${R * DC}>; ${range(R * DC).map((i) => `dq[${i}] = vec4<f32>(0.0);`).join(' ')}
        let kHi = min(T, iLo + M);
        var kLo = 0u;
        if (WINDOW > 0u && iLo + 1u > WINDOW) { kLo = iLo + 1u - WINDOW; }
        ${keyBlocks(k, d.D, prefetch)}
          var s: array<f32, ${R * C}>; ${zero('s', R * C)}
          var dp: array<f32, ${R * C}>; ${zero('dp', R * C)}
          ${t.fusedScores ? scoreTiles([['s', 'qs', 'ks'], ['dp', 'dos', 'vs']], k, t.vecScores, uc) : `${scoreTile('s', 'qs', 'ks', k, t.vecScores, uc)}\n${scoreTile('dp', 'dos', 'vs', k, t.vecScores, uc)}`}
          ${range(R)
            .map((a) =>
              range(C)
                .map(
                  (bb) => `{
            let qi = ty + ${TY * a}u; let kj = tx + ${8 * bb}u;
            let i = iLo + qi; let j = j0 + kj;
            var x = s[${a * C + bb}];
            x -= slope * (f32(i) - f32(j)); // slope 0 without ALiBi
            x = select(MASKED, x, visible(i, j));
            dst[kj * PS + qi / R][qi % R] = dscore(weight(x, lset[qi]), dp[${a * C + bb}], deltat[qi]);
          }`,
                )
                .join('\n'),
            )
            .join('\n')}
          workgroupBarrier();
          ${accumulate(R, DC, [['dq', 'dst', 'ks']], un)}
        }
        ${range(R)
          .map(
            (rr) => `{
          let i = iLo + ty * R + ${rr}u;
          if (i < T) {
            let base = ((b * T + i) * H + h) * D4 * 4u;
            ${range(DC)
              .map(
                (c) => `{ let col = base + (tx + ${8 * c}u) * 4u; let v = dq[${rr * DC + c}] * SCALE;
              result[col] = v.x; result[col + 1u] = v.y; result[col + 2u] = v.z; result[col + 3u] = v.w; }`,
              )
              .join('\n            ')}
          }
        }`,
          )
          .join('\n        ')}
      }`),
  }));
}

/**
 * dK and dV, packed [2, B, T, Hkv, D]: per (b, kv head, key block), k and v resident; for each query
 * head of the kv head and each query block that sees the keys: S^T and dP^T (R x C per thread, keys
 * by queries), P^T and dS^T into workgroup memory, then dv += P^T dO and dk += dS^T (scale q).
 */
export function dkvProgramV2(d: Dims, r: Resolved, R: number, t: V2CodeGen = tuning): KernelProgram {
  const { k, M, N, C, TY, DC, NB, uc, un, prefetch } = plan(d, R, t, 'dkv');
  const key = keyOf('tsf_fa2_dkv', d, r, [R, k.C, tuningKey(t, 'dkv')]);
  const one = !!t.oneWeightTile;
  // per score of the thread's R x C micro-tile: keys kj (rows of ks), queries qi (rows of qs)
  const each = (f: (a: number, bb: number) => string) =>
    range(R)
      .flatMap((a) =>
        range(C).map(
          (bb) => `{
              let kj = ty + ${TY * a}u; let qi = tx + ${8 * bb}u;
              ${f(a, bb)}
            }`,
        ),
      )
      .join('\n            ');
  const p = (a: number, bb: number) => `let i = i0 + qi; let j = jLo + kj;
              var x = s[${a * C + bb}];
              x -= slope * (f32(i) - f32(j)); // slope 0 without ALiBi
              x = select(MASKED, x, visible(i, j));
              let p = weight(x, lset[qi]);`;
  const cell = 'qi * PS + kj / R][kj % R]';
  // P^T and dS^T into workgroup memory, then dv += P^T dO and dk += dS^T (scale q): in one pass
  // with a tile each, or P (kept in s), dv, dS, dk in turns through one tile
  const epilogue = !one
    ? `${each((a, bb) => `${p(a, bb)}
              pt[${cell} = p;
              dst[${cell} = dscore(p, dp[${a * C + bb}], deltat[qi]);`)}
            workgroupBarrier();
            ${accumulate(R, DC, [
              ['dv', 'pt', 'dos'],
              ['dk', 'dst', 'qs'],
            ], un)}`
    : `${each((a, bb) => `${p(a, bb)}
              s[${a * C + bb}] = p;
              pt[${cell} = p;`)}
            workgroupBarrier();
            ${accumulate(R, DC, [['dv', 'pt', 'dos']], un)}
            workgroupBarrier();
            ${each((a, bb) => `pt[${cell} = dscore(s[${a * C + bb}], dp[${a * C + bb}], deltat[qi]);`)}
            workgroupBarrier();
            ${accumulate(R, DC, [['dk', 'pt', 'qs']], un)}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [2 * d.B * d.T * d.HKV * d.D],
    inputs: ['Q', 'K', 'V', 'S', 'DO', 'LSE', 'DELTA'],
    components: [4, 4, 4, 1, 4, 1, 1],
    threads: k.threads,
    numGroups: d.B * d.HKV * NB,
    body: v2Body(t, `
      ${constants(d, r)}
      ${dsSnippet}
      ${tileConstants(d, k)}
      var<workgroup> ks: array<vec4<f32>, ${M * (d.D / 4 + 1)}>;
      var<workgroup> vs: array<vec4<f32>, ${M * (d.D / 4 + 1)}>;
      var<workgroup> qs: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> dos: array<vec4<f32>, ${N * (d.D / 4 + 1)}>;
      var<workgroup> pt: array<vec${R}<f32>, ${N * (M / R + 1)}>; // P: [query][key / R]${one ? ', then dS' : ''}
      ${one ? '' : `var<workgroup> dst: array<vec${R}<f32>, ${N * (M / R + 1)}>; // dS: [query][key / R]`}
      var<workgroup> lset: array<f32, ${N}>;
      var<workgroup> deltat: array<f32, ${N}>;
      var<workgroup> wgShared: u32;
      fn kernel() {
        if (localIndex == 0u) { wgShared = wgIndex(); }
        let wg = workgroupUniformLoad(&wgShared);
        if (wg >= B * HKV * NB) { return; }
        // the earliest keys are seen by the most queries: low key blocks first
        ${blockOrder('HKV', 'low')}
        let g = hd;
        let tx = localIndex % 8u;
        let ty = localIndex / 8u;
        let jLo = blkIdx * M;
        ${loadTile('ks', 'K', 'HKV', 'jLo', M, d.D, k.threads)}
        ${loadTile('vs', 'V', 'HKV', 'jLo', M, d.D, k.threads)}
        var dk: array<vec4<f32>, ${R * DC}>; ${range(R * DC).map((i) => `dk[${i}] = vec4<f32>(0.0);`).join(' ')}
        var dv: array<vec4<f32>, ${R * DC}>; ${range(R * DC).map((i) => `dv[${i}] = vec4<f32>(0.0);`).join(' ')}
        // queries that see this key block: [jLo, iHi)
        var iHi = T;
        if (WINDOW > 0u) { iHi = min(T, jLo + M - 1u + WINDOW); }
        ${queryBlocks(k, d.D, prefetch)}
            var s: array<f32, ${R * C}>; ${zero('s', R * C)}
            var dp: array<f32, ${R * C}>; ${zero('dp', R * C)}
            ${t.fusedScores ? scoreTiles([['s', 'ks', 'qs'], ['dp', 'vs', 'dos']], k, t.vecScores, uc) : `${scoreTile('s', 'ks', 'qs', k, t.vecScores, uc)}\n${scoreTile('dp', 'vs', 'dos', k, t.vecScores, uc)}`}
            ${epilogue}
        }
        ${range(R)
          .map(
            (rr) => `{
          let j = jLo + ty * R + ${rr}u;
          if (j < T) {
            let base = ((b * T + j) * HKV + g) * D4 * 4u;
            ${range(DC)
              .map(
                (c) => `{ let col = base + (tx + ${8 * c}u) * 4u; let k4 = dk[${rr * DC + c}]; let v4 = dv[${rr * DC + c}];
              result[col] = k4.x; result[col + 1u] = k4.y; result[col + 2u] = k4.z; result[col + 3u] = k4.w;
              result_1[col] = v4.x; result_1[col + 1u] = v4.y; result_1[col + 2u] = v4.z; result_1[col + 3u] = v4.w; }`,
              )
              .join('\n            ')}
          }
        }`,
          )
          .join('\n        ')}
      }`),
  }));
}
