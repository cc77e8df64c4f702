/**
 * Our reader and writer of the safetensors format:
 *
 *   [8 bytes: N, little-endian u64] [N bytes: UTF-8 JSON header] [data buffer]
 *
 * The header maps each tensor name to `{ dtype, shape, data_offsets: [begin, end] }` (offsets into
 * the data buffer) and may hold `"__metadata__": { string: string }`. The reader checks the whole
 * header before it allocates anything, so a corrupt or hostile file fails fast with a message that
 * names the file and the tensor.
 */
import { tf, TsformerError } from '@tsformer/core';
import {
  bfloat16BitsToFloat32Bits,
  float16BitsToFloat32Bits,
  float32BitsToBfloat16Bits,
  float32BitsToFloat16Bits,
} from './float16.js';

/** The on-disk element types we read and write. */
export type SafeDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64';

/** A tensor in host memory: what a checkpoint file holds, independent of any tfjs backend. */
export interface HostTensor {
  /** Element type in memory. F16/BF16 files read as float32, I64 as int32. */
  dtype: 'float32' | 'int32';
  /** Dimensions; `[]` is a scalar (one element). */
  shape: number[];
  /** Row-major elements; its length is the product of `shape`. */
  data: Float32Array | Int32Array;
}

/** Options of `encodeSafetensors`. */
export interface EncodeOptions {
  /**
   * On-disk dtype per tensor name. Default `F32` for float32 tensors (`F16` and `BF16` allowed,
   * rounding to nearest even) and `I32` for int32 tensors (`I64` allowed).
   */
  dtype?: Record<string, SafeDType>;
}

/** What `decodeSafetensors` returns. */
export interface DecodedSafetensors {
  /** Tensors by name, in header order. F32/I32 data may be views into the input bytes (no copy). */
  tensors: Map<string, HostTensor>;
  /** The `__metadata__` map; `{}` when the file has none. */
  metadata: Record<string, string>;
}

/** Largest header the reader accepts (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

const DTYPE_BYTES: Readonly<Record<SafeDType, number>> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8 };
const HOST_DTYPE: Readonly<Record<SafeDType, HostTensor['dtype']>> = {
  F32: 'float32',
  F16: 'float32',
  BF16: 'float32',
  I32: 'int32',
  I64: 'int32',
};
const METADATA_KEY = '__metadata__';
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function isSafeDType(x: unknown): x is SafeDType {
  return typeof x === 'string' && Object.hasOwn(DTYPE_BYTES, x);
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isNonNegativeInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Product of a shape, or Infinity once it exceeds the safe-integer range (never a real size). */
function numElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (n > Number.MAX_SAFE_INTEGER) return Infinity;
  }
  return n;
}

function byteView(data: Float32Array | Int32Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Serializes tensors (and optional string metadata) into safetensors bytes. Deterministic whatever
 * the map's order: tensors are laid out by descending element size, then by name (as the reference
 * writer does, which keeps every tensor aligned); `__metadata__` comes first with sorted keys and
 * is left out when empty; the header is padded with spaces to a multiple of 8 bytes.
 */
