import { z } from 'zod';

export const scheduleConfigSchema = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('cosine'),
      /** Linear warmup from 0 over this many steps. Default 100. */
      warmupSteps: z.number().int().min(0).default(100),
      /** Final learning rate as a fraction of the peak. Default 0.1. */
      minLrRatio: z.number().min(0).max(1).default(0.1),
    })
    .strict(),
  z
    .object({
      type: z.literal('constant'),
      /** Linear warmup from 0 over this many steps. Default 0. */
      warmupSteps: z.number().int().min(0).default(0),
    })
    .strict(),
]);
export type ScheduleConfig = z.infer<typeof scheduleConfigSchema>;

/**
 * Learning rate at optimizer step `step` (0-based) of `total`: linear warmup to `peak`, then cosine
 * decay to peak * minLrRatio at the last step (or constant). A pure function of the step, so
 * resuming needs no schedule state beyond the step.
 */
export function learningRate(cfg: ScheduleConfig, peak: number, step: number, total: number): number {
  if (step < cfg.warmupSteps) return (peak * (step + 1)) / cfg.warmupSteps;
  if (cfg.type === 'constant') return peak;
  const min = peak * cfg.minLrRatio;
  const progress = Math.min(1, (step - cfg.warmupSteps) / Math.max(1, total - 1 - cfg.warmupSteps));
  return min + 0.5 * (peak - min) * (1 + Math.cos(Math.PI * progress));
}
