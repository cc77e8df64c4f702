import { beforeAll, describe, expect, it } from 'vitest';
import { relativeError, tf } from '@tsformer/core';
import { Rope } from '@tsformer/positional';
import { DecoderLM } from '../decoder.js';
import {
  hfConfigToModelConfig,
  hfTensorMap,
  hfToStateDict,
  loadHfWeights,
  modelConfigToHfConfig,
  ourToHfName,
  hfToOurName,
  readHfConfig,
  stateDictToHf,
  stateDictToHfTensors,
  type HfConfig,
  type HostArray,
} from './index.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

// ------------------------------------------------------------------------------------------------
// Tiny HF checkpoints, written here from the HF layout (not from our name map)

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5; // uniform in [-0.5, 0.5)
  };
}

function rand(r: () => number, shape: number[], scale: number, offset = 0): HostArray {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = offset + scale * r();
  return { dtype: 'float32', shape, data };
}

interface Sizes {
  V: number;
  D: number;
  L: number;
  H: number;
  Hkv: number;
  hd: number;
  I: number;
}

function sizesOf(c: HfConfig): Sizes {
  const H = c.num_attention_heads as number;
  const D = c.hidden_size as number;
  return {
    V: c.vocab_size as number,
    D,
    L: c.num_hidden_layers as number,
    H,
    Hkv: (c.num_key_value_heads as number | undefined) ?? H,
    hd: (c.head_dim as number | undefined) ?? D / H,
    I: c.intermediate_size as number,
  };
}

/** HF tensors for a config: torch Linear weights [out, in], norms near 1. */
function hfCheckpoint(c: HfConfig, seed = 1): Map<string, HostArray> {
  const r = rng(seed);
  const { V, D, L, H, Hkv, hd, I } = sizesOf(c);
  const qkvBias = c.model_type === 'qwen2' || c.attention_bias === true;
  const oBias = c.attention_bias === true;
  const mlpBias = c.mlp_bias === true;
  const t = new Map<string, HostArray>();
  t.set('model.embed_tokens.weight', rand(r, [V, D], 2));
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    t.set(`${p}.input_layernorm.weight`, rand(r, [D], 0.4, 1));
    t.set(`${p}.self_attn.q_proj.weight`, rand(r, [H * hd, D], 1.2));
    t.set(`${p}.self_attn.k_proj.weight`, rand(r, [Hkv * hd, D], 1.2));
    t.set(`${p}.self_attn.v_proj.weight`, rand(r, [Hkv * hd, D], 0.8));
    t.set(`${p}.self_attn.o_proj.weight`, rand(r, [D, H * hd], 0.5));
    if (qkvBias) {
      t.set(`${p}.self_attn.q_proj.bias`, rand(r, [H * hd], 0.4));
      t.set(`${p}.self_attn.k_proj.bias`, rand(r, [Hkv * hd], 0.4));
      t.set(`${p}.self_attn.v_proj.bias`, rand(r, [Hkv * hd], 0.4));
    }
    if (oBias) t.set(`${p}.self_attn.o_proj.bias`, rand(r, [D], 0.4));
    t.set(`${p}.post_attention_layernorm.weight`, rand(r, [D], 0.4, 1));
    t.set(`${p}.mlp.gate_proj.weight`, rand(r, [I, D], 0.8));
    t.set(`${p}.mlp.up_proj.weight`, rand(r, [I, D], 0.8));
    t.set(`${p}.mlp.down_proj.weight`, rand(r, [D, I], 0.5));
    if (mlpBias) {
      t.set(`${p}.mlp.gate_proj.bias`, rand(r, [I], 0.4));
      t.set(`${p}.mlp.up_proj.bias`, rand(r, [I], 0.4));
      t.set(`${p}.mlp.down_proj.bias`, rand(r, [D], 0.4));
    }
  }
  t.set('model.norm.weight', rand(r, [D], 0.4, 1));
  if (c.tie_word_embeddings !== true) t.set('lm_head.weight', rand(r, [V, D], 1));
  return t;
}

