import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { benchAttention, benchDecode, crossovers, type AttentionBenchRow } from '../src/bench-attention.js';
import { memoryOut } from '../src/out.js';

const row = (variant: string, T: number, trainMs: number): AttentionBenchRow => ({ variant, T, forwardMs: trainMs / 3, trainMs, peakBytes: 0, cacheNumbersPerToken: 0 });

describe('bench-attention', () => {
  it('states the crossover length against the reference', () => {
    const rows = [
      row('mha', 256, 10), row('mha', 512, 40), row('mha', 1024, 160), row('mha', 2048, NaN),
      row('lin', 256, 30), row('lin', 512, 60), row('lin', 1024, 120), row('lin', 2048, 240),
      row('fast', 256, 5), row('fast', 512, 10),
      row('slow', 256, 50), row('slow', 512, 100),
      // faster at 256 only by accident, then slower, then faster for good
      row('noisy', 256, 9), row('noisy', 512, 50), row('noisy', 1024, 100),
    ];
    const lines = crossovers(rows, 'mha');
    expect(lines.find((l) => l.includes('lin:'))).toMatch(/lin: faster from T=1024 on \(slower at T=512; mha does not run at T=2048\)/);
    expect(lines.find((l) => l.includes('fast:'))).toMatch(/fast: faster at every measured length \(4\.00x mha's speed at T=512\)/);
    expect(lines.find((l) => l.includes('slow:'))).toMatch(/slow: not faster at any measured length up to T=512/);
    expect(lines.find((l) => l.includes('noisy:'))).toMatch(/noisy: faster from T=1024 on/);
    expect(crossovers(rows, 'absent')).toEqual([]);
  });

  it('times modules per length, plots time per token, and decodes with a growing KV cache vs a constant state', async () => {
    const out = memoryOut();
    const svg = join(mkdtempSync(join(tmpdir(), 'tsformer-bench-')), 'attn.svg');
    const rows = await benchAttention({ backend: 'cpu', lengths: [16, 32], variants: ['mha', 'gated-deltanet'], repeats: 1, svg, out });
    expect(rows.map((r) => `${r.variant}@${r.T}`)).toEqual(['mha@16', 'mha@32', 'gated-deltanet@16', 'gated-deltanet@32']);
    for (const r of rows) expect(r.trainMs).toBeGreaterThan(0);
    expect(out.text()).toMatch(/\| mha \| 32 \| [\d.]+ \| [\d.]+ \| \d+ \|/);
    expect(out.text()).toMatch(/crossover against mha/);
    const plot = readFileSync(svg, 'utf8');
    expect([...plot.matchAll(/data-name="([^"]+)"/g)].map((m) => m[1])).toEqual(['mha', 'gated-deltanet']);

    const decode = await benchDecode({ backend: 'cpu', tokens: 40, variants: ['mha', 'gla', 'deltanet'], out });
    const bytes = (v: string) => decode.find((r) => r.variant === v)!.cacheBytes;
    expect(bytes('mha').map(([n]) => n)).toEqual([5, 10, 20, 40]);
    // mha: 2 * 8 heads * 32 * 4 bytes per token
    expect(bytes('mha').map(([, b]) => b)).toEqual([5, 10, 20, 40].map((n) => n * 2 * 256 * 4));
    for (const v of ['gla', 'deltanet']) {
      const b = bytes(v).map(([, x]) => x);
      expect(new Set(b).size, `${v} cache is constant`).toBe(1);
      expect(b[0]).toBeGreaterThan(0);
    }
    expect(out.text()).toMatch(/\| deltanet \| \d+ \|/);
  });
});
