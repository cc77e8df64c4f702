// Preemption: SIGTERM finishes the step, saves, waits for the upload and exits 0; a second signal
// exits at once; SIGKILL in the middle of saves never costs a complete step.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalStore, listCompleteSteps, readResumeStep, stepDirName, verifyStep, type CheckpointStore } from '@tsformer/checkpoint';
import { startS3Server, type S3TestServer } from '@tsformer/checkpoint/testing';
import { cli, workspace } from './helpers.js';
import { s3Checkpoint, s3Store, sameTensors, startTrainer, stepTensors } from './checkpoint-helpers.js';

let server: S3TestServer;
const savedEnv = { ...process.env };
beforeAll(async () => {
  server = await startS3Server();
  Object.assign(process.env, server.env());
});
afterAll(async () => {
  process.env = savedEnv;
  await server?.close();
});

const longTrain = (steps: number) => ({
  steps,
  batchSize: 4,
  optimizer: { type: 'adamw', lr: 0.01 },
  schedule: { type: 'cosine', warmupSteps: 2 },
  logEvery: 1,
  evalEvery: 0,
});

/** True for a request that writes under `s3://<bucket>/<prefix>/`. */
const writesTo = (prefix: string) => (r: { method: string; path: string }) =>
  (r.method === 'PUT' || r.method === 'DELETE') && r.path.startsWith(`/${server.bucket}/${prefix}/`);

