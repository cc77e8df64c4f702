import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, run, type WebGpuBackendLike } from './program.js';

/**
 * Cumsum for webgpu. tfjs-backend-webgpu 4.22's CumProgram bakes the scanned axis' length into
 * its WGSL for reverse scans but leaves it out of its pipeline key (`cum_+_exclusive_reverse`),
 * so a reverse cumsum (and the gradient of every forward one) reuses the pipeline compiled for the
 * first length it saw: wrong sums for every other length, with no error. GLA's composite form
 * (chunks of 16 then of 32 tokens) gave 10% errors that way. This kernel scans sequentially, one
 * thread per line along the axis (x viewed as [outer, L, inner]); every size is in its key. Other
 * dtypes go to tfjs's kernel.
 */
function cumsumProgram(outer: number, L: number, inner: number, exclusive: boolean, reverse: boolean): KernelProgram {
  const threads = 64;
  const key = `tsf_cumsum_${outer}_${L}_${inner}_${exclusive}_${reverse}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [outer * L * inner],
    inputs: ['X'],
    threads,
    numGroups: Math.ceil((outer * inner) / threads),
    body: `
      const OUTER = ${outer}u; const L = ${L}u; const INNER = ${inner}u;
      fn kernel() {
        let line = wgIndex() * ${threads}u + localIndex;
        if (line >= OUTER * INNER) { return; }
        let base = (line / INNER) * L * INNER + line % INNER;
        var acc = 0.0;
        for (var m = 0u; m < L; m++) {
          let l = ${reverse ? 'L - 1u - m' : 'm'};
          let x = X[base + l * INNER];
          ${exclusive ? 'result[base + l * INNER] = acc; acc += x;' : 'acc += x; result[base + l * INNER] = acc;'}
        }
      }`,
  }));
}

let original: KernelConfig | undefined;

/** Replaces tfjs's Cumsum on webgpu for float32 inputs (idempotent). */
export function registerCumsumFix(): void {
  const current = tf.getKernel('Cumsum', 'webgpu');
  if (!current || (current as { tsformer?: boolean }).tsformer) return;
  original = current;
  const tfjsCumsum = current.kernelFunc;
  const kernelFunc: KernelFunc = (args) => {
    const x = args.inputs.x as TensorInfo;
    if (x.dtype !== 'float32' || x.shape.length === 0 || tf.util.sizeFromShape(x.shape) === 0) return tfjsCumsum(args);
    const a = args.attrs as NamedAttrMap;
    const rank = x.shape.length;
    const axis = ((a.axis as number) % rank + rank) % rank;
    const L = x.shape[axis]!;
    const outer = x.shape.slice(0, axis).reduce((p, s) => p * s, 1);
    const inner = x.shape.slice(axis + 1).reduce((p, s) => p * s, 1);
    const out = run(args.backend as unknown as WebGpuBackendLike, cumsumProgram(outer, L, inner, Boolean(a.exclusive), Boolean(a.reverse)), [x]);
    return { ...out, shape: x.shape };
  };
  tf.unregisterKernel('Cumsum', 'webgpu');
  tf.registerKernel(Object.assign({ kernelName: 'Cumsum', backendName: 'webgpu', kernelFunc }, { tsformer: true }));
}

/** tfjs's own Cumsum kernel for webgpu, once registerCumsumFix has run. */
export function originalCumsum(): KernelConfig | undefined {
  return original;
}
