import { fused, tf } from '@tsformer/core';
import { FLASH_ATTENTION, flashAttention, flashAttentionComposite, setFlashAttentionImpl, type FlashAttentionImpl, type FlashAttentionOptions } from './attention.js';
import { setV2Tuning, type V2Tuning } from './attention-v2.js';
import { kernelActive } from './program.js';
import { RMS_NORM, rmsNorm, rmsNormComposite } from './rmsnorm.js';
import { ROPE, rope, ropeComposite, type RopeLayout } from './rope.js';
import { LAYER_NORM, layerNorm, layerNormComposite } from './layernorm.js';
import { GELU, gelu, geluComposite } from './gelu.js';
import { SUM_SQUARES, sumSquares, sumSquaresComposite } from './sumsq.js';
import { ADAMW, adamwUpdate, adamwUpdateComposite, type AdamWHyper } from './adamw.js';
import { SPARSE_XENT, sparseCrossEntropy, sparseCrossEntropyComposite } from './xent.js';
import { matMulShape, runMatMul } from './matmul.js';
import type { WebGpuBackendLike } from './program.js';
import { glaChunk, glaChunkComposite } from '@tsformer/ops';
import { deltaChunk, deltaChunkComposite, gatedDeltaChunk, gatedDeltaChunkComposite, type DeltaResult } from '@tsformer/ops';

/**
 * Kernel checks: each fused kernel against its composite definition, on the backend now active,
 * outputs and gradients, on fresh random inputs. Environment-agnostic: run in headless Chromium
 * (SwiftShader) by the package's test, and at full sizes on a GPU by scripts/bench/gpu-check.ts.
 */
export interface CheckResult {
  name: string;
  /** Whether the fused kernel ran (false: the composite ran on both sides, nothing was checked). */
  fused: boolean;
  /** Relative RMS error per compared tensor: `out`, then one per gradient. */
  errors: Record<string, number>;
  ms: number;
}

/** Small deterministic generator (mulberry32) so a failing seed can be replayed. */
export function randn(shape: number[], seed: number): tf.Tensor {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next());
  return tf.tensor(out, shape);
}

