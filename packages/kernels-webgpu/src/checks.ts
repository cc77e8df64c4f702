import { tf } from '@tsformer/core';
import { FLASH_ATTENTION, flashAttention, flashAttentionComposite, type FlashAttentionOptions } from './attention.js';
import { kernelActive } from './program.js';

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

/** Every check, in order. */
export async function runChecks(opts: { scale?: number; seed?: number; log?: (r: CheckResult) => void } = {}): Promise<CheckResult[]> {
  const seed = opts.seed ?? (Date.now() % 1_000_000);
  const out: CheckResult[] = [];
  const push = (r: CheckResult) => {
    out.push(r);
    opts.log?.(r);
  };
  let n = 0;
  for (const c of attentionCases(opts.scale ?? 1)) push(await checkAttention(c, seed + 10 * n++));
  return out;
}
