import { z } from 'zod';
import { noPositional, type PositionalEncoding } from './types.js';
import { Rope } from './rope.js';

/** Positional encodings by config `type`. Each entry: its schema and a builder given the head dim. */
export const positionalRegistry = {
  rope: {
    schema: z
      .object({
        type: z.literal('rope'),
        /** Base of the inverse frequencies. Default 10000. */
        theta: z.number().positive().default(10000),
      })
      .strict(),
    create: (cfg: { theta: number }, headDim: number): PositionalEncoding => new Rope({ headDim, theta: cfg.theta }),
  },
  none: {
    schema: z.object({ type: z.literal('none') }).strict(),
    create: (): PositionalEncoding => noPositional,
  },
} as const;

export const positionalConfigSchema = z.discriminatedUnion('type', [
  positionalRegistry.rope.schema,
  positionalRegistry.none.schema,
]);
export type PositionalConfig = z.infer<typeof positionalConfigSchema>;

export function createPositional(cfg: PositionalConfig, headDim: number): PositionalEncoding {
  switch (cfg.type) {
    case 'rope':
      return positionalRegistry.rope.create(cfg, headDim);
    case 'none':
      return positionalRegistry.none.create();
  }
}