/** sqrt(sum (a - b)^2 / sum b^2), in float64 on the host. */
export async function relRms(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const [x, y] = await Promise.all([a.data(), b.data()]);
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    const d = (x[i] as number) - (y[i] as number);
    num += d * d;
    den += (y[i] as number) * (y[i] as number);
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

type Fn = (xs: tf.Tensor[]) => tf.Tensor;

/**
 * Compares f (fused) with g (composite) on inputs xs: the outputs, and the gradients of
 * sum(out * w) (w random) with respect to each input named in `gradNames`.
 */
export async function compare(name: string, fused: boolean, xs: tf.Tensor[], names: string[], f: Fn, g: Fn, seed: number, grads = true): Promise<CheckResult> {
  const t0 = performance.now();
  const errors: Record<string, number> = {};
  const probe = tf.tidy(() => f(xs));
  const w = randn(probe.shape, seed + 99);
  const loss = (h: Fn) => (...a: tf.Tensor[]) => tf.sum(tf.mul(h(a), w)) as tf.Scalar;
  const ref = tf.tidy(() => g(xs));
  errors.out = await relRms(probe, ref);
  if (grads) {
    const gf = tf.grads(loss(f))(xs);
    const gg = tf.grads(loss(g))(xs);
    for (let i = 0; i < xs.length; i++) errors[`d${names[i]}`] = await relRms(gf[i]!, gg[i]!);
    tf.dispose([...gf, ...gg]);
  }
  tf.dispose([probe, ref, w]);
  return { name, fused, errors, ms: performance.now() - t0 };
}

export interface AttentionCase {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  D: number;
  opts: FlashAttentionOptions;
}

export function attentionCaseName(c: AttentionCase): string {
  const o = c.opts;
  const parts = [`B${c.B} T${c.T} H${c.H}/${c.Hkv} D${c.D}`, o.score ?? 'softmax'];
  if (o.window) parts.push(`window ${o.window}`);
  if (o.alibiSlopes) parts.push('alibi');
  return `attention ${parts.join(' ')}`;
}

/** ALiBi's geometric slopes 2^(-8(h+1)/H). */
export function geometricSlopes(H: number): number[] {
  return Array.from({ length: H }, (_, h) => 2 ** ((-8 * (h + 1)) / H));
}

/** The attention cases: MHA, GQA, MQA, window, ALiBi, sigmoid; `scale` multiplies B and T. */
export function attentionCases(scale = 1): AttentionCase[] {
  const T = (t: number) => t * scale;
  return [
    { B: 2, T: T(37), H: 2, Hkv: 2, D: 16, opts: {} },
    { B: 1, T: T(70), H: 4, Hkv: 2, D: 32, opts: {} },
    { B: 1, T: T(45), H: 3, Hkv: 1, D: 8, opts: { window: 7 } },
    { B: 1, T: T(50), H: 4, Hkv: 2, D: 16, opts: { alibiSlopes: geometricSlopes(4) } },
    { B: 1, T: T(41), H: 2, Hkv: 1, D: 16, opts: { score: 'sigmoid', sigmoidBias: -Math.log(T(41)), window: 12 } },
    { B: 1, T: T(66), H: 2, Hkv: 2, D: 64, opts: { window: 40, alibiSlopes: [0.5, 0.125] } },
    // the register-blocked kernels (attention-v2.ts: D a multiple of 32; blocks of 32 or 16 rows),
    // T not a multiple of the block: GQA with a window, MQA with ALiBi, sigmoid, three vec4 columns
    { B: 2, T: T(45), H: 4, Hkv: 2, D: 32, opts: { window: 19 } },
    { B: 1, T: T(50), H: 3, Hkv: 1, D: 64, opts: { alibiSlopes: geometricSlopes(3) } },
    { B: 1, T: T(41), H: 2, Hkv: 1, D: 32, opts: { score: 'sigmoid', sigmoidBias: -3, window: 12 } },
    { B: 1, T: T(37), H: 2, Hkv: 2, D: 96, opts: { window: 20, alibiSlopes: [0.5, 0.125] } },
  ];
}

export async function checkAttention(c: AttentionCase, seed: number): Promise<CheckResult> {
  const q = randn([c.B, c.T, c.H, c.D], seed);
  const k = randn([c.B, c.T, c.Hkv, c.D], seed + 1);
  const v = randn([c.B, c.T, c.Hkv, c.D], seed + 2);
  const r = await compare(
    attentionCaseName(c),
    kernelActive(FLASH_ATTENTION),
    [q, k, v],
    ['q', 'k', 'v'],
    ([a, b, d]) => flashAttention(a!, b!, d!, c.opts),
    ([a, b, d]) => flashAttentionComposite(a!, b!, d!, c.opts),
    seed,
  );
  tf.dispose([q, k, v]);
  return r;
}

export async function checkRmsNorm(N: number, D: number, gated: boolean, seed: number): Promise<CheckResult> {
  const x = randn([N, D], seed);
  const w = tf.tidy(() => randn([D], seed + 1).mul(0.2).add(1));
  const g = randn([N, D], seed + 2);
  const xs = gated ? [x, w, g] : [x, w];
  const r = await compare(
    `rmsnorm${gated ? ' gated' : ''} N${N} D${D}`,
    kernelActive(RMS_NORM),
    xs,
    gated ? ['x', 'weight', 'gate'] : ['x', 'weight'],
    ([a, b, c]) => rmsNorm(a!, b!, 1e-5, c),
    ([a, b, c]) => rmsNormComposite(a!, b!, 1e-5, c),
    seed,
  );
  tf.dispose([x, w, g]);
  return r;
}

export async function checkLayerNorm(N: number, D: number, bias: boolean, seed: number): Promise<CheckResult> {
  // an offset and a scale per row, so that the mean and variance matter
  const x = tf.tidy(() => randn([N, D], seed).mul(randn([N, 1], seed + 3).abs().add(0.5)).add(randn([N, 1], seed + 4)));
  const w = tf.tidy(() => randn([D], seed + 1).mul(0.2).add(1));
  const b = randn([D], seed + 2);
  const xs = bias ? [x, w, b] : [x, w];
  const r = await compare(
    `layernorm${bias ? '' : ' no bias'} N${N} D${D}`,
    kernelActive(LAYER_NORM),
    xs,
    bias ? ['x', 'weight', 'bias'] : ['x', 'weight'],
    ([a, c, d]) => layerNorm(a!, c!, d, 1e-5),
    ([a, c, d]) => layerNormComposite(a!, c!, d, 1e-5),
    seed,
  );
  tf.dispose([x, w, b]);
  return r;
}

export async function checkGelu(shape: number[], seed: number): Promise<CheckResult> {
  const x = tf.tidy(() => randn(shape, seed).mul(3)); // into tanh's saturated range too
  const r = await compare(`gelu [${shape}]`, kernelActive(GELU), [x], ['x'], ([a]) => gelu(a!), ([a]) => geluComposite(a!), seed);
  x.dispose();
  return r;
}

/** Sum of squares of many tensors (more than one group of bindings, sizes around the chunk edges). */
export async function checkSumSquares(count: number, scale: number, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const sizes = Array.from({ length: count }, (_, i) => [1, 3, 8191, 8192, 8193, 20000 * scale + 7][i % 6]!);
  const xs = sizes.map((n, i) => randn([n], seed + i));
  const a = sumSquares(xs);
  const b = sumSquaresComposite(xs);
  const out = await relRms(a, b);
  tf.dispose([...xs, a, b]);
  return { name: `sum of squares of ${count} tensors`, fused: kernelActive(SUM_SQUARES), errors: { out }, ms: performance.now() - t0 };
}

/**
 * Host-made tensors reach the GPU through @tsformer/core's writeBuffer uploads: float32, int32 and
 * bool values (scalars too) must read back exactly, also through buffers reused from the pool.
 */
export async function checkUploads(seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  let wrong = 0;
  for (let round = 0; round < 3; round++) {
    const f = Float32Array.from({ length: 37 }, (_, i) => Math.sin(seed + i + round) * 1e3);
    const n = Int32Array.from({ length: 11 }, (_, i) => (seed * 7 + i * 1_000_003 + round) | 0);
    const b = [true, false, true, true, false];
    const out = tf.tidy(() => [tf.tensor1d(f).add(0), tf.tensor1d(n, 'int32').add(0), tf.tensor1d(b, 'bool').logicalAnd(true).cast('int32'), tf.scalar(-2.5).mul(tf.scalar(4))]);
    const [x, y, z, w] = await Promise.all(out.map((t) => t.data()));
    for (let i = 0; i < f.length; i++) if (x![i] !== f[i]) wrong++;
    for (let i = 0; i < n.length; i++) if (y![i] !== n[i]) wrong++;
    for (let i = 0; i < b.length; i++) if (z![i] !== (b[i] ? 1 : 0)) wrong++;
    if (w![0] !== -10) wrong++;
    tf.dispose(out); // their buffers go back to the pool for the next round
  }
  return { name: 'uploads from the host (float32, int32, bool, scalars; pooled buffers)', fused: (tf.backend() as { tsformerFastUploads?: boolean }).tsformerFastUploads === true, errors: { wrongValues: wrong }, ms: performance.now() - t0 };
}

/**
 * Uniform buffers cached across dispatches (@tsformer/core's webgpu-dispatch.ts): the same ops
 * repeated on the same shapes, with their buffers going back to the pool between rounds and new
 * uniform values each round, must give the host's results every round, and the later rounds must
 * hit the cache.
 */
export async function checkDispatchCaches(seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const stats = (tf.backend() as { tsformerDispatchCaches?: { uniformHits: number } }).tsformerDispatchCaches;
  const before = stats?.uniformHits ?? 0;
  let worst = 0;
  for (let round = 0; round < 4; round++) {
    const a = randn([67, 33], seed + round);
    const b = randn([33, 70], seed + 10 + round);
    const y = tf.tidy(() => tf.relu(tf.matMul(a, b).add(round)).sum(1).mul(0.5 + round));
    const [av, bv, yv] = (await Promise.all([a.data(), b.data(), y.data()])) as Float32Array[];
    for (let i = 0; i < 67; i++) {
      let row = 0;
      for (let j = 0; j < 70; j++) {
        let dot = round;
        for (let k = 0; k < 33; k++) dot += av![i * 33 + k]! * bv![k * 70 + j]!;
        row += Math.max(0, dot);
      }
      worst = Math.max(worst, Math.abs(yv![i]! - row * (0.5 + round)) / Math.max(1, Math.abs(row)));
    }
    tf.dispose([a, b, y]);
  }
  const hits = stats ? stats.uniformHits - before : 0;
  return { name: 'cached uniform buffers across repeated ops', fused: stats !== undefined && hits > 0, errors: { out: worst }, ms: performance.now() - t0 };
}

export async function checkRope(B: number, T: number, H: number, D: number, R: number, layout: RopeLayout, seed: number): Promise<CheckResult> {
  const x = randn([B, T, H, D], seed);
  const angles = tf.tidy(() => randn([T, R / 2], seed + 1).mul(3));
  const cos = tf.cos(angles);
  const sin = tf.sin(angles);
  const r = await compare(
    `rope ${layout} B${B} T${T} H${H} D${D} R${R}`,
    kernelActive(ROPE),
    [x],
    ['x'],
    ([a]) => rope(a!, cos, sin, layout),
    ([a]) => ropeComposite(a!, cos, sin, layout),
    seed,
  );
  tf.dispose([x, angles, cos, sin]);
  return r;
}

export async function checkAdamW(n: number, seed: number): Promise<CheckResult> {
  const [p, m, g] = [randn([n], seed), tf.tidy(() => randn([n], seed + 1).mul(0.1)), randn([n], seed + 2)];
  const v = tf.tidy(() => randn([n], seed + 3).square().mul(0.01));
  const h: AdamWHyper = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 7 };
  const flat = (u: { p: tf.Tensor; m: tf.Tensor; v: tf.Tensor }) => tf.concat([u.p, u.m, u.v]);
  const r = await compare(
    `adamw n${n}`,
    kernelActive(ADAMW),
    [p, m, v, g],
    ['p', 'm', 'v', 'g'],
    ([a, b, c, d]) => flat(adamwUpdate(a!, b!, c!, d!, h)),
    ([a, b, c, d]) => flat(adamwUpdateComposite(a!, b!, c!, d!, h)),
    seed,
    false,
  );
  tf.dispose([p, m, v, g]);
  return r;
}

