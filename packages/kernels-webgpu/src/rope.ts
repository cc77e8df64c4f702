import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, type WebGpuBackendLike } from './program.js';

/**
 * Fused rotary embedding: x [B, T, H, D], per-position tables cos, sin [T, R/2] (angles, scaling
 * and attention factor already folded in by the caller, e.g. @tsformer/positional's Rope). Pair i
 * of the first R dims turns by its angle; dims R.. pass through.
 *   half:        (x_i, x_{i+R/2})      interleaved: (x_{2i}, x_{2i+1})
 *   x_a' = x_a cos - x_b sin,   x_b' = x_b cos + x_a sin
 * One read and one write of x. The gradient is the inverse rotation (the same kernel, sin negated).
 */
export const ROPE = 'TsfRope';

export type RopeLayout = 'half' | 'interleaved';

/** Composite definition (any backend; the oracle). */
export function ropeComposite(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, layout: RopeLayout = 'half', inverse = false): tf.Tensor {
  const [B, T, H, D] = x.shape as [number, number, number, number];
  const P = cos.shape[1]!;
  const R = 2 * P;
  return tf.tidy(() => {
    const c = cos.reshape([1, T, 1, P]);
    const s = inverse ? sin.neg().reshape([1, T, 1, P]) : sin.reshape([1, T, 1, P]);
    const rot = R === D ? x : x.slice([0, 0, 0, 0], [B, T, H, R]); // [B, T, H, R]
    let a: tf.Tensor;
    let b: tf.Tensor;
    if (layout === 'half') {
      a = rot.slice([0, 0, 0, 0], [B, T, H, P]);
      b = rot.slice([0, 0, 0, P], [B, T, H, P]);
    } else {
      // rank 3 (tfjs-webgpu 4.22's Pad, the gradient of slice, fails to compile at rank 5)
      const pairs = rot.reshape([B * T * H, P, 2]);
      a = pairs.slice([0, 0, 0], [B * T * H, P, 1]).reshape([B, T, H, P]);
      b = pairs.slice([0, 0, 1], [B * T * H, P, 1]).reshape([B, T, H, P]);
    }
    const a2 = a.mul(c).sub(b.mul(s));
    const b2 = b.mul(c).add(a.mul(s));
    const y = layout === 'half' ? tf.concat([a2, b2], 3) : tf.concat([a2.reshape([-1, P, 1]), b2.reshape([-1, P, 1])], 2).reshape([B, T, H, R]);
    return R === D ? y : tf.concat([y, x.slice([0, 0, 0, R], [B, T, H, D - R])], 3);
  });
}

/** RoPE: the fused kernel on webgpu, the composite elsewhere. */
export function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, layout: RopeLayout = 'half'): tf.Tensor {
  const [, T, , D] = x.shape as [number, number, number, number];
  if (x.rank !== 4 || cos.rank !== 2 || cos.shape[0] !== T || !tf.util.arraysEqual(cos.shape, sin.shape) || 2 * cos.shape[1]! > D) {
    throw new Error(`rope: x [${x.shape}] needs cos, sin [${T}, R/2] with R <= ${D}`);
  }
  if (!kernelActive(ROPE)) return ropeComposite(x, cos, sin, layout);
  return tf.engine().runKernel(ROPE, { x, cos, sin }, { layout, inverse: false } as unknown as NamedAttrMap) as tf.Tensor;
}

function ropeProgram(shape: number[], P: number, layout: RopeLayout, inverse: boolean): KernelProgram {
  const [B, T, H, D] = shape as [number, number, number, number];
  const threads = 256;
  const rows = B * T * H;
  // one thread per (row, pair) for the rotated dims, then one per pass-through element
  const work = rows * P + rows * (D - 2 * P);
  const key = `tsf_rope_${B}_${T}_${H}_${D}_${P}_${layout}_${inverse}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: shape,
    inputs: ['X', 'COS', 'SIN'],
    threads,
    numGroups: Math.ceil(work / threads),
    body: `
      const T = ${T}u; const H = ${H}u; const D = ${D}u; const P = ${P}u; const ROWS = ${rows}u;
      const HALF = ${layout === 'half'}; const SIGN = ${inverse ? '-1.0' : '1.0'};
      fn kernel() {
        let n = wgIndex() * ${threads}u + localIndex;
        if (n < ROWS * P) {
          let row = n / P; let i = n % P;
          let t = (row / H) % T;
          let c = COS[t * P + i]; let s = SIGN * SIN[t * P + i];
          var ia = row * D + 2u * i; var ib = ia + 1u;
          if (HALF) { ia = row * D + i; ib = ia + P; }
          let a = X[ia]; let b = X[ib];
          result[ia] = a * c - b * s;
          result[ib] = b * c + a * s;
        }${
          D > 2 * P
            ? ` else if (n < ROWS * P + ROWS * (D - 2u * P)) {
          let m = n - ROWS * P;
          let idx = (m / (D - 2u * P)) * D + 2u * P + m % (D - 2u * P);
          result[idx] = X[idx];
        }`
            : ''
        }
      }`,
  }));
}

export function registerRope(): void {
  if (!tf.getKernel(ROPE, 'webgpu')) {
    tf.registerKernel({
      kernelName: ROPE,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const { x, cos, sin } = inputs as Record<string, TensorInfo>;
        return run(backend as unknown as WebGpuBackendLike, ropeProgram(x!.shape, cos!.shape[1]!, attrs!.layout as RopeLayout, Boolean(attrs!.inverse)), [x!, cos!, sin!]);
      },
    });
  }
  if (!tf.getGradient(ROPE)) {
    tf.registerGradient({
      kernelName: ROPE,
      inputsToSave: ['cos', 'sin'],
      gradFunc: (dy, saved, attrs) => {
        const [cos, sin] = saved as tf.Tensor[];
        const back = { ...attrs, inverse: !attrs!.inverse } as unknown as NamedAttrMap;
        return {
          x: () => tf.engine().runKernel(ROPE, { x: dy as tf.Tensor, cos: cos!, sin: sin! }, back) as tf.Tensor,
          cos: () => tf.zerosLike(cos!),
          sin: () => tf.zerosLike(sin!),
        };
      },
    });
  }
}
