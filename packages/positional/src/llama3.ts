import { z } from 'zod';

/**
 * Llama 3.1 frequency scaling (HF `rope_type: llama3`, `_compute_llama3_parameters`). With
 * N = originalMaxPositions and a pair's wavelength lambda_i = 2 pi / w_i:
 *
 *   lambda_i < N / highFreqFactor    w_i                       (fast pairs: unchanged)
 *   lambda_i > N / lowFreqFactor     w_i / factor              (slow pairs: interpolated)
 *   otherwise                        (1 - s) w_i / factor + s w_i,   s = (N / lambda_i - lowFreqFactor) / (highFreqFactor - lowFreqFactor)
 *
 * No attention factor. Unlike YaRN's ramp over pair indices, the blend is over N / lambda_i, the
 * number of turns a pair makes over the original context.
 */
export const llama3ScalingSchema = z
  .object({
    type: z.literal('llama3'),
    /** Slow pairs have their frequency divided by this. Required; >= 1. */
    factor: z.number().min(1, { error: 'factor must be >= 1' }),
    /** Pretraining context length N (HF `original_max_position_embeddings`). Required. */
    originalMaxPositions: z
      .number()
      .refine((v) => Number.isInteger(v) && v > 0, { error: 'originalMaxPositions must be a positive integer' }),
    /** Pairs turning fewer than this many times over N are fully interpolated. Default 1. */
    lowFreqFactor: z.number().positive({ error: 'lowFreqFactor must be > 0' }).default(1),
    /** Pairs turning more than this many times over N keep their frequency. Default 4. */
    highFreqFactor: z.number().positive({ error: 'highFreqFactor must be > 0' }).default(4),
  })
  .strict()
  .refine((s) => s.highFreqFactor > s.lowFreqFactor, { error: 'highFreqFactor must be greater than lowFreqFactor', path: ['highFreqFactor'] });
export type Llama3Scaling = z.output<typeof llama3ScalingSchema>;

/** Llama 3.1 inverse frequencies [R/2] (see `llama3ScalingSchema`). */
export function llama3InverseFrequencies(
  rotaryDim: number,
  theta: number,
  s: { factor: number; originalMaxPositions: number; lowFreqFactor: number; highFreqFactor: number },
): Float64Array {
  const out = new Float64Array(rotaryDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = Math.pow(theta, (-2 * i) / rotaryDim); // unscaled theta^(-2i/R)
  const N = s.originalMaxPositions;
  const lowWavelen = N / s.lowFreqFactor; // longer: interpolated
  const highWavelen = N / s.highFreqFactor; // shorter: unchanged
  for (let i = 0; i < out.length; i++) {
    const w = out[i]!;
    const wavelen = (2 * Math.PI) / w;
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      out[i] = w / s.factor;
      continue;
    }
    const smooth = (N / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    out[i] = (1 - smooth) * (w / s.factor) + smooth * w;
  }
  return out;
}
