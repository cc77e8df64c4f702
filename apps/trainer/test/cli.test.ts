import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tf } from '@tsformer/core';
import { cli, workspace } from './helpers.js';

const ckpt = (runs: string, name = 'tiny') => join(runs, name, 'checkpoints');
const metrics = (runs: string, name = 'tiny') =>
  readFileSync(join(runs, name, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; step: number; loss?: number; valLoss?: number });

describe('bad configs', () => {
  it.each([
    ['an unknown key', ['model.dModl=32'], /model\.dModl: unknown key/],
    ['a wrong type', ['train.steps=many'], /train\.steps: Invalid input: expected number, received string/],
    ['an unknown attention type', ['model.attention.type=flashy'], /model\.attention\.type: unknown type; expected one of 'mha'/],
    ['a missing data file', ['data.train.path=/nonexistent/train.txt'], /data\.train\.path: file not found: \/nonexistent\/train\.txt/],
    ['seqLen beyond the model context', ['data.seqLen=64'], /data\.seqLen: 64 exceeds model\.maxSeqLen \(16\)/],
  ])('%s exits non-zero naming the dotted path, and creates no run directory', async (_what, overrides, message) => {
    const w = workspace();
    const r = await cli('train', '--config', w.config, ...overrides);
    expect(r.code).not.toBe(0);
    expect(r.text).toMatch(message);
    expect(existsSync(w.runs)).toBe(false);
  });

  it('a missing config file is named', async () => {
    const r = await cli('train', '--config', '/nope/x.yaml');
    expect(r.code).not.toBe(0);
    expect(r.text).toMatch(/config file not found: \/nope\/x\.yaml/);
  });

  it('the real binary exits with a non-zero status', () => {
    const w = workspace();
    const bin = resolve(__dirname, '../bin/tsformer.mjs');
    const p = spawnSync(process.execPath, [bin, 'validate', '--config', w.config, 'model.nLayers=two'], { encoding: 'utf8' });
    expect(p.status).toBe(2);
    expect(p.stderr).toMatch(/model\.nLayers: Invalid input: expected number/);
    const ok = execFileSync(process.execPath, [bin, 'validate', '--config', w.config, 'train.steps=3'], { encoding: 'utf8' });
    expect(ok).toMatch(/steps: 3/);
  });
});

