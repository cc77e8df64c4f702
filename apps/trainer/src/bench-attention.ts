import { Rng, tf, type BackendName } from '@tsformer/core';
import { useBackend } from './backend.js';
import { writeFileSync } from 'node:fs';
import {
  attentionConfigSchema,
  attentionHeadDim,
  createAttention,
  disposeCache,
  kvCacheNumbersPerToken,
  recurrentStateNumbers,
  type AttentionCache,
  type AttentionConfig,
} from '@tsformer/attention';
import { createPositional, positionalConfigSchema } from '@tsformer/positional';
import type { Out } from './out.js';
import { lineChartSvg } from './plot.js';

/**
 * What tfjs-wasm can hold: its heap is a 32-bit address space of at most 4 GiB, minus what tfjs keeps
 * (Gated DeltaNet at T = 8192 peaked at 3.68 GiB and ran).
 */
const HEAP_LIMIT = 3.8 * 2 ** 30;

/** The attention modules compared by `npm run bench:attention`, at one model width. */
export const BENCH_VARIANTS: Record<string, { attention: unknown; positional: unknown }> = {
  mha: { attention: { type: 'mha', numHeads: 8 }, positional: { type: 'rope' } },
  gqa: { attention: { type: 'mha', numHeads: 8, numKvHeads: 2 }, positional: { type: 'rope' } },
  mqa: { attention: { type: 'mha', numHeads: 8, numKvHeads: 1 }, positional: { type: 'rope' } },
  sigmoid: { attention: { type: 'mha', numHeads: 8, score: 'sigmoid' }, positional: { type: 'rope' } },
  alibi: { attention: { type: 'mha', numHeads: 8 }, positional: { type: 'alibi' } },
  'swa-128': { attention: { type: 'mha', numHeads: 8, window: 128 }, positional: { type: 'rope' } },
  mla: {
    attention: { type: 'mla', numHeads: 8, kvLoraRank: 64, qkNopeHeadDim: 32, qkRopeHeadDim: 16, vHeadDim: 32 },
    positional: { type: 'rope' },
  },
  gla: { attention: { type: 'gla', numHeads: 8 }, positional: { type: 'none' } },
  deltanet: { attention: { type: 'deltanet', numHeads: 8 }, positional: { type: 'none' } },
  'gated-deltanet': { attention: { type: 'gated-deltanet', numHeads: 8 }, positional: { type: 'none' } },
  path: { attention: { type: 'path', numHeads: 8 }, positional: { type: 'none' } },
};

/** Whether a module's cost grows linearly with T (a window, or a recurrence); else quadratically. */
function linearInLength(cfg: AttentionConfig): boolean {
  return (cfg.type === 'mha' && cfg.window !== undefined) || cfg.type === 'gla' || cfg.type === 'deltanet' || cfg.type === 'gated-deltanet';
}

function buildModule(name: string, dModel: number, contextLength: number) {
  const v = BENCH_VARIANTS[name];
  if (!v) throw new Error(`unknown variant ${name} (known: ${Object.keys(BENCH_VARIANTS).join(', ')})`);
  const cfg = attentionConfigSchema.parse(v.attention);
  const positional = createPositional(positionalConfigSchema.parse(v.positional), attentionHeadDim(cfg, dModel));
  return { cfg, attn: createAttention(cfg, { dModel, positional, rng: Rng.seeded(0), contextLength }) };
}

export interface AttentionBenchRow {
  variant: string;
  T: number;
  forwardMs: number;
  trainMs: number;
  /** Peak bytes of live tensors during forward + backward (tf.profile). */
  peakBytes: number;
  cacheNumbersPerToken: number;
}

/**
 * Forward and forward+backward time and peak tensor bytes of each attention module alone
 * (batch 1, d = 256), per sequence length, on one backend.
 */
