/**
 * Hugging Face `config.json` of the Llama family (Llama 2/3, Mistral, Qwen2, SmolLM) to our
 * `ModelConfig` and back. Pure: no file access, safe in a browser.
 *
 * A field we cannot represent fails with its name and value (`hidden_act: gelu_new`,
 * `rope_scaling.rope_type: longrope`, `model_type: gpt2`). A field we do not know is listed in
 * `ignored` (the caller prints it) rather than failing, since transformers writes many harmless
 * bookkeeping keys; the ones known to change the computation are checked.
 */
import { TsformerError } from '@tsformer/core';
import type { AttentionConfig } from '@tsformer/attention';
import { ropeScalingSchema, type PositionalConfig, type RopeScalingInput } from '@tsformer/positional';
import { layerSpecs, mlpHidden, modelConfigSchema, type ModelConfig, type ModelConfigInput } from '../config.js';

/** The HF model types we import and export. */
export const HF_MODEL_TYPES = ['llama', 'mistral', 'qwen2'] as const;
export type HfModelType = (typeof HF_MODEL_TYPES)[number];

/** A `config.json` object: JSON values by key. */
export type HfConfig = Record<string, unknown>;

const ARCHITECTURE: Record<HfModelType, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

/**
 * Defaults of the transformers config classes (LlamaConfig, MistralConfig, Qwen2Config) for the
 * fields we read, used when config.json leaves one out. The sizes have no default here: a
 * config.json without them is an error, not a 7B model.
 */
const DEFAULTS: Record<HfModelType, HfConfig> = {
  llama: {
    hidden_act: 'silu',
    max_position_embeddings: 2048,
    initializer_range: 0.02,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    rope_theta: 10000,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    head_dim: null,
    num_key_value_heads: null,
  },
  mistral: {
    hidden_act: 'silu',
    max_position_embeddings: 4096 * 32,
    initializer_range: 0.02,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    rope_theta: 10000,
    rope_scaling: null,
    sliding_window: 4096,
    attention_dropout: 0,
    head_dim: null,
    num_key_value_heads: 8,
  },
  qwen2: {
    hidden_act: 'silu',
    max_position_embeddings: 32768,
    initializer_range: 0.02,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    rope_theta: 10000,
    rope_scaling: null,
    use_sliding_window: false,
    sliding_window: 4096,
    max_window_layers: 28,
    attention_dropout: 0,
    num_key_value_heads: 32,
  },
};

/** Keys that never change the computation (bookkeeping, generation defaults, token ids). */
const HARMLESS = new Set([
  '_name_or_path',
  'architectures',
  'model_type',
  'transformers_version',
  'torch_dtype',
  'dtype',
  'bos_token_id',
  'eos_token_id',
  'pad_token_id',
  'use_cache',
  'pretraining_tp', // tensor-parallel slicing of the same products
  'initializer_range', // -> initStd (training only)
  'tokenizer_class',
  'output_attentions',
  'output_hidden_states',
  'return_dict',
  // nanotron leftovers in SmolLM configs that transformers' Llama does not read (it always rotates halves)
  'is_llama_config',
  'rope_interleaved',
]);

/** Keys that would change the model and that nothing here represents: their presence fails. */
const UNSUPPORTED_PRESENT = ['quantization_config', 'auto_map', 'num_experts', 'num_local_experts', 'qk_norm', 'use_qk_norm'];

/** What `readHfConfig` returns. */
export interface HfModelSpec {
  modelType: HfModelType;
  /** Our model config (validated, defaults filled). */
  model: ModelConfig;
  /** Whether the HF model has `o_proj.bias` (Llama with attention_bias). Qwen2 has q/k/v biases only. */
  oBias: boolean;
  /** Keys of config.json that were not used (unknown to us); the caller should say so. */
  ignored: string[];
}

function fail(msg: string): TsformerError {
  return new TsformerError(`config.json: ${msg}`, 'config');
}

function show(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** The object as a plain JSON object, or an error naming what it is. */
function asObject(json: unknown, what: string): HfConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw fail(`${what} is ${show(json)}, expected a JSON object`);
  return json as HfConfig;
}

