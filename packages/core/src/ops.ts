import { tf } from './tf.js';

/** The result of a hand-differentiated op: its value and the gradient of each input. */
export interface CustomOp<T extends tf.Tensor> {
  value: T;
  gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
}

/**
 * `tf.customGrad` with a usable type: `f` receives its tensor inputs then `save`, and returns the
 * value and a gradient function (one gradient per input, in order).
 */
export function customOp<T extends tf.Tensor>(f: (...args: [...tf.Tensor[], tf.GradSaveFunc]) => CustomOp<T>): (...inputs: tf.Tensor[]) => T {
  const g = tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);
  return (...inputs: tf.Tensor[]) => g(...inputs) as T;
}

/**
 * op(a) @ op(b) routed to the fastest kernel form of the active backend. tfjs-wasm runs only the
 * plain 2-D product (no transposes) through XNNPACK; with a transpose flag it falls back to a loop
 * 10-35x slower, and autodiff of a plain product asks for exactly those flags. Here the operands
 * are transposed explicitly instead (a cheap copy) wherever that is faster. Not differentiable by
 * itself: `matMul` below wraps it with its gradient.
 */
export function matMulRouted(a: tf.Tensor, b: tf.Tensor, transA = false, transB = false): tf.Tensor {
  if ((transA || transB) && a.rank === 2 && b.rank === 2 && tf.getBackend() === 'wasm') {
    return tf.tidy(() => tf.matMul(transA ? a.transpose() : a, transB ? b.transpose() : b));
  }
  return tf.matMul(a, b, transA, transB);
}

/**
 * Differentiable op(a) @ op(b) whose forward and backward products all go through
 * `matMulRouted`. For C = op(A) op(B):
 *   dA = dC op(B)^T  (or op(B) dC^T when A is transposed)
 *   dB = op(A)^T dC  (or dC^T op(A) when B is transposed)
 */
export function matMul(a: tf.Tensor, b: tf.Tensor, transA = false, transB = false): tf.Tensor {
  return customOp((...args) => {
    const [x, y, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    save([x, y]);
    return {
      value: matMulRouted(x, y, transA, transB),
      gradFunc: (dy, saved) => {
        const [A, B] = saved as [tf.Tensor, tf.Tensor];
        const dA = transA ? matMulRouted(B, dy, transB, true) : matMulRouted(dy, B, false, !transB);
        const dB = transB ? matMulRouted(dy, A, true, transA) : matMulRouted(A, dy, !transA, false);
        return [sumToShape(dA, A.shape), sumToShape(dB, B.shape)];
      },
    };
  })(a, b);
}

/** Reduces broadcast leading (batch) dimensions of a gradient back to `shape`. */
function sumToShape(g: tf.Tensor, shape: number[]): tf.Tensor {
  if (g.rank === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.rank - shape.length;
  let r = lead > 0 ? g.sum([...Array(lead).keys()]) : g;
  const axes = shape.map((d, i) => (d === 1 && r.shape[i] !== 1 ? i : -1)).filter((i) => i >= 0);
  if (axes.length) r = r.sum(axes, true);
  return r.reshape(shape);
}
