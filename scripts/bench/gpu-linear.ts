/**
 * Chunked linear attention on the GPU: one table, one row per op family and sequence length, forward
 * and forward+backward ms of our WebGPU kernels (the op through the fused registry), the same op as
 * plain tfjs ops (its composite form) on the same device, and PyTorch's naive chunked form (JSON lines
 * of scripts/bench/linear_torch.py, same shapes, fp32). `linearTable` is called by gpu.ts; each op
 * family adds its rows with one function (`glaRows`, `deltaRows`).
 *
 * Standalone (after ../shared/gpu/kit.sh, see docs/benchmarks.md):
 *   node scripts/bench/bundle-gpu.mjs scripts/bench/gpu-linear.ts
 *   device: python3 scripts/bench/linear_torch.py --T 1024,4096 > $OUT/linear.jsonl;
 *           bash .gpu/run.sh gpu-linear.mjs --torch $OUT/linear.jsonl --T 1024,4096 --B 4 --H 8 --D 64
 *   flags: --check N (the GLA and DeltaNet kernel checks at N x their chromium sizes first), --budget s, --backend cpu
 */
// bundled statically: a bundle cannot import the backend module by name at run time
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { existsSync, readFileSync } from 'node:fs';
import { selectBackend, tf } from '@tsformer/core';
import { GLA, GLA_GRAD, checkCumsum, checkGla, glaCases, kernelActive, registerWebGpuKernels } from '@tsformer/kernels-webgpu';
import { glaChunk, glaChunkComposite } from '@tsformer/ops';
import { DELTA_RECUR, checkDelta, deltaCases, deltaKernelSupported } from '@tsformer/kernels-webgpu';
import { deltaChunk, deltaChunkComposite, gatedDeltaChunk, gatedDeltaChunkComposite } from '@tsformer/ops';
import { profileGpu, timer, topPrograms } from './gpu-common.js';

export interface LinearTableOptions {
  /** Sequence lengths, one row per length and op. */
  Ts: number[];
  B: number;
  H: number;
  /** Key and value width per head. */
  D: number;
  /** Mean ms per call of fn (the caller's timer: warm-up, repetitions, a sync at the end). */
  time: (fn: () => tf.Tensor | tf.Tensor[]) => Promise<{ ms: number }>;
  /** JSON lines of linear_torch.py: rows `{ kind, T, fwd_ms, fwdbwd_ms }` (or `error`). */
  torch: Array<Record<string, unknown>>;
}

/** One row of the table: ms, or why a number is missing. */
export interface LinearRow {
  op: string;
  T: number;
  ours: { fwd: number | string; fwdBwd: number | string };
  composite: { fwd: number | string; fwdBwd: number | string };
  torch: { fwd: number | string; fwdBwd: number | string };
}

/** Times fwd and fwd+bwd of `f`, or says why not. */
async function measure(
  o: LinearTableOptions,
  fwd: () => tf.Tensor | tf.Tensor[],
  fwdBwd: () => tf.Tensor | tf.Tensor[],
): Promise<{ fwd: number | string; fwdBwd: number | string }> {
  try {
    const f = await o.time(fwd);
    const fb = await o.time(fwdBwd);
    return { fwd: f.ms, fwdBwd: fb.ms };
  } catch (e) {
    const m = `error: ${(e as Error).message.slice(0, 40)}`;
    return { fwd: m, fwdBwd: '-' };
  }
}

function torchRow(o: LinearTableOptions, kind: string, T: number): { fwd: number | string; fwdBwd: number | string } {
  const t = o.torch.find((r) => r.kind === kind && r.T === T);
  if (!t) return { fwd: '-', fwdBwd: '-' };
  if (t.error) return { fwd: String(t.error).slice(0, 40), fwdBwd: '-' };
  return { fwd: t.fwd_ms as number, fwdBwd: t.fwdbwd_ms as number };
}

/**
 * GLA (`glaChunk`, chunks of 64): q, k, v [B, T, H, D], log gates logsigmoid(N(0, 1)) / 16 (fla's
 * test gates); forward+backward takes gradients to q, k, v and g from an explicit upstream gradient.
 */
