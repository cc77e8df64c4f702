/**
 * Tensor names and layouts between Hugging Face Llama-family checkpoints and our DecoderLM:
 *
 *   model.embed_tokens.weight                        [V, D]        embed.weight                 [V, D]
 *   model.layers.N.input_layernorm.weight            [D]           layers.N.attn_norm.weight    [D]
 *   model.layers.N.self_attn.q_proj.weight           [H*hd, D]     layers.N.attn.q_proj.weight  [D, H*hd]   (transposed)
 *   model.layers.N.self_attn.{k,v}_proj.weight       [Hkv*hd, D]   layers.N.attn.{k,v}_proj.weight [D, Hkv*hd]
 *   model.layers.N.self_attn.o_proj.weight           [D, H*hd]     layers.N.attn.o_proj.weight  [H*hd, D]
 *   model.layers.N.self_attn.{q,k,v,o}_proj.bias     [out]         layers.N.attn.*_proj.bias    [out]
 *   model.layers.N.post_attention_layernorm.weight   [D]           layers.N.mlp_norm.weight     [D]
 *   model.layers.N.mlp.{gate,up}_proj.weight         [I, D]        layers.N.mlp.{gate,up}_proj.weight [D, I]
 *   model.layers.N.mlp.down_proj.weight              [D, I]        layers.N.mlp.down_proj.weight [I, D]
 *   model.norm.weight                                [D]           norm.weight                  [D]
 *   lm_head.weight (untied only)                     [V, D]        lm_head.weight               [D, V]
 *
 * torch's Linear stores [out, in] and computes x W^T; ours stores [in, out] and computes x W, so
 * every projection is transposed, exactly (no arithmetic). The rotary layout needs no permutation:
 * HF's rotate_half pairs dim i with i + hd/2, which is our `layout: half`. Qwen2 has no o_proj bias
 * while our shell's one `bias` flag covers q, k, v and o: import gives it zeros, export requires zeros.
 * Pure host code (Float32Array), no file access.
 */
import { TsformerError, tf } from '@tsformer/core';
import type { DecoderLM } from '../decoder.js';
import { mlpHidden } from '../config.js';
import { readHfConfig, type HfModelSpec } from './config.js';

/** A tensor in host memory; the same shape as `HostTensor` of @tsformer/checkpoint. */
export interface HostArray {
  dtype: 'float32' | 'int32';
  /** Dimensions, row-major. */
  shape: number[];
  data: Float32Array | Int32Array;
}

/** One row of the name map. */
export interface HfTensorEntry {
  /** The Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  hf: string;
  /** Our dotted parameter name, e.g. `layers.0.attn.q_proj.weight`. */
  ours: string;
  /** HF shape ([out, in] for projections). */
  hfShape: number[];
  /** Whether ours is the transpose (projections and the untied head). */
  transpose: boolean;
  /** Present in our model only (Qwen2's o_proj bias): zeros on import, must be zeros on export. */
  oursOnly?: boolean;
}

