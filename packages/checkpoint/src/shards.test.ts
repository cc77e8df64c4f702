import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeShardedSafetensors, encodeShardedSafetensors, shardIndexName } from './shards.js';
import { decodeSafetensors, type HostTensor } from './safetensors.js';
import { LocalStore, listCompleteSteps, readStep } from './store.js';
import { CheckpointWriter } from './writer.js';

function tensors(): Map<string, HostTensor> {
  const m = new Map<string, HostTensor>();
  const add = (name: string, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    m.set(name, { dtype: 'float32', shape, data: Float32Array.from({ length: n }, (_, i) => Math.sin(i + name.length)) });
  };
  add('layers.0.attn.q_proj.weight', [16, 16]); // 1024 bytes
  add('layers.0.attn.k_proj.weight', [16, 16]);
  add('layers.1.attn.q_proj.weight', [16, 16]);
  add('embed.weight', [64, 16]); // 4096 bytes
  add('norm.weight', [16]);
  return m;
}

const asBytes = (m: Map<string, Uint8Array | string>) =>
  new Map([...m].map(([k, v]) => [k, typeof v === 'string' ? new TextEncoder().encode(v) : v] as const));

describe('sharded safetensors', () => {
  it('writes one file when the data fits in one shard', () => {
    const files = encodeShardedSafetensors(tensors(), { maxShardBytes: 1 << 20 });
    expect([...files.keys()]).toEqual(['model.safetensors']);
    const back = decodeShardedSafetensors(asBytes(files));
    expect([...back.tensors.keys()].sort()).toEqual([...tensors().keys()].sort());
  });

  it('shards above the size limit, writes an index, and reads every tensor back bit-exactly', () => {
    const src = tensors();
    const files = encodeShardedSafetensors(src, { maxShardBytes: 2048, metadata: { format: 'pt' } });
    const names = [...files.keys()].sort();
    // embed (4096 B, larger than a shard) alone; then 2 x 1024; then 1024 + 64
    expect(names).toEqual([
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
    ]);
    const index = JSON.parse(files.get(shardIndexName()) as string);
    expect(index.metadata.total_size).toBe(4096 + 3 * 1024 + 64);
    expect(index.weight_map['embed.weight']).toBe('model-00001-of-00003.safetensors');
    expect(Object.keys(index.weight_map).sort()).toEqual([...src.keys()].sort());
    const back = decodeShardedSafetensors(asBytes(files), 'model', 'ck/step-00000001');
    for (const [name, t] of src) {
      expect(back.tensors.get(name)!.shape).toEqual(t.shape);
      expect(Buffer.from(back.tensors.get(name)!.data.buffer, back.tensors.get(name)!.data.byteOffset, t.data.byteLength).equals(Buffer.from(t.data.buffer))).toBe(true);
    }
    expect(back.metadata).toEqual({ format: 'pt' });
  });

  it('rejects a bad index, a missing shard and tensors in the wrong shard, naming them', () => {
    const files = asBytes(encodeShardedSafetensors(tensors(), { maxShardBytes: 2048 }));
    const withIndex = (index: unknown) => new Map([...files, [shardIndexName(), new TextEncoder().encode(JSON.stringify(index))]]);
    const index = JSON.parse(new TextDecoder().decode(files.get(shardIndexName())));
    expect(() => decodeShardedSafetensors(new Map([...files, [shardIndexName(), new TextEncoder().encode('{nope')]]), 'model', 'ck')).toThrow(
      /^ck: model\.safetensors\.index\.json is not valid JSON/,
    );
    expect(() => decodeShardedSafetensors(withIndex({ metadata: {} }), 'model', 'ck')).toThrow(/has no "weight_map" object/);
    expect(() => decodeShardedSafetensors(withIndex({ weight_map: { ...index.weight_map, 'norm.weight': '../../etc/passwd' } }), 'model', 'ck')).toThrow(
      /tensor "norm\.weight" maps to "\.\.\/\.\.\/etc\/passwd", not a \.safetensors file name/,
    );
    const missing = new Map(files);
    missing.delete('model-00002-of-00003.safetensors');
    expect(() => decodeShardedSafetensors(missing, 'model', 'ck')).toThrow(/lists shard model-00002-of-00003\.safetensors, which is missing/);
    const moved = { weight_map: { ...index.weight_map, 'layers.0.attn.k_proj.weight': 'model-00003-of-00003.safetensors' } };
    expect(() => decodeShardedSafetensors(withIndex(moved), 'model', 'ck')).toThrow(/model-00002-of-00003\.safetensors holds tensor "layers\.0\.attn\.k_proj\.weight", which model\.safetensors\.index\.json does not map to it/);
    const extra = { weight_map: { ...index.weight_map, 'ghost.weight': 'model-00001-of-00003.safetensors' } };
    expect(() => decodeShardedSafetensors(withIndex(extra), 'model', 'ck')).toThrow(/maps tensor "ghost\.weight" to model-00001-of-00003\.safetensors, which does not hold it/);
    expect(() => decodeShardedSafetensors(new Map(), 'model', 'ck')).toThrow(/has neither model\.safetensors nor model\.safetensors\.index\.json/);
    // a shard that is itself malformed is named
    const broken = new Map(files);
    broken.set('model-00003-of-00003.safetensors', files.get('model-00003-of-00003.safetensors')!.subarray(0, 100));
    expect(() => decodeShardedSafetensors(broken, 'model', 'ck')).toThrow(/^ck\/model-00003-of-00003\.safetensors: /);
  });

  it('each shard is a valid safetensors file on its own', () => {
    const files = encodeShardedSafetensors(tensors(), { maxShardBytes: 2048 });
    for (const [name, bytes] of files) if (name.endsWith('.safetensors')) expect(() => decodeSafetensors(bytes as Uint8Array, name)).not.toThrow();
  });
});

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

