import { tf } from './tf.js';

/**
 * The leak check: runs `fn` once to warm up (caches, lazily created tensors), counts live tensors,
 * runs it again and returns how many more tensors exist afterwards. Zero means no leak.
 */
export async function tensorLeak(fn: () => unknown | Promise<unknown>, runs = 2): Promise<number> {
  await fn();
  const before = tf.memory().numTensors;
  for (let i = 0; i < runs; i++) await fn();
  return tf.memory().numTensors - before;
}

/** Relative RMS error ||a - b|| / max(||b||, tiny): the comparison every fast path is tested with. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relativeError: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/** Central finite-difference gradient of a scalar function of a vector (float64 test oracle). */
export function finiteDifferenceGradient(f: (v: number[]) => number, v: ArrayLike<number>, h = 1e-5): number[] {
  const base = Array.from(v);
  return base.map((_, i) => {
    const p = base.slice();
    const m = base.slice();
    p[i] = p[i]! + h;
    m[i] = m[i]! - h;
    return (f(p) - f(m)) / (2 * h);
  });
}

/** Dot product of two equally long number sequences. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