// ------------------------------------------------------------------------------------------------
// Float64 reference of the HF Llama forward, straight from the HF tensors (modeling_llama semantics)

/** y[out] = W[out, in] x[in] (+ b) */
function linear(t: Map<string, HostArray>, name: string, x: Float64Array): Float64Array {
  const w = t.get(`${name}.weight`)!;
  const [O, In] = w.shape as [number, number];
  const b = t.get(`${name}.bias`);
  const y = new Float64Array(O);
  for (let o = 0; o < O; o++) {
    let s = b ? b.data[o]! : 0;
    for (let i = 0; i < In; i++) s += w.data[o * In + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: HostArray, eps: number): Float64Array {
  let ms = 0;
  for (const v of x) ms += v * v;
  const inv = 1 / Math.sqrt(ms / x.length + eps);
  return x.map((v, i) => v * inv * w.data[i]!);
}

const silu = (v: number) => v / (1 + Math.exp(-v));

/** rotate_half(x) = cat(-x2, x1); x * cos + rotate_half(x) * sin with cos/sin = cat(freqs, freqs). */
interface Llama3Hf {
  factor: number;
  low_freq_factor: number;
  high_freq_factor: number;
  original_max_position_embeddings: number;
}

/** HF `_compute_llama3_parameters` for one inverse frequency, by wavelength. */
function llama3Freq(f: number, c: Llama3Hf): number {
  const wavelen = (2 * Math.PI) / f;
  const lowWavelen = c.original_max_position_embeddings / c.low_freq_factor;
  const highWavelen = c.original_max_position_embeddings / c.high_freq_factor;
  if (wavelen < highWavelen) return f;
  if (wavelen > lowWavelen) return f / c.factor;
  const smooth = (c.original_max_position_embeddings / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
  return ((1 - smooth) * f) / c.factor + smooth * f;
}

function applyRotary(x: Float64Array, pos: number, hd: number, theta: number, linearFactor: number, llama3?: Llama3Hf): Float64Array {
  const half = hd / 2;
  const cos = new Float64Array(hd);
  const sin = new Float64Array(hd);
  for (let j = 0; j < hd; j++) {
    const i = j % half; // emb = cat(freqs, freqs)
    let invFreq = 1 / Math.pow(theta, (2 * i) / hd) / linearFactor; // HF inv_freq: 1 / base^(arange(0, dim, 2) / dim)
    if (llama3) invFreq = llama3Freq(invFreq, llama3);
    cos[j] = Math.cos(pos * invFreq);
    sin[j] = Math.sin(pos * invFreq);
  }
  const rotated = new Float64Array(hd);
  for (let j = 0; j < hd; j++) rotated[j] = j < half ? -x[j + half]! : x[j - half]!;
  return x.map((v, j) => v * cos[j]! + rotated[j]! * sin[j]!);
}

/** Logits [T, V] of one sequence, float64. `window`: key j visible from query i iff i - window < j <= i. */
function referenceLogits(c: HfConfig, t: Map<string, HostArray>, ids: number[]): Float64Array {
  const { V, D, L, H, Hkv, hd, I } = sizesOf(c);
  const eps = c.rms_norm_eps as number;
  const theta = (c.rope_theta as number | undefined) ?? 10000;
  const scaling = c.rope_scaling as { rope_type?: string; factor?: number } | null | undefined;
  const linearFactor = scaling?.rope_type === 'linear' ? scaling.factor! : 1;
  const llama3 = scaling?.rope_type === 'llama3' ? (scaling as unknown as Llama3Hf) : undefined;
  // mistral: every layer; qwen2: layers from max_window_layers on, when use_sliding_window
  const windowOf = (l: number): number => {
    if (c.model_type === 'mistral') return (c.sliding_window as number | null) ?? Infinity;
    if (c.model_type === 'qwen2' && c.use_sliding_window === true && l >= (c.max_window_layers as number)) return c.sliding_window as number;
    return Infinity;
  };
  const T = ids.length;
  const E = t.get('model.embed_tokens.weight')!;
  let xs: Float64Array[] = ids.map((id) => Float64Array.from(E.data.subarray(id * D, (id + 1) * D)));
  const nRep = H / Hkv;
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const window = windowOf(l);
    const hs = xs.map((x) => rmsNorm(x, t.get(`${p}.input_layernorm.weight`)!, eps));
    const q = hs.map((h) => linear(t, `${p}.self_attn.q_proj`, h)); // [T][H*hd]
    const k = hs.map((h) => linear(t, `${p}.self_attn.k_proj`, h)); // [T][Hkv*hd]
    const v = hs.map((h) => linear(t, `${p}.self_attn.v_proj`, h));
    const rot = (row: Float64Array, pos: number, n: number) =>
      Float64Array.from({ length: n * hd }, (_, j) => applyRotary(row.subarray(Math.floor(j / hd) * hd, Math.floor(j / hd) * hd + hd), pos, hd, theta, linearFactor, llama3)[j % hd]!);
    const qr = q.map((row, pos) => rot(row, pos, H));
    const kr = k.map((row, pos) => rot(row, pos, Hkv));
    const attnOut = xs.map((_, i) => {
      const o = new Float64Array(H * hd);
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / nRep); // repeat_kv: head h reads kv head h // n_rep
        const scores: number[] = [];
        const js: number[] = [];
        for (let j = 0; j <= i; j++) {
          if (i - j >= window) continue;
          let s = 0;
          for (let d = 0; d < hd; d++) s += qr[i]![h * hd + d]! * kr[j]![g * hd + d]!;
          scores.push(s / Math.sqrt(hd));
          js.push(j);
        }
        const mx = Math.max(...scores);
        const w = scores.map((s) => Math.exp(s - mx));
        const z = w.reduce((a, b) => a + b, 0);
        js.forEach((j, n) => {
          for (let d = 0; d < hd; d++) o[h * hd + d] = o[h * hd + d]! + (w[n]! / z) * v[j]![g * hd + d]!;
        });
      }
      return linear(t, `${p}.self_attn.o_proj`, o);
    });
    xs = xs.map((x, i) => x.map((val, d) => val + attnOut[i]![d]!));
    xs = xs.map((x) => {
      const h = rmsNorm(x, t.get(`${p}.post_attention_layernorm.weight`)!, eps);
      const gate = linear(t, `${p}.mlp.gate_proj`, h);
      const up = linear(t, `${p}.mlp.up_proj`, h);
      const y = linear(t, `${p}.mlp.down_proj`, Float64Array.from({ length: I }, (_, j) => silu(gate[j]!) * up[j]!));
      return x.map((val, d) => val + y[d]!);
    });
  }
  const head = t.get('lm_head.weight') ?? E; // tied: the embedding [V, D]
  const out = new Float64Array(T * V);
  xs.forEach((x, i) => {
    const h = rmsNorm(x, t.get('model.norm.weight')!, eps);
    for (let vv = 0; vv < V; vv++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += head.data[vv * D + d]! * h[d]!;
      out[i * V + vv] = s;
    }
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// Configs: SmolLM-style Llama (tied, GQA), Llama with biases (untied), Qwen2, Mistral

const smol: HfConfig = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 37,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  hidden_act: 'silu',
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  rope_scaling: null,
  tie_word_embeddings: true,
  attention_bias: false,
  attention_dropout: 0.0,
  mlp_bias: false,
  initializer_range: 0.02,
  bos_token_id: 1,
  eos_token_id: 2,
  torch_dtype: 'bfloat16',
  transformers_version: '4.46.0',
  use_cache: true,
  pretraining_tp: 1,
};
const llamaBiased: HfConfig = {
  ...smol,
  num_key_value_heads: 4,
  head_dim: 6, // != hidden / heads
  tie_word_embeddings: false,
  attention_bias: true,
  mlp_bias: true,
  rope_theta: 500.0,
  rope_scaling: { rope_type: 'linear', factor: 2.0 },
};
const qwen2: HfConfig = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  vocab_size: 41,
  hidden_size: 16,
  intermediate_size: 20,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 1,
  hidden_act: 'silu',
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  rope_scaling: null,
  tie_word_embeddings: true,
  use_sliding_window: false,
  sliding_window: 32768,
  max_window_layers: 21,
  attention_dropout: 0.0,
  torch_dtype: 'bfloat16',
};
const mistral: HfConfig = {
  architectures: ['MistralForCausalLM'],
  model_type: 'mistral',
  vocab_size: 33,
  hidden_size: 16,
  intermediate_size: 28,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  hidden_act: 'silu',
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 3,
  tie_word_embeddings: false,
  torch_dtype: 'float16',
};

/** Llama 3.1-style rope_scaling, shrunk so that it matters over 8 tokens: head dim 4 has pairs of
 *  wavelength 2 pi (2.55 turns over 16 positions: blended) and 200 pi (0.025 turns: divided by 8). */
const llama31: HfConfig = {
  ...smol,
  rope_theta: 10000.0,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16, rope_type: 'llama3' },
};