/** A reader of one config: each accessor names the key in its error and marks it used. */
class Fields {
  readonly used = new Set<string>();
  constructor(
    readonly raw: HfConfig,
    readonly defaults: HfConfig,
  ) {}

  get(key: string): unknown {
    this.used.add(key);
    return Object.hasOwn(this.raw, key) ? this.raw[key] : this.defaults[key];
  }

  has(key: string): boolean {
    return Object.hasOwn(this.raw, key) && this.raw[key] !== null;
  }

  int(key: string, opts: { required?: boolean; min?: number } = {}): number | undefined {
    const v = this.get(key);
    if (v === undefined || v === null) {
      if (opts.required) throw fail(`${key} is missing`);
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (opts.min ?? 1)) throw fail(`${key}: ${show(v)} is not an integer >= ${opts.min ?? 1}`);
    return v;
  }

  num(key: string): number {
    const v = this.get(key);
    if (typeof v !== 'number' || !Number.isFinite(v)) throw fail(`${key}: ${show(v)} is not a number`);
    return v;
  }

  bool(key: string): boolean {
    const v = this.get(key);
    if (typeof v !== 'boolean') throw fail(`${key}: ${show(v)} is not true or false`);
    return v;
  }
}

const ROPE_KEYS: Record<string, readonly string[]> = {
  default: [],
  linear: ['factor'],
  dynamic: ['factor', 'original_max_position_embeddings'],
  yarn: ['factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'attention_factor', 'mscale', 'mscale_all_dim', 'truncate'],
  llama3: ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'],
};

/** YaRN's mscale g(s, k) = 0.1 k ln s + 1 (1 for s <= 1), as HF's `get_mscale`. */
function yarnMscale(factor: number, k: number): number {
  return factor <= 1 ? 1 : 0.1 * k * Math.log(factor) + 1;
}

/**
 * `rope_scaling` (or the `rope_parameters` of newer transformers; `where` is that key) to our
 * scaling, or undefined for none. `maxPositions` is the top-level max_position_embeddings.
 */
function readRopeScaling(raw: unknown, where: string, maxPositions: number): RopeScalingInput | undefined {
  if (raw === undefined || raw === null) return undefined;
  const s = asObject(raw, where);
  const typeKey = Object.hasOwn(s, 'rope_type') ? 'rope_type' : 'type';
  const type = s[typeKey] ?? 'default';
  if (typeof type !== 'string' || !Object.hasOwn(ROPE_KEYS, type)) {
    throw fail(`${where}.${typeKey}: ${show(type)} is not supported (supported: ${Object.keys(ROPE_KEYS).join(', ')})`);
  }
  // rope_theta and partial_rotary_factor live here in `rope_parameters`; both are read by the caller
  const allowed = new Set(['rope_type', 'type', 'rope_theta', 'partial_rotary_factor', ...ROPE_KEYS[type]!]);
  for (const key of Object.keys(s)) {
    if (!allowed.has(key)) throw fail(`${where}.${key}: ${show(s[key])} is not supported with ${typeKey} ${type}`);
  }
  const num = (key: string, positive = true): number | undefined => {
    const v = s[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || (positive && v <= 0)) throw fail(`${where}.${key}: ${show(v)} is not a positive number`);
    return v;
  };
  const original = num('original_max_position_embeddings');
  if (original !== undefined && !Number.isInteger(original)) throw fail(`${where}.original_max_position_embeddings: ${original} is not an integer`);
  switch (type) {
    case 'default':
      return undefined;
    case 'linear': {
      const factor = num('factor');
      if (factor === undefined) throw fail(`${where}.factor is missing (${typeKey} linear)`);
      return { type: 'linear', factor };
    }
    case 'dynamic': {
      const factor = num('factor');
      if (factor === undefined) throw fail(`${where}.factor is missing (${typeKey} dynamic)`);
      return { type: 'dynamic', factor, originalMaxPositions: original ?? maxPositions };
    }
    case 'yarn': {
      const originalMaxPositions = original ?? maxPositions;
      const factor = num('factor') ?? (original !== undefined ? maxPositions / original : undefined);
      if (factor === undefined) throw fail(`${where}.factor is missing (${typeKey} yarn)`);
      const mscale = num('mscale', false);
      const mscaleAll = num('mscale_all_dim', false);
      let attentionFactor = num('attention_factor');
      if (attentionFactor === undefined && mscale && mscaleAll) attentionFactor = yarnMscale(factor, mscale) / yarnMscale(factor, mscaleAll);
      const truncate = s.truncate;
      if (truncate !== undefined && typeof truncate !== 'boolean') throw fail(`${where}.truncate: ${show(truncate)} is not true or false`);
      return {
        type: 'yarn',
        factor,
        originalMaxPositions,
        ...(num('beta_fast') !== undefined ? { betaFast: num('beta_fast') } : {}),
        ...(num('beta_slow') !== undefined ? { betaSlow: num('beta_slow') } : {}),
        ...(attentionFactor !== undefined ? { attentionFactor } : {}),
        ...(truncate !== undefined ? { truncate } : {}),
      };
    }
    case 'llama3': {
      // HF reads all four keys without defaults
      const need = (key: string): number => {
        const v = num(key);
        if (v === undefined) throw fail(`${where}.${key} is missing (${typeKey} llama3)`);
        return v;
      };
      const factor = need('factor');
      const lowFreqFactor = need('low_freq_factor');
      const highFreqFactor = need('high_freq_factor');
      need('original_max_position_embeddings');
      return { type: 'llama3', factor, originalMaxPositions: original!, lowFreqFactor, highFreqFactor };
    }
  }
  return undefined;
}

/** The scaling an HF object means, defaults filled (to compare two spellings). */
function resolvedScaling(raw: unknown, where: string, maxPositions: number): unknown {
  const s = readRopeScaling(raw, where, maxPositions);
  return s === undefined ? undefined : ropeScalingSchema.parse(s);
}

/** Which layers of a Qwen2 model use the sliding window: HF's `layer_types`, else layers >= max_window_layers. */
function qwen2WindowedLayers(f: Fields, nLayers: number): boolean[] {
  const useWindow = f.bool('use_sliding_window');
  const window = f.get('sliding_window');
  const maxWindowLayers = f.int('max_window_layers', { min: 0 });
  let types: boolean[] | undefined;
  if (f.has('layer_types')) {
    const raw = f.get('layer_types');
    if (!Array.isArray(raw) || raw.length !== nLayers) throw fail(`layer_types: expected a list of ${nLayers} entries, got ${show(raw)}`);
    types = raw.map((t, i) => {
      if (t === 'full_attention') return false;
      if (t === 'sliding_attention') return true;
      throw fail(`layer_types[${i}]: ${show(t)} is not supported (full_attention or sliding_attention)`);
    });
  }
  // HF: sliding_window is None unless use_sliding_window, and a layer without a window attends fully
  if (!useWindow || window === null || window === undefined) return Array.from({ length: nLayers }, () => false);
  return types ?? Array.from({ length: nLayers }, (_, i) => i >= (maxWindowLayers ?? 0));
}

/**
 * Reads a Llama-family config.json: our model config, the HF tensor layout details, and the keys
 * that were not used. Throws a TsformerError naming the first field we cannot represent.
 */
export function readHfConfig(json: unknown): HfModelSpec {
  const raw = asObject(json, 'the file');
  const modelType = raw.model_type;
  if (modelType === undefined) throw fail('model_type is missing (expected one of llama, mistral, qwen2)');
  if (typeof modelType !== 'string' || !(HF_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw fail(`model_type: ${show(modelType)} is not supported (supported: ${HF_MODEL_TYPES.join(', ')})`);
  }
  const type = modelType as HfModelType;
  const f = new Fields(raw, DEFAULTS[type]);
  f.used.add('model_type');

  const archs = f.get('architectures');
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length !== 1 || archs[0] !== ARCHITECTURE[type]) {
      throw fail(`architectures: ${show(archs)} is not supported (expected ["${ARCHITECTURE[type]}"] for model_type ${type})`);
    }
  }
  for (const key of UNSUPPORTED_PRESENT) {
    if (f.has(key)) throw fail(`${key}: ${show(raw[key])} is not supported`);
  }

  const vocabSize = f.int('vocab_size', { required: true })!;
  const dModel = f.int('hidden_size', { required: true })!;
  const nLayers = f.int('num_hidden_layers', { required: true })!;
  const numHeads = f.int('num_attention_heads', { required: true })!;
  const hidden = f.int('intermediate_size', { required: true })!;
  const numKvHeads = f.int('num_key_value_heads') ?? numHeads;
  if (numHeads % numKvHeads !== 0) throw fail(`num_key_value_heads: ${numKvHeads} does not divide num_attention_heads (${numHeads})`);
  const headDim = f.int('head_dim') ?? Math.floor(dModel / numHeads); // HF: hidden_size // num_attention_heads
  const act = f.get('hidden_act');
  if (act !== 'silu' && act !== 'swish') throw fail(`hidden_act: ${show(act)} is not supported (only silu, the SwiGLU MLP)`);
  const eps = f.num('rms_norm_eps');
  const maxSeqLen = f.int('max_position_embeddings', { required: true })!;
  const tie = f.bool('tie_word_embeddings');
  const attnDropout = f.num('attention_dropout');
  const initStd = f.num('initializer_range');

  // rope: newer transformers write `rope_parameters: { rope_type, rope_theta, ... }` instead
  let theta: number;
  let scaling: RopeScalingInput | undefined;
  let rotary: unknown;
  if (f.has('rope_parameters')) {
    const p = asObject(f.get('rope_parameters'), 'rope_parameters');
    if (typeof p.rope_theta !== 'number' || !(p.rope_theta > 0)) throw fail(`rope_parameters.rope_theta: ${show(p.rope_theta)} is not a positive number`);
    theta = p.rope_theta;
    scaling = readRopeScaling(p, 'rope_parameters', maxSeqLen);
    rotary = p.partial_rotary_factor;
  } else {
    theta = f.num('rope_theta');
    if (!(theta > 0)) throw fail(`rope_theta: ${theta} is not a positive number`);
    scaling = readRopeScaling(f.get('rope_scaling'), 'rope_scaling', maxSeqLen);
  }
  rotary ??= f.get('partial_rotary_factor');
  if (rotary !== undefined && rotary !== null && rotary !== 1) {
    throw fail(`partial_rotary_factor: ${show(rotary)} is not supported (${type} rotates the whole head)`);
  }
  if (headDim % 2 !== 0) throw fail(`head_dim: ${headDim} is odd; RoPE needs an even head dim`);

  let qkvBias = false;
  let oBias = false;
  let mlpBias = false;
  let windowed: boolean[] = Array.from({ length: nLayers }, () => false);
  let window: number | undefined;
  switch (type) {
    case 'llama':
      qkvBias = oBias = f.bool('attention_bias');
      mlpBias = f.bool('mlp_bias');
      break;
    case 'mistral': {
      window = f.int('sliding_window');
      windowed = windowed.map(() => window !== undefined);
      break;
    }
    case 'qwen2':
      qkvBias = true; // Qwen2: bias on q, k, v; none on o_proj
      windowed = qwen2WindowedLayers(f, nLayers);
      if (windowed.some(Boolean)) window = f.int('sliding_window', { required: true });
      break;
  }

  const attention = (w: boolean): AttentionConfig => ({
    type: 'mha',
    numHeads,
    ...(numKvHeads !== numHeads ? { numKvHeads } : {}),
    ...(headDim * numHeads !== dModel ? { headDim } : {}),
    // our shell has one bias flag for q, k, v and o; Qwen2's o_proj gets a zero bias (see hfToStateDict)
    bias: qkvBias,
    dropout: attnDropout,
    score: 'softmax',
    ...(w ? { window } : {}),
    qkNorm: false,
    outputGate: false,
  });
  const positional: PositionalConfig = { type: 'rope', theta, layout: 'half', ...(scaling ? { scaling: scaling as never } : {}) };
  const input: ModelConfigInput = {
    vocabSize,
    dModel,
    nLayers,
    maxSeqLen,
    positional,
    norm: { type: 'rmsnorm', eps },
    mlp: { type: 'swiglu', hidden, bias: mlpBias },
    tieEmbeddings: tie,
    dropout: 0,
    initStd,
  };
  const mixed = windowed.some(Boolean) && !windowed.every(Boolean);
  if (mixed) {
    // a per-layer schedule (pattern as long as the model): `full` and `window` layers
    input.layers = { pattern: windowed.map((w) => (w ? 'window' : 'full')), defs: { full: { attention: attention(false) }, window: { attention: attention(true) } } };
  } else {
    input.attention = attention(windowed[0] ?? false);
  }
  const parsed = modelConfigSchema.safeParse(input);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `model.${i.path.join('.')}: ${i.message}`).join('; ');
    throw fail(`maps to an invalid model config: ${issues}`);
  }
  // keys of the other model types that this type's HF class does not read
  const ignored = Object.keys(raw).filter((k) => !f.used.has(k) && !HARMLESS.has(k) && raw[k] !== null).sort();
  return { modelType: type, model: parsed.data, oBias, ignored };
}

