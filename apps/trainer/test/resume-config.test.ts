// Resuming with a config that differs from the checkpoint's: shapes are checked parameter by
// parameter before anything loads; settings that may change are allowed and listed.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalStore, listCompleteSteps } from '@tsformer/checkpoint';
import { cli, workspace } from './helpers.js';

describe('resume with a changed config', () => {
  it('names each parameter whose shape differs, with both shapes, and changes nothing saved', async () => {
    const w = workspace();
    expect((await cli('train', '--config', w.config, '--stop-at', '2')).code).toBe(0);
    const ckpt = join(w.runs, 'tiny', 'checkpoints');
    const before = readFileSync(join(ckpt, 'step-00000002', 'model.safetensors'));

    const wider = await cli('train', '--config', w.config, '--resume', 'auto', 'model.dModel=32');
    expect(wider.code).toBe(2);
    expect(wider.text).toMatch(/cannot resume from .*step-00000002: the model does not match the checkpoint/);
    expect(wider.text).toMatch(/parameter "layers\.0\.attn\.q_proj\.weight": checkpoint has shape \[16, 16\], the config gives \[32, 32\]/);

    const deeper = await cli('train', '--config', w.config, '--resume', 'auto', 'model.nLayers=3');
    expect(deeper.code).toBe(2);
    expect(deeper.text).toMatch(/parameter "layers\.2\.[^"]+" \[[\d, ]+\] is missing from the checkpoint/);

    expect(await listCompleteSteps(new LocalStore(ckpt))).toEqual([2]);
    expect(readFileSync(join(ckpt, 'step-00000002', 'model.safetensors')).equals(before)).toBe(true);
  });

  it('allows and lists settings that may change (total steps, logging)', async () => {
    const w = workspace();
    expect((await cli('train', '--config', w.config, '--stop-at', '2')).code).toBe(0);
    const r = await cli('train', '--config', w.config, '--resume', 'auto', 'train.steps=6', 'train.logEvery=2');
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/settings changed since that checkpoint:\n {2}train\.logEvery: 1 -> 2\n {2}train\.steps: 8 -> 6\n/);
    expect(r.text).toMatch(/finished at step 6/);
  });

  it('says so when it stops before training a step, instead of naming a checkpoint that does not exist', async () => {
    const w = workspace();
    const r = await cli('train', '--config', w.config, '--stop-at', '0');
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/stopped at step 0; no step trained yet, nothing saved/);
  });
});
