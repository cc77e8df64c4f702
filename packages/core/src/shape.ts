import type { tf } from './tf.js';
import { TsformerError } from './errors.js';

/**
 * Checks a tensor's shape against a spec such as `[B, T, 'D']`: numbers must match exactly, strings
 * name a dimension (any size, but equal names must agree), `null` accepts anything.
 * Throws an error naming the tensor, the spec and the actual shape. Returns the named sizes.
 */
export function checkShape(
  what: string,
  t: tf.Tensor | readonly number[],
  spec: ReadonlyArray<number | string | null>,
  known: Record<string, number> = {},
): Record<string, number> {
  const shape = Array.isArray(t) ? (t as readonly number[]) : (t as tf.Tensor).shape;
  const sizes: Record<string, number> = { ...known };
  const fail = (why: string) => {
    const specText = spec.map((s) => (s === null ? '*' : String(s))).join(', ');
    throw new TsformerError(`${what}: expected shape [${specText}], got [${shape.join(', ')}] (${why})`, 'shape');
  };
  if (shape.length !== spec.length) fail(`rank ${shape.length} instead of ${spec.length}`);
  spec.forEach((s, i) => {
    const n = shape[i]!;
    if (s === null) return;
    if (typeof s === 'number') {
      if (n !== s) fail(`dimension ${i} is ${n}, not ${s}`);
    } else if (sizes[s] === undefined) {
      sizes[s] = n;
    } else if (sizes[s] !== n) {
      fail(`dimension ${i} (${s}) is ${n}, not ${sizes[s]}`);
    }
  });
  return sizes;
}