/**
 * The guarded AdamW (clip factor and finite check in the kernel): against the composite with a
 * finite step (norm above maxNorm, so the gradient is scaled), and with a NaN loss or an infinite
 * norm, where p, m and v must come back exactly unchanged.
 */
export async function checkAdamWGuarded(n: number, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const [p, m, g] = [randn([n], seed), tf.tidy(() => randn([n], seed + 1).mul(0.1)), randn([n], seed + 2)];
  const v = tf.tidy(() => randn([n], seed + 3).square().mul(0.01));
  const h: AdamWHyper = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 3 };
  const flat = (u: { p: tf.Tensor; m: tf.Tensor; v: tf.Tensor }) => tf.concat([u.p, u.m, u.v]);
  const errors: Record<string, number> = {};
  const finite = tf.tensor1d([7.5, 2.25]);
  const a = tf.tidy(() => flat(adamwUpdate(p, m, v, g, h, { normAndLoss: finite, maxNorm: 1 })));
  const b = tf.tidy(() => flat(adamwUpdateComposite(p, m, v, g, h, { normAndLoss: finite, maxNorm: 1 })));
  errors.clipped = await relRms(a, b);
  const before = flat({ p, m, v });
  for (const [what, nl] of [['nanLoss', [7.5, NaN]], ['infNorm', [Infinity, 2.25]]] as const) {
    const bad = tf.tensor1d(nl as unknown as number[]);
    const c = tf.tidy(() => flat(adamwUpdate(p, m, v, g, h, { normAndLoss: bad, maxNorm: 1 })));
    const [x, y] = await Promise.all([c.data(), before.data()]);
    let same = x.length === y.length ? 0 : 1;
    for (let i = 0; i < y.length; i++) if (x[i] !== y[i]) same = 1;
    errors[what] = same; // 0: unchanged bit for bit
    tf.dispose([bad, c]);
  }
  tf.dispose([p, m, v, g, finite, a, b, before]);
  return { name: `adamw guarded (clip, non-finite) n${n}`, fused: kernelActive(ADAMW), errors, ms: performance.now() - t0 };
}

export async function checkSparseCrossEntropy(N: number, V: number, seed: number): Promise<CheckResult> {
  const logits = tf.tidy(() => randn([N, V], seed).mul(3));
  const targets = tf.tidy(() => randn([N], seed + 1).abs().mul(V / 3).floor().clipByValue(0, V - 1).cast('int32'));
  const r = await compare(
    `sparse cross-entropy N${N} V${V}`,
    kernelActive(SPARSE_XENT),
    [logits],
    ['logits'],
    ([a]) => sparseCrossEntropy(a!, targets),
    ([a]) => sparseCrossEntropyComposite(a!, targets),
    seed,
  );
  tf.dispose([logits, targets]);
  return r;
}

