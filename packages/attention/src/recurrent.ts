import { tf } from '@tsformer/core';
import type { ShortConv1d } from '@tsformer/layers';
import type { AttentionCache } from './types.js';

/**
 * The short-convolution tails of q, k and v that a recurrent layer carries between decode calls:
 * [B, convSize-1, channels] each.
 */
export interface ConvStates {
  readonly q: tf.Tensor;
  readonly k: tf.Tensor;
  readonly v: tf.Tensor;
}

/**
 * The decoding cache of the linear-attention layers (GLA, DeltaNet, Gated DeltaNet): a state of
 * constant size whatever the number of tokens absorbed.
 */
export interface RecurrentCache extends AttentionCache {
  /** The recurrent state after the absorbed tokens, [B, H, K, V]; null before the first token. */
  readonly state: tf.Tensor | null;
  /** The short-convolution tails; null before the first token or without short convolutions. */
  readonly conv: ConvStates | null;
}

/** The q, k, v short convolutions of a layer (all three or none). */
export interface QkvConvs {
  q?: ShortConv1d;
  k?: ShortConv1d;
  v?: ShortConv1d;
}

/**
 * Runs the q, k, v short convolutions over [B, T, C] projections, continuing from `prev` when
 * given; returns the convolved tensors and the next tails. Without convolutions, returns the
 * inputs unchanged and no tails. Call inside a tidy.
 */
export function convolveQkv(
  convs: QkvConvs,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  prev?: ConvStates,
): { q: tf.Tensor; k: tf.Tensor; v: tf.Tensor; next?: ConvStates } {
  if (!convs.q || !convs.k || !convs.v) return { q, k, v };
  const cq = convs.q.forward(q, prev?.q);
  const ck = convs.k.forward(k, prev?.k);
  const cv = convs.v.forward(v, prev?.v);
  return { q: cq.y, k: ck.y, v: cv.y, next: { q: cq.state, k: ck.state, v: cv.state } };
}

/**
 * The cache after a call: keeps `state` and the conv tails out of the enclosing tidy and lists
 * them as the cache's tensors. Call inside the tidy that made them.
 */
export function keepRecurrentCache<K extends string>(
  kind: K,
  length: number,
  state: tf.Tensor,
  conv: ConvStates | undefined,
): RecurrentCache & { readonly kind: K } {
  tf.keep(state);
  if (conv) [conv.q, conv.k, conv.v].forEach((t) => tf.keep(t));
  return {
    kind,
    length,
    state,
    conv: conv ?? null,
    tensors: conv ? [state, conv.q, conv.k, conv.v] : [state],
  };
}
