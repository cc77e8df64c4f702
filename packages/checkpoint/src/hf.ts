/**
 * Hugging Face model directories, the file side (names and layouts are @tsformer/model's `hf`):
 *
 *   config.json                                  the model config (JSON object)
 *   model.safetensors                            weights in one file, or
 *   model-0000i-of-0000n.safetensors + model.safetensors.index.json   sharded
 *   tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json   optional, carried as bytes
 *
 * Read from and written to any `CheckpointStore`: a local directory, or `s3://bucket/prefix`
 * through `openStore`. F16 and BF16 weights read as float32; the on-disk dtype of each tensor is
 * reported so that writing them back gives the same bytes.
 */
import { TsformerError } from '@tsformer/core';
import { openStore, type OpenStoreOptions } from './open.js';
import type { CheckpointStore } from './store.js';
import type { HostTensor, SafeDType } from './safetensors.js';
import { decodeShardedSafetensors, encodeShardedSafetensors, shardIndexName } from './shards.js';

/** Files besides config.json and the weights that belong to a HF model directory and are carried along. */
export const HF_TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'] as const;

const SINGLE = 'model.safetensors';
const INDEX = shardIndexName('model');
const WEIGHT_FILE = /^model(-\d{5,}-of-\d{5,})?\.safetensors$/;

/** What `readHfDirectory` returns. */
export interface HfDirectory {
  /** Where it was read from (a path or `s3://...`). */
  location: string;
  /** config.json, parsed. */
  config: Record<string, unknown>;
  /** Tensors by their Hugging Face name (F16/BF16 widened to float32). */
  tensors: Map<string, HostTensor>;
  /** On-disk dtype of each tensor, by name. */
  dtypes: Record<string, SafeDType>;
  /** Weight files read, in order (`model.safetensors`, or the index and its shards). */
  weightFiles: string[];
  /** The optional files of `HF_TOKENIZER_FILES` that are present, by name. */
  extraFiles: Map<string, Uint8Array>;
}

function storeOf(location: string | CheckpointStore, opts: OpenStoreOptions): CheckpointStore {
  return typeof location === 'string' ? openStore(location, opts) : location;
}

function parseJsonObject(bytes: Uint8Array, where: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new TsformerError(`${where} is not valid JSON (${(e as Error).message})`, 'checkpoint');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TsformerError(`${where} is not a JSON object`, 'checkpoint');
  return v as Record<string, unknown>;
}

/**
 * Each tensor's dtype as written in a safetensors header. Call after `decodeSafetensors` has
 * validated the file (this only reads the header).
 */
export function safetensorsDtypes(bytes: Uint8Array): Record<string, SafeDType> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, { dtype?: SafeDType }>;
  const out: Record<string, SafeDType> = {};
  for (const [name, info] of Object.entries(header)) if (name !== '__metadata__' && info.dtype) out[name] = info.dtype;
  return out;
}

/**
 * Reads a Hugging Face model directory: config.json, the safetensors weights (one file or an index
 * and its shards) and the optional tokenizer files. A directory with only `pytorch_model.bin` (or
 * nothing) is an error that says so. `location` is a path, `s3://bucket/prefix`, or a store.
 */
export async function readHfDirectory(location: string | CheckpointStore, opts: OpenStoreOptions = {}): Promise<HfDirectory> {
  const store = storeOf(location, opts);
  const where = store.location;
  if (!(await store.exists('config.json'))) throw new TsformerError(`${where}: no config.json (not a Hugging Face model directory)`, 'checkpoint');
  const config = parseJsonObject(await store.readFile('config.json'), `${where}/config.json`);

  const files = new Map<string, Uint8Array>();
  if (await store.exists(INDEX)) {
    const indexBytes = await store.readFile(INDEX);
    files.set(INDEX, indexBytes);
    const index = parseJsonObject(indexBytes, `${where}/${INDEX}`);
    const map = index.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new TsformerError(`${where}/${INDEX} has no "weight_map" object`, 'checkpoint');
    for (const shard of new Set(Object.values(map as Record<string, unknown>))) {
      // decodeShardedSafetensors checks the names; only fetch what looks like a file here
      if (typeof shard !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors$/.test(shard)) continue;
      if (!(await store.exists(shard))) throw new TsformerError(`${where}/${INDEX} lists shard ${shard}, which is missing`, 'checkpoint');
      files.set(shard, await store.readFile(shard));
    }
  } else if (await store.exists(SINGLE)) {
    files.set(SINGLE, await store.readFile(SINGLE));
  } else {
    const bin = (await store.exists('pytorch_model.bin')) || (await store.exists('pytorch_model.bin.index.json'));
    throw new TsformerError(
      `${where}: no ${SINGLE} or ${INDEX}${bin ? ' (pytorch_model.bin is not read: save the model with safe_serialization=True, or convert it to safetensors)' : ''}`,
      'checkpoint',
    );
  }
  const decoded = decodeShardedSafetensors(files, 'model', where);
  const dtypes: Record<string, SafeDType> = {};
  for (const file of decoded.files) Object.assign(dtypes, safetensorsDtypes(files.get(file)!));

  const extraFiles = new Map<string, Uint8Array>();
  for (const name of HF_TOKENIZER_FILES) if (await store.exists(name)) extraFiles.set(name, await store.readFile(name));
  const weightFiles = files.has(INDEX) ? [INDEX, ...decoded.files] : decoded.files;
  return { location: where, config, tensors: decoded.tensors, dtypes, weightFiles, extraFiles };
}

