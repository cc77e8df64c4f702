/**
 * Sharded safetensors, in the layout Hugging Face uses:
 *
 *   model.safetensors                         when everything fits in one file (at most `maxShardBytes`)
 *   model-00001-of-00003.safetensors, ...     otherwise, each at most `maxShardBytes` (a single larger
 *   model.safetensors.index.json              tensor gets a shard of its own), plus the index:
 *                                             { "metadata": { "total_size": <data bytes> },
 *                                               "weight_map": { "<tensor name>": "<shard file>" } }
 */
import { TsformerError } from '@tsformer/core';
import { decodeSafetensors, encodeSafetensors, type EncodeOptions, type HostTensor } from './safetensors.js';

/** Options of `encodeShardedSafetensors`. */
export interface ShardOptions {
  /** File name stem: `model` gives `model.safetensors` or `model-0000i-of-0000n.safetensors`. Default `model`. */
  stem?: string;
  /** Largest data size of one shard in bytes. Default 2 GiB. */
  maxShardBytes?: number;
  /** `__metadata__` of every shard. */
  metadata?: Record<string, string>;
  /** Passed to `encodeSafetensors` (on-disk dtypes). */
  encode?: EncodeOptions;
}

/** The index file that lists the shards. */
export interface ShardIndex {
  metadata: { total_size: number; [key: string]: unknown };
  weight_map: Record<string, string>;
}

const BYTES_PER_ELEMENT: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8 };
const STEM = /^[A-Za-z0-9_][A-Za-z0-9_-]*$/;

/** `<stem>.safetensors.index.json` */
export function shardIndexName(stem = 'model'): string {
  return `${stem}.safetensors.index.json`;
}

function shardName(stem: string, i: number, n: number): string {
  const w = Math.max(5, String(n).length);
  return `${stem}-${String(i).padStart(w, '0')}-of-${String(n).padStart(w, '0')}.safetensors`;
}

/**
 * Encodes tensors into one safetensors file, or into shards plus an index when their data exceeds
 * `maxShardBytes`. Tensors are packed in name order; returns file name -> bytes (the index as JSON text).
 */
export function encodeShardedSafetensors(tensors: ReadonlyMap<string, HostTensor>, opts: ShardOptions = {}): Map<string, Uint8Array | string> {
  const stem = opts.stem ?? 'model';
  if (!STEM.test(stem)) throw new TsformerError(`encodeShardedSafetensors: invalid stem "${stem}"`, 'checkpoint');
  const maxShard = opts.maxShardBytes ?? 2 * 1024 ** 3;
  if (!(maxShard > 0)) throw new TsformerError(`encodeShardedSafetensors: maxShardBytes must be positive, got ${maxShard}`, 'checkpoint');
  const dtypes = opts.encode?.dtype ?? {};
  const sizeOf = (name: string, t: HostTensor) => t.data.length * (BYTES_PER_ELEMENT[dtypes[name] ?? (t.dtype === 'float32' ? 'F32' : 'I32')] ?? 4);

  const names = [...tensors.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const groups: string[][] = [];
  let current: string[] = [];
  let currentBytes = 0;
  let total = 0;
  for (const name of names) {
    const bytes = sizeOf(name, tensors.get(name)!);
    total += bytes;
    if (current.length > 0 && currentBytes + bytes > maxShard) {
      groups.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(name);
    currentBytes += bytes;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);

  const out = new Map<string, Uint8Array | string>();
  const pick = (group: string[]) => {
    const m = new Map<string, HostTensor>();
    const d: Record<string, NonNullable<EncodeOptions['dtype']>[string]> = {};
    for (const n of group) {
      m.set(n, tensors.get(n)!);
      if (dtypes[n] !== undefined) d[n] = dtypes[n];
    }
    return { m, d };
  };
  if (groups.length === 1) {
    const { m, d } = pick(groups[0]!);
    out.set(`${stem}.safetensors`, encodeSafetensors(m, opts.metadata, { dtype: d }));
    return out;
  }
  const index: ShardIndex = { metadata: { total_size: total }, weight_map: {} };
  groups.forEach((group, i) => {
    const file = shardName(stem, i + 1, groups.length);
    const { m, d } = pick(group);
    out.set(file, encodeSafetensors(m, opts.metadata, { dtype: d }));
    for (const n of group) index.weight_map[n] = file;
  });
  out.set(shardIndexName(stem), `${JSON.stringify(index, null, 2)}\n`);
  return out;
}

/** What `decodeShardedSafetensors` returns. */
export interface DecodedShards {
  tensors: Map<string, HostTensor>;
  /** The `__metadata__` of the first file. */
  metadata: Record<string, string>;
  /** The files read, in order. */
  files: string[];
}

/**
 * Reads `<stem>.safetensors`, or the shards its index lists. Checks the index (a JSON object with a
 * `weight_map` of plain shard file names), that every listed tensor is in the shard the index names,
 * and that no shard holds a tensor the index does not list. `source` prefixes every error.
 */
export function decodeShardedSafetensors(files: ReadonlyMap<string, Uint8Array>, stem = 'model', source = 'checkpoint'): DecodedShards {
  const fail = (msg: string) => new TsformerError(`${source}: ${msg}`, 'checkpoint');
  const single = `${stem}.safetensors`;
  const indexName = shardIndexName(stem);
  const indexBytes = files.get(indexName);
  if (indexBytes === undefined) {
    const bytes = files.get(single);
    if (bytes === undefined) throw fail(`has neither ${single} nor ${indexName}`);
    const d = decodeSafetensors(bytes, `${source}/${single}`);
    return { tensors: d.tensors, metadata: d.metadata, files: [single] };
  }
  if (files.has(single)) throw fail(`has both ${single} and ${indexName}; expected one`);

  let index: unknown;
  try {
    index = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(indexBytes));
  } catch (e) {
    throw fail(`${indexName} is not valid JSON (${(e as Error).message})`);
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw fail(`${indexName} has no "weight_map" object`);
  const byShard = new Map<string, Set<string>>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors$/.test(file)) {
      throw fail(`${indexName}: tensor "${name}" maps to ${JSON.stringify(file)}, not a .safetensors file name in this directory`);
    }
    if (!byShard.has(file)) byShard.set(file, new Set());
    byShard.get(file)!.add(name);
  }
  const tensors = new Map<string, HostTensor>();
  let metadata: Record<string, string> = {};
  const read: string[] = [];
  for (const [file, expected] of [...byShard].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const bytes = files.get(file);
    if (bytes === undefined) throw fail(`${indexName} lists shard ${file}, which is missing`);
    const d = decodeSafetensors(bytes, `${source}/${file}`);
    if (read.length === 0) metadata = d.metadata;
    read.push(file);
    for (const [name, t] of d.tensors) {
      if (!expected.has(name)) throw fail(`${file} holds tensor "${name}", which ${indexName} does not map to it`);
      tensors.set(name, t);
    }
    for (const name of expected) if (!d.tensors.has(name)) throw fail(`${indexName} maps tensor "${name}" to ${file}, which does not hold it`);
  }
  return { tensors, metadata, files: read };
}
