import { z } from 'zod';
import { attentionConfigSchema } from '@tsformer/attention';
import { positionalConfigSchema } from '@tsformer/positional';

export const normConfigSchema = z
  .object({
    /** `rmsnorm` (default) or `layernorm`. */
    type: z.enum(['rmsnorm', 'layernorm']).default('rmsnorm'),
    /** Added to the variance. Default 1e-5. */
    eps: z.number().positive().default(1e-5),
  })
  .strict();

export const mlpConfigSchema = z
  .object({
    /** `swiglu` (default, Llama) or `gelu` (GPT-2). */
    type: z.enum(['swiglu', 'gelu']).default('swiglu'),
    /** Hidden width. Default: 8/3 dModel rounded up to a multiple of 32 for swiglu, 4 dModel for gelu. */
    hidden: z.number().int().positive().optional(),
    /** Bias on the projections. Default false. */
    bias: z.boolean().default(false),
  })
  .strict();

/** A decoder-only language model. Every field has a default except the sizes. */
export const modelConfigSchema = z
  .object({
    /** Vocabulary size; must cover the tokenizer's. */
    vocabSize: z.number().int().positive(),
    /** Residual stream width. */
    dModel: z.number().int().positive(),
    /** Number of blocks. */
    nLayers: z.number().int().positive(),
    /** Longest context the model attends over (training sequences and the generation window). */
    maxSeqLen: z.number().int().positive(),
    attention: attentionConfigSchema,
    /** Default `{ type: rope, theta: 10000 }`. */
    positional: positionalConfigSchema.default({ type: 'rope', theta: 10000 }),
    norm: normConfigSchema.default({ type: 'rmsnorm', eps: 1e-5 }),
    mlp: mlpConfigSchema.default({ type: 'swiglu', bias: false }),
    /** Share the embedding matrix with the output head. Default true. */
    tieEmbeddings: z.boolean().default(true),
    /** Residual and embedding dropout (training only). Default 0. */
    dropout: z.number().min(0).max(0.99).default(0),
    /** Std of the normal init; output projections get initStd / sqrt(2 nLayers). Default 0.02. */
    initStd: z.number().positive().default(0.02),
  })
  .strict();

export type ModelConfig = z.infer<typeof modelConfigSchema>;
/** What a user writes: defaults may be omitted. */
export type ModelConfigInput = z.input<typeof modelConfigSchema>;

export function mlpHidden(cfg: ModelConfig): number {
  if (cfg.mlp.hidden) return cfg.mlp.hidden;
  if (cfg.mlp.type === 'gelu') return 4 * cfg.dModel;
  return Math.ceil((8 * cfg.dModel) / 3 / 32) * 32;
}