export async function glaRows(o: LinearTableOptions): Promise<LinearRow[]> {
  const rows: LinearRow[] = [];
  const { B, H, D } = o;
  for (const T of o.Ts) {
    const q = tf.randomNormal([B, T, H, D]);
    const k = tf.randomNormal([B, T, H, D]);
    const v = tf.randomNormal([B, T, H, D]);
    const g = tf.tidy(() => tf.logSigmoid(tf.randomNormal([B, T, H, D])).div(16));
    const dOut = tf.randomNormal([B, T, H, D]);
    const run = (f: typeof glaChunk) => ({
      fwd: () => f(q, k, v, g).o,
      fwdBwd: () => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor) => f(a, b, c, d).o)([q, k, v, g], dOut),
    });
    const ours = run(glaChunk);
    const comp = run(glaChunkComposite);
    rows.push({
      op: 'gla',
      T,
      // glaChunk is the composite too where the kernel is not registered (then there is no "ours")
      ours: kernelActive(GLA) ? await measure(o, ours.fwd, ours.fwdBwd) : { fwd: 'no kernel', fwdBwd: '-' },
      composite: await measure(o, comp.fwd, comp.fwdBwd),
      torch: torchRow(o, 'gla', T),
    });
    tf.dispose([q, k, v, g, dOut]);
  }
  return rows;
}

/**
 * DeltaNet and Gated DeltaNet (`deltaChunk` / `gatedDeltaChunk`, chunks of 64): q, k [B, T, H, D]
 * L2-normalized per head, v [B, T, H, D], beta = sigmoid(N(0, 1)), log decay g = logsigmoid(N(0, 1)) / 16
 * (gated); forward+backward takes gradients to q, k, v, beta (and g) from an explicit upstream
 * gradient of o. "ours" is the WebGPU kernels (delta.ts) through the fused registry.
 */
export async function deltaRows(o: LinearTableOptions): Promise<LinearRow[]> {
  const rows: LinearRow[] = [];
  const { B, H, D } = o;
  const l2 = (x: tf.Tensor) => x.div(x.square().sum(-1, true).sqrt()); // over the head's D
  for (const T of o.Ts) {
    const q = tf.tidy(() => l2(tf.randomNormal([B, T, H, D]))); // [B, T, H, D]
    const k = tf.tidy(() => l2(tf.randomNormal([B, T, H, D]))); // [B, T, H, D]
    const v = tf.randomNormal([B, T, H, D]); // [B, T, H, D]
    const beta = tf.tidy(() => tf.sigmoid(tf.randomNormal([B, T, H]))); // [B, T, H]
    const g = tf.tidy(() => tf.logSigmoid(tf.randomNormal([B, T, H])).div(16)); // [B, T, H]
    const dOut = tf.randomNormal([B, T, H, D]); // [B, T, H, D]
    for (const op of ['deltanet', 'gated-deltanet'] as const) {
      const gated = op === 'gated-deltanet';
      const xs = gated ? [q, k, v, beta, g] : [q, k, v, beta];
      const run = (composite: boolean) => {
        const f = (a: tf.Tensor[]) =>
          (gated
            ? (composite ? gatedDeltaChunkComposite : gatedDeltaChunk)(a[0]!, a[1]!, a[2]!, a[3]!, a[4]!)
            : (composite ? deltaChunkComposite : deltaChunk)(a[0]!, a[1]!, a[2]!, a[3]!)
          );
        return {
          fwd: () => {
            const r = f(xs);
            return [r.o, r.finalState];
          },
          fwdBwd: () =>
            tf.grads((...a: tf.Tensor[]) => {
              const r = f(a);
              r.finalState.dispose();
              return r.o;
            })(xs, dOut),
        };
      };
      const ours = run(false);
      const comp = run(true);
      rows.push({
        op,
        T,
        // deltaChunk runs the composite where the kernels are not registered or do not take D
        ours: kernelActive(DELTA_RECUR) && deltaKernelSupported(D, D) ? await measure(o, ours.fwd, ours.fwdBwd) : { fwd: 'no kernel', fwdBwd: '-' },
        composite: await measure(o, comp.fwd, comp.fwdBwd),
        torch: torchRow(o, op, T),
      });
    }
    tf.dispose([q, k, v, beta, g, dOut]);
  }
  return rows;
}

function fmt(x: number | string): string {
  if (typeof x === 'string') return x;
  return x >= 100 ? x.toFixed(0) : x.toFixed(2);
}

function ratio(a: number | string, b: number | string): string {
  return typeof a === 'number' && typeof b === 'number' ? `${(a / b).toFixed(2)}x` : '-';
}

