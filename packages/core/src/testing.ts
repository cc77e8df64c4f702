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
