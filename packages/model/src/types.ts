import type { Module, tf } from '@tsformer/core';
import type { AttentionCache } from '@tsformer/attention';
import type { ModelConfig } from './config.js';
import type { ForwardOptions } from './decoder.js';

/**
 * What generation, training steps and evaluation need of a language model: `DecoderLM`, and any
 * model with the same surface (a distilled `StudentLM` from `@tsformer/distill`). Structural, so a
 * model need not be a DecoderLM subclass.
 */
export interface LanguageModel extends Module {
  readonly config: ModelConfig;
  /** ids: int32 [B, T] -> logits [B, T, V] (and the extended caches when caches were given). */
  forward(ids: tf.Tensor, opts?: ForwardOptions): { logits: tf.Tensor; caches?: AttentionCache[] };
  /** One empty cache per layer. */
  initCaches(): AttentionCache[];
}