export async function benchAttention(o: {
  backend: BackendName;
  lengths: number[];
  variants?: string[];
  repeats: number;
  /** Write a plot of forward+backward µs per token against T here. */
  svg?: string;
  out: Out;
}): Promise<AttentionBenchRow[]> {
  const info = await useBackend(o.backend);
  const dModel = 256;
  const rows: AttentionBenchRow[] = [];
  for (const name of o.variants ?? Object.keys(BENCH_VARIANTS)) {
    for (const T of o.lengths) {
      const { cfg, attn } = buildModule(name, dModel, T);
      const x = tf.randomNormal([1, T, dModel]);
      const positions = Int32Array.from({ length: T }, (_, i) => i);
      const vars = attn.trainableVariables();
      const fwd = () => tf.tidy(() => attn.forward(x, { positions, training: false }).y);
      const train = () => {
        const { value, grads } = tf.variableGrads(() => attn.forward(x, { positions, training: true }).y.square().mean() as tf.Scalar, vars);
        return [value, ...Object.values(grads)];
      };
      const time = async (f: () => tf.Tensor | tf.Tensor[]) => {
        const warm = f();
        await Promise.all([warm].flat().map((t) => t.data()));
        tf.dispose(warm);
        const t0 = performance.now();
        for (let i = 0; i < o.repeats; i++) {
          const r = f();
          await Promise.all([r].flat().map((t) => t.data()));
          tf.dispose(r);
        }
        return (performance.now() - t0) / o.repeats;
      };
      const base = tf.memory().numBytes;
      // A wasm out-of-memory abort leaves the backend unusable, so lengths whose peak (extrapolated
      // from the previous length: quadratic without a window, linear with one) would pass the heap
      // limit are not attempted.
      const prev = rows.filter((r) => r.variant === name && Number.isFinite(r.peakBytes)).at(-1);
      const predicted = prev ? prev.peakBytes * Math.pow(T / prev.T, linearInLength(cfg) ? 1 : 2) : 0;
      if (info.name === 'wasm' && predicted > HEAP_LIMIT) {
        rows.push({ variant: name, T, forwardMs: NaN, trainMs: NaN, peakBytes: NaN, cacheNumbersPerToken: kvCacheNumbersPerToken(cfg, dModel) });
        o.out.warn(`${name} T=${T}: skipped (predicted peak ${(predicted / 2 ** 30).toFixed(1)} GiB exceeds the wasm heap)`);
        x.dispose();
        attn.dispose();
        continue;
      }
      try {
        const forwardMs = await time(fwd);
        const trainMs = await time(train);
        const prof = await tf.profile(() => tf.dispose(train()));
        rows.push({ variant: name, T, forwardMs, trainMs, peakBytes: prof.peakBytes - base, cacheNumbersPerToken: kvCacheNumbersPerToken(cfg, dModel) });
        o.out.info(`${name} T=${T}: forward ${forwardMs.toFixed(1)} ms, forward+backward ${trainMs.toFixed(1)} ms, peak ${(rows.at(-1)!.peakBytes / 2 ** 20).toFixed(1)} MiB`);
      } catch (e) {
        // out of memory (the wasm heap is at most 4 GiB): recorded as a row without numbers
        rows.push({ variant: name, T, forwardMs: NaN, trainMs: NaN, peakBytes: NaN, cacheNumbersPerToken: kvCacheNumbersPerToken(cfg, dModel) });
        o.out.warn(`${name} T=${T}: failed (${(e as Error).message.split('\n')[0]})`);
      } finally {
        x.dispose();
        attn.dispose();
      }
    }
  }
  o.out.info(`\nattention modules alone: batch 1, d=${dModel}, 8 heads, backend ${info.name} (${info.detail}), mean of ${o.repeats} after a warm-up\n`);
  o.out.info('| module | T | forward ms | fwd+bwd ms | fwd+bwd µs/token | peak MiB (fwd+bwd) | KV cache numbers/token |');
  o.out.info('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const n = (x: number, f: (v: number) => string) => (Number.isFinite(x) ? f(x) : 'over wasm heap');
    o.out.info(
      `| ${r.variant} | ${r.T} | ${n(r.forwardMs, (v) => v.toFixed(1))} | ${n(r.trainMs, (v) => v.toFixed(1))} | ${n(r.trainMs, (v) => ((1000 * v) / r.T).toFixed(0))} | ${n(r.peakBytes, (v) => (v / 2 ** 20).toFixed(1))} | ${r.cacheNumbersPerToken} |`,
    );
  }
  for (const line of crossovers(rows, 'mha')) o.out.info(line);
  if (o.svg) {
    const series = [...new Set(rows.map((r) => r.variant))].map((variant) => ({
      name: variant,
      points: rows.filter((r) => r.variant === variant && Number.isFinite(r.trainMs)).map((r) => [r.T, (1000 * r.trainMs) / r.T] as [number, number]),
    }));
    writeFileSync(o.svg, lineChartSvg(series, { title: `forward+backward time per token (${info.name}, d=${dModel})`, xLabel: 'sequence length T', yLabel: 'µs per token', xScale: 'log2' }));
    o.out.info(`\nplot: ${o.svg}`);
  }
  return rows;
}

/**
 * For each module other than `reference`: the shortest measured length from which it trains
 * (forward+backward) faster than `reference`, and from which it stays faster (the crossover).
 * A length the reference could not run at counts as faster.
 */
