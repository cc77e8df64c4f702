import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeSafetensors, type HostTensor, type SafeDType } from './safetensors.js';
import { encodeShardedSafetensors } from './shards.js';
import { readHfDirectory, writeHfDirectory } from './hf.js';
import { openStore } from './open.js';
import { startS3Server, type S3TestServer } from './testing/s3-server.js';

const tmp = () => mkdtempSync(join(tmpdir(), 'tsformer-hf-'));

function tensor(shape: number[], seed: number): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = (s / 2 ** 32 - 0.5) * 3;
  }
  return { dtype: 'float32', shape, data };
}

/** HF tensor names of a 2-layer tied GQA Llama (D 8, 2 heads of 4, 1 kv head, I 12, V 10). */
function hfTensors(): Map<string, HostTensor> {
  const t = new Map<string, HostTensor>();
  let seed = 1;
  t.set('model.embed_tokens.weight', tensor([10, 8], seed++));
  for (let i = 0; i < 2; i++) {
    const p = `model.layers.${i}`;
    t.set(`${p}.input_layernorm.weight`, tensor([8], seed++));
    t.set(`${p}.self_attn.q_proj.weight`, tensor([8, 8], seed++));
    t.set(`${p}.self_attn.k_proj.weight`, tensor([4, 8], seed++));
    t.set(`${p}.self_attn.v_proj.weight`, tensor([4, 8], seed++));
    t.set(`${p}.self_attn.o_proj.weight`, tensor([8, 8], seed++));
    t.set(`${p}.post_attention_layernorm.weight`, tensor([8], seed++));
    t.set(`${p}.mlp.gate_proj.weight`, tensor([12, 8], seed++));
    t.set(`${p}.mlp.up_proj.weight`, tensor([12, 8], seed++));
    t.set(`${p}.mlp.down_proj.weight`, tensor([8, 12], seed++));
  }
  t.set('model.norm.weight', tensor([8], seed++));
  return t;
}

const config = { architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 8, num_attention_heads: 2, num_key_value_heads: 1, torch_dtype: 'bfloat16' };
const tokenizerJson = '{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}';

/** Raw bytes of each tensor's data in a safetensors file, by name, with its dtype. */
function rawTensors(bytes: Uint8Array): Map<string, { dtype: string; bytes: string }> {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const out = new Map<string, { dtype: string; bytes: string }>();
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    out.set(name, { dtype: h.dtype, bytes: Buffer.from(bytes.subarray(8 + n + h.data_offsets[0], 8 + n + h.data_offsets[1])).toString('hex') });
  }
  return out;
}

function rawOfDir(dir: string): Map<string, { dtype: string; bytes: string }> {
  const out = new Map<string, { dtype: string; bytes: string }>();
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) for (const [k, v] of rawTensors(readFileSync(join(dir, f)))) out.set(k, v);
  return out;
}

/** Mixed on-disk dtypes, as checkpoints have (norms F32, matrices BF16, the embedding F16). */
function mixedDtypes(names: Iterable<string>): Record<string, SafeDType> {
  const d: Record<string, SafeDType> = {};
  for (const n of names) d[n] = n.includes('norm') ? 'F32' : n.includes('embed') ? 'F16' : 'BF16';
  return d;
}

