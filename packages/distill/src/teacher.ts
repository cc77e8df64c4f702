import { TsformerError, tf } from '@tsformer/core';
import { SoftmaxAttention, scoreAttention, type Attention, type ScoreSpec } from '@tsformer/attention';
import type { PositionalEncoding } from '@tsformer/positional';

/**
 * The teacher side of attention transfer: what a softmax layer computes per head before its output
 * projection, written from the layer's own modules (projections, q/k norms) and the positional
 * encoding the model gave it. Tests check o_proj(gate * heads) against the layer's own forward.
 */

/** The teacher layer as a SoftmaxAttention, or an error naming what it is. */
export function asSoftmaxTeacher(attn: Attention, layer?: number): SoftmaxAttention {
  const where = layer === undefined ? 'the teacher layer' : `teacher layer ${layer}`;
  if (!(attn instanceof SoftmaxAttention)) throw new TsformerError(`${where} is "${attn.type}" attention; distillation needs a softmax (mha) teacher layer`, 'config');
  if (attn.score !== 'softmax') throw new TsformerError(`${where} uses score: ${attn.score}; only softmax teachers are supported`, 'config');
  if (attn.logitScale) throw new TsformerError(`${where} uses logitScale, which distillation does not support`, 'config');
  return attn;
}

/** k or v [B, S, Hkv, X] -> [B, S, H, X] with query head h reading kv head floor(h / G). */
export function expandKvHeads(t: tf.Tensor, numHeads: number): tf.Tensor {
  const [B, S, Hkv, X] = t.shape as [number, number, number, number];
  if (Hkv === numHeads) return t.clone();
  const G = numHeads / Hkv;
  return tf.tidy(() =>
    t
      .reshape([B * S, Hkv, 1, X]) // [B*S, Hkv, 1, X]
      .tile([1, 1, G, 1]) // [B*S, Hkv, G, X]
      .reshape([B, S, numHeads, X]), // [B, S, H, X]
  );
}

/** q [B, T, H, D], k and v [B, T, Hkv, D] of a softmax layer: projections, q/k norms, rotation. Call inside a tidy. */
export function softmaxProject(layer: SoftmaxAttention, positional: PositionalEncoding, x: tf.Tensor, positions: Int32Array): { q: tf.Tensor; k: tf.Tensor; v: tf.Tensor } {
  const [B, T] = x.shape as [number, number, number];
  const H = layer.numHeads;
  const Hkv = layer.numKvHeads;
  const D = layer.headDim;
  let q = layer.q_proj.forward(x).reshape([B, T, H, D]); // [B, T, H, D]
  let k = layer.k_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
  const v = layer.v_proj.forward(x).reshape([B, T, Hkv, D]); // [B, T, Hkv, D]
  if (layer.q_norm && layer.k_norm) {
    q = layer.q_norm.forward(q);
    k = layer.k_norm.forward(k);
  }
  if (positional.rotate) {
    q = positional.rotate(q, positions);
    k = positional.rotate(k, positions);
  }
  return { q, k, v };
}

function teacherSpec(layer: SoftmaxAttention, positional: PositionalEncoding): ScoreSpec {
  return {
    score: 'softmax',
    sigmoidBias: 0,
    window: layer.window,
    scoreBias: positional.scoreBias ? (qp, kp) => positional.scoreBias!(layer.numHeads, qp, kp) : undefined,
  };
}

/** The teacher's per-head attention output before the output gate and o_proj: x [B, T, dModel] -> [B, T, H, D]. No dropout. */
export function softmaxHeads(layer: SoftmaxAttention, positional: PositionalEncoding, x: tf.Tensor, positions: Int32Array): tf.Tensor {
  asSoftmaxTeacher(layer);
  return tf.tidy(() => {
    const { q, k, v } = softmaxProject(layer, positional, x, positions);
    return scoreAttention(q, k, v, positions, positions, teacherSpec(layer, positional)); // [B, T, H, D]
  });
}

/** The teacher's attention weights [B, H, T, T] (causal softmax, its window and score bias applied). Dense. */
export function softmaxWeights(layer: SoftmaxAttention, positional: PositionalEncoding, x: tf.Tensor, positions: Int32Array): tf.Tensor {
  asSoftmaxTeacher(layer);
  return tf.tidy(() => {
    const [B, T] = x.shape as [number, number, number];
    const H = layer.numHeads;
    const D = layer.headDim;
    const { q, k } = softmaxProject(layer, positional, x, positions);
    const kh = expandKvHeads(k, H).transpose([0, 2, 1, 3]); // [B, H, T, D]
    let s = tf.matMul(q.transpose([0, 2, 1, 3]), kh, false, true).mul(1 / Math.sqrt(D)); // [B, H, T, T]
    const spec = teacherSpec(layer, positional);
    if (spec.scoreBias) s = s.add(spec.scoreBias(positions, positions)); // + [H, T, T]
    const mask = new Float32Array(T * T);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        const visible = positions[j]! <= positions[i]! && (layer.window === undefined || positions[j]! > positions[i]! - layer.window);
        if (!visible) mask[i * T + j] = -1e9;
      }
    }
    return tf.softmax(s.add(tf.tensor(mask, [T, T])), -1).reshape([B, H, T, T]); // [B, H, T, T]
  });
}

/** o [B, T, H, D] -> o_proj(o [* sigmoid(x W_g)]) [B, T, dModel]: the rest of a softmax-shell layer after its heads. */
export function softmaxOutput(layer: { o_proj: { forward(t: tf.Tensor): tf.Tensor }; g_proj?: { forward(t: tf.Tensor): tf.Tensor } }, x: tf.Tensor, o: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const [B, T, H, D] = o.shape as [number, number, number, number];
    let merged = o.reshape([B, T, H * D]); // [B, T, H*D]
    if (layer.g_proj) merged = merged.mul(tf.sigmoid(layer.g_proj.forward(x)));
    return layer.o_proj.forward(merged); // [B, T, dModel]
  });
}
