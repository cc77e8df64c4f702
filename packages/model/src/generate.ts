import { Rng, TsformerError, tf } from '@tsformer/core';
import type { AttentionCache } from '@tsformer/attention';
import { disposeCaches } from './decoder.js';
import type { LanguageModel } from './types.js';

export interface GenerateOptions {
  /** Tokens to generate. */
  maxNewTokens: number;
  /** 0 = greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens. Default: all. */
  topK?: number;
  /** Nucleus sampling: keep the smallest set whose probability reaches p. Default 1 (off). */
  topP?: number;
  /** Sampling randomness. Default `Rng.seeded(0)`. */
  rng?: Rng;
  /** Decode with the KV cache (default) or recompute the whole context every step. Same tokens either way. */
  useCache?: boolean;
  /** Stop after emitting this token. */
  stopToken?: number;
}

/**
 * Autoregressive generation from one prompt. The context is the tokens since `start`; when it
 * would exceed `maxSeqLen`, `start` jumps so the newest maxSeqLen/2 tokens remain (both paths do
 * exactly this, so cached decoding gives the same tokens as full forward passes).
 */
export async function generate(model: LanguageModel, prompt: ArrayLike<number>, opts: GenerateOptions): Promise<number[]> {
  if (prompt.length === 0) throw new TsformerError('generate: the prompt is empty (encode at least one token)', 'data');
  const maxLen = model.config.maxSeqLen;
  const rng = opts.rng ?? Rng.seeded(0);
  const useCache = opts.useCache ?? true;
  const tokens = Array.from(prompt);
  const out: number[] = [];
  let start = Math.max(0, tokens.length - maxLen);
  let caches: AttentionCache[] | undefined;
  const wasTraining = model.training;
  model.eval();
  try {
    for (let step = 0; step < opts.maxNewTokens; step++) {
      if (tokens.length - start > maxLen) {
        start = tokens.length - Math.floor(maxLen / 2);
        disposeCaches(caches);
        caches = undefined;
      }
      let logits: tf.Tensor;
      if (useCache) {
        const fresh = !caches;
        const from = fresh ? start : tokens.length - 1; // prefill the context, then one token at a time
        const ids = tf.tensor2d([tokens.slice(from)], undefined, 'int32');
        const r = model.forward(ids, { caches: caches ?? model.initCaches(), positions: positionsFrom(from - start, tokens.length - from) });
        ids.dispose();
        disposeCaches(caches);
        caches = r.caches;
        logits = r.logits;
      } else {
        const ids = tf.tensor2d([tokens.slice(start)], undefined, 'int32');
        logits = model.forward(ids).logits;
        ids.dispose();
      }
      const T = logits.shape[1]!;
      const last = tf.tidy(() => logits.slice([0, T - 1, 0], [1, 1, -1]).reshape([-1]));
      logits.dispose();
      const row = (await last.data()) as Float32Array;
      last.dispose();
      const next = sampleToken(row, opts, rng);
      tokens.push(next);
      out.push(next);
      if (next === opts.stopToken) break;
    }
  } finally {
    disposeCaches(caches);
    model.train(wasTraining);
  }
  return out;
}

function positionsFrom(from: number, n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => from + i);
}

/** Picks a token from one row of logits with temperature, top-k and top-p, on the host. */
export function sampleToken(logits: Float32Array, opts: Pick<GenerateOptions, 'temperature' | 'topK' | 'topP'>, rng: Rng): number {
  const temperature = opts.temperature ?? 1;
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  // candidates sorted by logit, descending (ties by index for determinism)
  let order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (opts.topK !== undefined && opts.topK > 0) order = order.slice(0, opts.topK);
  const mx = logits[order[0]!]!;
  let probs = order.map((i) => Math.exp((logits[i]! - mx) / temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  const topP = opts.topP ?? 1;
  if (topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < topP * total) acc += probs[keep++]!;
    order = order.slice(0, Math.max(1, keep));
    probs = probs.slice(0, order.length);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = rng.uniform() * total;
  for (let i = 0; i < order.length; i++) {
    u -= probs[i]!;
    if (u < 0) return order[i]!;
  }
  return order[order.length - 1]!;
}