describe('preemption', () => {
  it('SIGTERM: finishes the step, uploads the checkpoint (waiting for it), exits 0; resuming equals an uninterrupted run bit for bit', async () => {
    const steps = 30;
    const ref = workspace({ train: longTrain(steps), checkpoint: { every: 1000, keepLast: 3 } });
    expect((await cli('train', '--config', ref.config)).code).toBe(0);
    const refTensors = await stepTensors(new LocalStore(join(ref.runs, 'tiny', 'checkpoints')), steps);

    const w = workspace({ train: longTrain(steps), checkpoint: s3Checkpoint(server, 'sigterm', { every: 1000 }) });
    // a slow link: each upload takes a while, so exiting before it finished would show
    server.delay = (r) => (writesTo('sigterm')(r) && r.method === 'PUT' ? 150 : 0);
    let child;
    try {
      child = startTrainer(['train', '--config', w.config], server.env());
      await child.waitFor(/step 4\/30/);
      child.proc.kill('SIGTERM');
      const done = await child.exited;
      expect(done.output).toMatch(/SIGTERM: finishing this step and saving a checkpoint/);
      expect(done.code).toBe(0);
      const m = /interrupted by SIGTERM: stopped at step (\d+); checkpoint s3:\/\/tsformer-test\/sigterm\/(step-\d+) is complete/.exec(done.output);
      expect(m, done.output).not.toBeNull();
      const stopped = Number(m![1]);
      expect(stopped).toBeLessThan(steps);
      expect(m![2]).toBe(stepDirName(stopped));
      const store = s3Store(server, 'sigterm');
      expect(await listCompleteSteps(store)).toEqual([stopped]);
      await verifyStep(store, stopped);
    } finally {
      server.delay = undefined;
    }
    const resumed = await cli('train', '--config', w.config, '--resume', 'auto');
    expect(resumed.code).toBe(0);
    expect(resumed.text).toMatch(/resumed from s3:\/\/tsformer-test\/sigterm\/step-\d+ at step \d+/);
    expect(sameTensors(refTensors, await stepTensors(s3Store(server, 'sigterm'), steps))).toEqual([]);
  });

  it('a second signal during the upload exits at once, leaving only complete steps behind', async () => {
    const w = workspace({ train: longTrain(100_000), checkpoint: s3Checkpoint(server, 'twice', { every: 3 }) });
    let slow = false;
    server.delay = (r) => (slow && writesTo('twice')(r) ? 10_000 : 0);
    try {
      const child = startTrainer(['train', '--config', w.config], server.env());
      await child.waitFor(/saved checkpoint s3:\/\/tsformer-test\/twice\/step-00000003/);
      const before = await listCompleteSteps(s3Store(server, 'twice'));
      slow = true;
      const seen = server.requests.length;
      child.proc.kill('SIGTERM');
      // wait until the final checkpoint's upload has reached the (now slow) server
      while (!server.requests.slice(seen).some(writesTo('twice'))) await new Promise((r) => setTimeout(r, 10));
      const t0 = performance.now();
      child.proc.kill('SIGINT');
      const done = await child.exited;
      expect(performance.now() - t0).toBeLessThan(5000); // far less than the slow upload would take (10 s a request)
      expect(done.code).toBe(130);
      slow = false;
      const store = s3Store(server, 'twice');
      const after = await listCompleteSteps(store);
      for (const step of before) expect(after).toContain(step);
      for (const step of after) await verifyStep(store, step);
      const found = await readResumeStep(store, { onWarning: (msg) => expect.fail(msg) });
      expect(found?.step).toBe(after.at(-1));
    } finally {
      slow = false;
      server.delay = undefined;
    }
  });

  /**
   * Kills a trainer that saves every step with SIGKILL, `rounds` times; each new process starts with
   * --resume auto. After each kill: the newest complete step verifies and is what --resume auto
   * picks, no step that was complete before is lost, and the next process resumes from it.
   */
  async function killRepeatedly(store: CheckpointStore, config: string, env: Record<string, string>, rounds: number, kill: (child: ReturnType<typeof startTrainer>) => Promise<void>) {
    let complete: number[] = [];
    /** The step each round resumed from (undefined: nothing complete yet, a fresh start). */
    const resumedFrom: Array<number | undefined> = [];
    for (let round = 0; round < rounds; round++) {
      const child = startTrainer(['train', '--config', config, '--resume', 'auto'], env);
      const expected = complete.at(-1);
      await child.waitFor(expected === undefined ? /starting from step 0/ : /resumed from \S+ at step \d+/);
      if (expected !== undefined) {
        const m = /resumed from (\S+) at step (\d+)/.exec(child.output())!;
        expect(m[1]).toBe(`${store.location}/${stepDirName(expected)}`);
        resumedFrom.push(Number(m[2]));
      } else resumedFrom.push(undefined);
      await kill(child);
      const done = await child.exited;
      expect(done.signal, done.output).toBe('SIGKILL');

      const now = await listCompleteSteps(store);
      for (const step of complete) expect(now, `round ${round}: step ${step} was lost`).toContain(step);
      const warnings: string[] = [];
      const found = await readResumeStep(store, { onWarning: (m) => warnings.push(m) }); // what --resume auto does
      expect(warnings).toEqual([]);
      expect(found?.step).toBe(now.at(-1));
      complete = now;
    }
    return { complete, resumedFrom };
  }

  const killModel = { vocabSize: 256, dModel: 48, nLayers: 2, maxSeqLen: 16, attention: { type: 'mha', numHeads: 2 }, dropout: 0.1 };

  it('SIGKILL at random moments of saves (10 rounds on a local store): --resume auto always finds a complete step and loses none', async () => {
    const w = workspace({ model: killModel, train: longTrain(100_000), checkpoint: { every: 1, keepLast: 100_000 } });
    const store = new LocalStore(join(w.runs, 'tiny', 'checkpoints'));
    const { complete, resumedFrom } = await killRepeatedly(store, w.config, {}, 10, async (child) => {
      // once this process has saved a step, at a random moment of the saves that follow
      await child.waitFor(/\n[^\n]*saved checkpoint/);
      await new Promise((r) => setTimeout(r, Math.random() * 300));
      child.proc.kill('SIGKILL');
    });
    // every round after the first resumed from a complete step, each at least as new as the one before
    expect(resumedFrom.slice(1).every((s) => s !== undefined)).toBe(true);
    expect(resumedFrom.slice(1)).toEqual([...resumedFrom.slice(1)].sort((a, b) => a! - b!));
    expect(complete.length).toBeGreaterThanOrEqual(10);
  }, 300_000);

  it('SIGKILL at a random request of a save (10 rounds on S3): --resume auto always finds a complete step and loses none', async () => {
    const w = workspace({ model: killModel, train: longTrain(100_000), checkpoint: s3Checkpoint(server, 'kill', { every: 1, keepLast: 100_000 }) });
    const store = s3Store(server, 'kill');
    const killedAt: string[] = [];
    try {
      const { complete, resumedFrom } = await killRepeatedly(store, w.config, server.env(), 10, async (child) => {
        // the k-th write of this process to the store: somewhere inside its first three saves
        const k = 1 + Math.floor(Math.random() * 24);
        let writes = 0;
        await new Promise<void>((resolve) => {
          server.onRequest = (r) => {
            if (!writesTo('kill')(r) || ++writes !== k) return;
            killedAt.push(`${r.method} ${r.path.split('/').slice(-2).join('/')}`);
            child.proc.kill('SIGKILL');
            server.onRequest = undefined;
            resolve();
          };
        });
      });
      expect(resumedFrom).toHaveLength(10);
      const resumes = resumedFrom.filter((s) => s !== undefined);
      expect(resumes).toEqual([...resumes].sort((a, b) => a! - b!));
      expect(complete.length).toBeGreaterThan(0);
      expect(killedAt).toHaveLength(10);
    } finally {
      server.onRequest = undefined;
    }
  }, 300_000);
});
