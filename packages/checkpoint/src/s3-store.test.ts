// S3Store against a real S3-compatible server (s3rver on loopback) through the real AWS SDK.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TsformerError } from '@tsformer/core';
import { startS3Server, type S3TestServer } from './testing/s3-server.js';
import { S3Store, parseS3Uri, redactSecrets } from './s3-store.js';
import { openStepLocation, openStore } from './open.js';
import { LocalStore, findResumeStep, listCompleteSteps, readResumeStep, readStep, saveStep, stepDirName, verifyStep } from './store.js';
import { CheckpointWriter } from './writer.js';

let server: S3TestServer;
beforeAll(async () => {
  server = await startS3Server();
});
afterAll(async () => {
  await server?.close();
});

let prefixes = 0;
function store(extra: Parameters<S3TestServer['storeOptions']>[0] = {}): S3Store {
  return new S3Store(`s3://${server.bucket}/run-${++prefixes}/checkpoints`, server.storeOptions(extra));
}

function bytesOf(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function errorOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TsformerError);
    return (e as Error).message;
  }
  throw new Error('expected a rejection');
}

describe('S3 URIs and store selection', () => {
  it('parses s3://bucket/prefix and rejects malformed ones, naming them', () => {
    expect(parseS3Uri('s3://my-bucket/a/b/')).toEqual({ bucket: 'my-bucket', prefix: 'a/b' });
    expect(parseS3Uri('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(() => parseS3Uri('s3://AKIAABCDEFGHIJKLMNOP:secret@bucket/x')).toThrow(/credentials or a port do not belong/);
    expect(() => parseS3Uri('s3://AKIAABCDEFGHIJKLMNOP:secret@bucket/x')).not.toThrow(/AKIAABCDEFGHIJKLMNOP|secret/);
    expect(() => parseS3Uri('s3://Bad_Bucket/x')).toThrow(/bucket name "Bad_Bucket" is not valid/);
    expect(() => parseS3Uri('s3://bucket/a/../b')).toThrow(/"\.\." segment/);
  });

  it('opens an S3Store for s3:// and a LocalStore otherwise', () => {
    expect(openStore('s3://bkt/runs/x', { s3: server.storeOptions() })).toBeInstanceOf(S3Store);
    expect(openStore('s3://bkt/runs/x', { s3: server.storeOptions() }).location).toBe('s3://bkt/runs/x');
    expect(openStore('/tmp/x')).toBeInstanceOf(LocalStore);
    expect(openStore('file:///tmp/x').location).toBe('/tmp/x');
    expect(() => openStore('gs://bucket/x')).toThrow(/unsupported scheme gs:\/\//);
    const s = openStepLocation('s3://bkt/runs/x/step-00000012/', { s3: server.storeOptions() });
    expect([s.store.location, s.step]).toEqual(['s3://bkt/runs/x', 12]);
    const l = openStepLocation('/tmp/ck/step-00000003');
    expect([l.store.location, l.step]).toEqual(['/tmp/ck', 3]);
    expect(() => openStepLocation('s3://bkt/runs/x')).toThrow(/not a step directory/);
  });

  it('rejects an endpoint with credentials in it without echoing them', () => {
    const e = (() => {
      try {
        new S3Store('s3://bkt/x', { endpoint: 'http://AKIAABCDEFGHIJKLMNOP:hunter2hunter2@127.0.0.1:9' });
      } catch (err) {
        return (err as Error).message;
      }
      return '';
    })();
    expect(e).toMatch(/must not contain credentials/);
    expect(e).not.toMatch(/hunter2|AKIA/);
  });

  it('redacts secrets from messages', () => {
    const msg = redactSecrets(
      'GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F2024&X-Amz-Signature=abcdef0123456789 ' +
        'http://user:pa55word@host/ secretAccessKey: "wJalrXUtnFEMI/K7MDENG" AKIAQWERTYUIOPASDFGH',
    );
    expect(msg).not.toMatch(/AKIA|abcdef0123456789|pa55word|wJalrXUtnFEMI/);
    expect(msg).toMatch(/X-Amz-Signature=\[REDACTED\]/);
  });
});

describe('S3Store on a loopback S3 server', () => {
  it('writes, reads, lists by prefix, checks existence and removes', async () => {
    const s = store();
    await s.writeFile('step-00000001/a.bin', bytesOf(100, 1));
    await s.writeFile('step-00000001/b.json', new TextEncoder().encode('{"x":1}'));
    await s.writeFile('step-00000002/a.bin', bytesOf(10, 2));
    await s.writeFile('latest', new TextEncoder().encode('step-00000002'));
    expect(await s.list('step-')).toEqual(['step-00000001/a.bin', 'step-00000001/b.json', 'step-00000002/a.bin']);
    expect(await s.list('step-00000001/')).toEqual(['step-00000001/a.bin', 'step-00000001/b.json']);
    expect(sha(await s.readFile('step-00000001/a.bin'))).toBe(sha(bytesOf(100, 1)));
    expect(await s.exists('step-00000001/a.bin')).toBe(true);
    expect(await s.exists('step-00000001/zzz')).toBe(false);
    expect(await errorOf(s.readFile('step-00000009/a.bin'))).toMatch(/cannot read s3:\/\/tsformer-test\/run-\d+\/checkpoints\/step-00000009\/a\.bin: file not found/);
    await s.remove('step-00000001');
    expect(await s.list('')).toEqual(['latest', 'step-00000002/a.bin']);
    await s.remove('nothing-here');
    await expect(s.writeFile('../escape', bytesOf(1, 1))).rejects.toThrow(/invalid checkpoint store path/);
  });

  it('uploads a file larger than one part as a multipart upload and reads it back intact', async () => {
    const s = store({ partSize: 5 * 1024 * 1024 });
    const big = bytesOf(11 * 1024 * 1024 + 123, 7);
    const before = server.requests.length;
    await s.writeFile('step-00000001/model.safetensors', big);
    const reqs = server.requests.slice(before);
    const parts = reqs.filter((r) => r.method === 'PUT' && r.query.partNumber !== undefined);
    expect(parts.map((r) => r.query.partNumber).sort()).toEqual(['1', '2', '3']);
    expect(reqs.some((r) => r.method === 'POST' && 'uploads' in r.query)).toBe(true); // CreateMultipartUpload
    expect(reqs.some((r) => r.method === 'POST' && 'uploadId' in r.query)).toBe(true); // CompleteMultipartUpload
    const back = await s.readFile('step-00000001/model.safetensors');
    expect(back.byteLength).toBe(big.byteLength);
    expect(sha(back)).toBe(sha(big));
    expect(server.openUploads()).toEqual([]);
  });

  it("works with the SDK's default checksums (CRC32 on every request) too", async () => {
    const s = store({ partSize: 5 * 1024 * 1024, requestChecksumCalculation: 'WHEN_SUPPORTED', responseChecksumValidation: 'WHEN_SUPPORTED' });
    const big = bytesOf(6 * 1024 * 1024, 11);
    await saveStep(s, 1, { 'model.safetensors': big, 'trainer-state.json': '{}' });
    await verifyStep(s, 1);
    expect(sha(await s.readFile('step-00000001/model.safetensors'))).toBe(sha(big));
  });

  it('saves, verifies and resumes steps; detects a missing, a truncated and a flipped-byte file, naming each', async () => {
    const s = store();
    const files = (step: number) => ({ 'model.safetensors': bytesOf(3000, step), 'optimizer.safetensors': bytesOf(5000, 100 + step), 'trainer-state.json': `{"step":${step}}` });
    for (const step of [1, 2, 3, 4]) await saveStep(s, step, files(step));
    expect(await listCompleteSteps(s)).toEqual([1, 2, 3, 4]);
    await verifyStep(s, 4);
    expect(new TextDecoder().decode(await s.readFile('latest'))).toBe('step-00000004');

    // step 4: a flipped byte; step 3: truncated; step 2: a missing file
    const flipped = bytesOf(3000, 4);
    flipped[1234] = flipped[1234]! ^ 0x01;
    await s.writeFile('step-00000004/model.safetensors', flipped);
    await s.writeFile('step-00000003/optimizer.safetensors', bytesOf(5000, 103).subarray(0, 4000));
    await s.remove('step-00000002/trainer-state.json');
    expect(await errorOf(verifyStep(s, 4))).toMatch(/step-00000004: file "model\.safetensors" sha256 mismatch/);
    expect(await errorOf(verifyStep(s, 3))).toMatch(/step-00000003: file "optimizer\.safetensors" has 4000 bytes, the manifest says 5000/);
    expect(await errorOf(verifyStep(s, 2))).toMatch(/step-00000002: file "trainer-state\.json" is missing/);

    const warnings: string[] = [];
    expect(await findResumeStep(s, { onWarning: (m) => warnings.push(m) })).toBe(1);
    expect(warnings.map((w) => w.split(':')[0])).toEqual(['skipping step-00000004', 'skipping step-00000003', 'skipping step-00000002']);
    const r = await readResumeStep(s, { onWarning: () => {} });
    expect(r?.step).toBe(1);
    expect(new TextDecoder().decode(r!.files.get('trainer-state.json'))).toBe('{"step":1}');
  });

  it('a server stopped in the middle of a multipart upload leaves no manifest, aborts the upload, and the next save succeeds', async () => {
    const retries: string[] = [];
    const s = store({ partSize: 5 * 1024 * 1024, queueSize: 1, attempts: 3, backoffMs: 30, onRetry: (m) => retries.push(m) });
    await saveStep(s, 1, { 'model.safetensors': bytesOf(1000, 1) });
    const big = bytesOf(16 * 1024 * 1024, 9);
    let stopping: Promise<void> | undefined;
    server.onRequest = (r) => {
      // the second part of the upload: the server dies while receiving it
      if (r.method === 'PUT' && r.query.partNumber === '2' && !stopping) stopping = server.stop();
    };
    const saved: number[] = [];
    const errors: string[] = [];
    const w = new CheckpointWriter(s, { keepLast: 5, onSaved: (i) => saved.push(i.step), onError: (_step, e) => errors.push(e.message) });
    try {
      await w.save(2, { 'model.safetensors': big, 'trainer-state.json': '{"step":2}' });
      // save() returned at once: the caller trains on while the upload runs and fails
      expect(w.inFlight).toBe(2);
      await w.flush().catch((e: Error) => errors.push(`flush: ${e.message}`));
    } finally {
      server.onRequest = undefined;
      await stopping;
      await server.start();
    }
    expect(saved).toEqual([]);
    expect(errors[0]).toMatch(/^multipart upload of s3:\/\/.*step-00000002\/model\.safetensors failed after 3 attempts/);
    // flush tried once more while the server was still down
    expect(errors.at(-1)).toMatch(/^flush: checkpoint s3:\/\/.*step-00000002 could not be saved: .* failed after 3 attempts: .*ECONNREFUSED.*; this process saved no step there/);
    expect(retries.length).toBeGreaterThanOrEqual(2);
    expect(errors.join('\n')).not.toMatch(/S3RVER/);

    // no manifest for step 2: it does not exist
    expect(await listCompleteSteps(s)).toEqual([1]);
    expect(await s.exists(`${stepDirName(2)}/manifest.json`)).toBe(false);
    // the abort that failed while the server was down is retried on the next write
    await w.save(3, { 'model.safetensors': bytesOf(2000, 3), 'trainer-state.json': '{"step":3}' });
    await w.flush();
    expect(saved).toEqual([3]);
    expect(await listCompleteSteps(s)).toEqual([1, 3]);
    expect(s.pendingAborts).toBe(0);
    expect(s.abortedUploads.length).toBeGreaterThanOrEqual(1);
    expect(server.openUploads()).toEqual([]);
    expect((await readStep(s, 3)).get('trainer-state.json')).toBeDefined();
  });

  it('aborts a multipart upload that fails while the server is up (no parts left behind)', async () => {
    const s = store({ partSize: 5 * 1024 * 1024, queueSize: 1, attempts: 2, backoffMs: 10 });
    server.fault = (r) => r.method === 'PUT' && r.query.partNumber === '2';
    try {
      expect(await errorOf(s.writeFile('step-00000001/model.safetensors', bytesOf(12 * 1024 * 1024, 3)))).toMatch(/failed after 2 attempts/);
    } finally {
      server.fault = undefined;
    }
    expect(s.abortedUploads).toHaveLength(2);
    expect(server.requests.filter((r) => r.method === 'DELETE' && s.abortedUploads.includes(r.query.uploadId ?? '')).length).toBe(2);
    expect(server.openUploads()).toEqual([]);
    expect(await s.exists('step-00000001/model.safetensors')).toBe(false);
  });

  it('does not retry a permanent error, and keeps credentials out of the message', async () => {
    const s = new S3Store(`s3://no-such-bucket-xyz/p`, server.storeOptions({ credentials: { accessKeyId: 'AKIAZZZZZZZZZZZZZZZZ', secretAccessKey: 'sekrit-value-123456' } }));
    const before = server.requests.length;
    const msg = await errorOf(s.writeFile('x', bytesOf(10, 1)));
    expect(msg).toMatch(/^upload of s3:\/\/no-such-bucket-xyz\/p\/x failed: /);
    expect(msg).not.toMatch(/AKIAZZZZ|sekrit-value/);
    expect(server.requests.length - before).toBeLessThanOrEqual(2); // the SDK's own 2 attempts at most, none of ours
  });

  it('prunes with keep-last-K plus every M-th, only after a newer manifest exists', async () => {
    const s = store();
    const w = new CheckpointWriter(s, { keepLast: 2, keepEvery: 4, background: false });
    for (let step = 1; step <= 9; step++) await w.save(step, { 'trainer-state.json': `{"step":${step}}` });
    await w.flush();
    expect(await listCompleteSteps(s)).toEqual([4, 8, 9]);
  });
});
