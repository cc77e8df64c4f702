/**
 * The GPU benchmark (issue 7): one command, one table. Runs on the lent H100 through the kit:
 *
 *   npm run bench:gpu:kit        (the kit, then this entry and gpu-check bundled; docs/benchmarks.md has the device commands)
 *   device: bash .gpu/run.sh gpu.mjs
 *   flags: --matmul 1024,2048,4096|none  --calibrate N|none  --no-attention  --no-linear  --gpt2 BxT[,BxT]|none
 *          --vocab V[,V] (default 50257,256)  --no-kernels  --no-references
 *          --torch FILE  --linear-torch FILE  --peer-dir DIR   (references measured earlier instead of now)
 *
 * First runs the references to completion in this command (gpu-references.ts): PyTorch
 * (attention_torch.py, linear_torch.py through python3) and the peer (the kit's peer-gpu.mjs beside
 * this bundle, on peer.txt); then prints, for causal attention at B, H, D fixed and each T: our fused
 * WGSL kernel, the tfjs composite path (dense scores), and PyTorch (naive fp32, SDPA fp32), forward
 * and forward+backward in ms, with the ratios; the chunked linear attention table (GLA, DeltaNet,
 * Gated DeltaNet: our kernels, the composite, PyTorch; gpu-linear.ts); then training tokens/s of a
 * GPT-2-small-shaped model on our webgpu path against PyTorch eager fp32 and the peer. Every number
 * is measured in this run.
 */
// bundled statically: a bundle cannot import the backend module by name at run time
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { readFileSync, existsSync } from 'node:fs';
import { Rng, selectBackend, tf } from '@tsformer/core';
import {
  FLASH_ATTENTION,
  FLASH_ATTENTION_GRAD,
  kernelActive,
  originalMatMul,
  registerWebGpuKernels,
  runMatMul,
  setMatMulPolicy,
  type MatMulCombo,
  type MatMulPolicy,
  type TileChoice,
  flashAttention,
  flashAttentionComposite,
} from '@tsformer/kernels-webgpu';
import { AdamW, trainStep, type Batch } from '@tsformer/train';
import { linearTable } from './gpu-linear.js';
import { gpt2Model, profileGpu, releasePool, sync, timer, topPrograms } from './gpu-common.js';
import { jsonLines, linearTorchReference, peerReference, torchReference, type JsonLine } from './gpu-references.js';

const args = process.argv.slice(2);
const arg = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const Ts = arg('T', '1024,2048,4096,8192,16384').split(',').map(Number);
const B = Number(arg('B', '8'));
const H = Number(arg('H', '12'));
const D = Number(arg('D', '64'));
const gpt2 = arg('gpt2', '8x512,8x1024');
const torchFile = arg('torch', '');
/** A folder with the peer's JSON lines (@genai-fi/nanogpt trained in the same call), one file peer-BxT.jsonl per shape. */
const peerDir = arg('peer-dir', '');
/** The peer's training logs per `${b}x${T}` (from --peer-dir, or run by this command). */
const peerLogs = new Map<string, string>();
/** Model shape of the training measurement: layers, width, heads, vocabulary (GPT-2 small by default). */
const [L, dModel, heads, vocab] = arg('model', '12,768,12,50257').split(',').map(Number) as [number, number, number, number];
/** `webgpu` on the GPU; `cpu` (tiny sizes) smoke-tests this script anywhere. */
const backendName = arg('backend', 'webgpu') as 'webgpu' | 'cpu';
/** Seconds of timed repetitions per measurement (after one warm-up and one probe). */
const budgetMs = Number(arg('budget', '2')) * 1000;
/** Square matmul sizes for the matmul table, or `none`. */
const matmulSizes = arg('matmul', '1024,2048,4096');

const now = () => performance.now();

