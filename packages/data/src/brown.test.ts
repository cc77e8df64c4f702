import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { brownDocumentToText, detokenize, prepareBrown, type PreparedBrown } from './brown.js';

/** The first match of `re` in `text` with some context around it, or undefined. */
function firstMatch(text: string, re: RegExp): string | undefined {
  const m = re.exec(text);
  return m ? text.slice(Math.max(0, m.index - 30), m.index + m[0].length + 30) : undefined;
}

describe('detokenize', () => {
  it('attaches punctuation, converts quotes and undoes the corpus quirks', () => {
    expect(detokenize(['He', 'said', ',', '``', 'no', "''", '.'])).toBe('He said, "no."');
    expect(detokenize(['``', 'Where', 'did', 'you', 'go', "''", '?', '?'])).toBe('"Where did you go?"');
    expect(detokenize(['``', 'Why', '?', '?', "''", '.'])).toBe('"Why?"');
    expect(detokenize(['a', '(', 'b', ')', 'c', ';', ';', 'd', '--', 'e'])).toBe('a (b) c; d -- e');
    expect(detokenize(['more', "'", 'pro', "'", 'letters'])).toBe("more 'pro' letters");
    expect(detokenize(['Ivan', 'Allen', 'Jr.', '.'])).toBe('Ivan Allen Jr.');
    expect(detokenize(['it', "n't", 'is', "'s"])).toBe("itn't is's");
    expect(detokenize(['a', "1/4''", "''", 'bar', "''", '.'])).toBe('a 1/4" bar."');
  });
});

describe('brownDocumentToText', () => {
  it('strips tags at the last slash, one paragraph per line, headlines on their own', () => {
    const tagged = [
      '',
      "\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.",
      '\tIt/pps cost/vbd 1/2/cd of/in it/ppo ./.',
      '',
      '',
      'Merger/nn-hl proposed/vbn-hl',
      '\tAnd/cc so/rb ?/. ?/.',
      '',
      '',
      './.',
      '',
    ].join('\n');
    expect(brownDocumentToText(tagged)).toBe('The jury said "no." It cost 1/2 of it.\nMerger proposed\nAnd so?');
  });
});

describe('prepareBrown', () => {
  let dir: string;
  let first: PreparedBrown;
  let train: string;
  let validation: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tsf-brown-'));
    first = await prepareBrown(dir);
    train = await readFile(first.train, 'utf8');
    validation = await readFile(first.validation, 'utf8');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes plain English with no tags and converted quotes', () => {
    expect(first.documents).toBe(500);
    for (const text of [train, validation]) {
      expect(firstMatch(text, /\w\/(at|nn|nns|np|jj|vbd|vbz|cc|pps|in-tl|nn-tl)\b/)).toBeUndefined();
      expect(firstMatch(text, /``|''/)).toBeUndefined();
      expect(firstMatch(text, / [,.;:?!)](?=\s|$)/)).toBeUndefined(); // not `in :35.3`, a time
    }
    expect(train).toContain('The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.');
    expect(train.split('"').length).toBeGreaterThan(10_000);
  });

  it('splits every 20th document into validation', async () => {
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as Record<string, unknown>;
    expect(meta).toMatchObject({ documents: 500, trainDocuments: 475, validationDocuments: 25, validationEvery: 20 });
    // Documents are separated by one blank line, so the blank-line count gives the documents per file.
    expect(train.trimEnd().split('\n\n').length).toBe(475);
    expect(validation.trimEnd().split('\n\n').length).toBe(25);
    expect(first.trainBytes).toBe(Buffer.byteLength(train));
    expect(first.validationBytes).toBe(Buffer.byteLength(validation));
    expect(first.trainBytes).toBeGreaterThan(10 * first.validationBytes);
    expect(first.validationBytes).toBeGreaterThan(100_000);
    expect(meta['trainSha256']).toBe(createHash('sha256').update(train).digest('hex'));
  });

  it('does nothing the second time, and rebuilds a damaged file', async () => {
    const before = (await stat(first.train)).mtimeMs;
    expect(await prepareBrown(dir)).toEqual(first);
    expect((await stat(first.train)).mtimeMs).toBe(before);

    await writeFile(first.train, 'damaged');
    expect(await prepareBrown(dir)).toEqual(first);
    expect(await readFile(first.train, 'utf8')).toBe(train);
  });
});