const IDS = [3, 17, 0, 29, 5, 11, 3, 8];

async function ourLogits(c: HfConfig, t: Map<string, HostArray>, ids = IDS): Promise<Float32Array> {
  const model = new DecoderLM(hfConfigToModelConfig(c), { seed: 99 }).eval();
  try {
    loadHfWeights(model, t, c);
    const idsT = tf.tensor2d([ids], [1, ids.length], 'int32');
    const { logits } = model.forward(idsT); // [1, T, V]
    const out = (await logits.data()) as Float32Array;
    tf.dispose([idsT, logits]);
    return out;
  } finally {
    model.dispose();
  }
}

// Published config.json files (values as released) and their published parameter counts
const llama32_1b: HfConfig = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.45.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};
const qwen25_05b: HfConfig = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.1',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

describe('published configs', () => {
  it.each([
    ['Llama-3.2-1B', llama32_1b, 1_235_814_400],
    ['Qwen2.5-0.5B', qwen25_05b, 494_032_768],
  ])('%s: every key understood, the published parameter count, the same config.json back', (_n, c, params) => {
    const spec = readHfConfig(c);
    expect(spec.ignored).toEqual([]);
    const count = hfTensorMap(spec)
      .filter((e) => !e.oursOnly)
      .reduce((n, e) => n + e.hfShape.reduce((a, b) => a * b, 1), 0);
    expect(count).toBe(params);
    expect(modelConfigToHfConfig(spec.model, { base: c })).toEqual(c);
  });
});