/** Every tensor of a model of this spec, in HF order. */
export function hfTensorMap(spec: HfModelSpec): HfTensorEntry[] {
  const m = spec.model;
  const a = m.attention ?? Object.values(m.layers!.defs)[0]!.attention;
  if (a.type !== 'mha') throw new TsformerError(`hfTensorMap: attention type ${a.type} has no Hugging Face layout`, 'config');
  const D = m.dModel;
  const hd = a.headDim ?? D / a.numHeads;
  const q = a.numHeads * hd; // H * hd
  const kv = (a.numKvHeads ?? a.numHeads) * hd; // Hkv * hd
  const I = mlpHidden(m);
  const out: HfTensorEntry[] = [{ hf: 'model.embed_tokens.weight', ours: 'embed.weight', hfShape: [m.vocabSize, D], transpose: false }];
  const linear = (hfPrefix: string, ours: string, outF: number, inF: number, bias: boolean, oursOnlyBias = false) => {
    out.push({ hf: `${hfPrefix}.weight`, ours: `${ours}.weight`, hfShape: [outF, inF], transpose: true });
    if (bias) out.push({ hf: `${hfPrefix}.bias`, ours: `${ours}.bias`, hfShape: [outF], transpose: false, ...(oursOnlyBias ? { oursOnly: true } : {}) });
  };
  for (let i = 0; i < m.nLayers; i++) {
    const h = `model.layers.${i}`;
    const o = `layers.${i}`;
    out.push({ hf: `${h}.input_layernorm.weight`, ours: `${o}.attn_norm.weight`, hfShape: [D], transpose: false });
    linear(`${h}.self_attn.q_proj`, `${o}.attn.q_proj`, q, D, a.bias);
    linear(`${h}.self_attn.k_proj`, `${o}.attn.k_proj`, kv, D, a.bias);
    linear(`${h}.self_attn.v_proj`, `${o}.attn.v_proj`, kv, D, a.bias);
    linear(`${h}.self_attn.o_proj`, `${o}.attn.o_proj`, D, q, a.bias, a.bias && !spec.oBias);
    out.push({ hf: `${h}.post_attention_layernorm.weight`, ours: `${o}.mlp_norm.weight`, hfShape: [D], transpose: false });
    linear(`${h}.mlp.gate_proj`, `${o}.mlp.gate_proj`, I, D, m.mlp.bias);
    linear(`${h}.mlp.up_proj`, `${o}.mlp.up_proj`, I, D, m.mlp.bias);
    linear(`${h}.mlp.down_proj`, `${o}.mlp.down_proj`, D, I, m.mlp.bias);
  }
  out.push({ hf: 'model.norm.weight', ours: 'norm.weight', hfShape: [D], transpose: false });
  if (!m.tieEmbeddings) out.push({ hf: 'lm_head.weight', ours: 'lm_head.weight', hfShape: [m.vocabSize, D], transpose: true });
  return out;
}

/** HF name -> our name for a config.json (throws on configs we cannot represent). */
export function hfToOurName(hfConfig: unknown, hfName: string): string | undefined {
  return hfTensorMap(readHfConfig(hfConfig)).find((e) => e.hf === hfName)?.ours;
}

/** Our name -> HF name for a config.json. */
export function ourToHfName(hfConfig: unknown, ourName: string): string | undefined {
  return hfTensorMap(readHfConfig(hfConfig)).find((e) => e.ours === ourName && !e.oursOnly)?.hf;
}

/** [R, C] -> [C, R], row-major. */
function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[src + c]!;
  }
  return out;
}

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

