// The trainer against a real S3-compatible server on loopback (started here, through the project's
// own test helper): resume in a fresh process, local -> S3 -> new process, corrupt steps, failed saves.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore, listCompleteSteps, readStep } from '@tsformer/checkpoint';
import { startS3Server, type S3TestServer } from '@tsformer/checkpoint/testing';
import { cli, workspace } from './helpers.js';
import { runTrainer, s3Checkpoint, s3Store, sameTensors, stepTensors } from './checkpoint-helpers.js';

let server: S3TestServer;
const savedEnv = { ...process.env };
beforeAll(async () => {
  server = await startS3Server();
  Object.assign(process.env, server.env()); // the in-process runs use the standard credential chain too
});
afterAll(async () => {
  process.env = savedEnv;
  await server?.close();
});

const losses = (runs: string) =>
  readFileSync(join(runs, 'tiny', 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; step: number; loss?: number; valLoss?: number })
    .filter((m) => m.type === 'train' || m.type === 'eval')
    .map((m) => [m.type, m.step, m.loss ?? m.valLoss]);

/** An uninterrupted local run of the tiny config: the reference. */
let reference: { tensors: Map<string, Buffer>; losses: unknown[] } | undefined;
async function uninterrupted(): Promise<NonNullable<typeof reference>> {
  if (!reference) {
    const a = workspace();
    const r = await cli('train', '--config', a.config);
    expect(r.code).toBe(0);
    reference = { tensors: await stepTensors(new LocalStore(join(a.runs, 'tiny', 'checkpoints')), 8), losses: losses(a.runs) };
  }
  return reference;
}

