import { tf } from './tf.js';

/**
 * A dispatch registry for fused kernels. Packages low in the dependency order (layers, positional,
 * attention, train) cannot import a kernel package that depends on them; instead a kernel package
 * (e.g. `@tsformer/kernels-webgpu`) fills this registry in from its explicit `register...()` call,
 * and the layers ask for an implementation at each call:
 *
 *   return fused('rmsNorm')?.(x, weight, eps) ?? composite(x, weight, eps);
 *
 * `fused(name)` returns an implementation only when one was registered for the backend now active;
 * an implementation returns `undefined` for inputs it does not take (the caller's composite runs).
 * Every backend without a registered implementation runs the composite path unchanged.
 */
export interface FusedOps {
  /**
   * Causal attention with positions 0..T-1 for queries and keys, no dropout, no cache:
   * q [B, T, H, D], k and v [B, T, Hkv, D] -> o [B, T, H, D], scores scaled by 1/sqrt(D).
   */
  attention: (
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    opts: {
      score: 'softmax' | 'sigmoid';
      /** Added to each score before the sigmoid (sigmoid only). */
      sigmoidBias: number;
      /** Query i sees keys i - window < j <= i; undefined: full causal. */
      window?: number;
      /** ALiBi: score -= slope_h (i - j), one slope per query head. */
      alibiSlopes?: ArrayLike<number>;
    },
  ) => tf.Tensor | undefined;
  /** The sum over all xs of sum(x^2), as one scalar (no gradient: global-norm clipping). */
  sumSquares: (xs: tf.Tensor[]) => tf.Scalar | undefined;
  /** (x - mean) / sqrt(var + eps) * weight (+ bias) over the last axis (LayerNorm). */
  layerNorm: (x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, eps: number) => tf.Tensor | undefined;
  /** GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise. */
  gelu: (x: tf.Tensor) => tf.Tensor | undefined;
  /** x / sqrt(mean(x^2) + eps) * weight over the last axis, times silu(gate) when gated. */
  rmsNorm: (x: tf.Tensor, weight: tf.Tensor, eps: number, gate?: tf.Tensor) => tf.Tensor | undefined;
  /** Rotary embedding of x [B, T, H, D] with tables cos, sin [T, R/2] (R <= D; the rest passes through). */
  rope: (x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, layout: 'half' | 'interleaved') => tf.Tensor | undefined;
  /** Mean sparse cross-entropy of logits [..., V] against int32 targets [...], differentiable in logits. */
  sparseCrossEntropy: (logits: tf.Tensor, targets: tf.Tensor) => tf.Scalar | undefined;
  /** One AdamW step (decoupled weight decay) over many parameters; returns the new p, m, v of each, in order. */
  adamw: (
    items: Array<{ p: tf.Tensor; m: tf.Tensor; v: tf.Tensor; g: tf.Tensor; weightDecay: number }>,
    h: { lr: number; beta1: number; beta2: number; eps: number; step: number },
    /**
     * Clipping and a finite guard in the update: g is scaled by min(1, maxNorm / (norm + 1e-6))
     * (maxNorm <= 0: unscaled), and p, m, v come back unchanged when the norm or the loss
     * (normAndLoss [2]) is not finite.
     */
    guard?: { normAndLoss: tf.Tensor; maxNorm: number },
  ) => Array<{ p: tf.Tensor; m: tf.Tensor; v: tf.Tensor }> | undefined;
  /**
   * Chunked gated linear attention (`@tsformer/ops` `glaChunk`): q, k, g [B, T, H, K] (g: log
   * gates <= 0), v [B, T, H, V] -> o [B, T, H, V], with S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
   * and o_t = S_t^T (scale q_t); `initialState` [B, H, K, V] (default zeros); the state after the
   * last token when `outputFinalState`. `chunkSize` is the composite's; a kernel may use its own.
   * Differentiable in q, k, v, g and the initial state.
   */
  glaChunk: (
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    g: tf.Tensor,
    opts: { scale: number; chunkSize: number; initialState?: tf.Tensor; outputFinalState: boolean },
  ) => { o: tf.Tensor; finalState?: tf.Tensor } | undefined;
  /**
   * Chunked DeltaNet (`g` undefined) and Gated DeltaNet (`@tsformer/ops` `deltaChunk`,
   * `gatedDeltaChunk`): q, k [B, T, H, K] (L2-normalized by the layer), v [B, T, H, V], beta [B, T, H],
   * g [B, T, H] (log decay <= 0) -> o [B, T, H, V] and the state after the last token [B, H, K, V],
   * with S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T and o_t = scale S_t^T q_t;
   * `initialState` [B, H, K, V] (default zeros). `chunkSize` is the composite's; a kernel may use its
   * own. Differentiable in q, k, v, beta, g and the initial state, through o and the final state.
   */
  deltaChunk: (
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    beta: tf.Tensor,
    g: tf.Tensor | undefined,
    opts: { scale: number; chunkSize: number; initialState?: tf.Tensor },
  ) => { o: tf.Tensor; finalState: tf.Tensor } | undefined;
}

export type FusedName = keyof FusedOps;

const registry = new Map<string, Map<FusedName, FusedOps[FusedName]>>();

/** Registers `impl` as the fused form of `name` on `backend` (default `webgpu`); replaces an earlier one. */
export function registerFused<K extends FusedName>(name: K, impl: FusedOps[K], backend = 'webgpu'): void {
  let ops = registry.get(backend);
  if (!ops) registry.set(backend, (ops = new Map()));
  ops.set(name, impl);
}

/** Removes the fused form of `name` on `backend` (tests; a kernel package never needs it). */
export function unregisterFused(name: FusedName, backend = 'webgpu'): void {
  registry.get(backend)?.delete(name);
}

/** The fused form of `name` registered for the active backend, or undefined (then run the composite). */
export function fused<K extends FusedName>(name: K): FusedOps[K] | undefined {
  if (registry.size === 0) return undefined;
  return registry.get(tf.getBackend())?.get(name) as FusedOps[K] | undefined;
}
