import { z } from 'zod';
import type { Attention, AttentionDeps } from './types.js';
import { SoftmaxAttention, softmaxAttentionSchema, type SoftmaxAttentionConfig } from './softmax.js';

/**
 * Attention types by config `type:`. The config schema is the discriminated union of the entries'
 * schemas; later types (mla, gla, deltanet, ...) register here.
 */
export const attentionRegistry = {
  mha: {
    schema: softmaxAttentionSchema,
    create: (cfg: SoftmaxAttentionConfig, deps: AttentionDeps): Attention => new SoftmaxAttention(cfg, deps),
  },
} as const;

export type AttentionType = keyof typeof attentionRegistry;

export const attentionConfigSchema = z.discriminatedUnion('type', [attentionRegistry.mha.schema]);
export type AttentionConfig = z.infer<typeof attentionConfigSchema>;

export function createAttention(cfg: AttentionConfig, deps: AttentionDeps): Attention {
  switch (cfg.type) {
    case 'mha':
      return attentionRegistry.mha.create(cfg, deps);
  }
}

/** Per-head dim a config implies for a model width (the positional encoding is built for it). */
export function attentionHeadDim(cfg: AttentionConfig, dModel: number): number {
  return cfg.headDim ?? dModel / cfg.numHeads;
}