/** What `writeHfDirectory` writes. */
export interface HfDirectoryContents {
  /** config.json. */
  config: Record<string, unknown>;
  /** Tensors by Hugging Face name (float32). */
  tensors: ReadonlyMap<string, HostTensor>;
  /** Optional files to write beside them (tokenizer.json, ...), by name. */
  extraFiles?: ReadonlyMap<string, Uint8Array>;
}

/** Options of `writeHfDirectory`. */
export interface WriteHfOptions extends OpenStoreOptions {
  /** On-disk dtype: one for all tensors or one per name (missing names: F32). Default F32. */
  dtype?: SafeDType | Record<string, SafeDType>;
  /** Shard above this many bytes of tensor data (transformers' default is 5 GB). Default 5e9. */
  maxShardBytes?: number;
}

/**
 * Writes a Hugging Face model directory: the weights (`model.safetensors`, or shards and
 * `model.safetensors.index.json` above `maxShardBytes`; metadata `format: pt`, which transformers
 * requires), config.json and the extra files. Weight files of an earlier write that this one does
 * not replace are removed, so the directory never holds both layouts. Returns the files written.
 */
export async function writeHfDirectory(location: string | CheckpointStore, contents: HfDirectoryContents, opts: WriteHfOptions = {}): Promise<string[]> {
  const store = storeOf(location, opts);
  for (const name of contents.extraFiles?.keys() ?? []) {
    if (name === 'config.json' || WEIGHT_FILE.test(name) || name === INDEX || !/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name)) {
      throw new TsformerError(`writeHfDirectory: extra file name "${name}" is not allowed`, 'checkpoint');
    }
  }
  const dtype: Record<string, SafeDType> = {};
  for (const [name, t] of contents.tensors) {
    if (t.dtype !== 'float32') throw new TsformerError(`writeHfDirectory: tensor "${name}" is ${t.dtype}; model weights are float`, 'checkpoint');
    const d = typeof opts.dtype === 'string' ? opts.dtype : (opts.dtype?.[name] ?? 'F32');
    if (d !== 'F32' && d !== 'F16' && d !== 'BF16') throw new TsformerError(`writeHfDirectory: tensor "${name}": dtype ${d} is not F32, F16 or BF16`, 'checkpoint');
    dtype[name] = d;
  }
  const weights = encodeShardedSafetensors(contents.tensors, { stem: 'model', maxShardBytes: opts.maxShardBytes ?? 5e9, metadata: { format: 'pt' }, encode: { dtype } });
  const enc = new TextEncoder();
  const written: string[] = [];
  // stale weight files first, so a reader never sees an old index beside a new single file
  for (const rel of await store.list('model')) {
    if ((WEIGHT_FILE.test(rel) || rel === INDEX) && !weights.has(rel)) await store.remove(rel);
  }
  // shards, then the index (or the single file), then config.json
  const order = [...weights.keys()].sort((a, b) => Number(a === INDEX) - Number(b === INDEX));
  for (const name of order) {
    const content = weights.get(name)!;
    await store.writeFile(name, typeof content === 'string' ? enc.encode(content) : content);
    written.push(name);
  }
  for (const [name, bytes] of contents.extraFiles ?? []) {
    await store.writeFile(name, bytes);
    written.push(name);
  }
  await store.writeFile('config.json', enc.encode(`${JSON.stringify(contents.config, null, 2)}\n`));
  written.push('config.json');
  return written;
}
