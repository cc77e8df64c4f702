import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { TsformerError } from '@tsformer/core';

/** Text to token ids and back. Implementations are stateless after construction. */
export interface Tokenizer {
  /** Human-readable identity, e.g. `byte` or `hf:/path/to/tokenizer.json`. */
  readonly name: string;
  /** One more than the largest id `encode` can produce: the model's embedding rows. */
  readonly vocabSize: number;
  /** The end-of-text id used to separate documents; absent when the tokenizer has none. */
  readonly eosId?: number;
  /** Plain text to ids; never adds special tokens (BOS/EOS/CLS) of its own. */
  encode(text: string): Int32Array;
  /** Ids to text; never throws on a sequence the model sampled, however odd. */
  decode(ids: ArrayLike<number>): string;
}

/** UTF-8 of U+FFFD, written for ids that are not bytes. */
const REPLACEMENT_BYTES = [0xef, 0xbf, 0xbd] as const;

/**
 * Bytes as tokens: the UTF-8 encoding of the text, one id per byte (vocabulary 256, no EOS).
 * Needs no files, covers every string, and round-trips exactly.
 */
export class ByteTokenizer implements Tokenizer {
  readonly name: string = 'byte';
  readonly vocabSize: number = 256;
  readonly #encoder = new TextEncoder();
  // Not fatal: malformed UTF-8 (a model's half-sampled character) decodes to U+FFFD.
  readonly #decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  encode(text: string): Int32Array {
    const bytes = this.#encoder.encode(text);
    const ids = new Int32Array(bytes.length);
    ids.set(bytes);
    return ids;
  }

  /** Ids outside [0, 256) (a model with a padded vocabulary) decode to U+FFFD, like invalid bytes. */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (Number.isInteger(id) && id >= 0 && id < 256) bytes.push(id);
      else bytes.push(...REPLACEMENT_BYTES);
    }
    return this.#decoder.decode(new Uint8Array(bytes));
  }
}

/** Token names taken as end-of-text when `tokenizer_config.json` names none. */
const EOS_CANDIDATES = ['<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>'] as const;

interface HfFiles {
  tokenizerPath: string;
  configPath: string | undefined;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** `path` may name `tokenizer.json` itself or the directory holding it (and `tokenizer_config.json`). */
async function findHfFiles(path: string): Promise<HfFiles> {
  const abs = resolve(path);
  let tokenizerPath: string;
  try {
    tokenizerPath = (await stat(abs)).isDirectory() ? join(abs, 'tokenizer.json') : abs;
  } catch {
    throw new TsformerError(`Hugging Face tokenizer not found: ${path} (resolved to ${abs}) does not exist`, 'data');
  }
  if (!(await isFile(tokenizerPath))) {
    throw new TsformerError(`Hugging Face tokenizer not found: ${tokenizerPath} does not exist`, 'data');
  }
  const configPath = join(dirname(tokenizerPath), 'tokenizer_config.json');
  return { tokenizerPath, configPath: (await isFile(configPath)) ? configPath : undefined };
}

async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new TsformerError(`cannot read ${path}: ${(e as Error).message}`, 'data');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TsformerError(`${path} must hold a JSON object`, 'data');
  }
  return value as Record<string, unknown>;
}

/** A special-token entry of tokenizer_config.json: a plain string or a serialized AddedToken. */
function tokenContent(entry: unknown): string | undefined {
  if (typeof entry === 'string') return entry;
  if (entry !== null && typeof entry === 'object' && typeof (entry as { content?: unknown }).content === 'string') {
    return (entry as { content: string }).content;
  }
  return undefined;
}

/** Wraps a `@huggingface/tokenizers` Tokenizer in our interface. */
class HfTokenizerAdapter implements Tokenizer {
  readonly vocabSize: number;
  readonly eosId?: number;
  readonly #hf: HfTokenizer;
  readonly #cleanUpSpaces: boolean;

  constructor(
    readonly name: string,
    hf: HfTokenizer,
    config: Record<string, unknown>,
  ) {
    this.#hf = hf;
    // The library defaults to transformers' old `clean_up_tokenization_spaces: true`, which turns
    // "a ." into "a." on decode; tokenizer.json's own (Rust) decode never does, so neither do we
    // unless the config asks for it.
    this.#cleanUpSpaces = config['clean_up_tokenization_spaces'] === true;
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    const eos = tokenContent(config['eos_token']);
    const eosId = eos !== undefined ? hf.token_to_id(eos) : undefined;
    const fallback = EOS_CANDIDATES.map((t) => hf.token_to_id(t)).find((id) => id !== undefined);
    if (eosId !== undefined) this.eosId = eosId;
    else if (fallback !== undefined) this.eosId = fallback;
  }

  encode(text: string): Int32Array {
    if (text.length === 0) return new Int32Array(0);
    const { ids, tokens } = this.#hf.encode(text, { add_special_tokens: false });
    const out = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      // A model without an unk token maps out-of-vocabulary pieces to undefined.
      if (typeof id !== 'number' || !Number.isInteger(id)) {
        throw new TsformerError(`${this.name}: no id for token ${JSON.stringify(tokens[i])} (the model has no unk_token)`, 'data');
      }
      out[i] = id;
    }
    return out;
  }

  decode(ids: ArrayLike<number>): string {
    // The library rejects an empty list and anything that is not a plain Array.
    if (ids.length === 0) return '';
    return this.#hf.decode(Array.from(ids), { skip_special_tokens: false, clean_up_tokenization_spaces: this.#cleanUpSpaces });
  }
}

/**
 * Loads a Hugging Face `tokenizer.json` (BPE, WordPiece, Unigram) through `@huggingface/tokenizers`.
 * `path` names the file or its directory; a `tokenizer_config.json` beside it supplies `eos_token`
 * and `clean_up_tokenization_spaces` when present. `encode` adds no special tokens.
 */
export async function loadHfTokenizer(path: string): Promise<Tokenizer> {
  const { tokenizerPath, configPath } = await findHfFiles(path);
  const json = await readJsonObject(tokenizerPath);
  const config = configPath !== undefined ? await readJsonObject(configPath) : {};
  let hf: HfTokenizer;
  try {
    // The library iterates `added_tokens` unconditionally; a hand-written file may omit it.
    hf = new HfTokenizer({ added_tokens: [], ...json }, config);
  } catch (e) {
    throw new TsformerError(`cannot build a tokenizer from ${tokenizerPath}: ${(e as Error).message}`, 'data');
  }
  const name = `hf:${basename(tokenizerPath) === 'tokenizer.json' ? dirname(tokenizerPath) : tokenizerPath}`;
  return new HfTokenizerAdapter(name, hf, config);
}
