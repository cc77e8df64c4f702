import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { KernelProgram, kernelActive, run, type UniformData, type WebGpuBackendLike } from './program.js';

/**
 * Fused AdamW update (decoupled weight decay), elementwise over a parameter:
 *   m' = b1 m + (1 - b1) g;   v' = b2 v + (1 - b2) g^2
 *   p' = p - lr (m' / c1 / (sqrt(v' / c2) + eps) + wd p),   c1 = 1 - b1^t, c2 = 1 - b2^t
 * Three passes (m', v', p'), 13 floats of memory traffic per element against about 40 for the
 * chain of tfjs ops. Returns new tensors; the caller assigns them to its variables.
 */
export const ADAMW = 'TsfAdamW';

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay for this parameter (0 for norms, biases, embeddings). */
  weightDecay: number;
  /** The update's number, from 1 (bias correction). */
  step: number;
}

export interface AdamWResult {
  p: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
}

/** Composite definition (any backend; the oracle): the same math as @tsformer/train's AdamW. */
export function adamwUpdateComposite(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamWHyper): AdamWResult {
  const c1 = 1 - Math.pow(h.beta1, h.step);
  const c2 = 1 - Math.pow(h.beta2, h.step);
  return tf.tidy(() => {
    const m2 = m.mul(h.beta1).add(g.mul(1 - h.beta1));
    const v2 = v.mul(h.beta2).add(g.square().mul(1 - h.beta2));
    let u = m2.div(c1).div(v2.div(c2).sqrt().add(h.eps));
    if (h.weightDecay > 0) u = u.add(p.mul(h.weightDecay));
    return { p: p.sub(u.mul(h.lr)), m: m2, v: v2 };
  });
}

/** One AdamW update: the fused kernel on webgpu, the composite elsewhere. */
export function adamwUpdate(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamWHyper): AdamWResult {
  for (const [n, t] of [['m', m], ['v', v], ['g', g]] as const) {
    if (!tf.util.arraysEqual(t.shape, p.shape)) throw new Error(`adamwUpdate: ${n} [${t.shape}] for a parameter [${p.shape}]`);
  }
  if (!kernelActive(ADAMW)) return adamwUpdateComposite(p, m, v, g, h);
  const [p2, m2, v2] = tf.engine().runKernel(ADAMW, { p, m, v, g }, { ...h } as unknown as NamedAttrMap) as tf.Tensor[];
  return { p: p2!, m: m2!, v: v2! };
}

function program(which: 'm' | 'v' | 'p', n: number): KernelProgram {
  const threads = 256;
  const body = {
    m: `result[i] = uniforms.b1 * A[i] + (1.0 - uniforms.b1) * G[i];`,
    v: `let g = G[i]; result[i] = uniforms.b2 * A[i] + (1.0 - uniforms.b2) * g * g;`,
    p: `let p = A[i];
        result[i] = p - uniforms.lr * (M[i] * uniforms.ic1 / (sqrt(V[i] * uniforms.ic2) + uniforms.eps) + uniforms.wd * p);`,
  }[which];
  return new KernelProgram({
    key: `tsf_adamw_${which}_${n}`,
    outputShape: [n],
    inputs: which === 'p' ? ['A', 'M', 'V'] : ['A', 'G'],
    // hyperparameters as uniforms: a new learning rate or step needs no new pipeline
    uniforms: 'lr: f32, b1: f32, b2: f32, eps: f32, wd: f32, ic1: f32, ic2: f32,',
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      fn kernel() {
        let i = wgIndex() * ${threads}u + localIndex;
        if (i >= ${n}u) { return; }
        ${body}
      }`,
  });
}

export function registerAdamW(): void {
  if (tf.getKernel(ADAMW, 'webgpu')) return;
  tf.registerKernel({
    kernelName: ADAMW,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const be = backend as unknown as WebGpuBackendLike;
      const { p, m, v, g } = inputs as Record<string, TensorInfo>;
      const h = attrs as unknown as AdamWHyper;
      const n = tf.util.sizeFromShape(p!.shape);
      const flat = (t: TensorInfo) => ({ ...t, shape: [n] });
      const c1 = 1 - Math.pow(h.beta1, h.step);
      const c2 = 1 - Math.pow(h.beta2, h.step);
      const u: UniformData = [h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, 1 / c1, 1 / c2].map((x) => ({ type: 'float32', data: [x] }));
      const m2 = run(be, program('m', n), [flat(m!), flat(g!)], u);
      const v2 = run(be, program('v', n), [flat(v!), flat(g!)], u);
      const p2 = run(be, program('p', n), [flat(p!), m2, v2], u);
      return [p2, m2, v2].map((t) => ({ ...t, shape: p!.shape }));
    },
  });
}
