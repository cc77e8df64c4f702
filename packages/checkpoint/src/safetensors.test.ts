import { describe, expect, it } from 'vitest';
import { tf, tensorLeak, TsformerError } from '@tsformer/core';
import { decodeSafetensors, encodeSafetensors, hostToTensors, MAX_HEADER_BYTES, tensorsToHost, type HostTensor } from './safetensors.js';
import { fromBfloat16Bits, fromFloat16Bits } from './float16.js';

const f32 = (shape: number[], values: number[]): HostTensor => ({ dtype: 'float32', shape, data: new Float32Array(values) });
const i32 = (shape: number[], values: number[]): HostTensor => ({ dtype: 'int32', shape, data: new Int32Array(values) });

/** Bit patterns of float32 data, so NaN payloads and -0 compare exactly. */
const bitsOf = (data: Float32Array | Int32Array): number[] => Array.from(new Uint32Array(data.buffer, data.byteOffset, data.length));

/** A safetensors file from a header given as text (not necessarily valid) and data bytes. */
function fileFrom(header: string | Uint8Array, data: ArrayLike<number> = [], headerLen?: bigint): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(Array.from(data), 8 + h.length);
  return out;
}
const fileOf = (header: unknown, dataBytes: number): Uint8Array => fileFrom(JSON.stringify(header), new Uint8Array(dataBytes));

/** Runs `fn`, expects a checkpoint TsformerError, and returns its message. */
function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TsformerError);
    expect((e as TsformerError).kind).toBe('checkpoint');
    return (e as Error).message;
  }
  throw new Error('expected an error, none was thrown');
}

/** The header JSON of an encoded file. */
function headerOf(bytes: Uint8Array): string {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return new TextDecoder().decode(bytes.subarray(8, 8 + n));
}

/** Raw data bytes of one tensor of an encoded file. */
function rawOf(bytes: Uint8Array, name: string): Uint8Array {
  const header = headerOf(bytes);
  const [begin, end] = (JSON.parse(header) as Record<string, { data_offsets: [number, number] }>)[name]!.data_offsets;
  const start = 8 + header.length;
  return bytes.subarray(start + begin, start + end);
}
const u16s = (raw: Uint8Array): number[] => Array.from({ length: raw.length / 2 }, (_, i) => raw[2 * i]! | (raw[2 * i + 1]! << 8));

