import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, cachedProgram, kernelActive, run, type WebGpuBackendLike } from './program.js';

/**
 * Fused GELU, tanh approximation (GPT-2's MLP activation), forward and backward as one
 * elementwise dispatch each, vec4 wide:
 *
 *   y  = 0.5 x (1 + tanh(u)),   u = c (x + 0.044715 x^3),   c = sqrt(2 / pi)
 *   dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)),   t = tanh(u)
 *
 * The composite runs 8 tfjs ops forward and about 17 backward (each a dispatch on webgpu, with
 * its constants uploaded from the host as scalars).
 */
export const GELU = 'TsfGelu';
export const GELU_GRAD = 'TsfGeluGrad';

/** Composite definition (any backend; the oracle): @tsformer/layers' gelu. */
export function geluComposite(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const inner = x.add(x.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
    return x.mul(inner.tanh().add(1)).mul(0.5);
  });
}

/** GELU (tanh approximation): the fused kernel on webgpu for float32, the composite elsewhere. */
export function gelu(x: tf.Tensor): tf.Tensor {
  if (!kernelActive(GELU) || x.dtype !== 'float32') return geluComposite(x);
  return tf.engine().runKernel(GELU, { x }) as tf.Tensor;
}

const THREADS = 256;

// tanh through exp of a non-positive argument: no overflow for any x (WGSL's tanh may return NaN
// for large arguments on some implementations).
const TANH = `
  const C = 0.7978845608028654;
  const A = 0.044715;
  fn tanhSafe(u: vec4<f32>) -> vec4<f32> {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
  }`;

function program(n: number, grad: boolean): KernelProgram {
  const n4 = Math.ceil(n / 4);
  const tail = n % 4 === 0;
  // element i of the vec4 view; a size that is not a multiple of 4 reads scalars, 0 past the end
  const load = (name: string) => (tail ? `${name}[i]` : `vec4<f32>(${[0, 1, 2, 3].map((k) => `at${name}(4u * i + ${k}u)`).join(', ')})`);
  const loaders = tail
    ? ''
    : (grad ? ['X', 'DY'] : ['X']).map((nm) => `fn at${nm}(j: u32) -> f32 { if (j < ${n}u) { return ${nm}[j]; } return 0.0; }`).join('\n');
  const comps = tail ? [4, 4] : [1, 1];
  // result is a scalar array (tfjs binds it as array<f32>)
  const store = `for (var k = 0u; k < 4u; k++) { if (4u * i + k < ${n}u) { result[4u * i + k] = r[k]; } }`;
  const key = `tsf_gelu_${grad ? 'bwd' : 'fwd'}_${n}`;
  return cachedProgram(key, () => ({
    key,
    outputShape: [n],
    inputs: grad ? ['X', 'DY'] : ['X'],
    components: grad ? comps : comps.slice(0, 1),
    threads: THREADS,
    numGroups: Math.ceil(n4 / THREADS),
    body: `
      ${TANH}
      ${loaders}
      fn kernel() {
        let i = wgIndex() * ${THREADS}u + localIndex;
        if (i >= ${n4}u) { return; }
        let x = ${load('X')};
        let t = tanhSafe(C * (x + A * x * x * x));
        ${grad ? `let dy = ${load('DY')};
        let r = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x));` : 'let r = 0.5 * x * (1.0 + t);'}
        ${store}
      }`,
  }));
}

/** The output of a vec4 program is [n/4] vec4s: hand it back as the caller's shape. */
function runElementwise(be: WebGpuBackendLike, inputs: TensorInfo[], grad: boolean): TensorInfo {
  const x = inputs[0]!;
  const n = tf.util.sizeFromShape(x.shape);
  const flat = inputs.map((t) => ({ ...t, shape: [n % 4 === 0 ? n / 4 : n] }));
  const out = run(be, program(n, grad), flat);
  return { ...out, shape: x.shape };
}

export function registerGelu(): void {
  if (!tf.getKernel(GELU, 'webgpu')) {
    tf.registerKernel({
      kernelName: GELU,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => runElementwise(backend as unknown as WebGpuBackendLike, [inputs.x as TensorInfo], false),
    });
    tf.registerKernel({
      kernelName: GELU_GRAD,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => runElementwise(backend as unknown as WebGpuBackendLike, [inputs.x as TensorInfo, inputs.dy as TensorInfo], true),
    });
  }
  if (!tf.getGradient(GELU)) {
    tf.registerGradient({
      kernelName: GELU,
      inputsToSave: ['x'],
      gradFunc: (dy, saved) => {
        const [x] = saved as tf.Tensor[];
        return { x: () => tf.engine().runKernel(GELU_GRAD, { x: x!, dy: dy as tf.Tensor }) as tf.Tensor };
      },
    });
  }
}
