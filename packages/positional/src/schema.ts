import { z } from 'zod';
import { llama3ScalingSchema } from './llama3.js';

// Config schemas of each positional encoding: strict objects, each field's problem reported at its
// dotted path with a message that names the field. Kept apart from the classes so both the config
// layer and the constructors (which validate programmatic options with the same schema) import them.

/** A scaling factor: 1 leaves the frequencies unchanged, larger stretches the context. */
const factor = z.number().min(1, { error: 'factor must be >= 1' });

/** The context length the model was pretrained on (HF `original_max_position_embeddings`). */
const originalMaxPositions = z
  .number()
  .refine((v) => Number.isInteger(v) && v > 0, { error: 'originalMaxPositions must be a positive integer' });

/** Position interpolation: every position is divided by `factor` (HF `rope_type: linear`). */
export const linearScalingSchema = z
  .object({
    type: z.literal('linear'),
    /** Positions are divided by this. Required; >= 1. */
    factor,
  })
  .strict();

/** NTK-aware scaling: a larger base, theta * factor^(R/(R-2)), at every length. */
export const ntkScalingSchema = z
  .object({
    type: z.literal('ntk'),
    /** Context stretch the base is enlarged for. Required; >= 1. */
    factor,
  })
  .strict();

/** Dynamic NTK (HF `rope_type: dynamic`): the NTK base grows with the length once past `originalMaxPositions`. */
export const dynamicScalingSchema = z
  .object({
    type: z.literal('dynamic'),
    /** Stretch factor of the NTK base formula. Required; >= 1. */
    factor,
    /** Lengths up to this use the unscaled base (HF `max_position_embeddings`). Required. */
    originalMaxPositions,
  })
  .strict();

/** YaRN (HF `rope_type: yarn`): per-dimension blend of interpolated and original frequencies, plus an attention factor. */
export const yarnScalingSchema = z
  .object({
    type: z.literal('yarn'),
    /** Context stretch: fully interpolated dims have their frequency divided by this. Required; >= 1. */
    factor,
    /** Pretraining context length the correction dims are measured against. Required. */
    originalMaxPositions,
    /** Dims that turn more than this many times over the original context keep their frequency. Default 32. */
    betaFast: z.number().positive({ error: 'betaFast must be > 0' }).default(32),
    /** Dims that turn fewer than this many times are fully interpolated. Default 1. */
    betaSlow: z.number().positive({ error: 'betaSlow must be > 0' }).default(1),
    /** Multiplies cos and sin (so q.k by its square). Default 0.1 ln(factor) + 1. */
    attentionFactor: z.number().positive({ error: 'attentionFactor must be > 0' }).optional(),
    /** Round the correction dims outwards to integers (HF `truncate`). Default true. */
    truncate: z.boolean().default(true),
  })
  .strict()
  .refine((s) => s.betaFast > s.betaSlow, { error: 'betaFast must be greater than betaSlow', path: ['betaFast'] });

/** RoPE context-extension scalings, discriminated on `type` (mirrors HF `rope_scaling`; llama3 in llama3.ts). */
export const ropeScalingSchema = z.discriminatedUnion('type', [
  linearScalingSchema,
  ntkScalingSchema,
  dynamicScalingSchema,
  yarnScalingSchema,
  llama3ScalingSchema,
]);
/** A resolved scaling (defaults filled). */
export type RopeScaling = z.output<typeof ropeScalingSchema>;
/** A scaling as written (optional fields may be left out). */
export type RopeScalingInput = z.input<typeof ropeScalingSchema>;

/** Which dims form the rotated pairs. */
export type RopeLayout = 'half' | 'interleaved';

/**
 * Rotary position embedding. `fraction`, `layout` and `scaling` are optional rather than defaulted so
 * that a parsed `{ type: rope }` stays `{ type: rope, theta: 10000 }` (configs and defaults elsewhere
 * are written in that form); their defaults are applied when the encoding is built.
 */
export const ropeConfigSchema = z
  .object({
    type: z.literal('rope'),
    /** Base of the inverse frequencies. Default 10000. */
    theta: z.number().positive({ error: 'theta must be > 0' }).default(10000),
    /** Fraction of each head's dims that is rotated (partial rotary); the rest pass through. Default 1. */
    fraction: z
      .number()
      .refine((v) => v > 0 && v <= 1, { error: 'fraction must be in (0, 1]' })
      .optional(),
    /** `half` (Llama/NeoX/HF: dim i pairs with i + R/2) or `interleaved` (GPT-J: 2i with 2i+1). Default `half`. */
    layout: z.enum(['half', 'interleaved']).optional(),
    /** Context-extension scaling (linear, ntk, dynamic, yarn). Default none. */
    scaling: ropeScalingSchema.optional(),
  })
  .strict();
export type RopeConfig = z.output<typeof ropeConfigSchema>;

/** ALiBi: a per-head linear distance penalty added to the scores; no rotation. */
export const alibiConfigSchema = z.object({ type: z.literal('alibi') }).strict();
export type AlibiConfig = z.output<typeof alibiConfigSchema>;

/** NoPE: no positional signal. */
export const noneConfigSchema = z.object({ type: z.literal('none') }).strict();
export type NoneConfig = z.output<typeof noneConfigSchema>;
