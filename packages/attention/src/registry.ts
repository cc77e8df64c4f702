import { z } from 'zod';
import type { Attention, AttentionDeps } from './types.js';
import { SoftmaxAttention, softmaxAttentionSchema, type SoftmaxAttentionConfig } from './softmax.js';
import { MlaAttention, mlaAttentionSchema, type MlaAttentionConfig } from './mla.js';

/**
 * Attention types by config `type:`. The config schema is the discriminated union of the entries'
 * schemas; later types (gla, deltanet, ...) register here.
 */
export const attentionRegistry = {
  mha: {
    schema: softmaxAttentionSchema,
    create: (cfg: SoftmaxAttentionConfig, deps: AttentionDeps): Attention => new SoftmaxAttention(cfg, deps),
  },
  mla: {
    schema: mlaAttentionSchema,
    create: (cfg: MlaAttentionConfig, deps: AttentionDeps): Attention => new MlaAttention(cfg, deps),
  },
} as const;

export type AttentionType = keyof typeof attentionRegistry;

export const attentionConfigSchema = z.discriminatedUnion('type', [attentionRegistry.mha.schema, attentionRegistry.mla.schema]);
export type AttentionConfig = z.infer<typeof attentionConfigSchema>;

export function createAttention(cfg: AttentionConfig, deps: AttentionDeps): Attention {
  switch (cfg.type) {
    case 'mha':
      return attentionRegistry.mha.create(cfg, deps);
    case 'mla':
      return attentionRegistry.mla.create(cfg, deps);
  }
}

/**
 * Per-head dim the positional encoding is built for, for a model width: the head dim for mha, the
 * rotated part (qkRopeHeadDim) for mla.
 */
export function attentionHeadDim(cfg: AttentionConfig, dModel: number): number {
  switch (cfg.type) {
    case 'mha':
      return cfg.headDim ?? dModel / cfg.numHeads;
    case 'mla':
      return cfg.qkRopeHeadDim;
  }
}

/**
 * Numbers a decoding cache holds per token, per layer and per sequence: 2 * numKvHeads * headDim
 * for mha (keys and values), kvLoraRank + qkRopeHeadDim for mla (the latent and the shared rope key).
 */
export function kvCacheNumbersPerToken(cfg: AttentionConfig, dModel: number): number {
  switch (cfg.type) {
    case 'mha':
      return 2 * (cfg.numKvHeads ?? cfg.numHeads) * (cfg.headDim ?? dModel / cfg.numHeads);
    case 'mla':
      return cfg.kvLoraRank + cfg.qkRopeHeadDim;
  }
}
