import { z } from 'zod';
import { TsformerError } from '@tsformer/core';
import { ByteTokenizer, loadHfTokenizer, type Tokenizer } from './tokenizer.js';

/** `tokenizer:` in a config. */
export const tokenizerConfigSchema = z.discriminatedUnion('type', [
  z.strictObject({
    /** UTF-8 bytes, vocabulary 256. */
    type: z.literal('byte'),
  }),
  z.strictObject({
    /** A Hugging Face tokenizer.json. */
    type: z.literal('hf'),
    /** The tokenizer.json file or the directory holding it (no default). */
    path: z.string().min(1),
  }),
]);

/** `dataset:` in a config. */
export const datasetConfigSchema = z.discriminatedUnion('type', [
  z.strictObject({
    /** One UTF-8 text file, encoded whole. */
    type: z.literal('text'),
    /** Path of the file, relative to the working directory (no default). */
    path: z.string().min(1),
  }),
  z.strictObject({
    /** One JSON object per line; documents are joined with the tokenizer's EOS. */
    type: z.literal('jsonl'),
    /** Path of the file, relative to the working directory (no default). */
    path: z.string().min(1),
    /** The string field of each object holding the document. Default `text`. */
    field: z.string().min(1).default('text'),
  }),
]);

export type TokenizerConfig = z.output<typeof tokenizerConfigSchema>;
export type TokenizerConfigInput = z.input<typeof tokenizerConfigSchema>;
export type DatasetConfig = z.output<typeof datasetConfigSchema>;
export type DatasetConfigInput = z.input<typeof datasetConfigSchema>;

/** Parses with `schema`, turning zod's issues into one TsformerError that names each key. */
export function parseConfig<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((i) => `${[where, ...i.path.map(String)].join('.')}: ${i.message}`);
  throw new TsformerError(`invalid config: ${issues.join('; ')}`, 'config');
}

/** The tokenizer a (raw or parsed) `tokenizer:` config describes. */
export async function createTokenizer(cfg: TokenizerConfigInput): Promise<Tokenizer> {
  const parsed = parseConfig(tokenizerConfigSchema, cfg, 'tokenizer');
  switch (parsed.type) {
    case 'byte':
      return new ByteTokenizer();
    case 'hf':
      return loadHfTokenizer(parsed.path);
  }
}