describe('checkpoints on S3', () => {
  it('stops at step 3 on S3 (sharded weights), resumes in a fresh process, and equals an uninterrupted run bit for bit', async () => {
    const ref = await uninterrupted();
    const b = workspace({ checkpoint: s3Checkpoint(server, 'fresh', { maxShardMB: 0.01 }) });
    const first = await cli('train', '--config', b.config, '--stop-at', '3');
    expect(first.text).not.toMatch(/error|warning/);
    expect(first.code).toBe(0);
    expect(first.text).toMatch(/stopped at step 3; checkpoint s3:\/\/tsformer-test\/fresh\/step-00000003 is complete/);
    // nothing local, yet `tsformer runs` knows the run can be resumed (its summary names the S3 step)
    expect((await cli('runs', b.runs)).text).toMatch(/\| tiny \|.*\| resumable \|/);
    const store = s3Store(server, 'fresh');
    const listed = await store.list('step-00000003/');
    expect(listed).toContain('step-00000003/model.safetensors.index.json');
    expect(listed.filter((f) => /model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length).toBeGreaterThan(1);

    const second = await runTrainer(['train', '--config', b.config, '--resume', 'auto'], server.env());
    expect(second.output).toMatch(/resumed from s3:\/\/tsformer-test\/fresh\/step-00000003 at step 3/);
    expect(second.code).toBe(0);
    expect(await listCompleteSteps(store)).toEqual([2, 3, 4, 6, 8]);
    expect(sameTensors(ref.tensors, await stepTensors(store, 8))).toEqual([]);
    expect(losses(b.runs)).toEqual(ref.losses);
    const state = JSON.parse(new TextDecoder().decode((await readStep(store, 8)).get('trainer-state.json')));
    expect(state).toMatchObject({ step: 8, optimizerStep: 8, schedule: { type: 'cosine', step: 8, totalSteps: 8 }, backend: 'cpu' });
    // no credential in anything the run wrote
    const written = [...(await readStep(store, 8)).values()].map((b) => Buffer.from(b).toString('latin1')).join('') + readFileSync(join(b.runs, 'tiny', 'metrics.jsonl'), 'utf8');
    expect(written).not.toMatch(/S3RVER/);
    // sample and eval read the run's checkpoints from S3 too
    const sampled = await cli('sample', '--run', join(b.runs, 'tiny'), '--prompt', 'the ', '--max-new-tokens', '4');
    expect(sampled.code, sampled.text).toBe(0);
    expect(sampled.text).toMatch(/checkpoint: step 8/);
    const evaluated = await cli('eval', '--run', join(b.runs, 'tiny'));
    expect(evaluated.code, evaluated.text).toBe(0);
  });

  it('hops local -> S3 -> a new process: a step copied to S3 resumes there and equals an uninterrupted run', async () => {
    const ref = await uninterrupted();
    const c = workspace();
    expect((await cli('train', '--config', c.config, '--stop-at', '3')).code).toBe(0);
    // copy the local step to S3, as `aws s3 cp --recursive` would
    const local = new LocalStore(join(c.runs, 'tiny', 'checkpoints'));
    const remote = s3Store(server, 'hop');
    for (const rel of await local.list('step-00000003/')) await remote.writeFile(rel, await local.readFile(rel));

    const cont = await runTrainer(
      [
        'train', '--config', c.config, '--resume', `s3://${server.bucket}/hop/step-00000003`,
        '--checkpoint.dir', `s3://${server.bucket}/hop`,
        '--checkpoint.s3.endpoint', server.endpoint, '--checkpoint.s3.forcePathStyle', 'true',
        '--checkpoint.s3.requestChecksumCalculation', 'WHEN_REQUIRED',
      ],
      server.env(),
    );
    expect(cont.output).toMatch(/resumed from s3:\/\/tsformer-test\/hop\/step-00000003 at step 3/);
    expect(cont.output).toMatch(/checkpoint\.dir: \(unset\) -> "s3:\/\/tsformer-test\/hop"/);
    expect(cont.code).toBe(0);
    expect(sameTensors(ref.tensors, await stepTensors(remote, 8))).toEqual([]);
  });

  it('names a missing file, a truncated file and a flipped byte, and --resume auto skips each; --resume <step> refuses it', async () => {
    const w = workspace({ checkpoint: s3Checkpoint(server, 'corrupt') });
    expect((await cli('train', '--config', w.config)).code).toBe(0);
    const store = s3Store(server, 'corrupt');
    const model8 = await store.readFile('step-00000008/model.safetensors');
    model8[model8.length - 3] = model8[model8.length - 3]! ^ 0x10;
    await store.writeFile('step-00000008/model.safetensors', model8);
    const opt6 = await store.readFile('step-00000006/optimizer.safetensors');
    await store.writeFile('step-00000006/optimizer.safetensors', opt6.subarray(0, opt6.length - 100));
    await store.remove('step-00000004/trainer-state.json');

    const explicit = await cli('train', '--config', w.config, 'train.steps=10', '--resume', 's3://tsformer-test/corrupt/step-00000008');
    expect(explicit.code).not.toBe(0);
    expect(explicit.text).toMatch(/--resume s3:\/\/tsformer-test\/corrupt\/step-00000008: checkpoint s3:\/\/tsformer-test\/corrupt\/step-00000008: file "model\.safetensors" sha256 mismatch/);
    const incomplete = await cli('train', '--config', w.config, '--resume', 's3://tsformer-test/corrupt/step-00000007');
    expect(incomplete.code).not.toBe(0);
    expect(incomplete.text).toMatch(/step-00000007: manifest\.json is missing \(incomplete step\)/);

    const r = await cli('train', '--config', w.config, 'train.steps=10', '--resume', 'auto');
    expect(r.text).toMatch(/warning: skipping step-00000008: .*file "model\.safetensors" sha256 mismatch/);
    expect(r.text).toMatch(/warning: skipping step-00000006: .*file "optimizer\.safetensors" has \d+ bytes, the manifest says \d+/);
    expect(r.text).toMatch(/warning: skipping step-00000004: .*file "trainer-state\.json" is missing; falling back to step-00000002/);
    expect(r.text).toMatch(/resumed from s3:\/\/tsformer-test\/corrupt\/step-00000002 at step 2/);
    expect(r.code).toBe(0);
    expect(await listCompleteSteps(store)).toEqual([2, 4, 6, 8, 10]);
  });

  it('a save whose connection dies mid-upload leaves no manifest; training goes on and the next save succeeds', async () => {
    const w = workspace({ checkpoint: s3Checkpoint(server, 'flaky') });
    // once the first file of step 4 is up, every upload to step 4 loses its connection
    let firstPut = false;
    server.fault = (req) => {
      if (!req.path.includes('/flaky/step-00000004/') || req.method !== 'PUT') return false;
      if (!firstPut) {
        firstPut = true;
        return false;
      }
      return true;
    };
    let r;
    try {
      r = await cli('train', '--config', w.config);
    } finally {
      server.fault = undefined;
    }
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/warning: checkpoint step-00000004 was not saved \(upload of s3:\/\/tsformer-test\/flaky\/step-00000004\/\S+ failed after 2 attempts: .*\); training goes on and the next checkpoint tries again/);
    expect(r.text).toMatch(/step 6: saved checkpoint s3:\/\/tsformer-test\/flaky\/step-00000006/);
    const store = s3Store(server, 'flaky');
    expect(await listCompleteSteps(store)).toEqual([2, 6, 8]);
    // the partial step 4 was removed once a newer manifest existed
    expect(await store.list('step-00000004/')).toEqual([]);
    const again = await cli('train', '--config', w.config, 'train.steps=9', '--resume', 'auto');
    expect(again.text).toMatch(/resumed from s3:\/\/tsformer-test\/flaky\/step-00000008 at step 8/);
    expect(again.code).toBe(0);
  });

  it('uploads in the background: training goes on while a checkpoint is being uploaded', async () => {
    const w = workspace({ checkpoint: s3Checkpoint(server, 'bg') });
    // a slow link for step 2's files: about 0.75 s of upload
    server.delay = (r) => (r.method === 'PUT' && r.path.startsWith(`/${server.bucket}/bg/step-00000002/`) ? 150 : 0);
    let r;
    try {
      r = await cli('train', '--config', w.config);
    } finally {
      server.delay = undefined;
    }
    expect(r.code).toBe(0);
    const saved2 = r.text.indexOf('saved checkpoint s3://tsformer-test/bg/step-00000002');
    expect(saved2).toBeGreaterThan(0);
    expect(r.text.indexOf('step 3/8')).toBeGreaterThan(0);
    expect(r.text.indexOf('step 3/8')).toBeLessThan(saved2); // step 3 trained while step 2 was uploading
    expect(await listCompleteSteps(s3Store(server, 'bg'))).toEqual([2, 4, 6, 8]);
  });

  it('refuses to start over a run that already has checkpoints on S3', async () => {
    const w = workspace({ checkpoint: s3Checkpoint(server, 'twice'), train: { steps: 2, batchSize: 4, optimizer: { type: 'adamw', lr: 0.01 }, schedule: { type: 'constant' }, logEvery: 1, evalEvery: 0 } });
    expect((await cli('train', '--config', w.config)).code).toBe(0);
    const again = await cli('train', '--config', w.config, 'name=tiny2');
    expect(again.code).not.toBe(0);
    expect(again.text).toMatch(/already has checkpoints in s3:\/\/tsformer-test\/twice \(newest step 2\)/);
  });
});