const timeOnce = timer(budgetMs);
/** Mean ms per call (gpu-common's timer) and the tfjs pool's size after it. */
async function time(fn: () => tf.Tensor | tf.Tensor[]): Promise<{ ms: number; peakGiB: number }> {
  const { ms } = await timeOnce(fn);
  const mem = tf.memory() as { numBytesAllocatedInGPU?: number };
  return { ms, peakGiB: (mem.numBytesAllocatedInGPU ?? NaN) / 2 ** 30 };
}

/** GPU time of one call (timestamp queries), total and the top programs by time. */
async function profile(f: () => tf.TensorContainer): Promise<{ kernelMs: number; top: string }> {
  const p = await profileGpu(f);
  return { kernelMs: p.kernelMs, top: topPrograms(p.by) };
}

interface Row {
  T: number;
  [k: string]: number | string | undefined;
}

function fmt(x: number | string | undefined, digits = 2): string {
  if (x === undefined) return '-';
  if (typeof x === 'string') return x;
  return x >= 100 ? x.toFixed(0) : x.toFixed(digits);
}

async function attentionTable(torch: Array<Record<string, unknown>>): Promise<void> {
  const device = (tf.backend() as unknown as { device?: { limits: { maxStorageBufferBindingSize: number } } }).device;
  const limit = device?.limits.maxStorageBufferBindingSize ?? 2 ** 31;
  const rows: Row[] = [];
  for (const T of Ts) {
    const row: Row = { T };
    const q = tf.randomNormal([B, T, H, D]);
    const k = tf.randomNormal([B, T, H, D]);
    const v = tf.randomNormal([B, T, H, D]);
    // an explicit upstream gradient: no loss reduction inside the timed region
    const dOut = tf.randomNormal([B, T, H, D]);
    const grads = (f: typeof flashAttention) => () => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => f(a, b, c))([q, k, v], dOut);
    try {
      const fw = await time(() => flashAttention(q, k, v));
      const fb = await time(grads(flashAttention));
      Object.assign(row, { oursFwd: fw.ms, oursFwdBwd: fb.ms, oursGiB: fb.peakGiB });
      if (T === Ts[0]) {
        const p = await profile(grads(flashAttention));
        console.log(`profile, fused forward+backward at T=${T}: GPU ${p.kernelMs.toFixed(1)} ms of ${fb.ms.toFixed(1)} ms wall; ${p.top}`);
        row.oursGpuFwdBwd = p.kernelMs;
      }
      // causal FLOPs: forward 2 matmuls over half the scores; our backward recomputes S twice (dq and
      // dk/dv kernels) and does 5 matmuls: 7 half-score matmuls
      const half = B * H * T * T * D; // 2 * (T^2 / 2) * D multiply-adds per matmul, per head
      row.fwdTflops = (2 * half) / (fw.ms * 1e9);
      // the backward kernel alone (delta, dq, dk/dv), from a saved forward
      if (kernelActive(FLASH_ATTENTION)) {
        const attrs = { sigmoid: false, sigmoidBias: 0, window: 0, scale: 1 / Math.sqrt(D), alibi: false };
        const slopes = tf.zeros([H]);
        const [o, lse] = tf.engine().runKernel(FLASH_ATTENTION, { q, k, v, slopes }, attrs) as tf.Tensor[];
        const dy = tf.onesLike(o!);
        const bw = await time(() => tf.engine().runKernel(FLASH_ATTENTION_GRAD, { q, k, v, slopes, o: o!, lse: lse!, dy }, attrs) as tf.Tensor[]);
        row.oursBwd = bw.ms;
        tf.dispose([slopes, o!, lse!, dy]);
      }
      row.fbTflops = (9 * half) / (fb.ms * 1e9);
    } catch (e) {
      row.oursFwd = `error: ${(e as Error).message.slice(0, 40)}`;
    }
    // the composite materializes [B, H, T, T] scores (and several more of that size for the gradient)
    if (B * H * T * T * 4 <= Math.min(limit, 4 * 2 ** 30)) {
      try {
        const fw = await time(() => flashAttentionComposite(q, k, v));
        const fb = await time(grads(flashAttentionComposite));
        Object.assign(row, { compFwd: fw.ms, compFwdBwd: fb.ms });
        if (T === Ts[0]) {
          const p = await profile(grads(flashAttentionComposite));
          console.log(`profile, composite forward+backward at T=${T}: GPU ${p.kernelMs.toFixed(1)} ms of ${fb.ms.toFixed(1)} ms wall; ${p.top}`);
        }
      } catch (e) {
        row.compFwd = `error: ${(e as Error).message.slice(0, 40)}`;
      }
    } else row.compFwd = 'too big';
    for (const impl of ['naive', 'sdpa']) {
      const t = torch.find((r) => r.kind === 'attention' && r.impl === impl && r.T === T);
      if (t?.error) row[`${impl}Fwd`] = String(t.error);
      else if (t) Object.assign(row, { [`${impl}Fwd`]: t.fwd_ms as number, [`${impl}FwdBwd`]: t.fwdbwd_ms as number, [`${impl}GiB`]: t.fwdbwd_gib as number });
    }
    tf.dispose([q, k, v, dOut]);
    releasePool();
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  const ratio = (a: unknown, b: unknown) => (typeof a === 'number' && typeof b === 'number' ? `${(a / b).toFixed(2)}x` : '-');
  console.log(`\ncausal attention, fp32, B=${B} H=${H} D=${D}: ms (forward / forward+backward)\n`);
  console.log('| T | ours fused (f / f+b / b kernel alone) | tfjs composite | torch naive | torch SDPA | ours / SDPA (f+b) | composite / ours (f+b) | ours TFLOP/s (f / f+b) | peak GiB (tfjs pool / torch SDPA) |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.T} | ${fmt(r.oursFwd)} / ${fmt(r.oursFwdBwd)} / ${fmt(r.oursBwd)} | ${fmt(r.compFwd)} / ${fmt(r.compFwdBwd)} | ${fmt(r.naiveFwd)} / ${fmt(r.naiveFwdBwd)} | ${fmt(r.sdpaFwd)} / ${fmt(r.sdpaFwdBwd)} | ${ratio(r.oursFwdBwd, r.sdpaFwdBwd)} | ${ratio(r.compFwdBwd, r.oursFwdBwd)} | ${fmt(r.fwdTflops)} / ${fmt(r.fbTflops)} | ${fmt(r.oursGiB, 1)} / ${fmt(r.sdpaGiB, 1)} |`,
    );
  }
}

