// tsformer convert: tiny Hugging Face directories written here (HF names, [out, in] weights, BF16/F16
// shards, a byte-level BPE tokenizer.json) -> run directories that sample/eval read -> back to HF.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { tf } from '@tsformer/core';
import { DecoderLM, hfConfigToModelConfig, loadHfWeights, type HfConfig, type ModelConfigInput } from '@tsformer/model';
import { LocalStore, encodeShardedSafetensors, readHfDirectory, saveStep, tensorsToHost, writeHfDirectory, type HostTensor, type SafeDType } from '@tsformer/checkpoint';
import { startS3Server, type S3TestServer } from '@tsformer/checkpoint/testing';
import { convertFromHf, convertToHf } from '../src/convert.js';
import { loadRun } from '../src/inspect-commands.js';
import { resolveConfig } from '../src/config.js';
import { memoryOut } from '../src/out.js';
import { cli } from './helpers.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const tmp = () => mkdtempSync(join(tmpdir(), 'tsformer-convert-'));

/** GPT-2-style byte characters: every byte as one printable char. */
function byteChars(): string[] {
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + next++));
}

/** A byte-level BPE tokenizer.json with 256 bytes, 5 merges and <|endoftext|> (vocabulary 262). */
function tokenizerJson(): string {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => (vocab[c] = i));
  const merges = ['Ġ t', 'h e', 'Ġt he', 'l l', 'o r'];
  for (const m of merges) vocab[m.replace(' ', '')] = Object.keys(vocab).length;
  const level = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return JSON.stringify({
    version: '1.0',
    added_tokens: [{ id: 261, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: level,
    post_processor: null,
    decoder: level,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
  });
}

function rand(shape: number[], seed: number, scale: number, offset = 0): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = offset + scale * (s / 2 ** 32 - 0.5);
  }
  return { dtype: 'float32', shape, data };
}

/** HF tensors of a Llama-family config, written from the HF layout: Linear weights [out, in]. */
function hfTensors(c: HfConfig): Map<string, HostTensor> {
  const V = c.vocab_size as number;
  const D = c.hidden_size as number;
  const H = c.num_attention_heads as number;
  const Hkv = (c.num_key_value_heads as number | undefined) ?? H;
  const hd = D / H;
  const I = c.intermediate_size as number;
  const t = new Map<string, HostTensor>();
  let seed = 1;
  t.set('model.embed_tokens.weight', rand([V, D], seed++, 2));
  for (let i = 0; i < (c.num_hidden_layers as number); i++) {
    const p = `model.layers.${i}`;
    t.set(`${p}.input_layernorm.weight`, rand([D], seed++, 0.4, 1));
    for (const [n, rows] of [['q', H * hd], ['k', Hkv * hd], ['v', Hkv * hd]] as const) {
      t.set(`${p}.self_attn.${n}_proj.weight`, rand([rows, D], seed++, 1));
      if (c.model_type === 'qwen2') t.set(`${p}.self_attn.${n}_proj.bias`, rand([rows], seed++, 0.4));
    }
    t.set(`${p}.self_attn.o_proj.weight`, rand([D, H * hd], seed++, 0.5));
    t.set(`${p}.post_attention_layernorm.weight`, rand([D], seed++, 0.4, 1));
    t.set(`${p}.mlp.gate_proj.weight`, rand([I, D], seed++, 0.8));
    t.set(`${p}.mlp.up_proj.weight`, rand([I, D], seed++, 0.8));
    t.set(`${p}.mlp.down_proj.weight`, rand([D, I], seed++, 0.5));
  }
  t.set('model.norm.weight', rand([D], seed++, 0.4, 1));
  if (c.tie_word_embeddings !== true) t.set('lm_head.weight', rand([V, D], seed++, 1));
  return t;
}

const smol: HfConfig = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 264,
  hidden_size: 16,
  intermediate_size: 32,
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
  mlp_bias: false,
  bos_token_id: 261,
  eos_token_id: 261,
  torch_dtype: 'bfloat16',
  transformers_version: '4.46.0',
};
const qwen2: HfConfig = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  vocab_size: 270,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 1,
  hidden_act: 'silu',
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  tie_word_embeddings: false,
  use_sliding_window: false,
  sliding_window: 4096,
  max_window_layers: 21,
  torch_dtype: 'float16',
};

