import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './chromium.js';

const run = promisify(execFile);

/** Runs `npm run example <file> -- args` the way the docs say, without npm's startup: the script's own command line. */
async function example(file: string, ...args: string[]): Promise<{ stdout: string; last: Record<string, unknown> }> {
  const script = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.example!;
  const [cmd, ...pre] = script.split(' ');
  const { stdout } = await run(cmd!, [...pre, join('examples', file), ...args], { cwd: repoRoot, maxBuffer: 1 << 24 });
  const lines = stdout.trim().split('\n');
  return { stdout, last: JSON.parse(lines[lines.length - 1]!) as Record<string, unknown> };
}

describe('examples/', () => {
  it('train-hybrid.ts: a hybrid model from code learns a string', async () => {
    const { stdout, last } = await example('train-hybrid.ts', '--steps', '20');
    expect(stdout).toMatch(/layers gdn, gdn, gdn, softmax/);
    expect(last.firstLoss as number).toBeGreaterThan(5); // ~ln 256
    expect(last.lastLoss as number).toBeLessThan(3.5);
    expect(last.sample as string).toMatch(/^The quick [\s\S]{20,}/);
  });

  it('attention-in-tfjs.ts: Gated DeltaNet inside plain tfjs learns the cycles; its decode equals its forward', async () => {
    const { last } = await example('attention-in-tfjs.ts', '--steps', '80');
    expect(last.firstLoss as number).toBeGreaterThan(2);
    expect(last.lastLoss as number).toBeLessThan(0.5 * (last.uniformLoss as number));
    expect(last.decodeMaxDiff as number).toBeLessThan(1e-4);
  });

  it('generate-from-run.ts: loads the checkpoint of a run that tsformer train wrote (which also wrote report.html)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsformer-example-run-'));
    mkdirSync(join(dir, 'data'));
    writeFileSync(join(dir, 'data', 'train.txt'), 'the jury said the city election was conducted in a manner of praise and thanks.\n'.repeat(60));
    writeFileSync(
      join(dir, 'config.yaml'),
      [
        'name: tiny',
        'seed: 3',
        'backend: cpu',
        `runsDir: ${join(dir, 'runs')}`,
        'model: { vocabSize: 256, dModel: 16, nLayers: 2, maxSeqLen: 16, attention: { type: mha, numHeads: 2 } }',
        `data: { tokenizer: { type: byte }, train: { type: text, path: ${join(dir, 'data', 'train.txt')} }, validation: { type: text, path: ${join(dir, 'data', 'train.txt')} }, seqLen: 16 }`,
        'train: { steps: 6, batchSize: 4, optimizer: { type: adamw, lr: 0.01 }, logEvery: 1, evalEvery: 3, evalBatches: 1 }',
        'checkpoint: { every: 3 }',
        'sample: { prompt: "the ", maxNewTokens: 8 }',
      ].join('\n'),
    );
    await run('node', [join(repoRoot, 'scripts/tsformer.mjs'), 'train', '--config', join(dir, 'config.yaml')], { cwd: repoRoot });
    const runDir = join(dir, 'runs', 'tiny');
    expect(existsSync(join(runDir, 'report.html'))).toBe(true);
    expect(readFileSync(join(runDir, 'report.html'), 'utf8')).toMatch(/<td id="status">finished<\/td>/);
    const { stdout, last } = await example('generate-from-run.ts', runDir, 'the jury', '20');
    expect(stdout).toMatch(/^step 6:\nthe jury/);
    expect(last.step).toBe(6);
    expect(last.tokens).toBe(20);
    expect(last.text as string).toMatch(/^the jury/);
  });
});
