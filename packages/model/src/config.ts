import { z } from 'zod';
import { attentionConfigSchema, type AttentionConfig } from '@tsformer/attention';
import { positionalConfigSchema, type PositionalConfig } from '@tsformer/positional';

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

/** One kind of layer in a hybrid schedule: its attention and (optionally) its own positional encoding. */
export const layerDefSchema = z
  .object({
    attention: attentionConfigSchema,
    /** Default: the model's `positional`. */
    positional: positionalConfigSchema.optional(),
  })
  .strict();

/**
 * A hybrid layer schedule as data: `pattern` names a def per layer and repeats to fill nLayers,
 * e.g. SWAN-GPT `[global, local, local, local]` or Command-R7B `[local, local, local, global]`.
 */
export const layerScheduleSchema = z
  .object({
    /** Def names, one per layer, repeated to fill nLayers (whose count must be a multiple of its length). */
    pattern: z.array(z.string().min(1)).min(1),
    /** The layer kinds the pattern names. */
    defs: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/), layerDefSchema),
  })
  .strict();

/** A decoder-only language model. Every field has a default except the sizes. */
const modelObjectSchema = z
  .object({
    /** Vocabulary size; must cover the tokenizer's. */
    vocabSize: z.number().int().positive(),
    /** Residual stream width. */
    dModel: z.number().int().positive(),
    /** Number of blocks. */
    nLayers: z.number().int().positive(),
    /** Longest context the model attends over (training sequences and the generation window). */
    maxSeqLen: z.number().int().positive(),
    /** The attention of every layer. Required unless `layers` is given (then each def has its own). */
    attention: attentionConfigSchema.optional(),
    /** A hybrid schedule of layer kinds; absent = every layer uses `attention` and `positional`. */
    layers: layerScheduleSchema.optional(),
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

export const modelConfigSchema = modelObjectSchema.superRefine((cfg, ctx) => {
  if (!cfg.attention && !cfg.layers) {
    ctx.addIssue({ code: 'custom', path: ['attention'], message: 'required (or define model.layers with a pattern and defs)' });
  }
  if (cfg.attention && cfg.layers) {
    ctx.addIssue({ code: 'custom', path: ['attention'], message: 'give either model.attention or model.layers (whose defs set each layer\'s attention), not both' });
  }
  if (cfg.layers) {
    const { pattern, defs } = cfg.layers;
    pattern.forEach((name, i) => {
      if (!(name in defs)) ctx.addIssue({ code: 'custom', path: ['layers', 'pattern', i], message: `"${name}" is not one of model.layers.defs (${Object.keys(defs).join(', ')})` });
    });
    if (cfg.nLayers % pattern.length !== 0) {
      ctx.addIssue({ code: 'custom', path: ['layers', 'pattern'], message: `has ${pattern.length} entries, which does not divide model.nLayers (${cfg.nLayers})` });
    }
  }
});

export type ModelConfig = z.infer<typeof modelConfigSchema>;
/** What a user writes: defaults may be omitted. */
export type ModelConfigInput = z.input<typeof modelConfigSchema>;

export interface LayerSpec {
  /** The def name (`default` without a schedule). */
  kind: string;
  attention: AttentionConfig;
  positional: PositionalConfig;
}

/** The attention and positional encoding of each layer, the schedule expanded. */
export function layerSpecs(cfg: ModelConfig): LayerSpec[] {
  return Array.from({ length: cfg.nLayers }, (_, i) => {
    if (!cfg.layers) return { kind: 'default', attention: cfg.attention!, positional: cfg.positional };
    const kind = cfg.layers.pattern[i % cfg.layers.pattern.length]!;
    const def = cfg.layers.defs[kind]!;
    return { kind, attention: def.attention, positional: def.positional ?? cfg.positional };
  });
}

export function mlpHidden(cfg: ModelConfig): number {
  if (cfg.mlp.hidden) return cfg.mlp.hidden;
  if (cfg.mlp.type === 'gelu') return 4 * cfg.dModel;
  return Math.ceil((8 * cfg.dModel) / 3 / 32) * 32;
}