describe('config.json -> ModelConfig', () => {
  it('maps a SmolLM-style Llama (GQA, tied)', () => {
    const m = hfConfigToModelConfig(smol);
    expect(m).toMatchObject({
      vocabSize: 37,
      dModel: 16,
      nLayers: 2,
      maxSeqLen: 64,
      attention: { type: 'mha', numHeads: 4, numKvHeads: 2, bias: false, score: 'softmax' },
      positional: { type: 'rope', theta: 10000, layout: 'half' },
      norm: { type: 'rmsnorm', eps: 1e-5 },
      mlp: { type: 'swiglu', hidden: 24, bias: false },
      tieEmbeddings: true,
      initStd: 0.02,
    });
    expect((m.attention as { headDim?: number }).headDim).toBeUndefined();
    expect(m.positional).not.toHaveProperty('scaling');
  });

  it('maps head_dim, biases, untied head and linear rope scaling', () => {
    const m = hfConfigToModelConfig(llamaBiased);
    expect(m.attention).toMatchObject({ numHeads: 4, headDim: 6, bias: true });
    expect(m.attention).not.toHaveProperty('numKvHeads');
    expect(m.mlp).toMatchObject({ bias: true, hidden: 24 });
    expect(m.tieEmbeddings).toBe(false);
    expect(m.positional).toEqual({ type: 'rope', theta: 500, layout: 'half', scaling: { type: 'linear', factor: 2 } });
  });

  it('maps rope_scaling llama3', () => {
    expect(hfConfigToModelConfig(llama31).positional).toEqual({
      type: 'rope',
      theta: 10000,
      layout: 'half',
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 16 },
    });
  });

  it('maps rope_scaling dynamic and yarn (legacy `type` key too) and rope_parameters', () => {
    const dyn = hfConfigToModelConfig({ ...smol, rope_scaling: { type: 'dynamic', factor: 4 } });
    expect(dyn.positional).toMatchObject({ scaling: { type: 'dynamic', factor: 4, originalMaxPositions: 64 } });
    const yarn = hfConfigToModelConfig({ ...smol, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 16, beta_fast: 16 } });
    expect(yarn.positional).toMatchObject({ scaling: { type: 'yarn', factor: 4, originalMaxPositions: 16, betaFast: 16, betaSlow: 1, truncate: true } });
    const ds = hfConfigToModelConfig({ ...smol, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 16, mscale: 1, mscale_all_dim: 0.5 } });
    const g = (k: number) => 0.1 * k * Math.log(4) + 1;
    expect((ds.positional as { scaling: { attentionFactor: number } }).scaling.attentionFactor).toBeCloseTo(g(1) / g(0.5), 12);
    const { rope_theta: _t, rope_scaling: _s, ...rest } = smol;
    const v5 = hfConfigToModelConfig({ ...rest, rope_parameters: { rope_type: 'linear', rope_theta: 123, factor: 3 } });
    expect(v5.positional).toEqual({ type: 'rope', theta: 123, layout: 'half', scaling: { type: 'linear', factor: 3 } });
  });

  it('maps Qwen2 (q/k/v bias, window off) and its per-layer sliding window', () => {
    const m = readHfConfig(qwen2);
    expect(m.model.attention).toMatchObject({ bias: true, numKvHeads: 1 });
    expect(m.model.attention).not.toHaveProperty('window');
    expect(m.oBias).toBe(false);
    const windowed = hfConfigToModelConfig({ ...qwen2, num_hidden_layers: 4, use_sliding_window: true, sliding_window: 5, max_window_layers: 2 });
    expect(windowed.layers?.pattern).toEqual(['full', 'full', 'window', 'window']);
    expect(windowed.layers?.defs.window?.attention).toMatchObject({ window: 5 });
    expect(windowed.layers?.defs.full?.attention).not.toHaveProperty('window');
    const types = hfConfigToModelConfig({ ...qwen2, use_sliding_window: true, layer_types: ['sliding_attention', 'full_attention'], sliding_window: 7 });
    expect(types.layers?.pattern).toEqual(['window', 'full']);
    // without use_sliding_window HF drops the window, whatever layer_types says
    expect(hfConfigToModelConfig({ ...qwen2, layer_types: ['sliding_attention', 'full_attention'], sliding_window: 7 }).attention).not.toHaveProperty('window');
  });

  it('maps Mistral sliding_window to the window (null: none; absent: the class default 4096)', () => {
    expect(hfConfigToModelConfig(mistral).attention).toMatchObject({ window: 3, numKvHeads: 2 });
    expect(hfConfigToModelConfig({ ...mistral, sliding_window: null }).attention).not.toHaveProperty('window');
    const { sliding_window: _w, ...noWindow } = mistral;
    expect(hfConfigToModelConfig(noWindow).attention).toMatchObject({ window: 4096 });
  });

  it('lists keys it does not know instead of silently dropping them', () => {
    expect(readHfConfig({ ...smol, some_new_flag: 3 }).ignored).toEqual(['some_new_flag']);
    expect(readHfConfig(smol).ignored).toEqual([]);
    expect(readHfConfig({ ...smol, is_llama_config: true, rope_interleaved: false }).ignored).toEqual([]);
  });

  it.each([
    [{ ...smol, hidden_act: 'gelu_new' }, 'hidden_act: gelu_new'],
    [{ ...smol, rope_scaling: { type: 'longrope', factor: 2, short_factor: [1], long_factor: [1] } }, 'rope_scaling.type: longrope'],
    [{ ...smol, rope_scaling: { rope_type: 'llama3', factor: 8, high_freq_factor: 4, original_max_position_embeddings: 8192 } }, 'rope_scaling.low_freq_factor is missing (rope_type llama3)'],
    [{ ...smol, rope_scaling: { rope_type: 'su', factor: 2 } }, 'rope_scaling.rope_type: su is not supported'],
    [{ ...smol, rope_scaling: { rope_type: 'linear', factor: 2, low_freq_factor: 1 } }, 'rope_scaling.low_freq_factor: 1'],
    [{ ...smol, model_type: 'gpt2' }, 'model_type: gpt2'],
    [{ ...smol, architectures: ['LlamaForSequenceClassification'] }, 'architectures: ["LlamaForSequenceClassification"]'],
    [{ ...smol, partial_rotary_factor: 0.5 }, 'partial_rotary_factor: 0.5'],
    [{ ...smol, quantization_config: { quant_method: 'gptq' } }, 'quantization_config'],
    [{ ...smol, num_key_value_heads: 3 }, 'num_key_value_heads: 3'],
    [{ ...smol, hidden_size: undefined }, 'hidden_size is missing'],
    [{ ...qwen2, layer_types: ['full_attention', 'chunked_attention'] }, 'layer_types[1]: chunked_attention'],
  ])('fails naming the field: %#', (cfg, culprit) => {
    expect(() => hfConfigToModelConfig(cfg)).toThrow(culprit);
  });
});