/**
 * Times each transpose combination of an n^3 product with tfjs's kernel and with our kernel's tile
 * variants (workgroup order, K step; 128-blocks), prints the table, and routes each combination to
 * the fastest (`setMatMulPolicy`) for the rest of the run (`--calibrate n`).
 */
async function calibrateMatMul(n: number): Promise<void> {
  const tfjs = originalMatMul();
  if (!tfjs || tf.getBackend() !== 'webgpu') return;
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  const variants: Array<[string, TileChoice]> = [
    ['order n, bk 16', { block: 128, order: 'n', bk: 16 }],
    ['order m, bk 16', { block: 128, order: 'm', bk: 16 }],
    ['order n, bk 8', { block: 128, order: 'n', bk: 8 }],
    ['order m, bk 8', { block: 128, order: 'm', bk: 8 }],
  ];
  const tflops = (ms: number) => (2 * n ** 3) / (ms * 1e9);
  const policy: MatMulPolicy = {};
  const lines: string[] = [];
  for (const combo of ['nn', 'nt', 'tn', 'tt'] as MatMulCombo[]) {
    const [tA, tB] = [combo[0] === 't', combo[1] === 't'];
    const be = tf.backend() as unknown as Parameters<typeof runMatMul>[0];
    const base = (await time(() => tf.engine().makeTensorFromTensorInfo(tfjs.kernelFunc({ inputs: { a, b }, backend: tf.backend(), attrs: { transposeA: tA, transposeB: tB } }) as tf.TensorInfo))).ms;
    let best: [string, TileChoice | 'tfjs', number] = ['tfjs', 'tfjs', base];
    const cells: string[] = [];
    for (const [name, v] of variants) {
      const ms = (await time(() => tf.engine().makeTensorFromTensorInfo(runMatMul(be, a, b, tA, tB, v)!))).ms;
      cells.push(fmt(tflops(ms)));
      if (ms < best[2]) best = [name, { order: v.order, bk: v.bk }, ms];
    }
    policy[combo] = best[1];
    lines.push(`| ${combo} | ${fmt(tflops(base))} | ${cells.join(' | ')} | ${best[0]} |`);
  }
  tf.dispose([a, b]);
  releasePool();
  setMatMulPolicy(policy);
  console.log(`\nmatmul calibration at n=${n} (TFLOP/s; 128-blocks), fastest chosen per transpose combination\n`);
  console.log(`| A, B (n: as is, t: transposed) | tfjs-webgpu | ${variants.map(([v]) => `ours ${v}`).join(' | ')} | chosen |`);
  console.log(`|---|---:|${variants.map(() => '---:').join('|')}|---|`);
  for (const l of lines) console.log(l);
}

