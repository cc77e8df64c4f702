import { TsformerError, tf, type Rng } from '@tsformer/core';
import {
  DeltaNetAttention,
  GlaAttention,
  attentionConfigSchema,
  createAttention,
  deltaNetAttentionSchema,
  gatedDeltaNetAttentionSchema,
  glaAttentionSchema,
  type Attention,
} from '@tsformer/attention';
import type { GatedRMSNorm, Linear, RMSNorm, ShortConv1d } from '@tsformer/layers';
import { deltaChunk, gatedDeltaChunk, glaChunk } from '@tsformer/ops';
import { noPositional } from '@tsformer/positional';
import { z } from 'zod';
import { asSoftmaxTeacher, expandKvHeads } from './teacher.js';

/**
 * Linear students from a softmax teacher: a registered linear attention (GLA, DeltaNet, Gated
 * DeltaNet) whose q/k/v/o projections start as the teacher's.
 *
 * Head matching: the student gets the teacher's number of query heads H and per-head key and value
 * widths K = V = the teacher's head dim D (GLA: expandK = expandV = H*D / dModel; DeltaNet:
 * headDim = D, expandV = 1). With grouped-query attention (Hkv < H), each query head's key and
 * value columns are those of its kv head (the teacher's k_proj/v_proj columns repeated H/Hkv
 * times). What cannot carry over fails with the reason: biases on the teacher projections (the
 * linear layers have none) and a GLA width dModel * expandK that is not a whole number. The rest of
 * the student (gates, norms, beta, short convolutions) keeps its own init, except that short
 * convolutions start as the identity by default (`identityConv`), so q/k/v start as
 * silu(x W_teacher). The teacher's RoPE, q/k norms and output gate do not carry over: these
 * layers take no positional encoding, and stage 1 trains the parts that differ.
 */
export const glaStudentSchema = glaAttentionSchema.omit({ numHeads: true, expandK: true, expandV: true }).extend({
  /** Short convolutions (when on) start as the identity (last tap 1). Default true. */
  identityConv: z.boolean().default(true),
});
export const deltaNetStudentSchema = deltaNetAttentionSchema.omit({ numHeads: true, headDim: true, expandV: true }).extend({
  /** Short convolutions start as the identity (last tap 1). Default true. */
  identityConv: z.boolean().default(true),
});
export const gatedDeltaNetStudentSchema = gatedDeltaNetAttentionSchema.omit({ numHeads: true, headDim: true, expandV: true }).extend({
  /** Short convolutions start as the identity (last tap 1). Default true. */
  identityConv: z.boolean().default(true),
});
export const linearStudentSchema = z.discriminatedUnion('type', [glaStudentSchema, deltaNetStudentSchema, gatedDeltaNetStudentSchema]);
export type LinearStudentConfig = z.infer<typeof linearStudentSchema>;
export type LinearStudentConfigInput = z.input<typeof linearStudentSchema>;

export type LinearStudent = GlaAttention | DeltaNetAttention;

