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

/**
 * Global-norm clipping and a finite-step guard folded into the update: the gradient is scaled by
 * min(1, maxNorm / (norm + 1e-6)) (maxNorm <= 0: not scaled), and when `norm` or `loss` is NaN or
 * infinite, p, m and v come back unchanged. The trainer can then enqueue the update before it
 * reads the loss back, and still leave the weights untouched by a non-finite step.
 */
export interface AdamWGuard {
  /** [2]: the pre-clip global gradient norm and the step's loss. */
  normAndLoss: tf.Tensor;
  maxNorm: number;
}

/** Composite definition (any backend; the oracle): the same math as @tsformer/train's AdamW. */
export function adamwUpdateComposite(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamWHyper, guard?: AdamWGuard): AdamWResult {
  if (guard) {
    return tf.tidy(() => {
      const [norm, loss] = tf.unstack(guard.normAndLoss) as [tf.Scalar, tf.Scalar];
      const ok = tf.logicalAnd(tf.isFinite(norm), tf.isFinite(loss));
      const s = guard.maxNorm > 0 ? tf.minimum(1, tf.div(guard.maxNorm, norm.add(1e-6))) : tf.scalar(1);
      // a non-finite step: scale 0 keeps the arithmetic finite, then the old values are selected
      const u = adamwUpdateComposite(p, m, v, g.mul(tf.where(ok, s, tf.zerosLike(s))), h);
      return { p: tf.where(ok, u.p, p), m: tf.where(ok, u.m, m), v: tf.where(ok, u.v, v) };
    });
  }
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
export function adamwUpdate(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, h: AdamWHyper, guard?: AdamWGuard): AdamWResult {
  for (const [n, t] of [['m', m], ['v', v], ['g', g]] as const) {
    if (!tf.util.arraysEqual(t.shape, p.shape)) throw new Error(`adamwUpdate: ${n} [${t.shape}] for a parameter [${p.shape}]`);
  }
  if (guard && !tf.util.arraysEqual(guard.normAndLoss.shape, [2])) throw new Error(`adamwUpdate: guard.normAndLoss [${guard.normAndLoss.shape}], expected [2]`);
  if (!kernelActive(ADAMW)) return adamwUpdateComposite(p, m, v, g, h, guard);
  const inputs: Record<string, tf.Tensor> = guard ? { p, m, v, g, guard: guard.normAndLoss } : { p, m, v, g };
  const attrs = { ...h, guarded: guard !== undefined, maxNorm: guard?.maxNorm ?? 0 };
  const [p2, m2, v2] = tf.engine().runKernel(ADAMW, inputs, attrs as unknown as NamedAttrMap) as tf.Tensor[];
  return { p: p2!, m: m2!, v: v2! };
}

function program(which: 'm' | 'v' | 'p', n: number, guarded: boolean): KernelProgram {
  const threads = 256;
  // guarded: the gradient scaled by the clip factor, and nothing changes when norm or loss is not finite
  const g = guarded ? 'G[i] * clip.x' : 'G[i]';
  const body = {
    m: `result[i] = uniforms.b1 * A[i] + (1.0 - uniforms.b1) * ${g};`,
    v: `let g = ${g}; result[i] = uniforms.b2 * A[i] + (1.0 - uniforms.b2) * g * g;`,
    p: `let p = A[i];
        result[i] = p - uniforms.lr * (M[i] * uniforms.ic1 / (sqrt(V[i] * uniforms.ic2) + uniforms.eps) + uniforms.wd * p);`,
  }[which];
  const guard = guarded
    ? `let clip = clipFactor();
        if (clip.y == 0.0) { result[i] = A[i]; return; }`
    : '';
  return new KernelProgram({
    key: `tsf_adamw_${which}_${n}_${guarded}`,
    outputShape: [n],
    inputs: [...(which === 'p' ? ['A', 'M', 'V'] : ['A', 'G']), ...(guarded ? ['GS'] : [])],
    // hyperparameters as uniforms: a new learning rate or step needs no new pipeline
    uniforms: 'lr: f32, b1: f32, b2: f32, eps: f32, wd: f32, ic1: f32, ic2: f32, maxNorm: f32,',
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      ${
        guarded
          ? `// finite by the exponent bits (NaN and inf comparisons may be folded away by shader compilers)
      fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
      // (clip factor, 1) when the step is finite, else (0, 0)
      fn clipFactor() -> vec2<f32> {
        let norm = GS[0];
        if (!finite(norm) || !finite(GS[1])) { return vec2<f32>(0.0, 0.0); }
        if (uniforms.maxNorm > 0.0) { return vec2<f32>(min(1.0, uniforms.maxNorm / (norm + 1e-6)), 1.0); }
        return vec2<f32>(1.0, 1.0);
      }`
          : ''
      }
      fn kernel() {
        let i = wgIndex() * ${threads}u + localIndex;
        if (i >= ${n}u) { return; }
        ${guard}
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
      const { p, m, v, g, guard } = inputs as Record<string, TensorInfo>;
      const h = attrs as unknown as AdamWHyper & { guarded: boolean; maxNorm: number };
      const guarded = Boolean(h.guarded);
      const n = tf.util.sizeFromShape(p!.shape);
      const flat = (t: TensorInfo) => ({ ...t, shape: [n] });
      const c1 = 1 - Math.pow(h.beta1, h.step);
      const c2 = 1 - Math.pow(h.beta2, h.step);
      const u: UniformData = [h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, 1 / c1, 1 / c2, h.maxNorm ?? 0].map((x) => ({ type: 'float32', data: [x] }));
      const gs = guarded ? [guard!] : [];
      const m2 = run(be, program('m', n, guarded), [flat(m!), flat(g!), ...gs], u);
      const v2 = run(be, program('v', n, guarded), [flat(v!), flat(g!), ...gs], u);
      const p2 = run(be, program('p', n, guarded), [flat(p!), m2, v2, ...gs], u);
      return [p2, m2, v2].map((t) => ({ ...t, shape: p!.shape }));
    },
  });
}