describe('CheckpointWriter on a local store', () => {
  it('keeps at most one save in flight and returns before the write finishes', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tsformer-writer-'));
    roots.push(root);
    const store = new LocalStore(root);
    // a store whose writes wait for a gate, so the test sees what is in flight
    let writesInFlight = 0;
    let maxInFlight = 0;
    let release: () => void = () => {};
    let gate = new Promise<void>((r) => (release = r));
    const slow = {
      location: store.location,
      writeFile: async (rel: string, b: Uint8Array) => {
        writesInFlight++;
        maxInFlight = Math.max(maxInFlight, writesInFlight);
        await gate;
        await store.writeFile(rel, b);
        writesInFlight--;
      },
      readFile: (rel: string) => store.readFile(rel),
      list: (p: string) => store.list(p),
      remove: (rel: string) => store.remove(rel),
      exists: (rel: string) => store.exists(rel),
    };
    const saved: number[] = [];
    const w = new CheckpointWriter(slow, { keepLast: 2, onSaved: (i) => saved.push(i.step) });
    await w.save(1, { 'a.bin': new Uint8Array([1]) });
    expect(w.inFlight).toBe(1);
    expect(saved).toEqual([]);
    const second = w.save(2, { 'a.bin': new Uint8Array([2]) });
    let secondStarted = false;
    void second.then(() => (secondStarted = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(secondStarted).toBe(false); // waits for the first
    release();
    await second;
    gate = Promise.resolve();
    await w.flush();
    expect(saved).toEqual([1, 2]);
    expect(maxInFlight).toBe(1);
    expect(await listCompleteSteps(store)).toEqual([1, 2]);
    expect((await readStep(store, 2)).get('a.bin')).toEqual(new Uint8Array([2]));
  });

  it('a failed save leaves no manifest; a foreground writer rejects with the cause', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tsformer-writer-'));
    roots.push(root);
    const store = new LocalStore(root);
    let failNext = true;
    const flaky = {
      location: store.location,
      writeFile: async (rel: string, b: Uint8Array) => {
        if (failNext && rel.endsWith('b.bin')) throw new Error('disk full');
        await store.writeFile(rel, b);
      },
      readFile: (rel: string) => store.readFile(rel),
      list: (p: string) => store.list(p),
      remove: (rel: string) => store.remove(rel),
      exists: (rel: string) => store.exists(rel),
    };
    const w = new CheckpointWriter(flaky, { background: false, onError: () => {} });
    await expect(w.save(5, { 'a.bin': new Uint8Array([1]), 'b.bin': new Uint8Array([2]) })).rejects.toThrow(/disk full/);
    expect(await listCompleteSteps(store)).toEqual([]);
    expect(fs.existsSync(path.join(root, 'step-00000005', 'manifest.json'))).toBe(false);
    failNext = false;
    await w.flush(); // retries step 5
    expect(await listCompleteSteps(store)).toEqual([5]);
  });
});
