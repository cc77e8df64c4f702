import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MANIFEST_FILE, MANIFEST_FORMAT } from '@tsformer/checkpoint';
import { cli } from './helpers.js';
import { listRuns } from '../src/runs.js';
import { readMetrics } from '../src/plot.js';
import { markdownToHtml } from '../src/report.js';

function run(root: string, name: string, o: { finished?: boolean; checkpoint?: 'complete' | 'partial'; lock?: number }): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.yaml'), 'model: { vocabSize: 256, dModel: 16, nLayers: 2, maxSeqLen: 16, attention: { type: mha, numHeads: 2 } }\ndata: { seqLen: 16, tokenizer: { type: byte } }\ntrain: { steps: 40, batchSize: 4, optimizer: { type: adamw, lr: 0.01 } }\n');
  const lines = [
    { type: 'train', step: 10, tokens: 640, loss: 3, lr: 0.01, tokensPerSec: 100 },
    { type: 'eval', step: 10, tokens: 640, valLoss: 2.9 },
    { type: 'train', step: 20, tokens: 1280, loss: 2.5, lr: 0.008, tokensPerSec: 110 },
    { type: 'eval', step: 20, tokens: 1280, valLoss: 2.4 },
    // resumed from step 10: step 20 again, with other numbers (these win)
    { type: 'train', step: 20, tokens: 1280, loss: 2.6, lr: 0.008, tokensPerSec: 90 },
    { type: 'eval', step: 20, tokens: 1280, valLoss: 2.5 },
  ];
  writeFileSync(join(dir, 'metrics.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n{"type":"train","st'); // and a line cut short by a kill
  if (o.finished) writeFileSync(join(dir, 'summary.json'), JSON.stringify({ status: 'finished' }));
  if (o.checkpoint) {
    const step = join(dir, 'checkpoints', 'step-00000020');
    mkdirSync(step, { recursive: true });
    if (o.checkpoint === 'complete') writeFileSync(join(step, MANIFEST_FILE), JSON.stringify({ format: MANIFEST_FORMAT, step: 20, files: {} }));
  }
  if (o.lock !== undefined) writeFileSync(join(dir, 'train.lock'), String(o.lock));
  return dir;
}

describe('tsformer runs and report', () => {
  it('statuses: finished, resumable (complete checkpoint), interrupted (none or partial), running (live lock only)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tsformer-runs-'));
    run(root, 'done', { finished: true, checkpoint: 'complete' });
    run(root, 'resumable', { checkpoint: 'complete' });
    run(root, 'partial', { checkpoint: 'partial' });
    run(root, 'bare', {});
    run(root, 'stale-lock', { checkpoint: 'complete', lock: 2 ** 22 + 12345 }); // no such process
    run(root, 'live', { lock: process.ppid });
    // checkpoints on S3: nothing local, but the trainer's summary names the complete step it saved
    const s3 = run(root, 's3', {});
    writeFileSync(join(s3, 'summary.json'), JSON.stringify({ status: 'interrupted', step: 20, lastCheckpoint: 's3://bucket/runs/s3/step-00000020' }));
    const s3none = run(root, 's3-none', {});
    writeFileSync(join(s3none, 'summary.json'), JSON.stringify({ status: 'interrupted', step: 20 }));
    const byName = Object.fromEntries(listRuns(root).map((r) => [r.name, r]));
    expect(Object.fromEntries(Object.entries(byName).map(([k, r]) => [k, r.status]))).toEqual({
      bare: 'interrupted',
      done: 'finished',
      live: 'running',
      partial: 'interrupted',
      resumable: 'resumable',
      s3: 'resumable',
      's3-none': 'interrupted',
      'stale-lock': 'resumable',
    });
    // the resumed step 20 counts once, with its later numbers
    expect(byName.done).toMatchObject({ step: 20, tokens: 1280, finalValLoss: 2.5, bestValLoss: 2.5, summary: 'd16 L2 ctx16 vocab256; 40 steps x 4 x 16, adamw lr 0.01; byte tokens' });
    const r = await cli('runs', root);
    expect(r.code).toBe(0);
    expect(r.text).toMatch(/\| status \| config \|/);
    expect(r.text).toMatch(/\| resumable \| mha\(h2\) \| - \| 20 \| 1,280 \| 2\.5000 \| 2\.5000 \| resumable \| d16 L2 ctx16 vocab256; 40 steps x 4 x 16/);
  });

  it('plot --metric loss: training dashed and validation solid per run, resumed steps once; --no-png writes the SVG only', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tsformer-plot2-'));
    const a = run(root, 'a', { finished: true });
    const b = run(root, 'b', { finished: true });
    expect(readMetrics(a).filter((m) => m.type === 'train').map((m) => m.loss)).toEqual([3, 2.6]);
    const out = join(root, 'loss.svg');
    const r = await cli('plot', a, b, '--metric', 'loss', '--x', 'step', '--no-png', '--out', out);
    expect(r.code).toBe(0);
    expect(existsSync(join(root, 'loss.png'))).toBe(false);
    const svg = readFileSync(out, 'utf8');
    const series = [...svg.matchAll(/<polyline class="series" data-name="([^"]+)" fill="none" stroke="(#[0-9a-f]{6})" stroke-width="2"( stroke-dasharray="6 4")? points="([^"]+)"/g)];
    expect(series.map((m) => [m[1], m[2], Boolean(m[3]), m[4]!.split(' ').length])).toEqual([
      ['a (train)', '#1f77b4', true, 2],
      ['a (val)', '#1f77b4', false, 2],
      ['b (train)', '#d62728', true, 2],
      ['b (val)', '#d62728', false, 2],
    ]);
    expect(svg).toMatch(/>step<\/text>/);
    const none = await cli('plot', a, '--metric', 'throughput', '--out', join(root, 'x.svg'), '--no-png');
    expect(none.code).toBe(0);
    const empty = mkdtempSync(join(tmpdir(), 'tsformer-plot3-'));
    writeFileSync(join(empty, 'metrics.jsonl'), '');
    const failed = await cli('plot', empty, '--out', join(root, 'y.svg'));
    expect(failed.code).not.toBe(0);
    expect(failed.text).toMatch(/nothing to plot/);
  });

  it('tsformer report writes report.html; eval.md tables become HTML tables', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tsformer-report2-'));
    const dir = run(root, 'r', { finished: true });
    const r = await cli('report', dir);
    expect(r.code).toBe(0);
    const html = readFileSync(join(dir, 'report.html'), 'utf8');
    expect(html).toMatch(/<td id="status">finished<\/td>/);
    // tokens/s at step 10: 100, at step 20: 90 (the resumed line)
    expect(html).toMatch(/training: tokens\/s \(median, max\)<\/th><td>95, 100<\/td>/);
    expect(markdownToHtml('## T\n\nSome `code` and **bold**.\n\n| a | b |\n|---|---:|\n| x | 1 |\n')).toBe(
      '<h4>T</h4>\n<p>Some <code>code</code> and <strong>bold</strong>.</p>\n<table>\n<thead><tr><th style="text-align:left">a</th><th style="text-align:right">b</th></tr></thead>\n<tbody><tr><td style="text-align:left">x</td><td style="text-align:right">1</td></tr></tbody>\n</table>',
    );
  });
});
