import { Rng, selectBackend, tf, type BackendName } from '@tsformer/core';
import { attentionConfigSchema, attentionHeadDim, createAttention, kvCacheNumbersPerToken } from '@tsformer/attention';
import { createPositional, positionalConfigSchema } from '@tsformer/positional';
import type { Out } from './out.js';

/** What tfjs-wasm can hold (its heap is a 32-bit address space, at most 4 GiB, minus what tfjs keeps). */
const HEAP_LIMIT = 3 * 2 ** 30;

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
};

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
export async function benchAttention(o: { backend: BackendName; lengths: number[]; variants?: string[]; repeats: number; out: Out }): Promise<AttentionBenchRow[]> {
  const info = await selectBackend(o.backend);
  const dModel = 256;
  const rows: AttentionBenchRow[] = [];
  for (const name of o.variants ?? Object.keys(BENCH_VARIANTS)) {
    const v = BENCH_VARIANTS[name];
    if (!v) throw new Error(`unknown variant ${name} (known: ${Object.keys(BENCH_VARIANTS).join(', ')})`);
    const cfg = attentionConfigSchema.parse(v.attention);
    const positional = createPositional(positionalConfigSchema.parse(v.positional), attentionHeadDim(cfg, dModel));
    for (const T of o.lengths) {
      const attn = createAttention(cfg, { dModel, positional, rng: Rng.seeded(0), contextLength: T });
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
      const windowed = (cfg as { window?: number }).window !== undefined;
      const predicted = prev ? prev.peakBytes * Math.pow(T / prev.T, windowed ? 1 : 2) : 0;
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
  o.out.info('| module | T | forward ms | fwd+bwd ms | peak MiB (fwd+bwd) | KV cache numbers/token |');
  o.out.info('|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const n = (x: number, f: (v: number) => string) => (Number.isFinite(x) ? f(x) : 'over wasm heap');
    o.out.info(`| ${r.variant} | ${r.T} | ${n(r.forwardMs, (v) => v.toFixed(1))} | ${n(r.trainMs, (v) => v.toFixed(1))} | ${n(r.peakBytes, (v) => (v / 2 ** 20).toFixed(1))} | ${r.cacheNumbersPerToken} |`);
  }
  return rows;
}