/** config.json -> our model config. Throws naming the first field we cannot represent. */
export function hfConfigToModelConfig(json: unknown): ModelConfig {
  return readHfConfig(json).model;
}

/** Options of `modelConfigToHfConfig`. */
export interface ToHfConfigOptions {
  /**
   * The config.json the model was imported from: its other keys (token ids, dtype, ...) are kept,
   * its model_type is used, and keys that say the same as ours keep its spelling, so an imported
   * model exports to the same config.json.
   */
  base?: HfConfig;
  /** HF model type when there is no base. Default: mistral for a windowed model, else llama. */
  modelType?: HfModelType;
  /** `torch_dtype` to record when the base has none. Default float32. */
  torchDtype?: 'float32' | 'float16' | 'bfloat16';
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  return ka.length === kb.length && ka.every((k) => sameJson((a as HfConfig)[k], (b as HfConfig)[k]));
}

/** A scaling as an HF `rope_scaling` object, or null. */
function ropeScalingToHf(cfg: ModelConfig, headDim: number): { scaling: HfConfig | null; theta: number } {
  const p = cfg.positional;
  if (p.type !== 'rope') throw new TsformerError(`model.positional.type: ${p.type} cannot be exported (Llama-family models use RoPE)`, 'config');
  const s = p.scaling;
  if (!s) return { scaling: null, theta: p.theta };
  switch (s.type) {
    case 'linear':
      return { scaling: { rope_type: 'linear', factor: s.factor }, theta: p.theta };
    case 'dynamic':
      return { scaling: { rope_type: 'dynamic', factor: s.factor, original_max_position_embeddings: s.originalMaxPositions }, theta: p.theta };
    case 'yarn':
      return {
        scaling: {
          rope_type: 'yarn',
          factor: s.factor,
          original_max_position_embeddings: s.originalMaxPositions,
          beta_fast: s.betaFast,
          beta_slow: s.betaSlow,
          ...(s.attentionFactor !== undefined ? { attention_factor: s.attentionFactor } : {}),
          truncate: s.truncate,
        },
        theta: p.theta,
      };
    case 'llama3':
      return {
        scaling: {
          rope_type: 'llama3',
          factor: s.factor,
          low_freq_factor: s.lowFreqFactor,
          high_freq_factor: s.highFreqFactor,
          original_max_position_embeddings: s.originalMaxPositions,
        },
        theta: p.theta,
      };
    case 'ntk': {
      // no HF rope_type: the same frequencies are a raised base, theta * factor^(R/(R-2)) (R = headDim: HF rotates it all)
      return { scaling: null, theta: p.theta * Math.pow(s.factor, headDim / (headDim - 2)) };
    }
  }
}

