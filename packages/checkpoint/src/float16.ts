/**
 * float32 <-> float16 (IEEE 754 binary16) and float32 <-> bfloat16 conversions on raw bit patterns.
 * Narrowing rounds to nearest, ties to even; overflow gives infinity; NaN stays NaN (quiet);
 * subnormals are produced and read exactly. Widening is exact.
 */

// One shared scratch word to move between a float32 and its bits.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** The bits of `x` rounded to float32 (as an unsigned 32-bit integer). */
export function float32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0]!;
}

/** The float32 value with the given bits. */
export function float32FromBits(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

/** float32 bits -> float16 bits, round to nearest even. */
export function float32BitsToFloat16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) {
    // inf stays inf; NaN keeps the top of its payload and is forced quiet so it cannot become inf
    return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  }
  // rebias 127 -> 15
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // half subnormal: value = m * 2^-24 with m = M * 2^(exp - 126), M the 24-bit significand
    if (e < -10) return sign; // below half the smallest subnormal (ties at exactly half go to even 0)
    const sig = mant | 0x800000;
    const shift = 14 - e; // 14..24
    let m = sig >>> shift;
    const rem = sig & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (m & 1) === 1)) m++; // m may become 0x400: the smallest normal
    return sign | m;
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // a carry out of the mantissa increments the exponent, up to inf: exactly what rounding wants
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return h;
}

/** float16 bits -> float32 bits (exact). */
export function float16BitsToFloat32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp === 0) {
    if (mant === 0) return sign >>> 0;
    // subnormal half: normalize into a float32 normal
    let e = -14;
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      e--;
    }
    mant &= 0x3ff;
    return (sign | ((e + 127) << 23) | (mant << 13)) >>> 0;
  }
  return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
}

/** float32 bits -> bfloat16 bits (the top half, rounded to nearest even). */
export function float32BitsToBfloat16Bits(bits: number): number {
  const u = bits >>> 0;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) {
    // NaN: truncating could clear every payload bit and make inf; force the quiet bit
    return (u >>> 16) | 0x40;
  }
  // below 2^32 for every non-NaN input, so plain arithmetic is safe; overflow rounds to inf
  return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
}

/** bfloat16 bits -> float32 bits (exact). */
export function bfloat16BitsToFloat32Bits(b: number): number {
  return ((b & 0xffff) << 16) >>> 0;
}

/** Converts a number to float16 bits (rounding to float32 first, then to float16). */
export function toFloat16Bits(x: number): number {
  return float32BitsToFloat16Bits(float32Bits(x));
}

/** The value of float16 bits. */
export function fromFloat16Bits(h: number): number {
  return float32FromBits(float16BitsToFloat32Bits(h));
}

/** Converts a number to bfloat16 bits (rounding to float32 first, then to bfloat16). */
export function toBfloat16Bits(x: number): number {
  return float32BitsToBfloat16Bits(float32Bits(x));
}

/** The value of bfloat16 bits. */
export function fromBfloat16Bits(b: number): number {
  return float32FromBits(bfloat16BitsToFloat32Bits(b));
}