/** The two-stage Sum (large reductions with few outputs) against float64 sums on the host. */
export async function checkSum(batch: number, n: number, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const x = tf.tidy(() => randn([batch, n], seed).add(1)); // mean 1: sums of about n
  const host = await x.data();
  const rows = new Float64Array(batch);
  for (let b = 0; b < batch; b++) for (let i = 0; i < n; i++) rows[b] = rows[b]! + (host[b * n + i] as number);
  const total = rows.reduce((a, c) => a + c, 0);
  const perRow = tf.sum(x, 1);
  const all = tf.sum(x);
  const kept = tf.tidy(() => tf.sum(x.reshape([batch, 2, n / 2]), [1, 2], true));
  const err = async (t: tf.Tensor, want: ArrayLike<number>) => {
    const got = await t.data();
    let num = 0;
    let den = 0;
    for (let i = 0; i < want.length; i++) {
      num += ((got[i] as number) - want[i]!) ** 2;
      den += want[i]! ** 2;
    }
    return Math.sqrt(num / den);
  };
  const errors = { rows: await err(perRow, rows), all: await err(all, [total]), keepDims: await err(kept, rows) };
  const shapeOk = tf.util.arraysEqual(kept.shape, [batch, 1, 1]) && perRow.shape.length === 1 && all.rank === 0;
  tf.dispose([x, perRow, all, kept]);
  const ours = tf.getBackend() === 'webgpu' && (tf.getKernel('Sum', 'webgpu') as { tsformer?: boolean } | undefined)?.tsformer === true;
  return { name: `sum (two-stage) ${batch}x${n}`, fused: shapeOk && ours, errors, ms: performance.now() - t0 };
}

