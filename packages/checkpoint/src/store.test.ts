import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import {
  findResumeStep,
  listCompleteSteps,
  LocalStore,
  parseStepDirName,
  pruneSteps,
  readLatestStep,
  readManifest,
  readStep,
  saveStep,
  stepDirName,
  verifyStep,
  type StepFiles,
} from './store.js';
import { decodeSafetensors, encodeSafetensors } from './safetensors.js';

const tmpRoots: string[] = [];
function tempStore(): { root: string; store: LocalStore } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tsformer-ckpt-'));
  tmpRoots.push(root);
  return { root, store: new LocalStore(root) };
}
afterAll(() => {
  for (const root of tmpRoots) fs.rmSync(root, { recursive: true, force: true });
});

/** Every file under a directory, relative, sorted (tmp files included, unlike `list`). */
function walk(root: string, rel = ''): string[] {
  return fs
    .readdirSync(path.join(root, rel), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(root, path.join(rel, e.name)) : [path.join(rel, e.name)]))
    .sort();
}

function filesFor(step: number): StepFiles {
  const model = encodeSafetensors(new Map([['w', { dtype: 'float32', shape: [2], data: new Float32Array([step, -step]) }]]));
  return {
    'model.safetensors': model,
    'trainer-state.json': JSON.stringify({ step, tokensSeen: step * 1000 }),
    'config.yaml': `model:\n  dim: ${64 + step}\n`,
  };
}

async function expectCheckpointError(p: Promise<unknown>, ...patterns: Array<string | RegExp>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TsformerError);
    expect((e as TsformerError).kind).toBe('checkpoint');
    const msg = (e as Error).message;
    for (const pat of patterns) expect(msg).toMatch(pat);
    return msg;
  }
  throw new Error('expected an error, none was thrown');
}

function flipByte(file: string, at: number): void {
  const bytes = fs.readFileSync(file);
  bytes[at] = bytes[at]! ^ 0xff;
  fs.writeFileSync(file, bytes);
}

describe('LocalStore', () => {
  it('writes atomically, reads, lists by prefix, checks existence and removes', async () => {
    const { root, store } = tempStore();
    await store.writeFile('a/b/c.bin', new Uint8Array([1, 2, 3]));
    await store.writeFile('a/d.txt', new TextEncoder().encode('hi'));
    await store.writeFile('ab.txt', new Uint8Array([9]));
    await store.writeFile('a/b/c.bin', new Uint8Array([4, 5])); // overwrite
    expect(Array.from(await store.readFile('a/b/c.bin'))).toEqual([4, 5]);
    expect(walk(root)).toEqual(['a/b/c.bin', 'a/d.txt', 'ab.txt']); // no tmp files left behind
    expect(await store.list('')).toEqual(['a/b/c.bin', 'a/d.txt', 'ab.txt']);
    expect(await store.list('a/')).toEqual(['a/b/c.bin', 'a/d.txt']);
    expect(await store.list('a')).toEqual(['a/b/c.bin', 'a/d.txt', 'ab.txt']); // a string prefix, like S3
    expect(await store.list('a/b/c')).toEqual(['a/b/c.bin']);
    expect(await store.list('zzz/')).toEqual([]);
    expect(await store.exists('a/d.txt')).toBe(true);
    expect(await store.exists('a/b')).toBe(false); // directories are not files
    expect(await store.exists('nope/x')).toBe(false);
    await store.remove('a/b');
    expect(await store.list('')).toEqual(['a/d.txt', 'ab.txt']);
    await store.remove('missing'); // absent is fine
    await expectCheckpointError(store.readFile('a/b/c.bin'), /file not found/);
  });

  it('hides leftover temp files and rejects paths that escape the root', async () => {
    const { root, store } = tempStore();
    fs.writeFileSync(path.join(root, 'x.bin.tmp-123-0'), 'partial');
    expect(await store.list('')).toEqual([]);
    for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'a//b', './a', 'a\\b']) {
      await expectCheckpointError(store.writeFile(bad, new Uint8Array(1)), /invalid checkpoint store path/);
    }
  });
});