/** Builds the student layer for `teacher` (a softmax layer) and copies the projections in. */
export function linearStudentFromTeacher(
  teacher: Attention,
  cfgInput: LinearStudentConfigInput,
  deps: { rng: Rng; contextLength: number; outStd?: number },
): LinearStudent {
  const t = asSoftmaxTeacher(teacher);
  const cfg = linearStudentSchema.parse(cfgInput);
  const dModel = t.q_proj.inFeatures;
  const H = t.numHeads;
  const D = t.headDim;
  for (const [name, lin] of [['q_proj', t.q_proj], ['k_proj', t.k_proj], ['v_proj', t.v_proj], ['o_proj', t.o_proj]] as const) {
    if (lin.bias) throw new TsformerError(`${cfg.type} student: the teacher's ${name} has a bias, which ${cfg.type} projections do not have`, 'config');
  }
  const { identityConv, ...rest } = cfg;
  let attnCfg: unknown;
  if (rest.type === 'gla') {
    const expand = (H * D) / dModel;
    if (!Number.isInteger(dModel * expand)) {
      throw new TsformerError(`gla student: H*D = ${H * D} is not dModel (${dModel}) times a representable expandK; the teacher's head layout cannot be matched`, 'config');
    }
    attnCfg = { ...rest, numHeads: H, expandK: expand, expandV: expand };
  } else {
    attnCfg = { ...rest, numHeads: H, headDim: D, expandV: 1 };
  }
  const student = createAttention(attentionConfigSchema.parse(attnCfg), { dModel, positional: noPositional, rng: deps.rng, contextLength: deps.contextLength, outStd: deps.outStd }) as LinearStudent;
  if (student.headKDim !== D || student.headVDim !== D || student.numHeads !== H) {
    throw new TsformerError(`${cfg.type} student: got heads ${student.numHeads} x (K ${student.headKDim}, V ${student.headVDim}), expected ${H} x ${D}`, 'shape');
  }
  tf.tidy(() => {
    const expandColumns = (w: tf.Tensor) =>
      expandKvHeads(w.reshape([1, dModel, t.numKvHeads, D]), H) // [1, dModel, H, D]
        .reshape([dModel, H * D]); // [dModel, H*D]
    student.q_proj.weight.assign(t.q_proj.weight);
    student.k_proj.weight.assign(expandColumns(t.k_proj.weight));
    student.v_proj.weight.assign(expandColumns(t.v_proj.weight));
    student.o_proj.weight.assign(t.o_proj.weight);
    if (identityConv) {
      for (const conv of [student.q_conv1d, student.k_conv1d, student.v_conv1d]) if (conv) setIdentityConv(conv);
    }
  });
  return student;
}

/** A short convolution that passes its input through: weight [k, C] = 0 except the last tap = 1 (bias 0). */
function setIdentityConv(conv: ShortConv1d): void {
  const k = conv.kernelSize;
  const w = new Float32Array(k * conv.channels);
  w.fill(1, (k - 1) * conv.channels);
  conv.weight.assign(tf.tensor(w, [k, conv.channels]));
  if (conv.bias) conv.bias.assign(tf.zerosLike(conv.bias));
}

/** The projections stage 2 adapts and stage 1 keeps frozen, by name under the layer. */
export const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;

/** Whether `attn` is one of the linear student classes. */
export function isLinearStudent(attn: Attention): attn is LinearStudent {
  return attn instanceof GlaAttention || attn instanceof DeltaNetAttention;
}

/**
 * A linear student's per-head output before o_proj (after its output norm/gate): x [B, T, dModel]
 * -> [B, T, H, V]. No cache (the chunked forms from a zero state), the same computation as the
 * layer's own forward minus the output projection.
 */
export function linearStudentHeads(layer: LinearStudent, x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const [B, T] = x.shape as [number, number, number];
    const H = layer.numHeads;
    const V = layer.headVDim;
    if (layer instanceof GlaAttention) {
      const p = layer.project(x);
      const { o } = glaChunk(p.q, p.k, p.v, p.g, { chunkSize: layer.chunkSize }); // [B, T, H, V]
      const gate = layer.g_proj.forward(x).reshape([B, T, H, V]); // [B, T, H, V]
      return layer.g_norm.forward(o, gate);
    }
    const p = layer.project(x);
    const opts = { chunkSize: layer.chunkSize };
    const r = p.g ? gatedDeltaChunk(p.q, p.k, p.v, p.beta, p.g, opts) : deltaChunk(p.q, p.k, p.v, p.beta, opts);
    if (layer.g_proj) {
      const gate = layer.g_proj.forward(x).reshape([B, T, H, V]); // [B, T, H, V]
      return (layer.o_norm as GatedRMSNorm).forward(r.o, gate);
    }
    return (layer.o_norm as RMSNorm).forward(r.o);
  });
}

/** The projection Linears of a linear student (q, k, v, o). */
export function linearStudentProjections(layer: LinearStudent): Linear[] {
  return [layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj];
}
