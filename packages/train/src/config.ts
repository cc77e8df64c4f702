import { z } from 'zod';
import { adamwConfigSchema } from './adamw.js';
import { scheduleConfigSchema } from './schedule.js';

export const trainConfigSchema = z
  .object({
    /** Optimizer steps to train for. */
    steps: z.number().int().positive(),
    /** Sequences per micro-batch. */
    batchSize: z.number().int().positive(),
    /** Micro-batches per optimizer step (gradients are averaged). Default 1. */
    gradAccum: z.number().int().positive().default(1),
    optimizer: adamwConfigSchema,
    /** Default cosine with 100 warmup steps, decaying to 10% of the peak. */
    schedule: scheduleConfigSchema.default({ type: 'cosine', warmupSteps: 100, minLrRatio: 0.1 }),
    /** Global gradient-norm clipping threshold; 0 disables. Default 1. */
    clipGradNorm: z.number().min(0).default(1),
    /** Print and record training metrics every this many steps. Default 10. */
    logEvery: z.number().int().positive().default(10),
    /** Validation every this many steps (and at the end); 0 disables. Default 100. */
    evalEvery: z.number().int().min(0).default(100),
    /** Validation batches per evaluation (fixed, unshuffled). Default 20. */
    evalBatches: z.number().int().positive().default(20),
  })
  .strict();
export type TrainConfig = z.infer<typeof trainConfigSchema>;
