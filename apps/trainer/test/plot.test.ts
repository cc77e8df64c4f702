import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

describe('tsformer plot', () => {
  it('overlays the validation loss of several runs in one SVG with a legend', async () => {
    const d = mkdtempSync(join(tmpdir(), 'tsformer-plot-'));
    for (const [name, losses] of [['run-a', [3, 2.5, 2.2]], ['run-b', [3.1, 2.4, 2.0]]] as const) {
      mkdirSync(join(d, name));
      const lines = losses.map((l, i) => JSON.stringify({ type: 'eval', step: (i + 1) * 10, tokens: (i + 1) * 1000, valLoss: l, valPerplexity: Math.exp(l) }));
      lines.push(JSON.stringify({ type: 'train', step: 30, tokens: 3000, loss: 1.9 }));
      writeFileSync(join(d, name, 'metrics.jsonl'), lines.join('\n') + '\n');
    }
    const out = join(d, 'val.svg');
    const r = await cli('plot', join(d, 'run-a'), join(d, 'run-b'), '--out', out);
    expect(r.code).toBe(0);
    const svg = readFileSync(out, 'utf8');
    const series = [...svg.matchAll(/<polyline class="series" data-name="([^"]+)"[^>]* points="([^"]+)"/g)];
    expect(series.map((m) => m[1])).toEqual(['run-a', 'run-b']);
    expect(series.map((m) => m[2]!.split(' ').length)).toEqual([3, 3]);
    expect(svg).toMatch(/>run-b<\/text>/);
    const missing = await cli('plot', join(d, 'nope'), '--out', out);
    expect(missing.code).not.toBe(0);
    expect(missing.text).toMatch(/has no metrics\.jsonl/);
  });
});