/** The markdown table of every row. */
export function printLinearTable(rows: LinearRow[], o: Pick<LinearTableOptions, 'B' | 'H' | 'D'>): void {
  console.log(`\nchunked linear attention, fp32, B=${o.B} H=${o.H} K=V=${o.D}: ms (forward / forward+backward)\n`);
  console.log('| op | T | ours (WebGPU kernels) | tfjs composite | torch naive chunked | composite / ours (f+b) | ours / torch (f+b) |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.op} | ${r.T} | ${fmt(r.ours.fwd)} / ${fmt(r.ours.fwdBwd)} | ${fmt(r.composite.fwd)} / ${fmt(r.composite.fwdBwd)} | ` +
        `${fmt(r.torch.fwd)} / ${fmt(r.torch.fwdBwd)} | ${ratio(r.composite.fwdBwd, r.ours.fwdBwd)} | ${ratio(r.ours.fwdBwd, r.torch.fwdBwd)} |`,
    );
  }
}

/** Times every op family at each T and prints one markdown table. */
export async function linearTable(opts: LinearTableOptions): Promise<void> {
  const rows = [...(await glaRows(opts)), ...(await deltaRows(opts))];
  printLinearTable(rows, opts);
}

// ---------------------------------------------------------------------------------------------
// Standalone run (the bundled .gpu/gpu-linear.mjs)

/** GPU ms per program (tfjs's kernel profile) of one GLA forward+backward through the kernels. */
async function profileGla(T: number, B: number, H: number, D: number): Promise<void> {
  const [q, k, v, dOut] = [0, 1, 2, 3].map(() => tf.randomNormal([B, T, H, D]));
  const g = tf.tidy(() => tf.logSigmoid(tf.randomNormal([B, T, H, D])).div(16));
  const step = () => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor) => glaChunk(a, b, c, d).o)([q!, k!, v!, g], dOut!);
  tf.dispose(step()); // compiles
  // the kernels alone (no tape): forward, and the backward from the inputs and dO
  const attrs = { scale: 1 / Math.sqrt(D), hasInit: false, withFinal: false, chunk: 64 };
  const timeIt = timer(1000);
  const fw = await timeIt(() => tf.engine().runKernel(GLA, { q: q!, k: k!, v: v!, g }, attrs) as tf.Tensor[]);
  const bw = await timeIt(() => tf.engine().runKernel(GLA_GRAD, { q: q!, k: k!, v: v!, g, s0: q!, dy: dOut!, dfinal: q! }, attrs) as tf.Tensor[]);
  const all = await timeIt(step);
  console.log(`GLA at T=${T}: forward kernels ${fw.ms.toFixed(2)} ms, backward kernels ${bw.ms.toFixed(2)} ms, forward+backward through tf.grads ${all.ms.toFixed(2)} ms`);
  const r = await profileGpu(step);
  const top = topPrograms(r.by, 40, 2);
  console.log(`profile, GLA forward+backward at B=${B} T=${T} H=${H} D=${D}: GPU ${r.kernelMs.toFixed(2)} ms, wall ${r.wallMs.toFixed(2)} ms; ${top}`);
  tf.dispose([q!, k!, v!, g, dOut!]);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, dflt: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
  };
  const backend = arg('backend', 'webgpu') as 'webgpu' | 'cpu';
  await selectBackend(backend, backend === 'webgpu' ? { webgpuModule } : {});
  registerWebGpuKernels();
  // --check N: the GLA and DeltaNet kernel checks at N times their chromium sizes first (relative RMS vs the composite)
  const check = Number(arg('check', '0'));
  if (check > 0) {
    const seed = Date.now() % 1_000_000;
    const results = [await checkCumsum([5, 9, 16, 1000], seed)];
    for (const [i, c] of glaCases(check).entries()) results.push(await checkGla(c, seed + 10 * (i + 1)));
    for (const [i, c] of deltaCases(check).entries()) results.push(await checkDelta(c, seed + 1000 + 10 * i));
    for (const r of results) console.log(`${r.name.padEnd(48)} ${r.fused ? '' : '(not fused) '}${Object.entries(r.errors).map(([k, e]) => `${k} ${e.toExponential(1)}`).join('  ')}`);
  }
  // --profile T: GPU time per program of one GLA forward+backward at T (timestamp queries)
  const profileT = Number(arg('profile', '0'));
  if (profileT > 0) await profileGla(profileT, Number(arg('B', '4')), Number(arg('H', '8')), Number(arg('D', '64')));
  const torchFile = arg('torch', '');
  const torch = torchFile && existsSync(torchFile) ? readFileSync(torchFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>) : [];
  await linearTable({
    Ts: arg('T', '1024,4096').split(',').map(Number),
    B: Number(arg('B', '4')),
    H: Number(arg('H', '8')),
    D: Number(arg('D', '64')),
    time: timer(Number(arg('budget', '2')) * 1000),
    torch,
  });
}

// only when this file (or its own bundle) is the entry point: gpu.ts bundles it as a module
if (/gpu-linear\.(ts|mjs)$/.test(process.argv[1] ?? '')) await main();
