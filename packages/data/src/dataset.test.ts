import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import { loadTokens } from './dataset.js';
import { ByteTokenizer, type Tokenizer } from './tokenizer.js';

/** Bytes plus an end-of-text id of 256, like a byte tokenizer with one special token. */
class ByteEosTokenizer extends ByteTokenizer implements Tokenizer {
  override readonly name = 'byte+eos';
  override readonly vocabSize = 257;
  readonly eosId = 256;
}

describe('loadTokens', () => {
  const byte = new ByteTokenizer();
  let dir: string;
  const file = (name: string): string => join(dir, name);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tsf-data-'));
    await writeFile(file('a.txt'), 'Hello, wörld.\nSecond line.\n');
    await writeFile(file('docs.jsonl'), '{"text": "one", "id": 1}\n\n{"text": "two"}\n{"text": "thrée"}\n');
    await writeFile(file('body.jsonl'), '{"body": "x"}\n{"body": "yz"}');
    await writeFile(file('bad-json.jsonl'), '{"text": "ok"}\n{"text": oops}\n');
    await writeFile(file('bad-field.jsonl'), '{"text": "ok"}\n{"text": "ok"}\n{"txt": "wrong key"}\n');
    await writeFile(file('empty.txt'), '');
    await writeFile(file('blank.jsonl'), '\n\n');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('encodes a text file whole', async () => {
    const tokens = await loadTokens({ type: 'text', path: file('a.txt') }, byte);
    expect(byte.decode(tokens)).toBe('Hello, wörld.\nSecond line.\n');
  });

  it('joins JSONL documents with a newline when the tokenizer has no EOS', async () => {
    const tokens = await loadTokens({ type: 'jsonl', path: file('docs.jsonl'), field: 'text' }, byte);
    expect(byte.decode(tokens)).toBe('one\ntwo\nthrée');
  });

  it('joins JSONL documents with the EOS id when there is one', async () => {
    const tokens = await loadTokens({ type: 'jsonl', path: file('body.jsonl'), field: 'body' }, new ByteEosTokenizer());
    expect(Array.from(tokens)).toEqual([120, 256, 121, 122]);
  });

  it('names a missing file, with the prepare hint for the brown data set', async () => {
    const missing = file('missing.txt');
    await expect(loadTokens({ type: 'text', path: missing }, byte)).rejects.toThrow(TsformerError);
    await expect(loadTokens({ type: 'text', path: missing }, byte)).rejects.toThrow(missing);
    await expect(loadTokens({ type: 'text', path: missing }, byte)).rejects.not.toThrow(/data:brown/);
    const brown = join(dir, 'datasets/brown/train.txt');
    await expect(loadTokens({ type: 'text', path: brown }, byte)).rejects.toThrow(/datasets\/brown\/train\.txt.*npm run data:brown/);
  });

  it('names the file and line of a bad JSONL line', async () => {
    await expect(loadTokens({ type: 'jsonl', path: file('bad-json.jsonl'), field: 'text' }, byte)).rejects.toThrow(
      `${file('bad-json.jsonl')}:2: invalid JSON`,
    );
    await expect(loadTokens({ type: 'jsonl', path: file('bad-field.jsonl'), field: 'text' }, byte)).rejects.toThrow(
      `${file('bad-field.jsonl')}:3: field "text" must be a string`,
    );
  });

  it('rejects an empty data set', async () => {
    await expect(loadTokens({ type: 'text', path: file('empty.txt') }, byte)).rejects.toThrow(/is empty/);
    await expect(loadTokens({ type: 'jsonl', path: file('blank.jsonl'), field: 'text' }, byte)).rejects.toThrow(/is empty/);
  });
});