/** AddN of more tensors than one shader can bind, against float64 sums on the host. */
export async function checkAddN(count: number, n: number, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const xs = Array.from({ length: count }, (_, i) => randn([n], seed + i));
  const want = new Float64Array(n);
  for (const x of xs) {
    const d = await x.data();
    for (let i = 0; i < n; i++) want[i] = want[i]! + (d[i] as number);
  }
  const y = tf.addN(xs);
  const got = await y.data();
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((got[i] as number) - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  tf.dispose([...xs, y]);
  const ours = tf.getBackend() === 'webgpu' && (tf.getKernel('AddN', 'webgpu') as { tsformer?: boolean } | undefined)?.tsformer === true;
  return { name: `addN of ${count} tensors`, fused: ours, errors: { out: Math.sqrt(num / den) }, ms: performance.now() - t0 };
}

export interface MatMulCase {
  a: number[];
  b: number[];
  transA?: boolean;
  transB?: boolean;
  /** Force a block size and K step (run the kernel directly); default: tf.matMul through the registered kernel. */
  block?: 64 | 128;
  /** Rectangular blocks (rows, columns of C). */
  bm?: 64 | 128;
  bn?: 64 | 128;
  bk?: 8 | 16;
  order?: 'n' | 'm';
  split?: number;
  unroll?: boolean;
}

/** Odd shapes (not multiples of the tiles, K below a tile step), transposes, batch broadcast. */
export function matMulCases(): MatMulCase[] {
  return [
    { a: [130, 67], b: [67, 129] },
    { a: [100, 5], b: [5, 70] },
    { a: [64, 200], b: [64, 132], transA: true },
    { a: [3, 77, 36], b: [3, 150, 36], transB: true },
    { a: [1, 40, 90], b: [4, 133, 40], transA: true, transB: true },
    { a: [2, 3, 129, 64], b: [64, 256] },
    { a: [260, 45], b: [45, 300], block: 128 },
    { a: [45, 260], b: [300, 45], transA: true, transB: true, block: 128 },
    { a: [2, 131, 28], b: [28, 201], block: 64 },
    { a: [2, 131, 28], b: [201, 28], transB: true, block: 64, bk: 8 },
    { a: [37, 150], b: [37, 190], transA: true, block: 128, bk: 8 },
    { a: [2, 300, 33], b: [2, 33, 270], block: 128, order: 'm' },
    { a: [150, 70], b: [130, 150], transA: true, transB: true, block: 64, order: 'm' },
    { a: [1536, 24], b: [24, 1540] },
    // rectangular blocks (128 x 64: 8 x 4 per thread; 64 x 128: 4 x 8)
    { a: [261, 45], b: [45, 131], bm: 128, bn: 64 },
    { a: [45, 133], b: [259, 45], transA: true, transB: true, bm: 64, bn: 128, bk: 16 },
    { a: [2, 70, 36], b: [2, 140, 36], transB: true, bm: 64, bn: 128, order: 'm' },
    { a: [300, 130], b: [300, 66], transA: true, bm: 128, bn: 64, split: 2 },
    // K steps written out (constant offsets) instead of a loop
    { a: [2, 140, 77], b: [77, 260], bm: 64, bn: 128, unroll: true },
    { a: [90, 200], b: [333, 90], transA: true, transB: true, block: 128, unroll: true },
    { a: [131, 70], b: [70, 129], block: 64, bk: 16, unroll: true, split: 2 },
    // K split into slices summed afterwards: forced, uneven, and the automatic choice (few blocks, long K)
    { a: [700, 70], b: [700, 90], transA: true, block: 64, split: 3 },
    { a: [2, 65, 333], b: [2, 333, 66], block: 64, bk: 8, split: 5 },
    { a: [130, 2050], b: [2050, 96], block: 128, split: 2 },
    { a: [2048, 64], b: [2048, 72], transA: true },
  ];
}

/** op(A) op(B) against float64 products on the host. `fused`: this package's kernel ran. */
export async function checkMatMul(c: MatMulCase, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const transA = c.transA ?? false;
  const transB = c.transB ?? false;
  const a = randn(c.a, seed);
  const b = randn(c.b, seed + 1);
  const shape = matMulShape(a, b, transA, transB);
  const onWebGpu = tf.getBackend() === 'webgpu';
  const ours = (tf.getKernel('BatchMatMul', 'webgpu') as { tsformer?: boolean } | undefined)?.tsformer === true;
  let y: tf.Tensor;
  if ((c.block || c.bm || c.bn || c.order || c.split || c.unroll) && onWebGpu && shape) {
    y = tf.engine().makeTensorFromTensorInfo(runMatMul(tf.backend() as unknown as WebGpuBackendLike, a, b, transA, transB, { block: c.block, bm: c.bm, bn: c.bn, bk: c.bk, order: c.order, split: c.split, unroll: c.unroll })!);
  } else y = tf.matMul(a, b, transA, transB);
  const [ha, hb, hy] = await Promise.all([a.data(), b.data(), y.data()]);
  const s = matMulShape(a, b, transA, transB)!;
  const want = new Float64Array(s.batch * s.M * s.N);
  for (let bi = 0; bi < s.batch; bi++) {
    const ao = (s.batchA === 1 ? 0 : bi) * s.M * s.K;
    const bo = (s.batchB === 1 ? 0 : bi) * s.K * s.N;
    for (let m = 0; m < s.M; m++) {
      for (let n = 0; n < s.N; n++) {
        let acc = 0;
        for (let k = 0; k < s.K; k++) {
          const av = ha[ao + (transA ? k * s.M + m : m * s.K + k)] as number;
          const bv = hb[bo + (transB ? n * s.K + k : k * s.N + n)] as number;
          acc += av * bv;
        }
        want[(bi * s.M + m) * s.N + n] = acc;
      }
    }
  }
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += ((hy[i] as number) - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  const shapeOk = tf.util.arraysEqual(y.shape, s.outShape);
  tf.dispose([a, b, y]);
  const name = `matmul [${c.a}]${transA ? 'T' : ''} x [${c.b}]${transB ? 'T' : ''}${c.block ? ` block ${c.block}` : ''}${c.bm ? ` ${c.bm}x${c.bn}` : ''}${c.bk ? ` bk ${c.bk}` : ''}${c.order ? ` order ${c.order}` : ''}${c.split ? ` split ${c.split}` : ''}${c.unroll ? ' unrolled' : ''}`;
  return { name, fused: onWebGpu && ours && shapeOk && s.M >= 64 && s.N >= 64, errors: { out: Math.sqrt(num / Math.max(den, 1e-30)) }, ms: performance.now() - t0 };
}

export interface DeltaCase {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
  /** Gated DeltaNet (with g) or DeltaNet. */
  gated: boolean;
  /** The composite's chunk size (default 64); the kernel takes min(it, 64, T). */
  chunkSize?: number;
  /** Pass a random initial state (and check its gradient). */
  initialState: boolean;
  /** g = -decay * softplus(N(0, 1)) per step (gated only). */
  decay?: number;
  /** beta = betaMax * sigmoid(N(0, 1)): 1 or 2 (negative eigenvalues). Default 1. */
  betaMax?: number;
}

export function deltaCaseName(c: DeltaCase): string {
  const parts = [`B${c.B} T${c.T} H${c.H} K${c.K} V${c.V}`, `C${c.chunkSize ?? 64}`];
  if (c.gated) parts.push(`decay ${c.decay ?? 1}`);
  if (c.initialState) parts.push('S0');
  if (c.betaMax === 2) parts.push('beta<2');
  return `${c.gated ? 'gated deltanet' : 'deltanet'} ${parts.join(' ')}`;
}

/**
 * DeltaNet and Gated DeltaNet cases; `scale` multiplies T. Ragged T (not a multiple of the chunk),
 * a sequence shorter than one chunk, B*H > 1, value tiles (V > 16), strong decay.
 */
export function deltaCases(scale = 1): DeltaCase[] {
  const T = (t: number) => t * scale;
  return [
    { B: 2, T: T(45), H: 2, K: 16, V: 8, gated: false, chunkSize: 16, initialState: true },
    { B: 1, T: T(70), H: 2, K: 32, V: 24, gated: true, decay: 3, initialState: false },
    { B: 2, T: T(37), H: 2, K: 12, V: 20, gated: true, decay: 0.3, chunkSize: 16, initialState: true, betaMax: 2 },
    { B: 1, T: T(29), H: 2, K: 8, V: 4, gated: false, initialState: false },
  ];
}

/**
 * `deltaChunk` / `gatedDeltaChunk` of @tsformer/ops (through the fused registry, so the kernels run
 * on webgpu) against their composite forms: o, the final state, and the gradients of
 * sum(o * w1) + sum(finalState * w2) with respect to every input. `fused`: the registry's hook took
 * these inputs (else the composite ran on both sides).
 */
export async function checkDelta(c: DeltaCase, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const { B, T, H, K, V } = c;
  const l2 = (x: tf.Tensor) => x.div(x.square().sum(-1, true).sqrt()); // per head, over K
  const q = tf.tidy(() => l2(randn([B, T, H, K], seed)));
  const k = tf.tidy(() => l2(randn([B, T, H, K], seed + 1)));
  const v = randn([B, T, H, V], seed + 2);
  const beta = tf.tidy(() => tf.sigmoid(randn([B, T, H], seed + 3)).mul(c.betaMax ?? 1));
  const g = c.gated ? tf.tidy(() => tf.softplus(randn([B, T, H], seed + 4)).mul(-(c.decay ?? 1))) : undefined;
  const s0 = c.initialState ? randn([B, H, K, V], seed + 5) : undefined;
  const xs = [q, k, v, beta, ...(g ? [g] : []), ...(s0 ? [s0] : [])];
  const names = ['q', 'k', 'v', 'beta', ...(g ? ['g'] : []), ...(s0 ? ['initialState'] : [])];
  const call = (composite: boolean) => (a: tf.Tensor[]): DeltaResult => {
    const [qq, kk, vv, bb] = a as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const gg = g ? a[4] : undefined;
    const opts = { chunkSize: c.chunkSize, initialState: s0 ? a[a.length - 1] : undefined };
    if (gg) return composite ? gatedDeltaChunkComposite(qq, kk, vv, bb, gg, opts) : gatedDeltaChunk(qq, kk, vv, bb, gg, opts);
    return composite ? deltaChunkComposite(qq, kk, vv, bb, opts) : deltaChunk(qq, kk, vv, bb, opts);
  };
  const probe = fused('deltaChunk')?.(q, k, v, beta, g, { scale: 1 / Math.sqrt(K), chunkSize: c.chunkSize ?? 64, initialState: s0 });
  if (probe) tf.dispose([probe.o, probe.finalState]);
  const w1 = randn([B, T, H, V], seed + 6);
  const w2 = randn([B, H, K, V], seed + 7);
  const errors: Record<string, number> = {};
  const got = call(false)(xs);
  const want = call(true)(xs);
  errors.o = await relRms(got.o, want.o);
  errors.finalState = await relRms(got.finalState, want.finalState);
  tf.dispose([got.o, got.finalState, want.o, want.finalState]);
  const loss = (composite: boolean) => (...a: tf.Tensor[]) => {
    const r = call(composite)(a);
    return tf.add(tf.sum(tf.mul(r.o, w1)), tf.sum(tf.mul(r.finalState, w2))) as tf.Scalar;
  };
  const gf = tf.grads(loss(false))(xs);
  const gc = tf.grads(loss(true))(xs);
  for (let i = 0; i < xs.length; i++) errors[`d${names[i]}`] = await relRms(gf[i]!, gc[i]!);
  tf.dispose([...gf, ...gc, ...xs, w1, w2]);
  return { name: deltaCaseName(c), fused: probe !== undefined, errors, ms: performance.now() - t0 };
}

/**
 * Cumsum (tfjs's reverse scans reuse one pipeline for every length: see cumsum.ts): along the
 * middle axis of [2, L, 3] for each L in turn, every exclusive/reverse combination, against
 * float64 host sums. `fused`: the package's Cumsum is registered.
 */
export async function checkCumsum(lengths: number[], seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const errors: Record<string, number> = {};
  for (const L of lengths) {
    const x = randn([2, L, 3], seed + L);
    const xd = await x.data();
    for (const exclusive of [false, true]) {
      for (const reverse of [false, true]) {
        const y = tf.cumsum(x, 1, exclusive, reverse);
        const want = new Float32Array(xd.length);
        for (let o = 0; o < 2; o++) {
          for (let i = 0; i < 3; i++) {
            let acc = 0;
            for (let m = 0; m < L; m++) {
              const l = reverse ? L - 1 - m : m;
              const at = (o * L + l) * 3 + i;
              if (exclusive) want[at] = acc;
              acc += xd[at]!;
              if (!exclusive) want[at] = acc;
            }
          }
        }
        const w = tf.tensor(want, [2, L, 3]);
        errors[`L${L}${exclusive ? ' excl' : ''}${reverse ? ' rev' : ''}`] = await relRms(y, w);
        tf.dispose([y, w]);
      }
    }
    x.dispose();
  }
  const ours = (tf.getKernel('Cumsum', tf.getBackend()) as { tsformer?: boolean } | undefined)?.tsformer === true;
  return { name: `cumsum [2, L, 3] axis 1, L ${lengths.join(', ')}`, fused: ours, errors, ms: performance.now() - t0 };
}
export interface GlaCase {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
  /** Log gates g = -maxDecay * u, u uniform in [0, 1): down to -maxDecay per step. */
  maxDecay: number;
  /** Pass a random initial state (and check its gradient). */
  initialState: boolean;
  /** Also return the final state (its cotangent reaches the kernel's backward). */
  finalState: boolean;
  /** Chunk size of both the composite and the kernel (16, 32 or 64). */
  chunkSize: number;
}

export function glaCaseName(c: GlaCase): string {
  const parts = [`B${c.B} T${c.T} H${c.H} K${c.K} V${c.V}`, `C${c.chunkSize}`, `decay ${c.maxDecay}`];
  if (c.initialState) parts.push('S0');
  if (c.finalState) parts.push('final');
  return `gla ${parts.join(' ')}`;
}

/**
 * GLA cases; `scale` multiplies T. T not a multiple of the chunk, B*H > 1, strong decay (gates
 * down to -5 per step: chunk sums of 64 steps far below -88), widths that are not multiples of
 * the tiles (K 80: two channel tiles of 64; V 72: two column tiles of 64).
 */
export function glaCases(scale = 1): GlaCase[] {
  const T = (t: number) => t * scale;
  return [
    { B: 2, T: T(45), H: 2, K: 16, V: 16, maxDecay: 0.1, initialState: false, finalState: false, chunkSize: 16 },
    { B: 1, T: T(70), H: 3, K: 32, V: 24, maxDecay: 5, initialState: false, finalState: false, chunkSize: 32 },
    { B: 2, T: T(40), H: 1, K: 8, V: 40, maxDecay: 1, initialState: true, finalState: true, chunkSize: 16 },
    { B: 1, T: T(67), H: 2, K: 80, V: 72, maxDecay: 5, initialState: true, finalState: true, chunkSize: 64 },
  ];
}

/**
 * `glaChunk` of @tsformer/ops through the fused registry (the kernel on webgpu) against
 * `glaChunkComposite`: o (and the final state), and the gradients of sum(o * w1) (+ sum(finalState
 * * w2)) with respect to every input. `fused`: the registry's hook took these inputs.
 */
export async function checkGla(c: GlaCase, seed: number): Promise<CheckResult> {
  const t0 = performance.now();
  const { B, T, H, K, V } = c;
  const q = randn([B, T, H, K], seed);
  const k = randn([B, T, H, K], seed + 1);
  const v = randn([B, T, H, V], seed + 2);
  const g = tf.tidy(() => tf.randomUniform([B, T, H, K], 0, 1, 'float32', seed + 3).mul(-c.maxDecay));
  const s0 = c.initialState ? randn([B, H, K, V], seed + 4) : undefined;
  const xs = [q, k, v, g, ...(s0 ? [s0] : [])];
  const names = ['q', 'k', 'v', 'g', ...(s0 ? ['initialState'] : [])];
  const call = (composite: boolean) => (a: tf.Tensor[]) => {
    const [qq, kk, vv, gg] = a as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const opts = { initialState: s0 ? a[4] : undefined, outputFinalState: c.finalState, chunkSize: c.chunkSize };
    return composite ? glaChunkComposite(qq, kk, vv, gg, opts) : glaChunk(qq, kk, vv, gg, opts);
  };
  const probe = fused('glaChunk')?.(q, k, v, g, { scale: 1 / Math.sqrt(K), chunkSize: c.chunkSize, initialState: s0, outputFinalState: c.finalState });
  if (probe) tf.dispose([probe.o, ...(probe.finalState ? [probe.finalState] : [])]);
  const w1 = randn([B, T, H, V], seed + 5);
  const w2 = randn([B, H, K, V], seed + 6);
  const errors: Record<string, number> = {};
  const got = call(false)(xs);
  const want = call(true)(xs);
  errors.o = await relRms(got.o, want.o);
  if (c.finalState) errors.finalState = await relRms(got.finalState!, want.finalState!);
  tf.dispose([got.o, want.o, ...(c.finalState ? [got.finalState!, want.finalState!] : [])]);
  const loss = (composite: boolean) => (...a: tf.Tensor[]) => {
    const r = call(composite)(a);
    const lo = tf.sum(tf.mul(r.o, w1));
    return (r.finalState ? tf.add(lo, tf.sum(tf.mul(r.finalState, w2))) : lo) as tf.Scalar;
  };
  const gf = tf.grads(loss(false))(xs);
  const gc = tf.grads(loss(true))(xs);
  for (let i = 0; i < xs.length; i++) errors[`d${names[i]}`] = await relRms(gf[i]!, gc[i]!);
  tf.dispose([...gf, ...gc, ...xs, w1, w2]);
  return { name: glaCaseName(c), fused: probe !== undefined, errors, ms: performance.now() - t0 };
}

/**
 * The checks in three groups, so that a slow device (SwiftShader in CI) can run them as separate
 * calls: the attention cases on the default set, the other sets and code-generation choices on a
 * few cases, and every other kernel.
 */
export const CHECK_GROUPS = ['attention', 'attention-variants', 'others'] as const;
export type CheckGroup = (typeof CHECK_GROUPS)[number];

/** Every check of the groups asked for (all by default), in order. */
export async function runChecks(
  opts: { scale?: number; seed?: number; groups?: readonly CheckGroup[]; log?: (r: CheckResult) => void } = {},
): Promise<CheckResult[]> {
  const groups = opts.groups ?? CHECK_GROUPS;
  for (const g of groups) if (!CHECK_GROUPS.includes(g)) throw new Error(`runChecks: unknown check group '${g}' (groups: ${CHECK_GROUPS.join(', ')})`);
  const seed = opts.seed ?? (Date.now() % 1_000_000);
  const out: CheckResult[] = [];
  const push = (r: CheckResult) => {
    out.push(r);
    opts.log?.(r);
  };
  // each group's seeds start at their own offset, so a group gives the same inputs alone or with the others
  let n = 0;
  const k = opts.scale ?? 1;
  if (groups.includes('attention')) for (const c of attentionCases(k)) push(await checkAttention(c, seed + 10 * n++));
  n = 1000;
  // the default set (v2) runs every case (group 'attention'); the other sets and v2's other
  // code-generation choices (setV2Tuning) on a few: v1 on the first two cases, the others on cases v2 takes (D a
  // multiple of 32: MHA at D=32, GQA with a window, MQA with ALiBi at D=64)
  const v2Cases = attentionCases(k).filter((c) => c.D % 32 === 0);
  const tuningNow = setV2Tuning({});
  const variants: Array<[label: string, impl: FlashAttentionImpl, tuning: Partial<V2Tuning>, cases: AttentionCase[]]> = [
    ['v1', 'v1', {}, attentionCases(k).slice(0, 2)],
    ['mixed', 'mixed', {}, v2Cases.slice(0, 2)],
    ['v2 without prefetch', 'v2', { prefetch: { forward: false, dq: false, dkv: false } }, v2Cases.slice(0, 2)],
    ['v2 prefetching in every kernel', 'v2', { prefetch: { forward: true, dq: true, dkv: true } }, v2Cases.slice(1, 3)],
    ['v2 with per-thread arrays', 'v2', { scalars: false }, v2Cases.slice(0, 1)],
    ['v2 with separate score loops', 'v2', { fusedScores: false }, v2Cases.slice(1, 2)],
    // the shapes below set rows, walked rows and thread counts in full (each is a block shape, not
    // a change to the default's); on devices with 32 KiB of workgroup memory (SwiftShader) the
    // shapes that do not fit run as v2Fit shrinks them
    ['v2 with 32 x 32 blocks', 'v2', { rows: { forward: 4, dq: 4, dkv: 4 }, cols: {}, wide: {} }, v2Cases.slice(2, 4)],
    ['v2 with the tenth run\'s choices (dot-product scores, 16 x 16 blocks, 64-thread forward, loops not written out)', 'v2', { vecScores: false, rows: {}, cols: {}, wide: {}, unroll: 1, oneWeightTile: false }, v2Cases.slice(0, 2)],
    ['v2 with the eleventh run\'s choices (16 x 16 blocks, 128-thread forward, loops written out 8 times)', 'v2', { rows: {}, cols: {}, wide: { forward: true }, unroll: 8, oneWeightTile: false }, v2Cases.slice(0, 3)],
    ['v2 with 128-thread workgroups (2 x 2 tiles)', 'v2', { rows: {}, cols: {}, wide: { forward: true, dq: true, dkv: true } }, v2Cases.slice(0, 3)],
    ['v2 with inner loops unrolled 4 times', 'v2', { unroll: 4 }, v2Cases.slice(0, 2)],
    ['v2 with inner loops written out 8 times', 'v2', { unroll: 8 }, v2Cases.slice(1, 3)],
    ['v2 with inner loops written out 32 times', 'v2', { unroll: 32 }, [v2Cases[0]!, v2Cases[5]!]],
    ['v2 with 128-thread workgroups, 32-row blocks', 'v2', { rows: { forward: 4, dq: 4, dkv: 4 }, cols: {}, wide: { forward: true, dq: true, dkv: true } }, v2Cases.slice(3, 4)],
    ['v2 with 2 x 4 score micro-tiles (32-row walked blocks) at 64 threads', 'v2', { rows: {}, cols: { forward: 4, dq: 4, dkv: 4 }, wide: {} }, v2Cases.slice(0, 3)],
    ['v2 with 4 x 2 score micro-tiles (128-thread forward)', 'v2', { rows: { forward: 4, dq: 4, dkv: 4 }, cols: { forward: 2, dq: 2, dkv: 2 }, wide: { forward: true } }, v2Cases.slice(1, 3)],
    ['v2 with 128-thread workgroups and 2 x 4 score micro-tiles', 'v2', { rows: {}, wide: { forward: true, dq: true, dkv: true }, cols: { forward: 4, dq: 4, dkv: 4 } }, v2Cases.slice(2, 4)],
    ['v2 with dot-product scores', 'v2', { vecScores: false }, v2Cases.slice(1, 3)],
    // dK/dV's default (4 x 2 tiles at 128 threads, P and dS in one tile) runs in its exact shape at
    // D = 32 on SwiftShader's 32 KiB, shrunk to 2 x 2 tiles at D = 64; with two weight tiles it fits
    // at D = 32 only (52 KiB at D = 64 on the H100's 48: 2 x 2 tiles there)
    ['v2 with dK/dV\'s P and dS in two workgroup tiles', 'v2', { oneWeightTile: false }, [v2Cases[0]!, v2Cases[4]!, v2Cases[3]!]],
    ['v2 with the twelfth run\'s dK/dV (2 x 4 tiles at 128 threads, P and dS in two workgroup tiles)', 'v2', { rows: { ...tuningNow.rows, dkv: 2 }, cols: { ...tuningNow.cols, dkv: 4 }, oneWeightTile: false }, v2Cases.slice(1, 3)],
    ['v2 with the twelfth run\'s dK/dV shape, P and dS in one workgroup tile', 'v2', { rows: { ...tuningNow.rows, dkv: 2 }, cols: { ...tuningNow.cols, dkv: 4 }, oneWeightTile: true }, v2Cases.slice(3, 5)],
  ];
  for (const [label, gen, tuning, cases] of groups.includes('attention-variants') ? variants : []) {
    const prev = setFlashAttentionImpl(gen);
    const prevTuning = setV2Tuning(tuning);
    try {
      for (const c of cases) {
        const r = await checkAttention(c, seed + 10 * n++);
        push({ ...r, name: `${r.name} (${label})` });
      }
    } finally {
      setFlashAttentionImpl(prev);
      setV2Tuning(prevTuning);
    }
  }
  if (!groups.includes('others')) return out;
  n = 2000;
  push(await checkRmsNorm(26 * k, 40, false, seed + 10 * n++));
  push(await checkRmsNorm(26 * k, 300, true, seed + 10 * n++));
  push(await checkLayerNorm(26 * k, 300, true, seed + 10 * n++));
  push(await checkLayerNorm(26 * k, 40, false, seed + 10 * n++));
  push(await checkGelu([3 * k, 7, 64], seed + 10 * n++));
  push(await checkGelu([5 * k, 13], seed + 10 * n++));
  push(await checkRope(2, 9 * k, 3, 16, 16, 'half', seed + 10 * n++));
  push(await checkRope(2, 9 * k, 3, 16, 12, 'interleaved', seed + 10 * n++));
  push(await checkAdamW(1000 * k + 3, seed + 10 * n++));
  push(await checkAdamWGuarded(1000 * k + 5, seed + 10 * n++));
  push(await checkSparseCrossEntropy(37 * k, 1001, seed + 10 * n++));
  push(await checkSum(3, 100_000 * k, seed + 10 * n++));
  push(await checkAddN(40, 1000 * k, seed + 10 * n++));
  push(await checkSumSquares(40, k, seed + 10 * n++));
  push(await checkUploads(seed + 10 * n++));
  push(await checkDispatchCaches(seed + 10 * n++));
  for (const c of matMulCases()) push(await checkMatMul(c, seed + 10 * n++));
  push(await checkCumsum([5, 9, 16], seed + 10 * n++));
  for (const c of glaCases(k)) push(await checkGla(c, seed + 10 * n++));
  for (const c of deltaCases(k)) push(await checkDelta(c, seed + 10 * n++));
  return out;
}