export function crossovers(rows: AttentionBenchRow[], reference: string): string[] {
  const ref = new Map(rows.filter((r) => r.variant === reference).map((r) => [r.T, r.trainMs]));
  if (ref.size === 0) return [];
  const out = [`\ncrossover against ${reference} (forward+backward):`];
  for (const variant of [...new Set(rows.map((r) => r.variant))].filter((v) => v !== reference)) {
    const mine = rows.filter((r) => r.variant === variant && ref.has(r.T) && Number.isFinite(r.trainMs)).sort((a, b) => a.T - b.T);
    if (mine.length === 0) continue;
    const faster = mine.map((r) => !Number.isFinite(ref.get(r.T)!) || r.trainMs < ref.get(r.T)!);
    let from = faster.length;
    while (from > 0 && faster[from - 1]) from--;
    const last = mine.at(-1)!;
    const ratio = Number.isFinite(ref.get(last.T)!) ? `${(ref.get(last.T)! / last.trainMs).toFixed(2)}x ${reference}'s speed at T=${last.T}` : `${reference} does not run at T=${last.T}`;
    out.push(
      from === 0
        ? `  ${variant}: faster at every measured length (${ratio})`
        : from < mine.length
          ? `  ${variant}: faster from T=${mine[from]!.T} on (slower at T=${mine[from - 1]!.T}; ${ratio})`
          : `  ${variant}: not faster at any measured length up to T=${last.T}`,
    );
  }
  return out;
}

export interface DecodeBenchRow {
  variant: string;
  tokens: number;
  tokensPerSecond: number;
  /** Bytes held by the decoding cache after n tokens, at each checkpoint length. */
  cacheBytes: Array<[number, number]>;
}

/**
 * Token-by-token decoding through each module alone (batch 1, d = 256) with its cache, for `tokens`
 * tokens (reading each output back, as sampling would): tokens/s and the cache's bytes per sequence
 * at doubling lengths. KV caches grow with the length; the linear family's state does not.
 */
export async function benchDecode(o: { backend: BackendName; tokens: number; variants?: string[]; out: Out }): Promise<DecodeBenchRow[]> {
  const info = await useBackend(o.backend);
  const dModel = 256;
  const rows: DecodeBenchRow[] = [];
  const marks = new Set([1, 2, 4, 8].map((d) => Math.max(1, Math.round(o.tokens / d)))); // e.g. 256, 512, 1024, 2048
  for (const name of o.variants ?? Object.keys(BENCH_VARIANTS)) {
    const { cfg, attn } = buildModule(name, dModel, o.tokens);
    const xs = tf.randomNormal([1, 64, dModel]); // 64 inputs, reused in turn
    const inputs = tf.split(xs, 64, 1); // 64 x [1, 1, D]
    let cache: AttentionCache = attn.initCache();
    const cacheBytes: Array<[number, number]> = [];
    const step = async (t: number) => {
      const out = attn.forward(inputs[t % 64]!, { positions: Int32Array.of(t), cache, training: false });
      await out.y.data();
      out.y.dispose();
      disposeCache(cache);
      cache = out.cache!;
    };
    for (let t = 0; t < 8; t++) await step(t); // warm-up
    disposeCache(cache);
    cache = attn.initCache();
    const t0 = performance.now();
    for (let t = 0; t < o.tokens; t++) {
      await step(t);
      if (marks.has(t + 1)) cacheBytes.push([t + 1, cache.tensors.reduce((b, x) => b + x.size * 4, 0)]); // float32
    }
    const seconds = (performance.now() - t0) / 1000;
    rows.push({ variant: name, tokens: o.tokens, tokensPerSecond: o.tokens / seconds, cacheBytes });
    const state = recurrentStateNumbers(cfg, dModel);
    o.out.info(`${name}: ${o.tokens} tokens in ${seconds.toFixed(1)} s, cache ${(cacheBytes.at(-1)![1] / 1024).toFixed(0)} KiB${state ? ` (a constant ${state} numbers)` : ''}`);
    disposeCache(cache);
    tf.dispose([xs, ...inputs]);
    attn.dispose();
  }
  const lengths = [...marks].sort((a, b) => a - b);
  o.out.info(`\ndecoding ${o.tokens} tokens one at a time, one module alone: batch 1, d=${dModel}, backend ${info.name} (${info.detail})\n`);
  o.out.info(`| module | tokens/s | ${lengths.map((n) => `cache KiB at ${n}`).join(' | ')} |`);
  o.out.info(`|---|---:|${lengths.map(() => '---:').join('|')}|`);
  for (const r of rows) {
    o.out.info(`| ${r.variant} | ${r.tokensPerSecond.toFixed(0)} | ${r.cacheBytes.map(([, b]) => (b / 1024).toFixed(1)).join(' | ')} |`);
  }
  return rows;
}
