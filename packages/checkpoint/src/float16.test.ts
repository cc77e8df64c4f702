import { describe, expect, it } from 'vitest';
import {
  float32Bits,
  float32BitsToBfloat16Bits,
  float32BitsToFloat16Bits,
  fromBfloat16Bits,
  fromFloat16Bits,
  toBfloat16Bits,
  toFloat16Bits,
} from './float16.js';

// A tiny deterministic generator so failures reproduce.
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Oracle: the nearest float16 to a (float32) value by search over every finite float16, ties to even bits. */
const positiveHalves = Array.from({ length: 0x7c00 }, (_, h) => fromFloat16Bits(h)); // 0 .. 65504, ascending
function nearestHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // 65520 is halfway between 65504 and 2^16: ties to even (inf)
  let lo = 0;
  let hi = positiveHalves.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (positiveHalves[mid]! <= a) lo = mid;
    else hi = mid - 1;
  }
  if (lo === positiveHalves.length - 1) return sign | lo;
  const below = positiveHalves[lo]!;
  const above = positiveHalves[lo + 1]!;
  if (a - below < above - a) return sign | lo;
  if (a - below > above - a) return sign | (lo + 1);
  return sign | (lo % 2 === 0 ? lo : lo + 1);
}

describe('float16', () => {
  it('converts known values', () => {
    expect(toFloat16Bits(1)).toBe(0x3c00);
    expect(toFloat16Bits(-2)).toBe(0xc000);
    expect(toFloat16Bits(0.5)).toBe(0x3800);
    expect(toFloat16Bits(65504)).toBe(0x7bff);
    expect(toFloat16Bits(0.1)).toBe(0x2e66);
    expect(toFloat16Bits(0)).toBe(0x0000);
    expect(toFloat16Bits(-0)).toBe(0x8000);
    expect(toFloat16Bits(Infinity)).toBe(0x7c00);
    expect(toFloat16Bits(-Infinity)).toBe(0xfc00);
    const nan = toFloat16Bits(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x03ff).not.toBe(0);
    // NaNs whose payload sits only in low float32 bits must not turn into infinity. Raw bits: a JS
    // number would arrive quieted (0x7fc00001), hiding the case.
    expect(fromFloat16Bits(float32BitsToFloat16Bits(0x7f800001))).toBeNaN();
    expect(fromFloat16Bits(float32BitsToFloat16Bits(0xff800001))).toBeNaN();

    expect(fromFloat16Bits(0x3c00)).toBe(1);
    expect(fromFloat16Bits(0xc000)).toBe(-2);
    expect(fromFloat16Bits(0x7bff)).toBe(65504);
    expect(fromFloat16Bits(0x7c00)).toBe(Infinity);
    expect(fromFloat16Bits(0xfc00)).toBe(-Infinity);
    expect(fromFloat16Bits(0x7e00)).toBeNaN();
    expect(Object.is(fromFloat16Bits(0x8000), -0)).toBe(true);
  });

  it('handles subnormals and underflow', () => {
    expect(toFloat16Bits(1e-8)).toBe(0x0000); // below half of the smallest subnormal (5.96e-8)
    expect(toFloat16Bits(-1e-8)).toBe(0x8000);
    expect(toFloat16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(toFloat16Bits(6e-8)).toBe(0x0001);
    expect(toFloat16Bits(1e-5)).toBe(0x00a8); // round(1e-5 * 2^24) = 168
    expect(fromFloat16Bits(0x0001)).toBe(2 ** -24);
    expect(fromFloat16Bits(0x03ff)).toBe(1023 * 2 ** -24); // largest subnormal
    expect(fromFloat16Bits(0x0400)).toBe(2 ** -14); // smallest normal
  });

  it('rounds to nearest, ties to even', () => {
    expect(toFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie between 0x3c00 and 0x3c01: even
    expect(toFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie between 0x3c01 and 0x3c02: even
    expect(toFloat16Bits(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // just above the tie
    expect(toFloat16Bits(65519)).toBe(0x7bff);
    expect(toFloat16Bits(65520)).toBe(0x7c00); // tie with 2^16: even is infinity
    expect(toFloat16Bits(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal
    expect(toFloat16Bits(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 subnormal units
    expect(toFloat16Bits(2 ** -25 + 2 ** -35)).toBe(0x0001);
    expect(toFloat16Bits(1023.5 * 2 ** -24)).toBe(0x0400); // subnormal rounds up into the first normal
  });

  it('round-trips every float16 bit pattern', () => {
    for (let h = 0; h < 0x10000; h++) {
      const x = fromFloat16Bits(h);
      if (Number.isNaN(x)) {
        expect((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0).toBe(true);
        expect(Number.isNaN(fromFloat16Bits(toFloat16Bits(x)))).toBe(true);
      } else if (toFloat16Bits(x) !== h) {
        throw new Error(`0x${h.toString(16)} -> ${x} -> 0x${toFloat16Bits(x).toString(16)}`);
      }
    }
  });

  it('matches a brute-force nearest-even oracle on random float32 values', () => {
    const rand = lcg(1234);
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround((rand() * 2 - 1) * 2 ** Math.floor(rand() * 44 - 27));
      const got = toFloat16Bits(x);
      const want = nearestHalf(x);
      if (got !== want) throw new Error(`${x}: got 0x${got.toString(16)}, want 0x${want.toString(16)}`);
    }
  });
});

describe('bfloat16', () => {
  it('converts known values', () => {
    expect(toBfloat16Bits(1)).toBe(0x3f80);
    expect(toBfloat16Bits(-2)).toBe(0xc000);
    expect(toBfloat16Bits(0.5)).toBe(0x3f00);
    expect(toBfloat16Bits(65504)).toBe(0x4780); // 0x477fe000 rounds up to 65536
    expect(toBfloat16Bits(0.1)).toBe(0x3dcd); // 0x3dcccccd rounds up
    expect(toBfloat16Bits(1e-8)).toBe(0x322c); // 0x322bcc77 rounds up; normal in bfloat16
    expect(toBfloat16Bits(Infinity)).toBe(0x7f80);
    expect(toBfloat16Bits(-Infinity)).toBe(0xff80);
    expect(toBfloat16Bits(-0)).toBe(0x8000);
    expect(fromBfloat16Bits(toBfloat16Bits(NaN))).toBeNaN();
    // a NaN with payload only in the low half must stay NaN, not become infinity (raw bits, as above)
    expect(fromBfloat16Bits(float32BitsToBfloat16Bits(0x7f800001))).toBeNaN();
    expect(fromBfloat16Bits(float32BitsToBfloat16Bits(0xff80ffff))).toBeNaN();
    expect(fromBfloat16Bits(0x3f80)).toBe(1);
    expect(fromBfloat16Bits(0x4780)).toBe(65536);
    expect(fromBfloat16Bits(0x7f80)).toBe(Infinity);
    expect(fromBfloat16Bits(0x7fc0)).toBeNaN();
  });

  it('rounds to nearest, ties to even, including subnormals and overflow', () => {
    expect(toBfloat16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie: even
    expect(toBfloat16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie: even
    expect(toBfloat16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(toBfloat16Bits(3.4028234663852886e38)).toBe(0x7f80); // float32 max rounds to inf
    expect(toBfloat16Bits(1e-40)).toBe(0x0001); // float32 subnormal 0x000116c2
    expect(fromBfloat16Bits(0x0001)).toBe(2 ** -133);
  });

  it('round-trips every bfloat16 bit pattern and matches a nearest-even oracle', () => {
    for (let b = 0; b < 0x10000; b++) {
      const x = fromBfloat16Bits(b);
      if (Number.isNaN(x)) expect(Number.isNaN(fromBfloat16Bits(toBfloat16Bits(x)))).toBe(true);
      else if (toBfloat16Bits(x) !== b) throw new Error(`bf16 0x${b.toString(16)} does not round-trip`);
    }
    const rand = lcg(99);
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround(rand() * 2 ** Math.floor(rand() * 80 - 40));
      const t = float32Bits(x) >>> 16; // truncation: the candidate below
      const below = fromBfloat16Bits(t);
      const above = fromBfloat16Bits(t + 1);
      const want = x - below < above - x ? t : x - below > above - x ? t + 1 : t % 2 === 0 ? t : t + 1;
      const got = toBfloat16Bits(x);
      if (got !== want) throw new Error(`${x}: got 0x${got.toString(16)}, want 0x${want.toString(16)}`);
    }
  });
});
