import type { Module, Rng, tf } from '@tsformer/core';
import type { PositionalEncoding } from '@tsformer/positional';

/**
 * A decoding cache. Each attention type defines its own (`kind` tells which); the model only
 * threads it through. A cache owns its tensors: whoever drops a cache calls `disposeCache`.
 */
export interface AttentionCache {
  readonly kind: string;
  /** Number of tokens already absorbed. */
  readonly length: number;
  readonly tensors: readonly tf.Tensor[];
}

export interface AttentionContext {
  /** Absolute positions of the T new tokens (host-side, shared by the batch). */
  positions: Int32Array;
  /** The cache from the previous decode step, or an empty one from `initCache`. Absent: no caching. */
  cache?: AttentionCache;
  /** Training mode (dropout on). */
  training: boolean;
}

export interface AttentionOutput {
  /** [B, T, D] */
  y: tf.Tensor;
  /** Present when a cache was passed in: the cache extended with this call's tokens. */
  cache?: AttentionCache;
}

/** The one attention interface every type implements. */
export interface Attention extends Module {
  readonly type: string;
  /** x: [B, T, D] -> { y: [B, T, D], cache? }. Decoding with the cache equals the full forward. */
  forward(x: tf.Tensor, ctx: AttentionContext): AttentionOutput;
  /** An empty cache to start decoding with. */
  initCache(): AttentionCache;
}

/** What every attention constructor receives besides its own config. */
export interface AttentionDeps {
  /** Model width. */
  dModel: number;
  /** The positional encoding for this layer (built by the model, never by the attention). */
  positional: PositionalEncoding;
  rng: Rng;
  /** Init std of the output projection. Default 0.02. */
  outStd?: number;
  /** The context length the model is trained at (model.maxSeqLen), e.g. for sigmoid attention's default bias -ln(n). */
  contextLength: number;
}

export function disposeCache(cache: AttentionCache | undefined): void {
  cache?.tensors.forEach((t) => t.dispose());
}
