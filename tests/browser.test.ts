import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser } from 'playwright-core';
import { bundle, launchChromium, repoRoot, watchedPage } from './chromium.js';
import { plotCommand, seriesColor } from '../apps/trainer/src/plot.js';
import { writeReport } from '../apps/trainer/src/report.js';

const BROWSER_SAFE = ['core', 'layers', 'positional', 'ops', 'attention', 'model'];

let browser: Browser;
beforeAll(async () => {
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
});

describe('the browser-safe packages', () => {
  it('bundle for the browser with nothing Node-only (esbuild, platform browser, no externals)', async () => {
    // One entry re-exporting all six: a Node builtin or a native module anywhere in them fails the build.
    const dir = mkdtempSync(join(tmpdir(), 'tsformer-browser-'));
    const entry = join(dir, 'entry.ts');
    writeFileSync(entry, BROWSER_SAFE.map((p) => `export * as ${p} from '${resolve(repoRoot, 'packages', p, 'src/index.ts')}';`).join('\n'));
    const { inputs } = await bundle(entry, { metafile: true });
    for (const p of BROWSER_SAFE) expect(inputs.some((i) => i.includes(`packages/${p}/src/index.ts`)), p).toBe(true);
    // `(disabled):fs` is a dependency's own browser-field stub; anything else Node-only is a failure
    const nodeOnly = inputs.filter((i) => /^node:|\/(tfjs-node|tfjs-node-gpu|webgpu)\/|\.node$/.test(i));
    expect(nodeOnly).toEqual([]);
  });

  it('train and generate in headless chromium on the cpu backend (examples/browser)', async () => {
    const { js } = await bundle(resolve(repoRoot, 'examples/browser/main.ts'));
    const { page, errors, requests } = await watchedPage(browser);
    await page.route('http://localhost/**', (route) =>
      route.request().url().endsWith('/bundle.js')
        ? route.fulfill({ contentType: 'text/javascript', body: js })
        : route.fulfill({ contentType: 'text/html', body: readFileSync(resolve(repoRoot, 'examples/browser/index.html'), 'utf8') }),
    );
    await page.goto('http://localhost/index.html');
    // the page runs the example itself (12 steps) and writes the result into #out
    await page.waitForFunction(() => /^(backend|error)/.test(document.getElementById('out')?.textContent ?? ''), undefined, { timeout: 90_000 });
    const shown = await page.textContent('#out');
    expect(shown).toMatch(/^backend cpu\nloss [\d. ]+\nsample "hello /);
    const r = await page.evaluate(() => (globalThis as unknown as { tsformerExample(n: number): Promise<Record<string, unknown>> }).tsformerExample(8));
    expect(r.backend).toBe('cpu');
    const losses = r.losses as number[];
    expect(losses).toHaveLength(8);
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(losses[0]).toBeGreaterThan(5); // ~ln 256 at init
    expect(losses[7]!).toBeLessThan(losses[0]! - 0.5);
    expect(r.cached).toHaveLength(12);
    expect(r.uncached).toEqual(r.cached);
    expect(r.leakedTensors).toBe(0);
    expect(errors).toEqual([]);
    expect(requests.filter((u) => !u.startsWith('http://localhost/'))).toEqual([]);
    await page.close();
  });
});

/** A run directory with two evaluations, a resume, samples and a distillation evaluation beside it. */
function fixtureRun(root: string, name: string, scale: number, distill = false): string {
  const dir = join(root, name);
  mkdirSync(join(dir, 'samples'), { recursive: true });
  const lines: string[] = [];
  for (let step = 10; step <= 60; step += 10) {
    lines.push(JSON.stringify({ type: 'train', step, tokens: step * 512, loss: scale * (3 - step / 40), lr: 1e-3 * (1 - step / 100), tokensPerSec: 1000 + step, elapsed: step / 10 }));
    if (step % 30 === 0) lines.push(JSON.stringify({ type: 'eval', step, tokens: step * 512, valLoss: scale * (3.1 - step / 40) }));
  }
  // a resume from step 30 repeats steps 40.. (the later lines win)
  lines.push(JSON.stringify({ type: 'train', step: 40, tokens: 40 * 512, loss: scale * 1.9, lr: 6e-4, tokensPerSec: 990, elapsed: 4 }));
  if (distill) lines.push(JSON.stringify({ type: 'stage1', step: 2, tokens: 2048, loss: 0.11, lr: 0.01, perLayer: [0.01, 0.02] }), JSON.stringify({ type: 'stage1', step: 4, tokens: 4096, loss: 0.1, lr: 0.01, perLayer: [0.009, 0.018] }));
  writeFileSync(join(dir, 'metrics.jsonl'), lines.join('\n') + '\n');
  writeFileSync(join(dir, 'config.yaml'), `name: ${name}\nmodel:\n  vocabSize: 256\n  dModel: 16\n  nLayers: 2\n  maxSeqLen: 16\n  attention: { type: mha, numHeads: 2 }\ntrain:\n  steps: 60\n  batchSize: 4\n  optimizer: { type: adamw, lr: 0.001 }\n`);
  writeFileSync(join(dir, 'summary.json'), JSON.stringify({ status: 'finished', step: 60, backend: 'cpu', wallSeconds: 6, valLoss: scale * 1.6 }));
  writeFileSync(join(dir, 'samples', 'step-60.txt'), 'the jury <said> & more\n');
  if (distill) {
    writeFileSync(join(dir, 'eval.md'), '### eval\n\n| model | val loss | val perplexity |\n|---|---:|---:|\n| teacher (softmax) | 1.9296 | 6.887 |\n| after stage 2 (LoRA) | 2.1072 | 8.225 |\n');
    writeFileSync(join(dir, 'eval-layers.svg'), '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><polyline class="series" data-name="stage 1" points="0,0 10,10"/></svg>');
  }
  return dir;
}

describe('what a person sees of runs', () => {
  it('report.html renders in chromium without errors or network, with the expected series and sections', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tsformer-report-'));
    const dir = fixtureRun(root, 'run-a', 1, true);
    const html = readFileSync(writeReport(dir), 'utf8');
    expect(html).not.toMatch(/<script|https?:\/\/(?!www\.w3\.org)/); // self-contained
    const { page, errors, requests } = await watchedPage(browser);
    await page.setContent(html, { waitUntil: 'load' });
    const seen = await page.evaluate(() => ({
      sections: Array.from(document.querySelectorAll('section')).map((s) => s.id),
      charts: Array.from(document.querySelectorAll('#plots g.chart')).map((g) => g.getAttribute('data-title')),
      series: Array.from(document.querySelectorAll('#plots figure[data-x="tokens"] polyline.series')).map((p) => [p.getAttribute('data-name'), p.getAttribute('points')!.trim().split(/\s+/).length]),
      stage: Array.from(document.querySelectorAll('#plots figure[data-stage="stage1"] polyline.series')).map((p) => p.getAttribute('data-name')),
      svgSizes: Array.from(document.querySelectorAll('#plots svg')).map((s) => s.getBoundingClientRect().width),
      status: document.getElementById('status')?.textContent,
      evalRows: Array.from(document.querySelectorAll('#eval-md tbody tr')).map((tr) => tr.querySelector('td')?.textContent),
      evalLayers: document.querySelectorAll('#eval-layers svg polyline').length,
      sample: document.querySelector('#samples pre')?.textContent,
    }));
    expect(seen.sections).toEqual(['overview', 'plots', 'throughput', 'distillation', 'samples', 'config']);
    expect(seen.charts).toEqual(['training (dashed) and validation loss', 'learning rate', 'throughput', 'training (dashed) and validation loss', 'learning rate', 'throughput']);
    // steps 10..60 of training (the resumed step 40 once), 2 evaluations, lr and tokens/s at every step
    expect(seen.series).toEqual([['run-a (train)', 6], ['run-a (val)', 2], ['run-a', 6], ['run-a', 6]]);
    expect(seen.stage).toEqual(['stage1 loss', 'layer 0', 'layer 1']);
    expect(seen.svgSizes.every((w) => w > 300)).toBe(true);
    expect(seen.status).toBe('finished');
    expect(seen.evalRows).toEqual(['teacher (softmax)', 'after stage 2 (LoRA)']);
    expect(seen.evalLayers).toBe(1);
    expect(seen.sample).toBe('the jury <said> & more');
    expect(errors).toEqual([]);
    expect(requests.filter((u) => !u.startsWith('about:') && !u.startsWith('data:'))).toEqual([]);
    await page.close();
  });

  it('the PNG of several runs decodes in chromium and shows each run in its colour', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tsformer-png-'));
    const runs = [fixtureRun(root, 'run-a', 1), fixtureRun(root, 'run-b', 1.2)];
    const [svgPath, pngPath] = await plotCommand({ runs, out: join(root, 'all.svg'), metric: 'all', x: 'step' });
    expect(svgPath).toBe(join(root, 'all.svg'));
    const png = readFileSync(pngPath!);
    expect([...png.subarray(1, 4)].map((c) => String.fromCharCode(c)).join('')).toBe('PNG');
    const { page, errors } = await watchedPage(browser);
    await page.setContent('<!doctype html><canvas id="c"></canvas>');
    const colors = [seriesColor(0), seriesColor(1), seriesColor(2)];
    const r = await page.evaluate(
      async ([b64, hexes]) => {
        const img = new Image();
        img.src = `data:image/png;base64,${b64}`;
        await img.decode();
        const c = document.getElementById('c') as HTMLCanvasElement;
        [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
        const ctx = c.getContext('2d')!;
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, c.width, c.height).data;
        const rgb = (hex: string) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        // pixels of each colour (within a small tolerance for antialiasing)
        const counts = (hexes as string[]).map((hex) => {
          const [r, g, b] = rgb(hex);
          let n = 0;
          for (let i = 0; i < data.length; i += 4) if (Math.abs(data[i]! - r!) + Math.abs(data[i + 1]! - g!) + Math.abs(data[i + 2]! - b!) < 30) n++;
          return n;
        });
        let dark = 0; // axis lines and text
        for (let i = 0; i < data.length; i += 4) if (data[i]! + data[i + 1]! + data[i + 2]! < 200) dark++;
        return { w: img.naturalWidth, h: img.naturalHeight, counts, dark };
      },
      [png.toString('base64'), colors] as const,
    );
    // 2 x 2 grid of 720 x 420 charts at scale 2
    expect([r.w, r.h]).toEqual([2880, 1680]);
    expect(r.counts[0]).toBeGreaterThan(2000); // run-a
    expect(r.counts[1]).toBeGreaterThan(2000); // run-b
    expect(r.counts[2]).toBe(0); // no third run
    expect(r.dark).toBeGreaterThan(10_000);
    expect(errors).toEqual([]);
    await page.close();
  });
});