/** Writes an HF directory; returns its tensors as the files hold them (after BF16/F16 rounding). */
function writeHfDir(dir: string, c: HfConfig, dtypeOf: (name: string) => SafeDType, maxShardBytes: number): void {
  mkdirSync(dir, { recursive: true });
  const t = hfTensors(c);
  const dtype = Object.fromEntries([...t.keys()].map((n) => [n, dtypeOf(n)]));
  for (const [name, content] of encodeShardedSafetensors(t, { maxShardBytes, metadata: { format: 'pt' }, encode: { dtype } })) writeFileSync(join(dir, name), content);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(c, null, 2));
  writeFileSync(join(dir, 'tokenizer.json'), tokenizerJson());
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>' }));
}

/** Raw bytes (hex) and dtype of every tensor in the directory's safetensors files. */
function rawTensors(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
    const bytes = readFileSync(join(dir, f));
    const n = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    for (const [name, h] of Object.entries(header)) {
      if (name !== '__metadata__') out.set(name, `${h.dtype} [${h.shape}] ${bytes.subarray(8 + n + h.data_offsets[0], 8 + n + h.data_offsets[1]).toString('hex')}`);
    }
  }
  return out;
}

function textFile(dir: string): string {
  const p = join(dir, 'text.txt');
  writeFileSync(p, 'the hello world of the jury, all the other words. '.repeat(40));
  return p;
}

async function logitsOf(model: DecoderLM, ids: number[]): Promise<Float32Array> {
  const x = tf.tensor2d([ids], [1, ids.length], 'int32');
  const { logits } = model.forward(x);
  const out = (await logits.data()) as Float32Array;
  tf.dispose([x, logits]);
  return out;
}

const IDS = [257, 104, 101, 32, 258, 261, 3, 100];

