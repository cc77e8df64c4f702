/**
 * Fused causal attention on the GPU, old kernels (v1: one thread per query or key row) against the
 * register-blocked ones (v2: packages/kernels-webgpu/src/attention-v2.ts), switched with
 * `setFlashAttentionImpl`. For B, H, D fixed (GPT-2 small: 8, 12, 64) and each T: forward ms and
 * forward+backward ms per call (wall, synchronized on a GPU-side reduction of every result), the GPU
 * time of one forward+backward from timestamp queries, split per program (tsf_fa_* are v1's,
 * tsf_fa2_* v2's; tsf_fa_delta and tsf_slice are shared), and the speed-up. Then v2 against v1 at
 * T = 1024 (relative RMS of o, dq, dk, dv), MHA and GQA + window + ALiBi + sigmoid shapes.
 *
 *   node scripts/bench/bundle-gpu.mjs scripts/bench/gpu-attn.ts     (after ../shared/gpu/kit.sh, docs/benchmarks.md)
 *   device: bash .gpu/run.sh gpu-attn.mjs [--T 512,1024,2048,4096] [--B 8] [--H 12] [--D 64] [--budget 2] [--impl v1,v2] [--check 1024]
 */
// bundled statically: a bundle cannot import the backend module by name at run time
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { selectBackend, tf } from '@tsformer/core';
import { FLASH_ATTENTION, flashAttention, kernelActive, registerWebGpuKernels, type FlashAttentionOptions } from '@tsformer/kernels-webgpu';
import { setFlashAttentionImpl, setV2Tuning, v2TuningFromFlags, type FlashAttentionImpl } from '@tsformer/kernels-webgpu';
import { profileGpu, releasePool, timer } from './gpu-common.js';
import { geometricSlopes, relRms } from '../../packages/kernels-webgpu/src/checks.js';

/** The library's v2 choices, before any run's flags. */
const defaults = setV2Tuning({});

const args = process.argv.slice(2);
const arg = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const Ts = arg('T', '512,1024,2048,4096').split(',').map(Number);
const B = Number(arg('B', '8'));
const H = Number(arg('H', '12'));
const D = Number(arg('D', '64'));
/**
 * Kernel sets; dash-separated suffixes change the v2 kernels' code-generation defaults (see
 * v2TuningFromFlags: e.g. v2-np-arr, v2-dot-w0-u1 for the tenth run's choices).
 */
const impls = arg('impl', 'v1,v2,mixed').split(',');
/** Seconds of timed repetitions per measurement (after a warm-up and a probe). */
const budgetMs = Number(arg('budget', '2')) * 1000;
/** Sequence length of the v2-against-v1 agreement lines. */
const checkT = Number(arg('check', '1024'));

const now = () => performance.now();

const timeOnce = timer(budgetMs, 2, 50);
/** Mean wall ms per call: a warm-up, a probe, then as many calls as fit the budget (2..50), one sync at the end. */
const time = async (fn: () => tf.Tensor | tf.Tensor[]): Promise<number> => (await timeOnce(fn)).ms;
const profile = profileGpu;

const fmt = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(2));

interface Row {
  fwd: number;
  fwdBwd: number;
  gpu: number;
  programs: string;
}

async function measure(T: number, impl: string): Promise<Row> {
  const [set, ...flags] = impl.split('-');
  if (!['v1', 'v2', 'mixed'].includes(set!)) throw new Error(`--impl ${impl}: the kernel set must be v1, v2 or mixed`);
  setFlashAttentionImpl(set as FlashAttentionImpl);
  setV2Tuning(v2TuningFromFlags(flags, defaults));
  const q = tf.randomNormal([B, T, H, D]);
  const k = tf.randomNormal([B, T, H, D]);
  const v = tf.randomNormal([B, T, H, D]);
  // an explicit upstream gradient: no loss reduction inside the timed region
  const dy = tf.randomNormal([B, T, H, D]);
  const fb = () => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => flashAttention(a, b, c))([q, k, v], dy);
  try {
    const fwd = await time(() => flashAttention(q, k, v));
    const fwdBwd = await time(fb);
    const p = await profile(fb);
    const programs = [...p.by.entries()]
      .sort((a, b) => b[1] - a[1])
      .map(([n, ms]) => `${n} ${ms.toFixed(2)}`)
      .join(', ');
    return { fwd, fwdBwd, gpu: p.kernelMs, programs };
  } finally {
    tf.dispose([q, k, v, dy]);
    releasePool();
  }
}

