import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import { ByteTokenizer, loadHfTokenizer, type Tokenizer } from './tokenizer.js';

describe('ByteTokenizer', () => {
  const tok = new ByteTokenizer();

  it('round-trips ASCII and multibyte UTF-8, one id per byte', () => {
    for (const text of ['hello, world', 'naïve café', '日本語のテキスト', 'emoji 🎉👩‍🔬 and \u0000 nul', '']) {
      const ids = tok.encode(text);
      expect(ids).toBeInstanceOf(Int32Array);
      expect(ids.length).toBe(Buffer.byteLength(text, 'utf8'));
      expect(ids.every((id) => id >= 0 && id < 256)).toBe(true);
      expect(tok.decode(ids)).toBe(text);
    }
    expect(Array.from(tok.encode('é'))).toEqual([0xc3, 0xa9]);
    expect(tok.vocabSize).toBe(256);
    expect((tok as Tokenizer).eosId).toBeUndefined();
  });

  it('decodes invalid bytes and out-of-range ids to U+FFFD without throwing', () => {
    expect(tok.decode([0xff, 0x41, 0xc3])).toBe('\uFFFDA\uFFFD');
    // The first two bytes of the four of 🎉, then a space.
    expect(tok.decode([0xf0, 0x9f, 0x20])).toBe('\uFFFD ');
    expect(tok.decode([0x61, 300, -1, 0x62])).toBe('a\uFFFD\uFFFDb');
    expect(tok.decode(new Int32Array(0))).toBe('');
  });
});

/** GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100 upwards. */
function byteChars(): string[] {
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + next++));
}

/** A tiny byte-level BPE: 256 byte tokens, five merges, and an end-of-text token. */
function tinyBpe(): object {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => (vocab[c] = i));
  const merges = ['Ġ t', 'h e', 'Ġt he', 'l l', 'o r'];
  for (const m of merges) vocab[m.replace(' ', '')] = Object.keys(vocab).length;
  return {
    version: '1.0',
    added_tokens: [{ id: 261, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

describe('loadHfTokenizer', () => {
  let dir: string;
  let bare: string;
  let tok: Tokenizer;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tsf-hf-'));
    bare = join(dir, 'bare');
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tinyBpe()));
    // Models name their end-of-text token here; the bare copy below relies on the fallback instead.
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: { content: '<|endoftext|>', __type: 'AddedToken' } }));
    await mkdir(bare);
    await writeFile(join(bare, 'my-tokenizer.json'), JSON.stringify(tinyBpe()));
    tok = await loadHfTokenizer(dir);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('encodes with the merges and decodes back exactly', () => {
    const text = 'hello the world';
    const ids = Array.from(tok.encode(text));
    // he ll o | Ġthe | Ġ w or l d  (single bytes keep their byte value as id; Ġ is the space, 32)
    expect(ids).toEqual([257, 259, 111, 258, 32, 119, 260, 108, 100]);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.vocabSize).toBe(262);
    expect(tok.eosId).toBe(261);
    expect(tok.name).toContain(dir);
  });

  it('round-trips multibyte text and punctuation spacing', () => {
    for (const text of ['naïve café, 日本 🎉', 'a . b , c ?', '  two  spaces\nand a line']) {
      expect(tok.decode(tok.encode(text))).toBe(text);
    }
    expect(tok.decode([])).toBe('');
    expect(tok.encode('')).toEqual(new Int32Array(0));
  });

  it('encodes the special token as one id and adds none by itself', () => {
    const ids = Array.from(tok.encode('he<|endoftext|>he'));
    expect(ids).toEqual([257, 261, 257]);
    expect(tok.decode(ids)).toBe('he<|endoftext|>he');
  });

  it('loads a file path with no tokenizer_config.json and still finds the end-of-text token', async () => {
    const t = await loadHfTokenizer(join(bare, 'my-tokenizer.json'));
    expect(t.eosId).toBe(261);
    expect(Array.from(t.encode('the'))).toEqual(Array.from(tok.encode('the')));
  });

  it('names the missing path', async () => {
    const missing = join(dir, 'nope');
    await expect(loadHfTokenizer(missing)).rejects.toThrow(TsformerError);
    await expect(loadHfTokenizer(missing)).rejects.toThrow(missing);
    await expect(loadHfTokenizer(bare)).rejects.toThrow(join(bare, 'tokenizer.json'));
  });
});