describe('safetensors round trip', () => {
  it('round-trips F32 and I32 tensors bit-exactly, empty and scalar shapes included', () => {
    const special = new Float32Array(new Uint32Array([0x7fc00001, 0xffa00000, 0x80000000, 0x00000001, 0x7f800000, 0xff800000]).buffer);
    const tensors = new Map<string, HostTensor>([
      ['w', f32([2, 3], [1.5, -2.25, 3.1415927, 1e-30, -1e30, 0])],
      ['special', { dtype: 'float32', shape: [6], data: special }],
      ['scalar', f32([], [42.5])],
      ['empty', f32([0], [])],
      ['empty3d', f32([2, 0, 3], [])],
      ['ids', i32([2, 2], [0, -1, 2147483647, -2147483648])],
      ['iscalar', i32([], [-7])],
      ['iempty', i32([0, 4], [])],
    ]);
    const bytes = encodeSafetensors(tensors, { format: 'pt', note: 'héllo ✓' });
    const { tensors: back, metadata } = decodeSafetensors(bytes, 'round.safetensors');
    expect(metadata).toEqual({ format: 'pt', note: 'héllo ✓' });
    expect([...back.keys()].sort()).toEqual([...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      const got = back.get(name)!;
      expect(got.dtype, name).toBe(t.dtype);
      expect(got.shape, name).toEqual(t.shape);
      expect(got.data.constructor, name).toBe(t.data.constructor);
      expect(bitsOf(got.data), name).toEqual(bitsOf(t.data));
    }
  });

  it('reads a file with no tensors and no metadata', () => {
    const bytes = encodeSafetensors(new Map());
    expect(headerOf(bytes)).toBe('{}      ');
    const { tensors, metadata } = decodeSafetensors(bytes);
    expect(tensors.size).toBe(0);
    expect(metadata).toEqual({});
  });

  it('reads data that is not 4-byte aligned in the underlying buffer (copying it)', () => {
    const bytes = encodeSafetensors(new Map([['x', f32([3], [1, 2, 3])], ['n', i32([2], [5, -6])]]));
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    const { tensors } = decodeSafetensors(shifted);
    expect(Array.from(tensors.get('x')!.data)).toEqual([1, 2, 3]);
    expect(Array.from(tensors.get('n')!.data)).toEqual([5, -6]);
    expect(tensors.get('x')!.data.buffer).not.toBe(shifted.buffer);
    // aligned input is viewed in place, not copied
    expect(decodeSafetensors(bytes).tensors.get('x')!.data.buffer).toBe(bytes.buffer);
  });

  it('writes and reads F16 with round to nearest even, inf, nan and subnormals', () => {
    const values = [1, -2, 0.5, 65504, 1e-8, 2 ** -24, 1e-5, Infinity, -Infinity, NaN, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520, 0.1];
    const expected = [0x3c00, 0xc000, 0x3800, 0x7bff, 0x0000, 0x0001, 0x00a8, 0x7c00, 0xfc00, -1, 0x3c00, 0x3c02, 0x7c00, 0x2e66];
    const bytes = encodeSafetensors(new Map([['h', f32([values.length], values)]]), undefined, { dtype: { h: 'F16' } });
    expect(headerOf(bytes)).toContain('"dtype":"F16"');
    const raw = u16s(rawOf(bytes, 'h'));
    raw.forEach((bits, i) => {
      if (expected[i] === -1) expect((bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0, 'nan').toBe(true);
      else expect(bits, `value ${values[i]}`).toBe(expected[i]);
    });
    const back = decodeSafetensors(bytes).tensors.get('h')!;
    expect(back.dtype).toBe('float32');
    expect(back.data).toBeInstanceOf(Float32Array);
    expect(Array.from(back.data)).toEqual([1, -2, 0.5, 65504, 0, 2 ** -24, 168 * 2 ** -24, Infinity, -Infinity, NaN, 1, 1 + 2 ** -9, Infinity, fromFloat16Bits(0x2e66)]);
  });

  it('writes and reads BF16 with round to nearest even, inf, nan and subnormals', () => {
    const values = [1, -2, 0.5, 65504, 1e-8, 1e-40, Infinity, NaN, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 0.1];
    const expected = [0x3f80, 0xc000, 0x3f00, 0x4780, 0x322c, 0x0001, 0x7f80, -1, 0x3f80, 0x3f82, 0x3dcd];
    const bytes = encodeSafetensors(new Map([['b', f32([values.length], values)]]), undefined, { dtype: { b: 'BF16' } });
    const raw = u16s(rawOf(bytes, 'b'));
    raw.forEach((bits, i) => {
      if (expected[i] === -1) expect((bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0, 'nan').toBe(true);
      else expect(bits, `value ${values[i]}`).toBe(expected[i]);
    });
    const back = decodeSafetensors(bytes).tensors.get('b')!;
    expect(Array.from(back.data)).toEqual([1, -2, 0.5, 65536, fromBfloat16Bits(0x322c), 2 ** -133, Infinity, NaN, 1, 1 + 2 ** -6, fromBfloat16Bits(0x3dcd)]);
  });

  it('keeps signalling NaNs (payload in low bits only) NaN in F16 and BF16', () => {
    const data = new Float32Array(new Uint32Array([0x7f800001, 0xff800100]).buffer);
    for (const dtype of ['F16', 'BF16'] as const) {
      const bytes = encodeSafetensors(new Map([['n', { dtype: 'float32', shape: [2], data }]]), undefined, { dtype: { n: dtype } });
      const back = decodeSafetensors(bytes).tensors.get('n')!.data;
      expect(Number.isNaN(back[0]) && Number.isNaN(back[1]), dtype).toBe(true);
    }
  });

  it('reads I64 into int32 and rejects values out of int32 range, naming the tensor', () => {
    const data = new Uint8Array(5 * 8);
    const view = new DataView(data.buffer);
    [0n, -1n, 2147483647n, -2147483648n, 42n].forEach((v, i) => view.setBigInt64(8 * i, v, true));
    const ok = fileFrom(JSON.stringify({ pos: { dtype: 'I64', shape: [5], data_offsets: [0, 40] } }), data);
    const t = decodeSafetensors(ok, 'ids.safetensors').tensors.get('pos')!;
    expect(t.dtype).toBe('int32');
    expect(t.data).toBeInstanceOf(Int32Array);
    expect(Array.from(t.data)).toEqual([0, -1, 2147483647, -2147483648, 42]);

    for (const big of [2147483648n, -2147483649n, 1n << 40n]) {
      view.setBigInt64(8, big, true);
      const bad = fileFrom(JSON.stringify({ pos: { dtype: 'I64', shape: [5], data_offsets: [0, 40] } }), data);
      const msg = errorOf(() => decodeSafetensors(bad, 'ids.safetensors'));
      expect(msg).toContain('ids.safetensors');
      expect(msg).toContain('tensor "pos"');
      expect(msg).toContain(`element 1 = ${big}`);
      expect(msg).toMatch(/outside the int32 range/);
    }
  });

  it('writes int32 as I64 on request and reads it back', () => {
    const bytes = encodeSafetensors(new Map([['i', i32([3], [-5, 0, 2147483647])]]), undefined, { dtype: { i: 'I64' } });
    const raw = rawOf(bytes, 'i');
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    expect([0, 1, 2].map((k) => view.getBigInt64(8 * k, true))).toEqual([-5n, 0n, 2147483647n]);
    expect(Array.from(decodeSafetensors(bytes).tensors.get('i')!.data)).toEqual([-5, 0, 2147483647]);
  });

  it('reads the bytes a reference (Python) writer produces for {"a": F32 [2] = [1, 2]}', () => {
    // prettier-ignore
    const reference = new Uint8Array([
      0x38, 0, 0, 0, 0, 0, 0, 0, // header length 56, little-endian u64
      ...new TextEncoder().encode('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'), 0x20, 0x20, // 54 + 2 spaces
      0x00, 0x00, 0x80, 0x3f, // 1.0f
      0x00, 0x00, 0x00, 0x40, // 2.0f
    ]);
    expect(reference.length).toBe(8 + 56 + 8);
    const { tensors, metadata } = decodeSafetensors(reference, 'reference.safetensors');
    expect(metadata).toEqual({});
    expect([...tensors.keys()]).toEqual(['a']);
    expect(tensors.get('a')).toEqual({ dtype: 'float32', shape: [2], data: new Float32Array([1, 2]) });
    // and our writer produces exactly those bytes
    expect(encodeSafetensors(new Map([['a', f32([2], [1, 2])]]))).toEqual(reference);
  });

  it('writes a deterministic header, byte for byte, whatever the insertion order', () => {
    const a = new Map<string, HostTensor>([['z', f32([1], [1])], ['b.weight', f32([2], [2, 3])], ['a', i32([], [4])]]);
    const b = new Map<string, HostTensor>([['a', i32([], [4])], ['z', f32([1], [1])], ['b.weight', f32([2], [2, 3])]]);
    const bytesA = encodeSafetensors(a, { z: '1', a: '2' });
    const bytesB = encodeSafetensors(b, { a: '2', z: '1' });
    expect(bytesA).toEqual(bytesB);
    const header = headerOf(bytesA);
    expect(header.length % 8).toBe(0);
    expect(header.trimEnd()).toBe(
      '{"__metadata__":{"a":"2","z":"1"},' +
        '"a":{"dtype":"I32","shape":[],"data_offsets":[0,4]},' +
        '"b.weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},' +
        '"z":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}',
    );
    expect(header.slice(header.trimEnd().length)).toMatch(/^ *$/);
    expect(bytesA.length).toBe(8 + header.length + 16);
  });

  it('lays out larger elements first so every tensor stays aligned', () => {
    const bytes = encodeSafetensors(
      new Map([['a_half', f32([3], [1, 2, 3])], ['b_full', f32([2], [4, 5])], ['c_long', i32([1], [6])]]),
      undefined,
      { dtype: { a_half: 'F16', c_long: 'I64' } },
    );
    const header = JSON.parse(headerOf(bytes)) as Record<string, { data_offsets: [number, number] }>;
    expect(header.c_long!.data_offsets).toEqual([0, 8]);
    expect(header.b_full!.data_offsets).toEqual([8, 16]);
    expect(header.a_half!.data_offsets).toEqual([16, 22]);
    const back = decodeSafetensors(bytes).tensors;
    expect(back.get('b_full')!.data.buffer).toBe(bytes.buffer); // aligned, so viewed in place
    expect(Array.from(back.get('a_half')!.data)).toEqual([1, 2, 3]);
  });

  it('rejects bad input to the writer', () => {
    expect(errorOf(() => encodeSafetensors(new Map([['x', f32([3], [1, 2])]])))).toMatch(/tensor "x".*needs 3 elements but data has 2/);
    expect(errorOf(() => encodeSafetensors(new Map([['x', i32([1], [1])]]), undefined, { dtype: { x: 'F16' } }))).toMatch(/cannot write a int32 tensor as F16/);
    expect(errorOf(() => encodeSafetensors(new Map([['x', f32([1], [1])]]), undefined, { dtype: { y: 'F16' } }))).toMatch(/"y", which is not among/);
    expect(errorOf(() => encodeSafetensors(new Map([['__metadata__', f32([1], [1])]])))).toMatch(/invalid tensor name/);
    const mixed = { dtype: 'float32', shape: [1], data: new Int32Array(1) } as HostTensor;
    expect(errorOf(() => encodeSafetensors(new Map([['m', mixed]])))).toMatch(/tensor "m": dtype float32 does not match/);
  });
});

describe('safetensors reader validation', () => {
  const F32_A = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };

  // Each case: a malformed file and what its message must say. Every message names the file.
  const cases: Array<[string, () => Uint8Array, RegExp, string | undefined]> = [
    ['a file shorter than 8 bytes', () => new Uint8Array(5), /file is 5 bytes, too short/, undefined],
    ['a header length larger than the file', () => fileFrom('{}', [], 100n), /header length 100 is larger than the 2 bytes after it/, undefined],
    ['a header length of 2^40', () => fileFrom('{}', [], 1n << 40n), /header length 1099511627776 exceeds the 100000000-byte limit/, undefined],
    ['a header length of 2^64 - 1', () => fileFrom('{}', [], (1n << 64n) - 1n), /header length 18446744073709551615 exceeds/, undefined],
    ['a header length just over 100 MB', () => fileFrom('{}', [], BigInt(MAX_HEADER_BYTES + 1)), /exceeds the 100000000-byte limit/, undefined],
    ['a header that is not UTF-8', () => fileFrom(new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])), /header is not valid UTF-8/, undefined],
    ['a header that is not JSON', () => fileFrom('{"a": {"dtype": '), /header is not valid JSON/, undefined],
    ['a header that is an array', () => fileFrom('[1, 2]'), /header is not a JSON object/, undefined],
    ['a header that is null', () => fileFrom('null    '), /header is not a JSON object/, undefined],
    ['an entry that is not an object', () => fileOf({ a: 5 }, 0), /header entry is not an object/, 'a'],
    ['an entry missing dtype', () => fileOf({ a: { shape: [2], data_offsets: [0, 8] } }, 8), /missing "dtype"/, 'a'],
    ['an entry missing shape', () => fileOf({ a: { dtype: 'F32', data_offsets: [0, 8] } }, 8), /missing "shape"/, 'a'],
    ['an entry missing data_offsets', () => fileOf({ a: { dtype: 'F32', shape: [2] } }, 8), /missing "data_offsets"/, 'a'],
    ['an unknown dtype', () => fileOf({ a: { ...F32_A, dtype: 'F64' } }, 8), /unknown dtype "F64" \(supported: F32, F16, BF16, I32, I64\)/, 'a'],
    ['a lowercase dtype', () => fileOf({ a: { ...F32_A, dtype: 'f32' } }, 8), /unknown dtype "f32"/, 'a'],
    ['a negative dimension', () => fileOf({ a: { ...F32_A, shape: [-2] } }, 8), /shape \[-2\] is not a list of non-negative integers/, 'a'],
    ['a fractional dimension', () => fileOf({ a: { ...F32_A, shape: [1.5] } }, 8), /shape \[1.5\] is not a list/, 'a'],
    ['a shape that is not a list', () => fileOf({ a: { ...F32_A, shape: '2' } }, 8), /shape "2" is not a list/, 'a'],
    ['data_offsets that are not a pair', () => fileOf({ a: { ...F32_A, data_offsets: [0, 8, 9] } }, 8), /data_offsets \[0,8,9\] is not a pair/, 'a'],
    ['a byte count that does not match the shape', () => fileOf({ a: { ...F32_A, shape: [3] } }, 8), /hold 8 bytes but F32 \[3\] needs 12/, 'a'],
    ['a shape whose element count overflows', () => fileOf({ a: { ...F32_A, shape: [2 ** 31, 2 ** 31, 2 ** 31] } }, 8), /hold 8 bytes but F32 \[2147483648, 2147483648, 2147483648\] needs Infinity/, 'a'],
    ['a huge shape with offsets past the file', () => fileOf({ a: { ...F32_A, shape: [2 ** 30, 4], data_offsets: [0, 2 ** 34] } }, 8), /\[0, 17179869184\] run past the end of the 8-byte data buffer/, 'a'],
    ['a byte count that does not match the dtype', () => fileOf({ a: { ...F32_A, dtype: 'F16' } }, 8), /hold 8 bytes but F16 \[2\] needs 4/, 'a'],
    ['offsets past the end of the data', () => fileOf({ a: { ...F32_A, data_offsets: [8, 16] } }, 8), /\[8, 16\] run past the end of the 8-byte data buffer/, 'a'],
    ['reversed offsets', () => fileOf({ a: { ...F32_A, shape: [0], data_offsets: [8, 0] } }, 8), /\[8, 0\] are reversed/, 'a'],
    [
      'overlapping tensors',
      () => fileOf({ a: F32_A, b: { ...F32_A, data_offsets: [4, 12] } }, 12),
      /overlap tensor "a" \(which ends at 8\)/,
      'b',
    ],
    ['a gap between tensors', () => fileOf({ a: F32_A, b: { ...F32_A, data_offsets: [12, 20] } }, 20), /4 unused bytes \[8, 12\) before/, 'b'],
    ['a gap before the first tensor', () => fileOf({ a: { ...F32_A, data_offsets: [4, 12] } }, 12), /4 unused bytes \[0, 4\)/, 'a'],
    ['unused bytes after the last tensor', () => fileOf({ a: F32_A }, 12), /4 unused bytes at the end of the data buffer after the last tensor "a"/, undefined],
    ['data bytes in a file without tensors', () => fileOf({}, 3), /3 unused bytes .* no tensors/, undefined],
    ['a metadata value that is not a string', () => fileOf({ __metadata__: { epoch: 3 }, a: F32_A }, 8), /__metadata__ value of "epoch" is 3, not a string/, undefined],
    ['metadata that is not an object', () => fileOf({ __metadata__: ['x'] }, 0), /__metadata__ is not an object/, undefined],
  ];

  it.each(cases)('rejects %s', (_, make, pattern, tensor) => {
    const msg = errorOf(() => decodeSafetensors(make(), 'bad.safetensors'));
    expect(msg).toMatch(/^bad\.safetensors: /);
    expect(msg).toMatch(pattern);
    if (tensor !== undefined) expect(msg).toContain(`tensor "${tensor}"`);
  });

  it('fails on a huge header length quickly and without allocating it', () => {
    const before = process.memoryUsage().arrayBuffers;
    const t0 = performance.now();
    errorOf(() => decodeSafetensors(fileFrom('{}', [], 1n << 40n)));
    expect(performance.now() - t0).toBeLessThan(50);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(1 << 20);
  });

  it('accepts zero-length tensors that share an offset, and header keys in any order', () => {
    const bytes = fileFrom(
      JSON.stringify({ b: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, e: { dtype: 'I32', shape: [0], data_offsets: [0, 0] } }),
      [0, 0, 0x80, 0x3f],
    );
    const { tensors } = decodeSafetensors(bytes);
    expect(Array.from(tensors.get('b')!.data)).toEqual([1]);
    expect(tensors.get('e')!.data.length).toBe(0);
  });
});

