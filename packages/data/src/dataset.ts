import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { TsformerError } from '@tsformer/core';
import type { DatasetConfig } from './config.js';
import type { Tokenizer } from './tokenizer.js';

async function readDatasetFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const abs = resolve(path);
      const hint = abs.replaceAll('\\', '/').includes('datasets/brown/') ? '; run `npm run data:brown` to prepare it' : '';
      throw new TsformerError(`dataset file not found: ${path} (resolved to ${abs})${hint}`, 'data');
    }
    throw new TsformerError(`cannot read dataset file ${path}: ${(e as Error).message}`, 'data');
  }
}

/** The string `field` of each non-blank line of a JSONL file, with errors naming `path:line`. */
function jsonlDocuments(path: string, text: string, field: string): string[] {
  const docs: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.length === 0) continue;
    const where = `${path}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new TsformerError(`${where}: invalid JSON (${(e as Error).message})`, 'data');
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new TsformerError(`${where}: expected a JSON object, got ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}`, 'data');
    }
    const doc = (value as Record<string, unknown>)[field];
    if (typeof doc !== 'string') {
      throw new TsformerError(`${where}: field "${field}" must be a string, got ${doc === undefined ? 'nothing' : typeof doc}`, 'data');
    }
    docs.push(doc);
  }
  return docs;
}

/** Concatenates token arrays with `separator` between consecutive ones. */
function concatWith(parts: Int32Array[], separator: Int32Array): Int32Array {
  const total = parts.reduce((n, p) => n + p.length, 0) + separator.length * Math.max(0, parts.length - 1);
  const out = new Int32Array(total);
  let offset = 0;
  parts.forEach((p, i) => {
    if (i > 0) {
      out.set(separator, offset);
      offset += separator.length;
    }
    out.set(p, offset);
    offset += p.length;
  });
  return out;
}

/**
 * The whole dataset as one stream of token ids. A text file is encoded whole; a JSONL file's
 * documents are encoded one by one and joined with the tokenizer's EOS id (a newline's encoding
 * when it has none), so no document boundary is lost.
 */
export async function loadTokens(cfg: DatasetConfig, tokenizer: Tokenizer): Promise<Int32Array> {
  const text = await readDatasetFile(cfg.path);
  let tokens: Int32Array;
  if (cfg.type === 'text') {
    tokens = tokenizer.encode(text);
  } else {
    const docs = jsonlDocuments(cfg.path, text, cfg.field).map((d) => tokenizer.encode(d));
    const separator = tokenizer.eosId !== undefined ? Int32Array.of(tokenizer.eosId) : tokenizer.encode('\n');
    // Separators alone are no data: documents that all encode to nothing make an empty set.
    tokens = docs.some((d) => d.length > 0) ? concatWith(docs, separator) : new Int32Array(0);
  }
  if (tokens.length === 0) {
    throw new TsformerError(`dataset ${cfg.path} is empty: it encodes to 0 tokens with tokenizer ${tokenizer.name}`, 'data');
  }
  return tokens;
}