describe('tsformer convert', () => {
  it('imports a sharded BF16/F32 SmolLM-style checkpoint into a run that sample and eval use, and exports it back byte for byte', async () => {
    const root = tmp();
    const src = join(root, 'hf-smol');
    writeHfDir(src, smol, (n) => (n.includes('norm') ? 'F32' : 'BF16'), 3000);
    expect(readdirSync(src)).toContain('model.safetensors.index.json');
    const run = join(root, 'runs', 'smol');
    const text = textFile(root);

    const imp = await cli('convert', '--from', 'hf', src, '--out', run, '--train-data', text, '--validation-data', text, '--seq-len', '16');
    expect(imp.text).toContain('converted');
    expect(imp.code).toBe(0);
    expect(readdirSync(run).sort()).toEqual(['checkpoints', 'config.yaml', 'hf-source.json', 'tokenizer.json', 'tokenizer_config.json']);
    const cfg = YAML.parse(readFileSync(join(run, 'config.yaml'), 'utf8')) as { name: string; model: unknown; data: { tokenizer: unknown; seqLen: number } };
    expect(cfg.name).toBe('smol');
    expect(cfg.data.tokenizer).toEqual({ type: 'hf', path: join(run, 'tokenizer.json') });
    expect(cfg.model).toEqual(hfConfigToModelConfig(smol));

    // the run's model computes what a model loaded straight from the HF tensors computes
    const loaded = await loadRun(run, { backend: 'cpu', out: memoryOut() });
    const direct = new DecoderLM(hfConfigToModelConfig(smol)).eval();
    try {
      expect(loaded.step).toBe(0);
      loadHfWeights(direct, (await readHfDirectory(src)).tensors, smol);
      expect(await logitsOf(loaded.model, IDS)).toEqual(await logitsOf(direct, IDS));
    } finally {
      loaded.model.dispose();
      direct.dispose();
    }

    const sample = await cli('sample', '--run', run, '--backend', 'cpu', '--prompt', 'the', '--max-new-tokens', '4', '--seed', '3');
    expect(sample.text).toContain('--- sample (step 0) ---');
    expect(sample.code).toBe(0);
    const ev = await cli('eval', '--run', run, '--backend', 'cpu', '--batches', '1');
    expect(ev.text).toMatch(/step 0: validation loss \d+\.\d+ nats\/token .* perplexity/);
    expect(ev.code).toBe(0);

    const back = join(root, 'hf-back');
    const exp = await cli('convert', '--to', 'hf', run, '--out', back);
    expect(exp.text).toContain('exported');
    expect(exp.code).toBe(0);
    expect(JSON.parse(readFileSync(join(back, 'config.json'), 'utf8'))).toEqual(smol);
    const a = rawTensors(src);
    const b = rawTensors(back);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, v] of a) expect(b.get(name), name).toBe(v);
    expect(readFileSync(join(back, 'tokenizer.json'))).toEqual(readFileSync(join(src, 'tokenizer.json')));
    expect(readFileSync(join(back, 'tokenizer_config.json'))).toEqual(readFileSync(join(src, 'tokenizer_config.json')));
    // below the default shard size: one file, as transformers writes it
    expect(readdirSync(back).filter((f) => f.endsWith('.safetensors'))).toEqual(['model.safetensors']);
  });

  it('round-trips an untied Qwen2 checkpoint (q/k/v biases, MQA, F16, one file) exactly, and sharded on request', async () => {
    const root = tmp();
    const src = join(root, 'hf-qwen');
    writeHfDir(src, qwen2, () => 'F16', 1e9);
    const run = join(root, 'runs', 'qwen');
    const text = textFile(root);
    expect((await cli('convert', '--from', 'hf', src, '--out', run, '--train-data', text, '--validation-data', text)).code).toBe(0);
    const back = join(root, 'hf-back');
    expect((await cli('convert', '--to', 'hf', run, '--out', back, '--max-shard-mb', '0.004')).code).toBe(0);
    expect(readdirSync(back)).toContain('model.safetensors.index.json');
    expect(JSON.parse(readFileSync(join(back, 'config.json'), 'utf8'))).toEqual(qwen2);
    const a = rawTensors(src);
    const b = rawTensors(back);
    expect(b.size).toBe(a.size);
    for (const [name, v] of a) expect(b.get(name), name).toBe(v);
  });

  it('exports a run that was not imported (as llama, float32) and imports it back to the same logits', async () => {
    const root = tmp();
    const runs = join(root, 'runs');
    const text = textFile(root);
    const modelCfg: ModelConfigInput = { vocabSize: 256, dModel: 16, nLayers: 2, maxSeqLen: 32, attention: { type: 'mha', numHeads: 2 }, tieEmbeddings: false, dropout: 0.1 };
    const { config, yaml } = resolveConfig(
      {
        name: 'native',
        runsDir: runs,
        model: modelCfg,
        data: { tokenizer: { type: 'byte' }, train: { type: 'text', path: text }, seqLen: 16 },
        train: { steps: 10, batchSize: 2, optimizer: { type: 'adamw', lr: 0.01 } },
      },
      'test',
    );
    const runDir = join(runs, 'native');
    mkdirSync(runDir, { recursive: true });
    writeFileSync(join(runDir, 'config.yaml'), yaml);
    const model = new DecoderLM(config.model, { seed: 5 }).eval();
    try {
      const files: Record<string, Uint8Array | string> = { 'config.yaml': yaml };
      for (const [n, b] of encodeShardedSafetensors(await tensorsToHost(model.stateDict()))) files[n] = b;
      await saveStep(new LocalStore(join(runDir, 'checkpoints')), 10, files);

      const hfDir = join(root, 'hf');
      const exp = await cli('convert', '--to', 'hf', runDir, '--out', hfDir);
      expect(exp.text).toContain('byte tokenizer; no tokenizer.json');
      expect(exp.code).toBe(0);
      const hfCfg = JSON.parse(readFileSync(join(hfDir, 'config.json'), 'utf8')) as HfConfig;
      expect(hfCfg).toMatchObject({ model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 16, intermediate_size: 64, tie_word_embeddings: false, torch_dtype: 'float32' });
      expect(new Set([...rawTensors(hfDir).values()].map((v) => v.split(' ')[0]))).toEqual(new Set(['F32']));

      const again = join(runs, 'again');
      const imp = await cli('convert', '--from', 'hf', hfDir, '--out', again, '--train-data', text);
      expect(imp.text).toContain('no tokenizer.json; the run uses the byte tokenizer');
      expect(imp.code).toBe(0);
      const loaded = await loadRun(again, { backend: 'cpu', out: memoryOut() });
      try {
        expect(await logitsOf(loaded.model, [1, 2, 3, 250, 7])).toEqual(await logitsOf(model, [1, 2, 3, 250, 7]));
      } finally {
        loaded.model.dispose();
      }
    } finally {
      model.dispose();
    }
  });

  it('fails naming the field, the tensor or the problem', async () => {
    const root = tmp();
    const gpt2 = join(root, 'gpt2');
    writeHfDir(gpt2, smol, () => 'F32', 1e9);
    writeFileSync(join(gpt2, 'config.json'), JSON.stringify({ ...smol, model_type: 'gpt2' }));
    const r1 = await cli('convert', '--from', 'hf', gpt2, '--out', join(root, 'r1'));
    expect(r1.text).toContain('model_type: gpt2 is not supported');
    expect(r1.code).toBe(2);

    const gelu = join(root, 'gelu');
    writeHfDir(gelu, { ...smol, hidden_act: 'gelu_new' }, () => 'F32', 1e9);
    const r2 = await cli('convert', '--from', 'hf', gelu, '--out', join(root, 'r2'));
    expect(r2.text).toContain('hidden_act: gelu_new is not supported');

    const shapes = join(root, 'shapes');
    writeHfDir(shapes, smol, () => 'F32', 1e9);
    writeFileSync(join(shapes, 'config.json'), JSON.stringify({ ...smol, intermediate_size: 40 }));
    const r3 = await cli('convert', '--from', 'hf', shapes, '--out', join(root, 'r3'));
    expect(r3.text).toContain('tensor "model.layers.0.mlp.gate_proj.weight": the checkpoint has shape [32, 16], config.json gives [40, 16]');
    expect(r3.code).toBe(1);

    // a tokenizer larger than the embedding: stopped before anything is left behind
    const small = join(root, 'small');
    writeHfDir(small, { ...smol, vocab_size: 200 }, () => 'F32', 1e9);
    const r6 = await cli('convert', '--from', 'hf', small, '--out', join(root, 'r6'));
    expect(r6.text).toContain("model.vocabSize (200) is smaller than the tokenizer's vocabulary (262)");
    expect(existsSync(join(root, 'r6'))).toBe(false);

    const both = await cli('convert', '--from', 'hf', '--to', 'hf', shapes, '--out', join(root, 'r4'));
    expect(both.text).toContain('give exactly one of --from hf or --to hf');

    const busy = join(root, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'x'), '');
    expect((await cli('convert', '--from', 'hf', shapes, '--out', busy)).text).toContain(`--out ${busy} exists and is not empty`);

    // a run HF cannot express
    const runs = join(root, 'runs');
    const { config, yaml } = resolveConfig(
      {
        name: 'gla',
        runsDir: runs,
        model: { vocabSize: 256, dModel: 16, nLayers: 1, maxSeqLen: 16, attention: { type: 'gla', numHeads: 2 } },
        data: { tokenizer: { type: 'byte' }, train: { type: 'text', path: 'x.txt' }, seqLen: 16 },
        train: { steps: 1, batchSize: 1, optimizer: { type: 'adamw', lr: 0.01 } },
      },
      'test',
    );
    const runDir = join(runs, 'gla');
    mkdirSync(runDir, { recursive: true });
    writeFileSync(join(runDir, 'config.yaml'), yaml);
    const model = new DecoderLM(config.model);
    try {
      const files: Record<string, Uint8Array | string> = { 'config.yaml': yaml };
      for (const [n, b] of encodeShardedSafetensors(await tensorsToHost(model.stateDict()))) files[n] = b;
      await saveStep(new LocalStore(join(runDir, 'checkpoints')), 1, files);
    } finally {
      model.dispose();
    }
    const r5 = await cli('convert', '--to', 'hf', runDir, '--out', join(root, 'gla-hf'));
    expect(r5.text).toContain('model.attention.type: gla is not supported');
    expect(r5.code).toBe(2);
  });

  describe('on S3', () => {
    let server: S3TestServer;
    beforeAll(async () => {
      server = await startS3Server();
    });
    afterAll(async () => {
      await server?.close();
    });

    it('imports from s3://bucket/prefix and exports back to S3 with the same tensors', async () => {
      const root = tmp();
      const from = `s3://${server.bucket}/hub/smol`;
      const t = hfTensors(smol);
      const extraFiles = new Map([['tokenizer.json', new TextEncoder().encode(tokenizerJson())]]);
      await writeHfDirectory(from, { config: smol, tensors: t, extraFiles }, { s3: server.storeOptions(), dtype: 'BF16', maxShardBytes: 3000 });
      const run = join(root, 'runs', 's3-smol');
      const text = textFile(root);
      const out = memoryOut();
      const r = await convertFromHf({ from, runDir: run, train: text, validation: text, s3: server.storeOptions(), out });
      expect(out.text()).toContain(`converted ${from}`);
      expect(r.parameters).toBe([...t.values()].reduce((n, x) => n + x.data.length, 0));
      const to = `s3://${server.bucket}/exports/smol`;
      await convertToHf({ runDir: run, hfDir: to, s3: server.storeOptions(), out });
      const a = await readHfDirectory(from, { s3: server.storeOptions() });
      const b = await readHfDirectory(to, { s3: server.storeOptions() });
      expect(b.config).toEqual(smol);
      expect(b.dtypes).toEqual(a.dtypes);
      for (const [name, x] of a.tensors) expect(b.tensors.get(name)!.data, name).toEqual(x.data);
      expect(b.extraFiles.get('tokenizer.json')).toEqual(a.extraFiles.get('tokenizer.json'));
    });
  });
});
