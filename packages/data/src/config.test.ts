import { describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import { createTokenizer, datasetConfigSchema, parseConfig, tokenizerConfigSchema } from './config.js';
import { ByteTokenizer } from './tokenizer.js';

describe('config schemas', () => {
  it('parses the tokenizer union and rejects unknown keys and types', () => {
    expect(tokenizerConfigSchema.parse({ type: 'byte' })).toEqual({ type: 'byte' });
    expect(tokenizerConfigSchema.parse({ type: 'hf', path: 'tok' })).toEqual({ type: 'hf', path: 'tok' });
    expect(tokenizerConfigSchema.safeParse({ type: 'byte', path: 'x' }).success).toBe(false);
    expect(tokenizerConfigSchema.safeParse({ type: 'hf' }).success).toBe(false);
    expect(tokenizerConfigSchema.safeParse({ type: 'sentencepiece' }).success).toBe(false);
  });

  it('defaults the jsonl field to text and rejects unknown keys', () => {
    expect(datasetConfigSchema.parse({ type: 'jsonl', path: 'a.jsonl' })).toEqual({ type: 'jsonl', path: 'a.jsonl', field: 'text' });
    expect(datasetConfigSchema.parse({ type: 'jsonl', path: 'a.jsonl', field: 'body' })).toMatchObject({ field: 'body' });
    expect(datasetConfigSchema.parse({ type: 'text', path: 'a.txt' })).toEqual({ type: 'text', path: 'a.txt' });
    expect(datasetConfigSchema.safeParse({ type: 'text', path: 'a.txt', field: 'text' }).success).toBe(false);
    expect(datasetConfigSchema.safeParse({ type: 'text', path: 'a.txt', pth: 'typo' }).success).toBe(false);
    expect(datasetConfigSchema.safeParse({ type: 'text', path: '' }).success).toBe(false);
  });

  it('reports invalid configs as TsformerErrors naming the key', () => {
    let error: unknown;
    try {
      parseConfig(datasetConfigSchema, { type: 'jsonl', path: 3 }, 'dataset');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TsformerError);
    expect((error as TsformerError).kind).toBe('config');
    expect((error as TsformerError).message).toContain('dataset.path');
  });
});

describe('createTokenizer', () => {
  it('builds the configured tokenizer', async () => {
    expect(await createTokenizer({ type: 'byte' })).toBeInstanceOf(ByteTokenizer);
    await expect(createTokenizer({ type: 'hf', path: '/no/such/tokenizer' })).rejects.toThrow('/no/such/tokenizer');
    await expect(createTokenizer({ type: 'bytes' } as never)).rejects.toThrow(/tokenizer\.type/);
  });
});