/**
 * Our model config -> a Llama-family config.json. Fails naming the field of ours that HF cannot
 * express (`model.attention.type: gla`, `model.norm.type: layernorm`, ...).
 */
export function modelConfigToHfConfig(cfg: ModelConfig | ModelConfigInput, opts: ToHfConfigOptions = {}): HfConfig {
  const parsed = modelConfigSchema.safeParse(cfg);
  if (!parsed.success) throw new TsformerError(`invalid model config: ${parsed.error.issues.map((i) => `model.${i.path.join('.')}: ${i.message}`).join('; ')}`, 'config');
  const m = parsed.data;
  const no = (field: string, value: unknown, why: string) =>
    new TsformerError(`cannot export to Hugging Face: model.${field}: ${show(value)} ${why}`, 'config');
  if (m.norm.type !== 'rmsnorm') throw no('norm.type', m.norm.type, 'is not supported (Llama-family models use rmsnorm)');
  if (m.mlp.type !== 'swiglu') throw no('mlp.type', m.mlp.type, 'is not supported (Llama-family models use swiglu)');

  const specs = layerSpecs(m);
  const first = specs[0]!.attention;
  const where = (i: number) => (m.layers ? `layers.defs.${specs[i]!.kind}` : '');
  const at = (i: number, key: string) => (where(i) ? `${where(i)}.${key}` : key);
  specs.forEach((s, i) => {
    const a = s.attention;
    if (a.type !== 'mha') throw no(at(i, 'attention.type'), a.type, 'is not supported (only softmax mha/gqa/mqa has a Llama-family equivalent)');
    if (a.score !== 'softmax') throw no(at(i, 'attention.score'), a.score, 'is not supported');
    if (a.qkNorm) throw no(at(i, 'attention.qkNorm'), true, 'is not supported');
    if (a.outputGate) throw no(at(i, 'attention.outputGate'), true, 'is not supported');
    if (a.logitScale) throw no(at(i, 'attention.logitScale'), a.logitScale, 'is not supported');
    if (s.positional !== m.positional && !sameJson(s.positional, m.positional)) throw no(at(i, 'positional'), s.positional, 'differs from model.positional; HF uses one RoPE for all layers');
    const f = first as typeof a;
    for (const key of ['numHeads', 'numKvHeads', 'headDim', 'bias', 'dropout'] as const) {
      if (a[key] !== f[key]) throw no(at(i, `attention.${key}`), a[key], `differs between layers (${show(f[key])} in layer 0); HF layers share one attention config`);
    }
  });
  if (m.positional.type === 'rope' && (m.positional.layout ?? 'half') !== 'half') {
    throw no('positional.layout', m.positional.layout, 'is not supported (HF Llama rotates halves: layout half)');
  }
  if (m.positional.type === 'rope' && (m.positional.fraction ?? 1) !== 1) throw no('positional.fraction', m.positional.fraction, 'is not supported');
  const a = first as Extract<AttentionConfig, { type: 'mha' }>;
  const windows = specs.map((s) => (s.attention as typeof a).window);
  const windowSizes = [...new Set(windows.filter((w) => w !== undefined))];
  if (windowSizes.length > 1) throw no('attention.window', windowSizes, 'differs between layers; HF has one sliding_window');
  const window = windowSizes[0];
  const allWindowed = windows.every((w) => w !== undefined);

  const base = opts.base ?? {};
  const modelType = (base.model_type as HfModelType | undefined) ?? opts.modelType ?? (window !== undefined ? 'mistral' : 'llama');
  if (!(HF_MODEL_TYPES as readonly string[]).includes(modelType)) throw new TsformerError(`cannot export as model_type ${show(modelType)} (supported: ${HF_MODEL_TYPES.join(', ')})`, 'config');

  const numKvHeads = a.numKvHeads ?? a.numHeads;
  const headDim = a.headDim ?? m.dModel / a.numHeads;
  const { scaling, theta } = ropeScalingToHf(m, headDim);
  const ours: HfConfig = {
    architectures: [ARCHITECTURE[modelType]],
    model_type: modelType,
    vocab_size: m.vocabSize,
    hidden_size: m.dModel,
    intermediate_size: mlpHidden(m),
    num_hidden_layers: m.nLayers,
    num_attention_heads: a.numHeads,
    num_key_value_heads: numKvHeads,
    head_dim: headDim,
    hidden_act: 'silu',
    max_position_embeddings: m.maxSeqLen,
    rms_norm_eps: m.norm.eps,
    rope_theta: theta,
    rope_scaling: scaling,
    tie_word_embeddings: m.tieEmbeddings,
    attention_dropout: a.dropout,
    initializer_range: m.initStd,
  };
  switch (modelType) {
    case 'llama':
      if (window !== undefined) throw no('attention.window', window, 'is not supported by model_type llama (export as mistral or qwen2)');
      ours.attention_bias = a.bias;
      ours.mlp_bias = m.mlp.bias;
      break;
    case 'mistral':
      if (a.bias) throw no('attention.bias', true, 'is not supported by model_type mistral');
      if (m.mlp.bias) throw no('mlp.bias', true, 'is not supported by model_type mistral');
      if (window !== undefined && !allWindowed) throw no('attention.window', window, 'on some layers only is not supported by model_type mistral (use qwen2)');
      ours.sliding_window = window ?? null;
      break;
    case 'qwen2': {
      if (!a.bias) throw no('attention.bias', false, 'is not supported by model_type qwen2 (q/k/v always have biases)');
      if (m.mlp.bias) throw no('mlp.bias', true, 'is not supported by model_type qwen2');
      ours.use_sliding_window = window !== undefined;
      ours.sliding_window = window ?? base.sliding_window ?? null;
      if (window !== undefined) {
        const firstWindowed = windows.findIndex((w) => w !== undefined);
        const suffix = windows.every((w, i) => (w !== undefined) === i >= firstWindowed);
        if (suffix && !Object.hasOwn(base, 'layer_types')) ours.max_window_layers = firstWindowed;
        else ours.layer_types = windows.map((w) => (w !== undefined ? 'sliding_attention' : 'full_attention'));
      } else if (Object.hasOwn(base, 'layer_types')) {
        ours.layer_types = windows.map(() => 'full_attention');
      }
      break;
    }
  }

  // Start from the base; a key it has keeps its spelling when it means the same as ours; a key it
  // lacks is added only when ours differs from the HF class default.
  const out: HfConfig = { ...base };
  const defaults = DEFAULTS[modelType];
  const sameMeaning = (key: string, theirs: unknown, mine: unknown): boolean => {
    if (sameJson(theirs, mine)) return true;
    if (key === 'rope_scaling') {
      const max = typeof base.max_position_embeddings === 'number' ? base.max_position_embeddings : m.maxSeqLen;
      try {
        return sameJson(resolvedScaling(theirs, key, max), resolvedScaling(mine, key, max));
      } catch {
        return false;
      }
    }
    if (key === 'hidden_act') return theirs === 'swish' && mine === 'silu';
    return false;
  };
  const baseHasNewRope = Object.hasOwn(base, 'rope_parameters') && base.rope_parameters !== null;
  const hasBase = opts.base !== undefined;
  const defaultOf = (key: string): unknown => {
    if (key === 'head_dim') return Math.floor(m.dModel / a.numHeads);
    if (key === 'num_key_value_heads' && defaults[key] === null) return a.numHeads;
    return defaults[key];
  };
  if (modelType === 'qwen2' && hasBase) {
    // the base's window settings stand when they give the same layers the same window
    let same = false;
    try {
      const f = new Fields(base, defaults);
      const theirs = qwen2WindowedLayers(f, m.nLayers);
      same = theirs.every((w, i) => w === (windows[i] !== undefined)) && (window === undefined || base.sliding_window === window);
    } catch {
      same = false;
    }
    if (same) for (const key of ['use_sliding_window', 'sliding_window', 'max_window_layers', 'layer_types']) delete ours[key];
  }
  for (const [key, value] of Object.entries(ours)) {
    if (baseHasNewRope && (key === 'rope_theta' || key === 'rope_scaling')) continue;
    if (Object.hasOwn(base, key)) {
      if (!sameMeaning(key, base[key], value)) out[key] = value;
    } else if (!hasBase || key === 'architectures' || key === 'model_type' || !sameJson(defaultOf(key), value)) {
      out[key] = value;
    }
  }
  if (baseHasNewRope) {
    const p = base.rope_parameters as HfConfig;
    const mine: HfConfig = { rope_type: 'default', rope_theta: theta, ...(scaling ?? {}) };
    const same = p.rope_theta === theta && sameJson(resolvedScaling(p, 'rope_parameters', m.maxSeqLen), resolvedScaling(mine, 'rope_parameters', m.maxSeqLen));
    if (!same) out.rope_parameters = mine;
  }
  if (!Object.hasOwn(out, 'torch_dtype') && !Object.hasOwn(out, 'dtype')) out.torch_dtype = opts.torchDtype ?? 'float32';
  return out;
}