describe('tensor names and layouts', () => {
  it('gives exactly the parameters of DecoderLM, with our shapes', () => {
    for (const c of [smol, llamaBiased, qwen2, mistral]) {
      const state = hfToStateDict(hfCheckpoint(c), c);
      const model = new DecoderLM(hfConfigToModelConfig(c));
      try {
        const expected = new Map(model.namedParameters().map(([n, p]) => [n, p.variable.shape]));
        expect([...state.keys()].sort()).toEqual([...expected.keys()].sort());
        for (const [n, t] of state) expect(t.shape, n).toEqual(expected.get(n));
      } finally {
        model.dispose();
      }
    }
  });

  it('names both ways, with the transpose of projections', () => {
    expect(hfToOurName(smol, 'model.layers.1.self_attn.k_proj.weight')).toBe('layers.1.attn.k_proj.weight');
    expect(hfToOurName(smol, 'model.layers.0.input_layernorm.weight')).toBe('layers.0.attn_norm.weight');
    expect(hfToOurName(smol, 'model.layers.0.post_attention_layernorm.weight')).toBe('layers.0.mlp_norm.weight');
    expect(ourToHfName(smol, 'embed.weight')).toBe('model.embed_tokens.weight');
    expect(ourToHfName(llamaBiased, 'lm_head.weight')).toBe('lm_head.weight');
    expect(ourToHfName(smol, 'lm_head.weight')).toBeUndefined(); // tied
    expect(ourToHfName(qwen2, 'layers.0.attn.o_proj.bias')).toBeUndefined(); // Qwen2 has none
    const hf = hfCheckpoint(llamaBiased);
    const ours = hfToStateDict(hf, llamaBiased);
    const w = hf.get('model.layers.0.self_attn.q_proj.weight')!; // [H*hd, D] = [24, 16]
    const o = ours.get('layers.0.attn.q_proj.weight')!; // [D, H*hd] = [16, 24]
    expect(o.shape).toEqual([16, 24]);
    expect(o.data[3 * 24 + 5]).toBe(w.data[5 * 16 + 3]);
    expect(ours.get('layers.0.attn.o_proj.bias')!.data).toEqual(hf.get('model.layers.0.self_attn.o_proj.bias')!.data);
  });

  it('round-trips HF tensors exactly (bytes), through host state and through a DecoderLM', async () => {
    for (const c of [smol, llamaBiased, qwen2, mistral]) {
      const hf = hfCheckpoint(c, 5);
      const back = stateDictToHfTensors(hfToStateDict(hf, c), c);
      expect([...back.keys()].sort()).toEqual([...hf.keys()].sort());
      for (const [n, t] of hf) {
        expect(back.get(n)!.shape, n).toEqual(t.shape);
        expect(Buffer.from(back.get(n)!.data.buffer).equals(Buffer.from(t.data.buffer)), n).toBe(true);
      }
      const model = new DecoderLM(hfConfigToModelConfig(c));
      try {
        loadHfWeights(model, hf, c);
        const viaModel = await stateDictToHf(model, c);
        for (const [n, t] of hf) expect(Buffer.from(viaModel.get(n)!.data.buffer).equals(Buffer.from(t.data.buffer)), n).toBe(true);
      } finally {
        model.dispose();
      }
    }
  });

  it('fails naming a missing tensor, a shape mismatch (both shapes), an unexpected tensor', () => {
    const hf = hfCheckpoint(smol);
    hf.delete('model.layers.1.mlp.up_proj.weight');
    hf.set('model.layers.0.self_attn.k_proj.weight', rand(rng(2), [16, 16], 1));
    hf.set('model.layers.0.self_attn.rotary_emb.inv_freq', rand(rng(2), [2], 1)); // old buffers are skipped
    hf.set('model.extra.weight', rand(rng(2), [3], 1));
    const err = (() => {
      try {
        hfToStateDict(hf, smol);
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    })();
    expect(err).toContain('tensor "model.layers.1.mlp.up_proj.weight" is missing (expected shape [24, 16]');
    expect(err).toContain('tensor "model.layers.0.self_attn.k_proj.weight": the checkpoint has shape [16, 16], config.json gives [8, 16]');
    expect(err).toContain('unexpected tensor "model.extra.weight"');
    expect(err).not.toContain('inv_freq');
  });

  it('accepts a tied lm_head.weight only as a copy of the embedding', () => {
    const hf = hfCheckpoint(smol);
    hf.set('lm_head.weight', { ...hf.get('model.embed_tokens.weight')!, data: hf.get('model.embed_tokens.weight')!.data.slice() });
    expect(() => hfToStateDict(hf, smol)).not.toThrow();
    hf.get('lm_head.weight')!.data[0]! += 1;
    expect(() => hfToStateDict(hf, smol)).toThrow('"lm_head.weight" differs from model.embed_tokens.weight');
  });

  it('refuses to export a non-zero o_proj bias as Qwen2, naming it', () => {
    const state = hfToStateDict(hfCheckpoint(qwen2), qwen2);
    state.get('layers.1.attn.o_proj.bias')!.data[2] = 0.5;
    expect(() => stateDictToHfTensors(state, qwen2)).toThrow('parameter "layers.1.attn.o_proj.bias" is not zero');
  });
});

describe('logits match a float64 reference of the HF forward', () => {
  it.each([
    ['SmolLM-style llama (GQA 4/2, tied)', smol],
    ['llama with q/k/v/o and MLP biases, head_dim 6, untied, linear rope scaling', llamaBiased],
    ['qwen2 (q/k/v bias, MQA, theta 1e6)', qwen2],
    ['mistral (sliding window 3 over 8 tokens, untied)', mistral],
    ['llama with llama3 rope scaling (one pair blended, one divided by 8)', llama31],
    ['qwen2 with a sliding window of 3 on layer 1 only', { ...qwen2, use_sliding_window: true, sliding_window: 3, max_window_layers: 1 }],
  ])('%s', async (_name, c) => {
    const hf = hfCheckpoint(c, 11);
    const ref = referenceLogits(c, hf, IDS);
    const ours = await ourLogits(c, hf);
    expect(relativeError(ours, ref)).toBeLessThan(1e-4);
  });

  it('detects a wrong rotary layout; the reference tells windows apart (the check can fail)', async () => {
    const hf = hfCheckpoint(smol, 11);
    const ref = referenceLogits(smol, hf, IDS);
    const interleaved = new DecoderLM({ ...hfConfigToModelConfig(smol), positional: { type: 'rope', theta: 10000, layout: 'interleaved' } }).eval();
    try {
      loadHfWeights(interleaved, hf, smol);
      const ids = tf.tensor2d([IDS], [1, IDS.length], 'int32');
      const { logits } = interleaved.forward(ids);
      expect(relativeError((await logits.data()) as Float32Array, ref)).toBeGreaterThan(1e-3);
      tf.dispose([ids, logits]);
    } finally {
      interleaved.dispose();
    }
    // the reference itself distinguishes windows: mistral with and without its window differ
    const mhf = hfCheckpoint(mistral, 11);
    expect(relativeError(referenceLogits({ ...mistral, sliding_window: null }, mhf, IDS), referenceLogits(mistral, mhf, IDS))).toBeGreaterThan(1e-3);
  });
});

describe('ModelConfig -> config.json', () => {
  it.each([
    ['smol', smol],
    ['llama biased', llamaBiased],
    ['qwen2', qwen2],
    ['mistral', mistral],
    ['qwen2 windowed', { ...qwen2, num_hidden_layers: 4, use_sliding_window: true, sliding_window: 5, max_window_layers: 2 }],
    ['yarn, legacy type key', { ...smol, rope_scaling: { type: 'yarn', factor: 4.0, original_max_position_embeddings: 16 } }],
    ['llama3', llama31],
  ])('import then export gives the same config.json (%s)', (_n, c) => {
    expect(modelConfigToHfConfig(hfConfigToModelConfig(c), { base: c })).toEqual(c);
  });

  it('without a base, writes a complete config that imports to the same model', () => {
    for (const c of [smol, llamaBiased, qwen2, mistral]) {
      const m = hfConfigToModelConfig(c);
      const out = modelConfigToHfConfig(m, { modelType: c.model_type as 'llama' });
      expect(out.model_type).toBe(c.model_type);
      expect(hfConfigToModelConfig(out)).toEqual(m);
    }
    const fresh = modelConfigToHfConfig({ vocabSize: 50, dModel: 32, nLayers: 2, maxSeqLen: 64, attention: { type: 'mha', numHeads: 4, window: 8 } });
    expect(fresh).toMatchObject({ model_type: 'mistral', sliding_window: 8, intermediate_size: 96, head_dim: 8, tie_word_embeddings: true });
  });

  it('writes ntk scaling (no HF type) as the raised rope_theta with the same frequencies', () => {
    const cfg = { vocabSize: 50, dModel: 32, nLayers: 2, maxSeqLen: 64, attention: { type: 'mha', numHeads: 2 }, positional: { type: 'rope', theta: 10000, scaling: { type: 'ntk', factor: 4 } } } as const;
    const out = modelConfigToHfConfig(cfg);
    expect(out.rope_scaling).toBeNull();
    expect(out.rope_theta).toBeCloseTo(10000 * 4 ** (16 / 14), 6);
    const back = hfConfigToModelConfig(out);
    const ours = new Rope({ headDim: 16, theta: 10000, scaling: { type: 'ntk', factor: 4 } });
    const theirs = new Rope({ headDim: 16, theta: (back.positional as { theta: number }).theta });
    expect(relativeError(theirs.invFreq, ours.invFreq)).toBeLessThan(1e-14);
  });

  it('writes a changed field over the base', () => {
    const m = hfConfigToModelConfig(smol);
    const out = modelConfigToHfConfig({ ...m, norm: { type: 'rmsnorm', eps: 1e-6 } }, { base: smol });
    expect(out.rms_norm_eps).toBe(1e-6);
  });

  it.each([
    [{ attention: { type: 'gla', numHeads: 4 } }, 'model.attention.type: gla'],
    [{ norm: { type: 'layernorm' } }, 'model.norm.type: layernorm'],
    [{ mlp: { type: 'gelu' } }, 'model.mlp.type: gelu'],
    [{ positional: { type: 'alibi' } }, 'model.positional.type: alibi'],
    [{ positional: { type: 'rope', layout: 'interleaved' } }, 'model.positional.layout: interleaved'],
    [{ attention: { type: 'mha', numHeads: 4, qkNorm: true } }, 'model.attention.qkNorm'],
  ])('fails naming what HF cannot express: %#', (over, culprit) => {
    const cfg = { vocabSize: 50, dModel: 32, nLayers: 2, maxSeqLen: 64, attention: { type: 'mha', numHeads: 4 }, ...over };
    expect(() => modelConfigToHfConfig(cfg as never)).toThrow(culprit);
  });
});