export function encodeSafetensors(
  tensors: ReadonlyMap<string, HostTensor>,
  metadata?: Record<string, string>,
  opts: EncodeOptions = {},
): Uint8Array {
  const fail = (msg: string): TsformerError => new TsformerError(`encodeSafetensors: ${msg}`, 'checkpoint');
  const dtypes = opts.dtype ?? {};
  for (const name of Object.keys(dtypes)) {
    if (!tensors.has(name)) throw fail(`opts.dtype names "${name}", which is not among the tensors`);
  }

  const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
  const items: Array<{ name: string; tensor: HostTensor; dtype: SafeDType }> = [];
  for (const [name, tensor] of tensors) {
    if (name === '' || name === METADATA_KEY) throw fail(`invalid tensor name ${JSON.stringify(name)}`);
    const { shape, data } = tensor;
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
      throw fail(`tensor "${name}": shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const dataMatches = tensor.dtype === 'float32' ? data instanceof Float32Array : tensor.dtype === 'int32' && data instanceof Int32Array;
    if (!dataMatches) {
      throw fail(`tensor "${name}": dtype ${String(tensor.dtype)} does not match its data (${data?.constructor?.name})`);
    }
    const count = numElements(shape);
    if (data.length !== count) {
      throw fail(`tensor "${name}": shape [${shape.join(', ')}] needs ${count} elements but data has ${data.length}`);
    }
    const dtype = dtypes[name] ?? (tensor.dtype === 'float32' ? 'F32' : 'I32');
    if (!isSafeDType(dtype) || HOST_DTYPE[dtype] !== tensor.dtype) {
      throw fail(`tensor "${name}": cannot write a ${tensor.dtype} tensor as ${String(dtype)}`);
    }
    items.push({ name, tensor, dtype });
  }
  // Layout order: larger elements first, then by name. Every tensor then starts at a multiple of its
  // element size, and the data buffer starts at a multiple of 8 in the file, so all data is aligned
  // for zero-copy reading. With one element size this is plain name order.
  items.sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || byName(a.name, b.name));
  const plan: Array<{ name: string; tensor: HostTensor; dtype: SafeDType; begin: number; end: number }> = [];
  let offset = 0;
  for (const item of items) {
    const end = offset + item.tensor.data.length * DTYPE_BYTES[item.dtype];
    plan.push({ ...item, begin: offset, end });
    offset = end;
  }

  const parts: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort(byName);
    const pairs = keys.map((key) => {
      const value = metadata[key];
      if (typeof value !== 'string') throw fail(`metadata "${key}" is not a string`);
      return `${JSON.stringify(key)}:${JSON.stringify(value)}`;
    });
    if (keys.length > 0) parts.push(`${JSON.stringify(METADATA_KEY)}:{${pairs.join(',')}}`);
  }
  for (const p of plan) {
    const info = { dtype: p.dtype, shape: p.tensor.shape, data_offsets: [p.begin, p.end] };
    parts.push(`${JSON.stringify(p.name)}:${JSON.stringify(info)}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const headerLen = Math.ceil(json.length / 8) * 8;

  const out = new Uint8Array(8 + headerLen + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  const base = 8 + headerLen;
  for (const p of plan) writeData(view, out, base + p.begin, p.tensor.data, p.dtype);
  return out;
}

function writeData(view: DataView, out: Uint8Array, pos: number, data: Float32Array | Int32Array, dtype: SafeDType): void {
  const n = data.length;
  switch (dtype) {
    case 'F32':
    case 'I32':
      if (LITTLE_ENDIAN_HOST) out.set(byteView(data), pos);
      else if (data instanceof Float32Array) for (let i = 0; i < n; i++) view.setFloat32(pos + 4 * i, data[i]!, true);
      else for (let i = 0; i < n; i++) view.setInt32(pos + 4 * i, data[i]!, true);
      return;
    case 'F16':
    case 'BF16': {
      // float32 data: read its bits through a Uint32 view of the same memory
      const bits = new Uint32Array(data.buffer, data.byteOffset, n);
      const narrow = dtype === 'F16' ? float32BitsToFloat16Bits : float32BitsToBfloat16Bits;
      for (let i = 0; i < n; i++) view.setUint16(pos + 2 * i, narrow(bits[i]!), true);
      return;
    }
    case 'I64':
      for (let i = 0; i < n; i++) {
        const v = data[i]!;
        view.setInt32(pos + 8 * i, v, true);
        view.setInt32(pos + 8 * i + 4, v < 0 ? -1 : 0, true); // sign extension
      }
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

interface Entry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  count: number;
  begin: number;
  end: number;
}

/**
 * Parses safetensors bytes. Validates everything before allocating: sizes, header UTF-8 and JSON,
 * each entry's dtype/shape/offsets, that the tensors tile the data buffer exactly (no overlaps,
 * gaps or trailing bytes), and the metadata. F16/BF16 become float32 and I64 becomes int32 (an
 * out-of-range value is an error). `source` (a file name) prefixes every error message.
 */
export function decodeSafetensors(bytes: Uint8Array, source = '<safetensors bytes>'): DecodedSafetensors {
  const fail = (msg: string, tensor?: string): TsformerError =>
    new TsformerError(`${source}: ${tensor === undefined ? '' : `tensor "${tensor}": `}${msg}`, 'checkpoint');

  if (bytes.byteLength < 8) {
    throw fail(`file is ${bytes.byteLength} bytes, too short for the 8-byte header length (not a safetensors file?)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const rawLen = view.getBigUint64(0, true);
  if (rawLen > BigInt(MAX_HEADER_BYTES)) {
    throw fail(`header length ${rawLen} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt or not a safetensors file)`);
  }
  const headerLen = Number(rawLen);
  if (headerLen > bytes.byteLength - 8) {
    throw fail(`header length ${headerLen} is larger than the ${bytes.byteLength - 8} bytes after it (truncated file?)`);
  }

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    throw fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(header)) throw fail('header is not a JSON object');

  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  const entries: Entry[] = [];
  const metadata: Record<string, string> = {};

  for (const [name, raw] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (!isPlainObject(raw)) throw fail(`${METADATA_KEY} is not an object of strings`);
      for (const [key, value] of Object.entries(raw)) {
        if (typeof value !== 'string') throw fail(`${METADATA_KEY} value of "${key}" is ${JSON.stringify(value)}, not a string`);
        // defineProperty, so that even a key named "__proto__" is kept as data
        Object.defineProperty(metadata, key, { value, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    if (!isPlainObject(raw)) throw fail('header entry is not an object', name);
    for (const field of ['dtype', 'shape', 'data_offsets']) {
      if (!Object.hasOwn(raw, field)) throw fail(`header entry is missing "${field}"`, name);
    }
    const { dtype, shape, data_offsets: offsets } = raw;
    if (!isSafeDType(dtype)) {
      throw fail(`unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`, name);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
      throw fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt)) {
      throw fail(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`, name);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) throw fail(`data_offsets [${begin}, ${end}] are reversed`, name);
    if (end > dataLen) throw fail(`data_offsets [${begin}, ${end}] run past the end of the ${dataLen}-byte data buffer`, name);
    const count = numElements(shape);
    const need = count * DTYPE_BYTES[dtype];
    if (need !== end - begin) {
      throw fail(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} [${shape.join(', ')}] needs ${need}`, name);
    }
    entries.push({ name, dtype, shape: [...shape] as number[], count, begin, end });
  }

  // The tensors must tile the data buffer exactly: sorted by offsets, each begins where the last ended.
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: string | undefined;
  for (const e of byOffset) {
    if (e.begin < pos) throw fail(`data_offsets [${e.begin}, ${e.end}] overlap tensor "${prev}" (which ends at ${pos})`, e.name);
    if (e.begin > pos) throw fail(`${e.begin - pos} unused bytes [${pos}, ${e.begin}) before its data_offsets (gap)`, e.name);
    pos = e.end;
    prev = e.name;
  }
  if (pos !== dataLen) {
    const where = prev === undefined ? 'in a file with no tensors' : `after the last tensor "${prev}"`;
    throw fail(`${dataLen - pos} unused bytes at the end of the data buffer ${where}`);
  }

  const tensors = new Map<string, HostTensor>();
  for (const e of entries) {
    const data = readData(bytes, view, dataStart + e.begin, e, fail);
    tensors.set(e.name, { dtype: HOST_DTYPE[e.dtype], shape: e.shape, data });
  }
  return { tensors, metadata };
}

function readData(
  bytes: Uint8Array,
  view: DataView,
  pos: number,
  e: Entry,
  fail: (msg: string, tensor?: string) => TsformerError,
): Float32Array | Int32Array {
  const n = e.count;
  switch (e.dtype) {
    case 'F32':
    case 'I32': {
      const isFloat = e.dtype === 'F32';
      if (n === 0) return isFloat ? new Float32Array(0) : new Int32Array(0);
      if (LITTLE_ENDIAN_HOST) {
        let buffer: ArrayBufferLike = bytes.buffer;
        let at = bytes.byteOffset + pos;
        if (at % 4 !== 0) {
          // misaligned in the underlying buffer: copy into fresh (aligned) memory
          const copy = new Uint8Array(n * 4);
          copy.set(bytes.subarray(pos, pos + n * 4));
          buffer = copy.buffer;
          at = 0;
        }
        return isFloat ? new Float32Array(buffer, at, n) : new Int32Array(buffer, at, n);
      }
      if (isFloat) {
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = view.getFloat32(pos + 4 * i, true);
        return out;
      }
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getInt32(pos + 4 * i, true);
      return out;
    }
    case 'F16':
    case 'BF16': {
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      const widen = e.dtype === 'F16' ? float16BitsToFloat32Bits : bfloat16BitsToFloat32Bits;
      for (let i = 0; i < n; i++) bits[i] = widen(view.getUint16(pos + 2 * i, true));
      return out;
    }
    case 'I64': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const lo = view.getInt32(pos + 8 * i, true);
        const hi = view.getInt32(pos + 8 * i + 4, true);
        // an int32 value's high word is the sign extension of its low word
        if (hi !== lo >> 31) {
          const value = view.getBigInt64(pos + 8 * i, true);
          throw fail(`I64 element ${i} = ${value} is outside the int32 range`, e.name);
        }
        out[i] = lo;
      }
      return out;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// tfjs glue

/**
 * Downloads tensors to host memory (with `await t.data()`, never blocking). The data is copied, so
 * the result stays valid whatever happens to the tensors afterwards. Only float32 and int32
 * tensors are accepted.
 */
export async function tensorsToHost(map: ReadonlyMap<string, tf.Tensor>): Promise<Map<string, HostTensor>> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of map) {
    if (t.isDisposed) throw new TsformerError(`tensor "${name}" is disposed`, 'checkpoint');
    if (t.dtype === 'float32') {
      const data = (await t.data<'float32'>()) as Float32Array;
      out.set(name, { dtype: 'float32', shape: [...t.shape], data: data.slice() });
    } else if (t.dtype === 'int32') {
      const data = (await t.data<'int32'>()) as Int32Array;
      out.set(name, { dtype: 'int32', shape: [...t.shape], data: data.slice() });
    } else {
      throw new TsformerError(`tensor "${name}" has dtype ${t.dtype}; checkpoints hold float32 and int32 tensors`, 'checkpoint');
    }
  }
  return out;
}

/** Makes tfjs tensors from host tensors. The caller owns (and disposes) the result. */
export function hostToTensors(map: ReadonlyMap<string, HostTensor>): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  try {
    for (const [name, h] of map) {
      if (h.data.length !== numElements(h.shape)) {
        throw new TsformerError(`tensor "${name}": shape [${h.shape.join(', ')}] does not match its ${h.data.length} elements`, 'checkpoint');
      }
      out.set(name, tf.tensor(h.data, h.shape, h.dtype));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}