/** v2 against v1 on one shape: relative RMS of o and of each gradient of sum(o * w). */
async function agreement(T: number, Hkv: number, opts: FlashAttentionOptions): Promise<string> {
  const q = tf.randomNormal([B, T, H, D]);
  const k = tf.randomNormal([B, T, Hkv, D]);
  const v = tf.randomNormal([B, T, Hkv, D]);
  const w = tf.randomNormal([B, T, H, D]);
  const run = (impl: FlashAttentionImpl) => {
    setFlashAttentionImpl(impl);
    const o = flashAttention(q, k, v, opts);
    const g = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(flashAttention(a, b, c, opts), w)))([q, k, v]);
    return [o, ...g];
  };
  const a = run('v1');
  const b = run('v2');
  const names = ['o', 'dq', 'dk', 'dv'];
  const errs: string[] = [];
  for (let i = 0; i < 4; i++) errs.push(`${names[i]} ${(await relRms(b[i]!, a[i]!)).toExponential(2)}`);
  tf.dispose([q, k, v, w, ...a, ...b]);
  releasePool();
  return errs.join(', ');
}

async function main(): Promise<void> {
  const info = await selectBackend('webgpu', { webgpuModule });
  registerWebGpuKernels();
  console.log(`backend: ${info.name} (${info.detail}); fused attention kernel active: ${kernelActive(FLASH_ATTENTION)}`);
  console.log(`causal attention fp32, B=${B} H=${H} D=${D}; impls ${impls.join(', ')}; budget ${budgetMs / 1000} s per measurement`);
  const rows = new Map<string, Row>();
  for (const T of Ts) {
    for (const impl of impls) {
      try {
        const r = await measure(T, impl);
        rows.set(`${T} ${impl}`, r);
        console.log(`T=${T} ${impl}: forward ${fmt(r.fwd)} ms, forward+backward ${fmt(r.fwdBwd)} ms (GPU ${fmt(r.gpu)} ms: ${r.programs})`);
      } catch (e) {
        console.log(`T=${T} ${impl}: error ${(e as Error).message}`);
      }
    }
  }
  // causal FLOPs: the forward is 2 products over half the scores (2 * T^2/2 * D multiply-adds each, per
  // head); a backward that recomputes S in its dQ and dK/dV kernels does 7 more (S twice, dP twice, dV, dK, dQ)
  console.log(`\n| T | impl | forward ms | forward+backward ms | GPU ms (f+b) | forward TFLOP/s | f+b TFLOP/s | f+b speed-up vs v1 |`);
  console.log('|---:|---|---:|---:|---:|---:|---:|---:|');
  for (const T of Ts) {
    const half = B * H * T * T * D;
    for (const impl of impls) {
      const r = rows.get(`${T} ${impl}`);
      if (!r) continue;
      const base = rows.get(`${T} v1`);
      console.log(
        `| ${T} | ${impl} | ${fmt(r.fwd)} | ${fmt(r.fwdBwd)} | ${fmt(r.gpu)} | ${fmt((2 * half) / (r.fwd * 1e9))} | ${fmt((9 * half) / (r.fwdBwd * 1e9))} | ${base ? `${(base.fwdBwd / r.fwdBwd).toFixed(2)}x` : '-'} |`,
      );
    }
  }
  if (impls.includes('v1') && impls.includes('v2')) {
    console.log(`\nv2 vs v1 at T=${checkT}, B=${B} H=${H} D=${D}, relative RMS:`);
    console.log(`  MHA softmax: ${await agreement(checkT, H, {})}`);
    const Hkv = H % 4 === 0 ? H / 4 : H;
    console.log(`  GQA (Hkv=${Hkv}), window 300, ALiBi: ${await agreement(checkT, Hkv, { window: 300, alibiSlopes: geometricSlopes(H) })}`);
    console.log(`  sigmoid (bias -log T), window 512: ${await agreement(checkT, H, { score: 'sigmoid', sigmoidBias: -Math.log(checkT), window: 512 })}`);
  }
  setFlashAttentionImpl('v2');
}

await main();