describe('Hugging Face directories', () => {
  it('reads config.json, one model.safetensors (F32) and the tokenizer files', async () => {
    const dir = tmp();
    const t = hfTensors();
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(t, { format: 'pt' }));
    writeFileSync(join(dir, 'tokenizer.json'), tokenizerJson);
    const hf = await readHfDirectory(dir);
    expect(hf.config).toEqual(config);
    expect(hf.weightFiles).toEqual(['model.safetensors']);
    expect([...hf.tensors.keys()].sort()).toEqual([...t.keys()].sort());
    for (const [n, x] of t) {
      expect(hf.tensors.get(n)!.shape).toEqual(x.shape);
      expect(hf.tensors.get(n)!.data).toEqual(x.data);
      expect(hf.dtypes[n]).toBe('F32');
    }
    expect(new TextDecoder().decode(hf.extraFiles.get('tokenizer.json'))).toBe(tokenizerJson);
    expect(hf.extraFiles.has('tokenizer_config.json')).toBe(false);
  });

  it('reads a sharded F16/BF16 checkpoint and writes it back with the same tensor bytes', async () => {
    const src = tmp();
    const t = hfTensors();
    const dtype = mixedDtypes(t.keys());
    const files = encodeShardedSafetensors(t, { maxShardBytes: 600, metadata: { format: 'pt' }, encode: { dtype } });
    expect(files.has('model.safetensors.index.json')).toBe(true);
    for (const [name, content] of files) writeFileSync(join(src, name), content);
    writeFileSync(join(src, 'config.json'), JSON.stringify(config));
    writeFileSync(join(src, 'tokenizer.json'), tokenizerJson);

    const hf = await readHfDirectory(src);
    expect(hf.weightFiles[0]).toBe('model.safetensors.index.json');
    expect(hf.weightFiles.length).toBeGreaterThan(2);
    expect(hf.dtypes).toEqual(dtype);
    // BF16 keeps 8 mantissa bits: values are close to, not equal to, the float32 originals
    const q = hf.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
    expect(q.data).not.toEqual(t.get('model.layers.0.self_attn.q_proj.weight')!.data);
    q.data.forEach((v, i) => expect(Math.abs(v - t.get('model.layers.0.self_attn.q_proj.weight')!.data[i]!)).toBeLessThan(0.02));

    const out = tmp();
    const written = await writeHfDirectory(out, { config: hf.config, tensors: hf.tensors, extraFiles: hf.extraFiles }, { dtype: hf.dtypes, maxShardBytes: 600 });
    expect(written).toContain('model.safetensors.index.json');
    expect(written.at(-1)).toBe('config.json');
    const a = rawOfDir(src);
    const b = rawOfDir(out);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [n, v] of a) expect(b.get(n), n).toEqual(v);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toEqual(config);
    expect(readFileSync(join(out, 'tokenizer.json'), 'utf8')).toBe(tokenizerJson);
    // the index is HF's: total_size and a weight_map naming each tensor's shard
    const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(Object.keys(index.weight_map).sort()).toEqual([...t.keys()].sort());
    expect(index.metadata.total_size).toBe([...t].reduce((s, [n, x]) => s + x.data.length * (dtype[n] === 'F32' ? 4 : 2), 0));
  });

  it('writes one file below the shard size, removing the shards of an earlier write', async () => {
    const dir = tmp();
    const t = hfTensors();
    await writeHfDirectory(dir, { config, tensors: t }, { maxShardBytes: 600 });
    expect(readdirSync(dir).some((f) => f.startsWith('model-0000'))).toBe(true);
    await writeHfDirectory(dir, { config, tensors: t }, { dtype: 'BF16' });
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors']);
    const hf = await readHfDirectory(dir);
    expect(new Set(Object.values(hf.dtypes))).toEqual(new Set(['BF16']));
    const bytes = readFileSync(join(dir, 'model.safetensors'));
    const headerLen = Number(bytes.readBigUInt64LE(0));
    expect(JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'))).toMatchObject({ __metadata__: { format: 'pt' } });
  });

  it('fails naming the directory and the problem', async () => {
    const empty = tmp();
    await expect(readHfDirectory(empty)).rejects.toThrow(`${empty}: no config.json`);
    writeFileSync(join(empty, 'config.json'), JSON.stringify(config));
    writeFileSync(join(empty, 'pytorch_model.bin'), 'x');
    await expect(readHfDirectory(empty)).rejects.toThrow(/no model\.safetensors or model\.safetensors\.index\.json \(pytorch_model\.bin is not read/);
    const sharded = tmp();
    writeFileSync(join(sharded, 'config.json'), JSON.stringify(config));
    writeFileSync(join(sharded, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 4 }, weight_map: { a: 'model-00001-of-00002.safetensors' } }));
    await expect(readHfDirectory(sharded)).rejects.toThrow('lists shard model-00001-of-00002.safetensors, which is missing');
    const bad = tmp();
    writeFileSync(join(bad, 'config.json'), '{"model_type": ');
    await expect(readHfDirectory(bad)).rejects.toThrow(`${bad}/config.json is not valid JSON`);
    await expect(writeHfDirectory(tmp(), { config, tensors: hfTensors() }, { dtype: 'I32' })).rejects.toThrow('dtype I32 is not F32, F16 or BF16');
  });

  describe('on S3', () => {
    let server: S3TestServer;
    beforeAll(async () => {
      server = await startS3Server();
    });
    afterAll(async () => {
      await server?.close();
    });

    it('writes to and reads from s3://bucket/prefix', async () => {
      const uri = `s3://${server.bucket}/models/tiny-llama`;
      const t = hfTensors();
      const extra = new Map([['tokenizer.json', new TextEncoder().encode(tokenizerJson)]]);
      await writeHfDirectory(uri, { config, tensors: t, extraFiles: extra }, { s3: server.storeOptions(), maxShardBytes: 600, dtype: 'F16' });
      expect((await openStore(uri, { s3: server.storeOptions() }).list('')).filter((f) => f.startsWith('model-')).length).toBeGreaterThan(1);
      const hf = await readHfDirectory(uri, { s3: server.storeOptions() });
      expect(hf.location).toBe(uri);
      expect(hf.config).toEqual(config);
      expect(hf.tensors.size).toBe(t.size);
      expect(new Set(Object.values(hf.dtypes))).toEqual(new Set(['F16']));
      expect(new TextDecoder().decode(hf.extraFiles.get('tokenizer.json'))).toBe(tokenizerJson);
    });
  });
});