describe('tfjs glue', () => {
  it('round-trips tensors through host memory and safetensors bytes', async () => {
    const src = new Map<string, tf.Tensor>([
      ['w', tf.tensor2d([[1, 2, 3], [4, 5, 6]])],
      ['ids', tf.tensor1d([3, -1], 'int32')],
      ['s', tf.scalar(0.25)],
    ]);
    const host = await tensorsToHost(src);
    // host data is a copy: disposing the tensors leaves it intact
    for (const t of src.values()) t.dispose();
    expect(host.get('w')).toEqual({ dtype: 'float32', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) });
    const back = hostToTensors(decodeSafetensors(encodeSafetensors(host)).tensors);
    expect(back.get('w')!.shape).toEqual([2, 3]);
    expect(back.get('ids')!.dtype).toBe('int32');
    expect(back.get('s')!.rank).toBe(0);
    expect(Array.from(await back.get('w')!.data())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(await back.get('ids')!.data())).toEqual([3, -1]);
    for (const t of back.values()) t.dispose();
  });

  it('leaks no tensors and rejects unsupported dtypes', async () => {
    const x = tf.ones([4, 4]);
    const leaked = await tensorLeak(async () => {
      const host = await tensorsToHost(new Map([['x', x]]));
      for (const t of hostToTensors(host).values()) t.dispose();
    });
    expect(leaked).toBe(0);
    x.dispose();
    const b = tf.tensor1d([1, 0], 'bool');
    await expect(tensorsToHost(new Map([['mask', b]]))).rejects.toThrow(/tensor "mask" has dtype bool/);
    b.dispose();
    const before = tf.memory().numTensors;
    expect(() => hostToTensors(new Map([['ok', f32([1], [1])], ['bad', f32([3], [1])]]))).toThrow(/tensor "bad"/);
    expect(tf.memory().numTensors).toBe(before); // the tensor made before the failure was disposed
  });
});