function sameData(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

/** Old checkpoints carry the rotary tables as buffers; they are recomputed, not loaded. */
const ROTARY_BUFFER = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/**
 * HF tensors (by HF name) -> our state dict (by dotted name), checked against `hfConfig`: every
 * tensor present with its HF shape, no unexpected ones. All problems are reported at once, each
 * naming the tensor (and both shapes). A tied model may carry `lm_head.weight` only as an exact copy
 * of the embedding. The returned arrays are new (the input is not modified or aliased for transposes).
 */
export function hfToStateDict(tensors: ReadonlyMap<string, HostArray>, hfConfig: unknown): Map<string, HostArray> {
  const spec = readHfConfig(hfConfig);
  const map = hfTensorMap(spec);
  const problems: string[] = [];
  const out = new Map<string, HostArray>();
  const known = new Set<string>();
  for (const e of map) {
    if (e.oursOnly) {
      out.set(e.ours, { dtype: 'float32', shape: [...e.hfShape], data: new Float32Array(e.hfShape[0]!) });
      continue;
    }
    known.add(e.hf);
    const t = tensors.get(e.hf);
    if (!t) {
      problems.push(`tensor "${e.hf}" is missing (expected shape ${shapeStr(e.hfShape)}, for ${e.ours})`);
      continue;
    }
    if (t.dtype !== 'float32') {
      problems.push(`tensor "${e.hf}" has dtype ${t.dtype}, expected a float tensor`);
      continue;
    }
    if (!sameShape(t.shape, e.hfShape)) {
      problems.push(`tensor "${e.hf}": the checkpoint has shape ${shapeStr(t.shape)}, config.json gives ${shapeStr(e.hfShape)}`);
      continue;
    }
    const data = t.data as Float32Array;
    if (e.transpose) {
      const [rows, cols] = e.hfShape as [number, number]; // [out, in]
      out.set(e.ours, { dtype: 'float32', shape: [cols, rows], data: transpose2d(data, rows, cols) }); // [in, out]
    } else {
      out.set(e.ours, { dtype: 'float32', shape: [...e.hfShape], data: data.slice() });
    }
  }
  for (const [name, t] of tensors) {
    if (known.has(name) || ROTARY_BUFFER.test(name)) continue;
    if (name === 'lm_head.weight' && spec.model.tieEmbeddings) {
      const embed = tensors.get('model.embed_tokens.weight');
      if (embed && sameShape(t.shape, embed.shape) && sameData(t.data, embed.data)) continue;
      problems.push('tensor "lm_head.weight" differs from model.embed_tokens.weight, but config.json has tie_word_embeddings: true');
      continue;
    }
    problems.push(`unexpected tensor "${name}" ${shapeStr(t.shape)} (not part of a ${spec.modelType} model with this config.json)`);
  }
  if (problems.length > 0) throw new TsformerError(`Hugging Face checkpoint does not match its config.json:\n  ${problems.join('\n  ')}`, 'checkpoint');
  return out;
}

/**
 * Our state dict (host arrays by dotted name) -> HF tensors by HF name, for the HF config that
 * `modelConfigToHfConfig` gave (or the one imported). Every parameter must be present with our
 * shape; Qwen2's o_proj biases must be zero (HF has none). Problems are reported at once.
 */
export function stateDictToHfTensors(state: ReadonlyMap<string, HostArray>, hfConfig: unknown): Map<string, HostArray> {
  const spec = readHfConfig(hfConfig);
  const problems: string[] = [];
  const out = new Map<string, HostArray>();
  const known = new Set<string>();
  for (const e of hfTensorMap(spec)) {
    known.add(e.ours);
    const oursShape = e.transpose ? [e.hfShape[1]!, e.hfShape[0]!] : e.hfShape;
    const t = state.get(e.ours);
    if (!t) {
      problems.push(`parameter "${e.ours}" is missing (expected shape ${shapeStr(oursShape)}, for ${e.hf})`);
      continue;
    }
    if (t.dtype !== 'float32') {
      problems.push(`parameter "${e.ours}" has dtype ${t.dtype}, expected float32`);
      continue;
    }
    if (!sameShape(t.shape, oursShape)) {
      problems.push(`parameter "${e.ours}": the state has shape ${shapeStr(t.shape)}, the config gives ${shapeStr(oursShape)}`);
      continue;
    }
    const data = t.data as Float32Array;
    if (e.oursOnly) {
      if (data.some((x) => x !== 0)) problems.push(`parameter "${e.ours}" is not zero, but ${spec.modelType} has no ${e.hf} (bias on q, k, v only)`);
      continue;
    }
    if (e.transpose) {
      const [rows, cols] = oursShape as [number, number]; // [in, out]
      out.set(e.hf, { dtype: 'float32', shape: [...e.hfShape], data: transpose2d(data, rows, cols) }); // [out, in]
    } else {
      out.set(e.hf, { dtype: 'float32', shape: [...e.hfShape], data: data.slice() });
    }
  }
  for (const [name, t] of state) if (!known.has(name)) problems.push(`parameter "${name}" ${shapeStr(t.shape)} has no Hugging Face name`);
  if (problems.length > 0) throw new TsformerError(`cannot export to Hugging Face layout:\n  ${problems.join('\n  ')}`, 'checkpoint');
  return out;
}

/** A model's parameters as HF tensors (downloaded with `await data()`, never blocking). */
export async function stateDictToHf(model: DecoderLM, hfConfig: unknown): Promise<Map<string, HostArray>> {
  const state = new Map<string, HostArray>();
  for (const [name, v] of model.stateDict()) {
    if (v.dtype !== 'float32') throw new TsformerError(`parameter "${name}" has dtype ${v.dtype}, expected float32`, 'checkpoint');
    state.set(name, { dtype: 'float32', shape: [...v.shape], data: ((await v.data()) as Float32Array).slice() });
  }
  return stateDictToHfTensors(state, hfConfig);
}

/** Loads HF tensors into a model built from the same config.json (`hfConfigToModelConfig`). */
export function loadHfWeights(model: DecoderLM, tensors: ReadonlyMap<string, HostArray>, hfConfig: unknown): void {
  const state = hfToStateDict(tensors, hfConfig);
  const made = new Map<string, tf.Tensor>();
  try {
    for (const [name, t] of state) made.set(name, tf.tensor(t.data, t.shape, t.dtype));
    model.loadStateDict(made);
  } finally {
    tf.dispose([...made.values()]);
  }
}