/** Square fp32 matmuls: this package's tiled kernel (the registered BatchMatMul) against tfjs's own. */
async function matmulTable(torch: Array<Record<string, unknown>>): Promise<void> {
  if (matmulSizes === 'none') return;
  const tfjs = tf.getBackend() === 'webgpu' ? originalMatMul() : undefined;
  const rows: string[] = [];
  for (const n of matmulSizes.split(',').map(Number)) {
    const a = tf.randomNormal([n, n]);
    const b = tf.randomNormal([n, n]);
    const flops = (ms: number) => (2 * n ** 3) / (ms * 1e9);
    // (the timer keeps the GPU busy before each measurement: see gpu-common.ts)
    const ours = await time(() => tf.matMul(a, b));
    const oursT = await time(() => tf.matMul(a, b, true, true));
    const theirs = tfjs
      ? await time(() => tf.engine().makeTensorFromTensorInfo(tfjs.kernelFunc({ inputs: { a, b }, backend: tf.backend(), attrs: { transposeA: false, transposeB: false } }) as tf.TensorInfo))
      : undefined;
    const pt = torch.find((r) => r.kind === 'matmul' && r.n === n);
    const line = `| ${n} | ${ours.ms.toFixed(2)} / ${fmt(flops(ours.ms))} | ${fmt(flops(oursT.ms))} | ${theirs ? `${theirs.ms.toFixed(2)} / ${fmt(flops(theirs.ms))}` : '-'} | ${pt ? `${(pt.ms as number).toFixed(2)} / ${fmt(pt.tflops as number)}` : '-'} | ${theirs ? (theirs.ms / ours.ms).toFixed(2) + 'x' : '-'} | ${pt ? ((pt.ms as number) / ours.ms).toFixed(2) + 'x' : '-'} |`;
    rows.push(line);
    console.log(line);
    tf.dispose([a, b]);
    releasePool();
  }
  console.log(`\nfp32 matmul n x n x n: ms / TFLOP/s\n`);
  console.log('| n | ours (tiled WGSL) | ours, both transposed (TFLOP/s) | tfjs-webgpu 4.22 | PyTorch (TF32 off) | ours vs tfjs | ours vs PyTorch |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) console.log(r);
}

/** One model shape of the training table: batch, context, vocabulary. */
interface TrainShape {
  b: number;
  T: number;
  V: number;
}

/**
 * Full training steps of DecoderLM (forward, backward, global-norm clip, AdamW, the loss read back)
 * at each shape: 2 warm-up steps, then `steps` timed. Returns ms per step and the last loss.
 */
async function trainSteps(shape: TrainShape, steps: number): Promise<{ ms: number; loss: number; peakGiB: number }> {
  const { b, T, V } = shape;
  const rng = Rng.seeded(1);
  const model = gpt2Model({ vocab: V, dModel, layers: L, heads, T, rng });
  const opt = new AdamW(model.namedParameters(), { type: 'adamw', lr: 1e-4, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 });
  const n = b * T;
  const batch: Batch = { inputs: new Int32Array(n).map(() => rng.int(V)), targets: new Int32Array(n).map(() => rng.int(V)), batchSize: b, seqLen: T };
  const step = () => trainStep(model, opt, [batch], { lr: 1e-4, clipGradNorm: 1 });
  try {
    await step();
    await step();
    const t0 = now();
    let loss = NaN;
    for (let i = 0; i < steps; i++) loss = (await step()).loss;
    const ms = (now() - t0) / steps;
    const mem = tf.memory() as { numBytesAllocatedInGPU?: number };
    return { ms, loss, peakGiB: (mem.numBytesAllocatedInGPU ?? NaN) / 2 ** 30 };
  } finally {
    model.dispose();
    opt.dispose();
    releasePool();
  }
}

/**
 * Training tokens/s of a GPT-2-small-shaped DecoderLM (LayerNorm, GELU MLP, RoPE, tied embeddings,
 * fp32) at each BxT of --gpt2 and each vocabulary of --vocab (50257: GPT-2's; 256: the peer's byte
 * vocabulary), against PyTorch eager fp32 at the same shape (attention_torch.py, same call) and the
 * peer (its JSON lines per BxT in --peer-dir, vocabulary 256).
 */
async function trainTable(torch: Array<Record<string, unknown>>): Promise<void> {
  const vocabs = vocabList().split(',').map(Number);
  const shapes: TrainShape[] = [];
  for (const [b, T] of gpt2Shapes()) for (const V of vocabs) shapes.push({ b, T, V });
  const steps = Number(arg('steps', '5'));
  const rows: string[] = [];
  for (const s of shapes) {
    const r = await trainSteps(s, steps);
    const ours = ((s.b * s.T) / r.ms) * 1000;
    const pt = torch.find((x) => x.kind === 'gpt2' && x.B === s.b && x.T === s.T && (x.V ?? 50257) === s.V);
    const peer = s.V === 256 ? peerTokensPerSec(s.b, s.T) : undefined;
    const ptTps = pt ? (pt.tokens_per_s as number) : undefined;
    const line =
      `| ${s.b} x ${s.T} | ${s.V} | ${r.ms.toFixed(0)} | ${Math.round(ours)} | ${fmt(r.peakGiB, 1)} | ` +
      `${ptTps ? `${Math.round(ptTps)} (${(pt!.ms_per_step as number).toFixed(0)} ms, ${fmt(pt!.peak_gib as number, 1)} GiB)` : '-'} | ${ptTps ? (ours / ptTps).toFixed(2) + 'x' : '-'} | ` +
      `${peer ? Math.round(peer) : '-'} | ${peer ? (ours / peer).toFixed(2) + 'x' : '-'} | ${r.loss.toFixed(3)} |`;
    rows.push(line);
    console.log(line);
  }
  console.log(`\nGPT-2-small-shaped training (${L} layers, d=${dModel}, ${heads} heads; LayerNorm, GELU MLP, RoPE, tied embeddings; fp32; full steps: forward, backward, clip, AdamW, loss read-back; ${steps} timed after 2 warm-up)\n`);
  console.log('| batch x T | vocab | ms/step | tokens/s (ours, webgpu) | GiB (tfjs pool) | PyTorch eager fp32 tokens/s | ours / PyTorch | peer tokens/s | ours / peer | last loss |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const l of rows) console.log(l);
}

/** The peer's tokens/s at b x T from the wall-clock between its logged steps (its first log is warm-up). */
function peerTokensPerSec(b: number, T: number): number | undefined {
  const text = peerLogs.get(`${b}x${T}`);
  if (!text) return undefined;
  const logs = jsonLines(text).filter((l) => 'wall_ms' in l) as Array<{ wall_ms: number; totalTokens: number }>;
  if (logs.length < 3) return undefined;
  const a = logs[1]!;
  const z = logs[logs.length - 1]!;
  return ((z.totalTokens - a.totalTokens) / (z.wall_ms - a.wall_ms)) * 1000;
}

/** The shapes of the linear-attention table. */
const linearDims = () => ({ Ts: arg('linear-T', '1024,4096,16384').split(',').map(Number), B: Number(arg('linear-B', '4')), H: Number(arg('linear-H', '8')), D: Number(arg('linear-D', '64')) });

/** The vocabularies of the training table. */
const vocabList = () => arg('vocab', args.includes('--model') ? String(vocab) : '50257,256');

/** The GPT-2-small shapes [b, T] of the training table. */
const gpt2Shapes = (): Array<[number, number]> => (gpt2 === 'none' ? [] : gpt2.split(',').map((bt) => bt.split('x').map(Number) as [number, number]));

/**
 * The references: files named on the command line, else (unless --no-references) run now, each to
 * completion before this process touches the GPU.
 */
function references(): { torch: JsonLine[]; linear: JsonLine[] } {
  const readLines = (f: string) => (existsSync(f) ? jsonLines(readFileSync(f, 'utf8')) : (console.log(`reference file ${f} not found`), []));
  const run = !args.includes('--no-references') && backendName === 'webgpu';
  const attention = !args.includes('--no-attention');
  const linearOn = !args.includes('--no-linear');
  const torch = torchFile
    ? readLines(torchFile)
    : run
      ? torchReference({ T: attention ? Ts.join(',') : 'none', B, H, D, gpt2, vocab: vocabList(), matmul: matmulSizes })
      : [];
  const lt = arg('linear-torch', '');
  const linear = lt
    ? readLines(lt)
    : run && linearOn
      ? linearTorchReference({ ...linearDims(), T: linearDims().Ts.join(',') })
      : [];
  if (peerDir) {
    for (const [b, T] of gpt2Shapes()) {
      const f = `${peerDir}/peer-${b}x${T}.jsonl`;
      if (existsSync(f)) peerLogs.set(`${b}x${T}`, readFileSync(f, 'utf8'));
    }
  } else if (run && vocabList().split(',').includes('256') && gpt2Shapes().length > 0) {
    for (const [k, v] of peerReference(gpt2Shapes(), { layers: L, width: dModel, heads })) peerLogs.set(k, v);
  }
  return { torch, linear };
}

async function main(): Promise<void> {
  const { torch, linear } = references();
  const info = await selectBackend(backendName, { webgpuModule });
  // --no-kernels: tfjs's own ops only (the composite path; host uploads still through writeBuffer)
  if (!args.includes('--no-kernels')) registerWebGpuKernels();
  console.log(`backend: ${info.name} (${info.detail}); fused attention kernel active: ${kernelActive(FLASH_ATTENTION)}`);
  const tinfo = torch.find((r) => r.kind === 'info');
  if (tinfo) console.log(`torch ${tinfo.torch} on ${tinfo.device}`);
  const cal = arg('calibrate', 'none');
  if (cal !== 'none') await calibrateMatMul(Number(cal));
  await matmulTable(torch);
  releasePool();
  if (!args.includes('--no-attention')) await attentionTable(torch);
  releasePool();
  if (!args.includes('--no-linear')) {
    await linearTable({ ...linearDims(), time, torch: linear });
    releasePool();
  }
  if (gpt2 !== 'none') await trainTable(torch);
}

await main();
