import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';
import { f32, kernelActive, runMultiOutput, type MultiOutputProgram, type WebGpuBackendLike } from './program.js';

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
  const [u] = adamwUpdateMany([{ p, m, v, g, weightDecay: h.weightDecay }], h, guard);
  return u!;
}

/** One parameter of `adamwUpdateMany`: its tensors and its decoupled weight decay. */
export interface AdamWItem {
  p: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
  g: tf.Tensor;
  weightDecay: number;
}

/**
 * One AdamW update of many parameters with the same step: on webgpu one dispatch per parameter
 * (p', m' and v' written together), the step's learning rate, bias corrections and guard read
 * from one small device tensor made once for all of them; the composite elsewhere.
 */
export function adamwUpdateMany(items: AdamWItem[], h: Omit<AdamWHyper, 'weightDecay'>, guard?: AdamWGuard): AdamWResult[] {
  for (const it of items) {
    for (const [n, t] of [['m', it.m], ['v', it.v], ['g', it.g]] as const) {
      if (!tf.util.arraysEqual(t.shape, it.p.shape)) throw new Error(`adamwUpdate: ${n} [${t.shape}] for a parameter [${it.p.shape}]`);
    }
  }
  if (guard && !tf.util.arraysEqual(guard.normAndLoss.shape, [2])) throw new Error(`adamwUpdate: guard.normAndLoss [${guard.normAndLoss.shape}], expected [2]`);
  if (!kernelActive(ADAMW)) return items.map((it) => adamwUpdateComposite(it.p, it.m, it.v, it.g, { ...h, weightDecay: it.weightDecay }, guard));
  const c1 = 1 - Math.pow(h.beta1, h.step);
  const c2 = 1 - Math.pow(h.beta2, h.step);
  return tf.tidy(() => {
    // [norm, loss, lr, 1/c1, 1/c2]
    const host = tf.tensor1d([h.lr, 1 / c1, 1 / c2]);
    const s = tf.concat([guard ? guard.normAndLoss : tf.zeros([2]), host]);
    return items.map((it) => {
      const attrs = { beta1: h.beta1, beta2: h.beta2, eps: h.eps, weightDecay: it.weightDecay, guarded: guard !== undefined, maxNorm: guard?.maxNorm ?? 0 };
      const [p2, m2, v2] = tf.engine().runKernel(ADAMW, { p: it.p, m: it.m, v: it.v, g: it.g, s }, attrs as unknown as NamedAttrMap) as tf.Tensor[];
      return { p: p2!, m: m2!, v: v2! };
    });
  });
}

interface AdamWAttrs {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  guarded: boolean;
  maxNorm: number;
}

/**
 * p', m', v' in one pass: 7 floats of memory traffic per element (the chain of tfjs ops: about 40).
 * S = [norm, loss, lr, 1/c1, 1/c2]; the betas, eps, weight decay and clip norm are baked in (they
 * do not change between steps, so no step compiles a new pipeline).
 */
function program(n: number, a: AdamWAttrs): MultiOutputProgram {
  const threads = 256;
  return {
    key: `tsf_adamw_${n}_${a.beta1}_${a.beta2}_${a.eps}_${a.weightDecay}_${a.guarded}_${a.maxNorm}`,
    inputs: ['P', 'M', 'V', 'G', 'S'],
    outputs: [
      { name: 'P2', shape: [n] },
      { name: 'M2', shape: [n] },
      { name: 'V2', shape: [n] },
    ],
    threads,
    numGroups: Math.ceil(n / threads),
    body: `
      const B1 = ${f32(a.beta1)}; const B2 = ${f32(a.beta2)}; const EPS = ${f32(a.eps)}; const WD = ${f32(a.weightDecay)};
      // finite by the exponent bits (NaN and inf comparisons may be folded away by shader compilers)
      fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
      fn kernel(wg: u32, tid: u32) {
        let i = wg * ${threads}u + tid;
        if (i >= ${n}u) { return; }
        let p = P[i]; let m = M[i]; let v = V[i];
        var clip = 1.0;
        ${
          a.guarded
            ? `// a non-finite norm or loss leaves the parameter and its moments as they were
        if (!finite(S[0]) || !finite(S[1])) { P2[i] = p; M2[i] = m; V2[i] = v; return; }
        ${a.maxNorm > 0 ? `clip = min(1.0, ${f32(a.maxNorm)} / (S[0] + 1e-6));` : ''}`
            : ''
        }
        let g = G[i] * clip;
        let m2 = B1 * m + (1.0 - B1) * g;
        let v2 = B2 * v + (1.0 - B2) * g * g;
        P2[i] = p - S[2] * (m2 * S[3] / (sqrt(v2 * S[4]) + EPS) + WD * p);
        M2[i] = m2;
        V2[i] = v2;
      }`,
  };
}

export function registerAdamW(): void {
  if (tf.getKernel(ADAMW, 'webgpu')) return;
  tf.registerKernel({
    kernelName: ADAMW,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const be = backend as unknown as WebGpuBackendLike;
      const { p, m, v, g, s } = inputs as Record<string, TensorInfo>;
      const n = tf.util.sizeFromShape(p!.shape);
      const flat = (t: TensorInfo) => ({ ...t, shape: [n] });
      const outs = runMultiOutput(be, program(n, attrs as unknown as AdamWAttrs), [flat(p!), flat(m!), flat(v!), flat(g!), s!]);
      return outs.map((t) => ({ ...t, shape: p!.shape }));
    },
  });
}