describe('train, checkpoint, resume, sample, eval', () => {
  it('resuming with --resume auto after stopping at step k gives bit-identical weights and losses (cpu)', async () => {
    const a = workspace();
    expect((await cli('train', '--config', a.config)).code).toBe(0);
    const b = workspace();
    const first = await cli('train', '--config', b.config, '--stop-at', '3');
    expect(first.code).toBe(0);
    expect(first.text).toMatch(/stopped at step 3/);
    // without --resume an existing run is refused
    const again = await cli('train', '--config', b.config);
    expect(again.code).not.toBe(0);
    expect(again.text).toMatch(/already has checkpoints .* --resume auto/);
    const second = await cli('train', '--config', b.config, '--resume', 'auto');
    expect(second.text).not.toMatch(/error/);
    expect(second.code).toBe(0);
    expect(second.text).toMatch(/resumed from .* at step 3/);

    const final = (runs: string) => readFileSync(join(ckpt(runs), 'step-00000008', 'model.safetensors'));
    expect(Buffer.compare(final(a.runs), final(b.runs))).toBe(0);
    const opt = (runs: string) => readFileSync(join(ckpt(runs), 'step-00000008', 'optimizer.safetensors'));
    expect(Buffer.compare(opt(a.runs), opt(b.runs))).toBe(0);
    const losses = (runs: string) => metrics(runs).filter((m) => m.type === 'train').map((m) => [m.step, m.loss]);
    expect(losses(b.runs)).toEqual(losses(a.runs));
    expect(losses(a.runs)).toHaveLength(8);
    const val = (runs: string) => metrics(runs).filter((m) => m.type === 'eval').map((m) => m.valLoss);
    expect(val(b.runs)).toEqual(val(a.runs));
  });

  it('writes complete step directories, falls back past a corrupt one, samples and evaluates', async () => {
    const w = workspace();
    const r = await cli('train', '--config', w.config);
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/validation loss/);
    expect(r.text).toMatch(/sample \(step 8/);
    const steps = readdirSync(ckpt(w.runs)).filter((d) => d.startsWith('step-')).sort();
    expect(steps).toEqual(['step-00000002', 'step-00000004', 'step-00000006', 'step-00000008']);
    expect(readdirSync(join(ckpt(w.runs), 'step-00000008')).sort()).toEqual(['config.yaml', 'manifest.json', 'model.safetensors', 'optimizer.safetensors', 'trainer-state.json']);
    const state = JSON.parse(readFileSync(join(ckpt(w.runs), 'step-00000008', 'trainer-state.json'), 'utf8'));
    expect(state).toMatchObject({ step: 8, tokensSeen: 8 * 4 * 16, optimizerStep: 8, backend: 'cpu', loader: { seed: 7 } });
    expect(state.rng).toHaveLength(4);
    expect(existsSync(join(w.runs, 'tiny', 'samples', 'step-8.txt'))).toBe(true);
    // a run directory of another kind (no model: in its config) and one with a broken config are listed, not fatal
    mkdirSync(join(w.runs, 'distilled'));
    writeFileSync(join(w.runs, 'distilled', 'config.yaml'), 'name: distilled\nteacher: { run: runs/tiny }\n');
    mkdirSync(join(w.runs, 'broken'));
    writeFileSync(join(w.runs, 'broken', 'config.yaml'), 'model: [unclosed\n');
    const listed = await cli('runs', w.runs);
    expect(listed.code).toBe(0);
    expect(listed.text).toMatch(/\| tiny \| mha\(h2\) \| rope \| 8 \| 512 \| \d\.\d{4} \| \d\.\d{4} \| finished \|/);
    expect(listed.text).toMatch(/\| distilled \| \(distillation run\) \|/);
    expect(listed.text).toMatch(/\| broken \| \(unreadable config: /);

    const s = await cli('sample', '--run', join(w.runs, 'tiny'), '--prompt', 'the jury', '--max-new-tokens', '12', '--temperature', '0');
    expect(s.code).toBe(0);
    expect(s.text).toMatch(/--- sample \(step 8\) ---\nthe jury/);

    // corrupt the newest step: sample/eval fall back to step 6 with a warning naming step 8
    const f = join(ckpt(w.runs), 'step-00000008', 'model.safetensors');
    const bytes = readFileSync(f);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    writeFileSync(f, bytes);
    const e = await cli('eval', '--run', join(w.runs, 'tiny'));
    expect(e.code).toBe(0);
    expect(e.text).toMatch(/warning: .*step-00000008/);
    expect(e.text).toMatch(/step 6: validation loss \d+\.\d+ nats\/byte/);
    // asking for the corrupt step explicitly fails, naming the file
    const bad = await cli('train', '--config', w.config, 'train.steps=10', '--resume', join(ckpt(w.runs), 'step-00000008'));
    expect(bad.code).not.toBe(0);
    expect(bad.text).toMatch(/model\.safetensors/);
  });

  it('refuses a run directory another live process is training, and takes over a stale lock', async () => {
    const w = workspace();
    const { mkdirSync, writeFileSync: write } = await import('node:fs');
    mkdirSync(join(w.runs, 'tiny'), { recursive: true });
    write(join(w.runs, 'tiny', 'train.lock'), String(process.ppid));
    const busy = await cli('train', '--config', w.config);
    expect(busy.code).not.toBe(0);
    expect(busy.text).toMatch(/is being trained by process \d+/);
    write(join(w.runs, 'tiny', 'train.lock'), '999999999');
    const r = await cli('train', '--config', w.config, 'train.steps=2');
    expect(r.code).toBe(0);
    expect(existsSync(join(w.runs, 'tiny', 'train.lock'))).toBe(false);
  });

  it('stops on a non-finite loss with a clear message and keeps the last good checkpoint', async () => {
    const w = workspace({
      train: { steps: 30, batchSize: 4, optimizer: { type: 'adamw', lr: 1e9, weightDecay: 0 }, schedule: { type: 'constant' }, clipGradNorm: 0, logEvery: 1, evalEvery: 0 },
      checkpoint: { every: 1, keepLast: 2 },
    });
    const r = await cli('train', '--config', w.config);
    expect(r.code).toBe(1);
    expect(r.text).toMatch(/training stopped at step (\d+): the (loss|gradient norm) is (NaN|Infinity)\. Nothing was saved for this step; the last good checkpoint is step \d+/);
    const failed = Number(/training stopped at step (\d+)/.exec(r.text)![1]);
    const steps = readdirSync(ckpt(w.runs)).filter((d) => d.startsWith('step-'));
    expect(steps.at(-1)).toBe(`step-${String(failed - 1).padStart(8, '0')}`);
    expect(tf.memory().numTensors).toBeLessThan(1000);
  });
});
