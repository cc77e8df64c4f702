import { z } from 'zod';
import { noPositional, type PositionalEncoding } from './types.js';
import { Rope } from './rope.js';
import { Alibi } from './alibi.js';
import { alibiConfigSchema, noneConfigSchema, ropeConfigSchema, type RopeConfig } from './schema.js';

/** Positional encodings by config `type`. Each entry: its schema and a builder given the head dim. */
export const positionalRegistry = {
  rope: {
    schema: ropeConfigSchema,
    create: (cfg: RopeConfig, headDim: number): PositionalEncoding =>
      new Rope({ headDim, theta: cfg.theta, fraction: cfg.fraction, layout: cfg.layout, scaling: cfg.scaling }),
  },
  alibi: {
    schema: alibiConfigSchema,
    create: (): PositionalEncoding => new Alibi(),
  },
  none: {
    schema: noneConfigSchema,
    create: (): PositionalEncoding => noPositional,
  },
} as const;

export const positionalConfigSchema = z.discriminatedUnion('type', [
  positionalRegistry.rope.schema,
  positionalRegistry.alibi.schema,
  positionalRegistry.none.schema,
]);
export type PositionalConfig = z.infer<typeof positionalConfigSchema>;

/**
 * Builds the encoding a config names for a head dim. Errors that depend on the head dim (a rotary
 * fraction that leaves no dims) are TsformerErrors of kind `config`.
 */
export function createPositional(cfg: PositionalConfig, headDim: number): PositionalEncoding {
  switch (cfg.type) {
    case 'rope':
      return positionalRegistry.rope.create(cfg, headDim);
    case 'alibi':
      return positionalRegistry.alibi.create();
    case 'none':
      return positionalRegistry.none.create();
  }
}