describe('step directories', () => {
  it('names step directories with 8 zero-padded digits', () => {
    expect(stepDirName(42)).toBe('step-00000042');
    expect(stepDirName(123456789)).toBe('step-123456789');
    expect(parseStepDirName('step-00000042')).toBe(42);
    expect(parseStepDirName('step-000000042')).toBeUndefined(); // not canonical
    expect(parseStepDirName('step-42')).toBeUndefined();
    expect(() => stepDirName(-1)).toThrow(/invalid checkpoint step/);
    expect(() => stepDirName(1.5)).toThrow(/invalid checkpoint step/);
  });

  it('saves, lists and reads back a step with its manifest and the latest pointer', async () => {
    const { root, store } = tempStore();
    const files = filesFor(100);
    expect(await saveStep(store, 100, files)).toBe('step-00000100');
    expect(walk(root)).toEqual([
      'latest',
      'step-00000100/config.yaml',
      'step-00000100/manifest.json',
      'step-00000100/model.safetensors',
      'step-00000100/trainer-state.json',
    ]);
    const manifest = JSON.parse(fs.readFileSync(path.join(root, 'step-00000100/manifest.json'), 'utf8'));
    expect(manifest.format).toBe('tsformer-checkpoint/1');
    expect(manifest.step).toBe(100);
    expect(Date.parse(manifest.created)).not.toBeNaN();
    const model = files['model.safetensors'] as Uint8Array;
    expect(manifest.files['model.safetensors']).toEqual({ bytes: model.length, sha256: createHash('sha256').update(model).digest('hex') });
    expect(Object.keys(manifest.files).sort()).toEqual(['config.yaml', 'model.safetensors', 'trainer-state.json']);
    expect((await readManifest(store, 100)).files['config.yaml']!.bytes).toBe(Buffer.byteLength(files['config.yaml'] as string));
    expect(fs.readFileSync(path.join(root, 'latest'), 'utf8')).toBe('step-00000100');

    await saveStep(store, 200, filesFor(200));
    expect(await listCompleteSteps(store)).toEqual([100, 200]);
    expect(await readLatestStep(store)).toBe(200);
    const read = await readStep(store, 100);
    expect([...read.keys()].sort()).toEqual(['config.yaml', 'model.safetensors', 'trainer-state.json']);
    expect(read.get('model.safetensors')).toEqual(model);
    expect(JSON.parse(new TextDecoder().decode(read.get('trainer-state.json')))).toEqual({ step: 100, tokensSeen: 100000 });
    expect(Array.from(decodeSafetensors(read.get('model.safetensors')!).tensors.get('w')!.data)).toEqual([100, -100]);
  });

  it('does not count a step directory without a valid manifest', async () => {
    const { root, store } = tempStore();
    await saveStep(store, 1, filesFor(1));
    await saveStep(store, 2, filesFor(2));
    // a crash before the manifest: files but no manifest
    fs.mkdirSync(path.join(root, 'step-00000003'));
    fs.writeFileSync(path.join(root, 'step-00000003/model.safetensors'), 'half');
    // a manifest that does not parse, and one for the wrong step
    fs.writeFileSync(path.join(root, 'step-00000002/manifest.json'), '{"format": "tsformer-checkpoint/1", ');
    fs.mkdirSync(path.join(root, 'step-00000004'));
    fs.copyFileSync(path.join(root, 'step-00000001/manifest.json'), path.join(root, 'step-00000004/manifest.json'));
    // not step directories at all
    fs.mkdirSync(path.join(root, 'step-5'));
    fs.writeFileSync(path.join(root, 'step-5/manifest.json'), '{}');
    expect(await listCompleteSteps(store)).toEqual([1]);
    await expectCheckpointError(verifyStep(store, 3), 'step-00000003', /manifest.json is missing/);
    await expectCheckpointError(readStep(store, 2), 'step-00000002', /bad manifest/);
    await expectCheckpointError(verifyStep(store, 4), 'step-00000004', /says step 1, the directory is step 4/);
  });

  it('replaces an existing step directory, dropping its old files', async () => {
    const { root, store } = tempStore();
    await saveStep(store, 7, { ...filesFor(7), 'extra.bin': new Uint8Array([1]) });
    await saveStep(store, 7, filesFor(8));
    expect(walk(root).filter((f) => f.startsWith('step-'))).toEqual([
      'step-00000007/config.yaml',
      'step-00000007/manifest.json',
      'step-00000007/model.safetensors',
      'step-00000007/trainer-state.json',
    ]);
    const read = await readStep(store, 7);
    expect(new TextDecoder().decode(read.get('config.yaml'))).toBe('model:\n  dim: 72\n');
    await expectCheckpointError(saveStep(store, 9, { 'manifest.json': '{}' }), /invalid file name "manifest.json"/);
    await expectCheckpointError(saveStep(store, 9, { '../x': '{}' }), /invalid file name/);
  });

  it('detects corruption, names the file, and falls back to the previous step on resume', async () => {
    const { root, store } = tempStore();
    await saveStep(store, 10, filesFor(10));
    await saveStep(store, 20, filesFor(20));
    expect(await findResumeStep(store, { onWarning: () => expect.fail('no warning expected') })).toBe(20);

    flipByte(path.join(root, 'step-00000020/model.safetensors'), 20);
    await expectCheckpointError(verifyStep(store, 20), 'step-00000020', /file "model\.safetensors" sha256 mismatch/);
    await expectCheckpointError(readStep(store, 20), 'step-00000020', /model\.safetensors/);
    expect((await readStep(store, 20, { verify: false })).size).toBe(3); // opting out reads it anyway
    await verifyStep(store, 10);

    const warnings: string[] = [];
    expect(await findResumeStep(store, { onWarning: (m) => warnings.push(m) })).toBe(10);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^skipping step-00000020: .*model\.safetensors.*sha256 mismatch.*falling back to step-00000010/);

    // size mismatch and a missing file are named too
    fs.appendFileSync(path.join(root, 'step-00000010/config.yaml'), '#');
    await expectCheckpointError(verifyStep(store, 10), 'step-00000010', /file "config\.yaml" has \d+ bytes, the manifest says \d+/);
    fs.rmSync(path.join(root, 'step-00000010/config.yaml'));
    await expectCheckpointError(verifyStep(store, 10), 'step-00000010', /file "config\.yaml" is missing/);
    warnings.length = 0;
    expect(await findResumeStep(store, { onWarning: (m) => warnings.push(m) })).toBeUndefined();
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/skipping step-00000010: .*no earlier complete step/);
  });

  it('finds nothing to resume in an empty store', async () => {
    const { store } = tempStore();
    expect(await listCompleteSteps(store)).toEqual([]);
    expect(await findResumeStep(store)).toBeUndefined();
    expect(await readLatestStep(store)).toBeUndefined();
    expect(await pruneSteps(store, 2)).toEqual([]);
  });

  it('prunes the oldest complete steps and stale incomplete ones, keeping the newest K', async () => {
    const { root, store } = tempStore();
    for (const step of [1, 2, 3, 4, 5, 7]) await saveStep(store, step, filesFor(step));
    // incomplete: step 2 (manifest gone, older than the newest) and step 9 (newer: maybe being written)
    fs.rmSync(path.join(root, 'step-00000002/manifest.json'));
    fs.mkdirSync(path.join(root, 'step-00000009'));
    fs.writeFileSync(path.join(root, 'step-00000009/model.safetensors'), 'in progress');

    expect(await pruneSteps(store, 3)).toEqual([1, 2, 3]);
    expect(await listCompleteSteps(store)).toEqual([4, 5, 7]);
    expect(fs.existsSync(path.join(root, 'step-00000001'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'step-00000002'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'step-00000009/model.safetensors'))).toBe(true);
    expect(await pruneSteps(store, 3)).toEqual([]); // idempotent

    expect(await pruneSteps(store, 1)).toEqual([4, 5]);
    expect(await listCompleteSteps(store)).toEqual([7]);
    await verifyStep(store, 7);
    expect(await readLatestStep(store)).toBe(7);
    await expectCheckpointError(pruneSteps(store, 0), /keepLast must be an integer >= 1/);
  });
});
