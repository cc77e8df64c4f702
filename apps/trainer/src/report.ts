/**
 * `report.html` of a run directory: one self-contained page (inline CSS and SVG, no script, no
 * network) with what a person wants to see of a run: its status and config, the loss, learning
 * rate and throughput plots, samples, and for a distillation run the per-layer error plot and the
 * perplexity tables of its evaluation (eval-layers.svg, eval.md).
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { TsformerError } from '@tsformer/core';
import { chartGridSvg, lineChartSvg, readMetrics, runCharts, seriesColor, seriesOf, type MetricRecord, type Series } from './plot.js';
import { describeConfig, describeModel, runStatus } from './runs.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Inline markdown of eval.md: `code`, **bold**. */
function inline(s: string): string {
  return esc(s)
    .replace(/`([^`]+)`/g, '<code>$1</code>')
    .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>');
}

/** The subset of markdown the run files use (headings, paragraphs, pipe tables) as HTML. */
export function markdownToHtml(md: string): string {
  const out: string[] = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; ) {
    const line = lines[i]!;
    const h = /^(#{1,6})\s+(.*)$/.exec(line);
    if (h) {
      const level = Math.min(6, h[1]!.length + 2); // under the report's own h1/h2
      out.push(`<h${level}>${inline(h[2]!)}</h${level}>`);
      i++;
    } else if (line.trimStart().startsWith('|')) {
      const rows: string[][] = [];
      let align: string[] = [];
      for (; i < lines.length && lines[i]!.trimStart().startsWith('|'); i++) {
        const cells = lines[i]!.trim().replace(/^\||\|$/g, '').split('|').map((c) => c.trim());
        if (cells.every((c) => /^:?-+:?$/.test(c))) align = cells.map((c) => (c.endsWith(':') ? 'right' : 'left'));
        else rows.push(cells);
      }
      const [head, ...body] = rows;
      const td = (tag: string, c: string, j: number) => `<${tag} style="text-align:${align[j] ?? 'left'}">${inline(c)}</${tag}>`;
      out.push(
        '<table>',
        head ? `<thead><tr>${head.map((c, j) => td('th', c, j)).join('')}</tr></thead>` : '',
        `<tbody>${body.map((r) => `<tr>${r.map((c, j) => td('td', c, j)).join('')}</tr>`).join('')}</tbody>`,
        '</table>',
      );
    } else if (line.trim()) {
      const para: string[] = [];
      for (; i < lines.length && lines[i]!.trim() && !/^(#|\s*\|)/.test(lines[i]!); i++) para.push(lines[i]!);
      out.push(`<p>${inline(para.join(' '))}</p>`);
    } else i++;
  }
  return out.join('\n');
}

/** An SVG file's markup, without an XML prolog, for inlining. */
function inlineSvg(path: string): string {
  return readFileSync(path, 'utf8').replace(/<\?xml[^>]*\?>\s*/, '');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

const num = (x: number | undefined, digits = 4) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const int = (x: number | undefined) => (x === undefined ? '-' : Math.round(x).toLocaleString('en-US'));

/** The record types of a distillation run's stages present in its metrics, e.g. ['stage1', 'stage2']. */
function stageTypes(records: MetricRecord[]): string[] {
  return [...new Set(records.map((r) => r.type).filter((t) => /^stage\d+$/.test(t)))].sort();
}

function throughputTable(records: MetricRecord[], summary: Record<string, unknown> | undefined): string {
  const rows: Array<[string, string]> = [];
  for (const type of ['train', ...stageTypes(records)]) {
    const rs = records.filter((r) => r.type === type);
    if (rs.length === 0) continue;
    const last = rs[rs.length - 1]!;
    const tps = rs.map((r) => r.tokensPerSec).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
    const label = type === 'train' ? 'training' : type.replace('stage', 'stage ');
    rows.push([`${label}: steps logged / last step`, `${rs.length} / ${last.step}`], [`${label}: tokens`, int(last.tokens)]);
    if (tps.length) rows.push([`${label}: tokens/s (median, max)`, `${int(median(tps))}, ${int(Math.max(...tps))}`]);
    else if (typeof last.elapsed === 'number' && last.elapsed > 0) rows.push([`${label}: tokens/s (tokens / elapsed)`, int(last.tokens / last.elapsed)]);
  }
  if (summary) {
    if (summary.backend !== undefined) rows.push(['backend', String(summary.backend)]);
    if (typeof summary.wallSeconds === 'number') rows.push(['wall time', `${summary.wallSeconds.toFixed(1)} s`]);
    if (typeof summary.valLoss === 'number') rows.push(['final validation loss', num(summary.valLoss)]);
  }
  return `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</table>`;
}

function samplesHtml(runDir: string, keep = 3): string {
  const dir = join(runDir, 'samples');
  if (!existsSync(dir)) return '<p>No samples (a run writes samples/step-N.txt when it finishes).</p>';
  const files = readdirSync(dir)
    .map((f) => ({ f, step: Number(/^step-(\d+)\.txt$/.exec(f)?.[1] ?? NaN) }))
    .filter((x) => Number.isFinite(x.step))
    .sort((a, b) => b.step - a.step)
    .slice(0, keep);
  if (files.length === 0) return '<p>No samples.</p>';
  return files.map(({ f, step }) => `<h3>step ${step}</h3><pre class="sample">${esc(readFileSync(join(dir, f), 'utf8').trimEnd())}</pre>`).join('\n');
}

/** The report's HTML for a run directory. */
export function buildReport(runDir: string): string {
  if (!existsSync(runDir)) throw new TsformerError(`no run directory ${runDir}`, 'config');
  const name = basename(resolve(runDir));
  const cfgPath = join(runDir, 'config.yaml');
  const hasCfg = existsSync(cfgPath);
  const records = existsSync(join(runDir, 'metrics.jsonl')) ? readMetrics(runDir) : [];
  const summaryPath = join(runDir, 'summary.json');
  let summary: Record<string, unknown> | undefined;
  try {
    summary = existsSync(summaryPath) ? (JSON.parse(readFileSync(summaryPath, 'utf8')) as Record<string, unknown>) : undefined;
  } catch {
    summary = undefined;
  }
  const status = runStatus(runDir);
  const model = hasCfg ? describeModel(cfgPath) : { attention: '-', positional: '-' };
  const evals = records.filter((r) => r.type === 'eval' && typeof r.valLoss === 'number');
  const best = evals.length ? Math.min(...evals.map((r) => r.valLoss!)) : undefined;

  const sections: string[] = [];
  sections.push(`<section id="overview"><h2>Overview</h2><table class="kv">
<tr><th>status</th><td id="status">${status}</td></tr>
<tr><th>attention</th><td>${esc(model.attention)}</td></tr>
<tr><th>positional</th><td>${esc(model.positional)}</td></tr>
<tr><th>config</th><td>${esc(hasCfg ? describeConfig(cfgPath) : '-')}</td></tr>
<tr><th>best validation loss</th><td>${num(best)}</td></tr>
</table></section>`);

  // training curves: loss (train dashed, validation solid), learning rate, tokens/s
  const plots: string[] = [];
  if (records.some((r) => r.type === 'train' || r.type === 'eval')) {
    for (const x of ['tokens', 'step'] as const) {
      const charts = runCharts([{ name, records }], 'all', x);
      plots.push(`<figure class="plot" data-x="${x}">${chartGridSvg(charts)}<figcaption>against ${x}</figcaption></figure>`);
    }
  }
  // distillation stages: loss of each stage against its steps, and stage 1's per-layer loss
  for (const type of stageTypes(records)) {
    const series: Series[] = [{ ...seriesOf(records, `${type} loss`, 'train', 'step', type), color: seriesColor(0) }];
    const perLayer = records.filter((r) => r.type === type && Array.isArray(r.perLayer));
    const nLayers = perLayer.length ? (perLayer[0]!.perLayer as number[]).length : 0;
    for (let l = 0; l < nLayers; l++) {
      series.push({ name: `layer ${l}`, points: perLayer.map((r) => [r.step, (r.perLayer as number[])[l]!] as [number, number]), color: seriesColor(l + 1), dashed: true });
    }
    const kept = series.filter((s) => s.points.length > 0);
    if (kept.length) plots.push(`<figure class="plot" data-stage="${type}">${lineChartSvg(kept, { title: `${type.replace('stage', 'stage ')} loss`, xLabel: 'step', yLabel: 'loss' })}</figure>`);
  }
  sections.push(`<section id="plots"><h2>Plots</h2>${plots.length ? plots.join('\n') : '<p>No metrics logged yet.</p>'}</section>`);
  sections.push(`<section id="throughput"><h2>Throughput</h2>${throughputTable(records, summary)}</section>`);

  const evalMd = join(runDir, 'eval.md');
  const evalSvg = join(runDir, 'eval-layers.svg');
  if (existsSync(evalMd) || existsSync(evalSvg)) {
    const parts = ['<section id="distillation"><h2>Distillation evaluation</h2>'];
    if (existsSync(evalSvg)) parts.push(`<figure class="plot" id="eval-layers">${inlineSvg(evalSvg)}<figcaption>attention-output error per layer (eval-layers.svg)</figcaption></figure>`);
    if (existsSync(evalMd)) parts.push(`<div id="eval-md">${markdownToHtml(readFileSync(evalMd, 'utf8'))}</div>`);
    parts.push('</section>');
    sections.push(parts.join('\n'));
  }
  sections.push(`<section id="samples"><h2>Samples</h2>${samplesHtml(runDir)}</section>`);
  if (hasCfg) sections.push(`<section id="config"><h2>Config</h2><details open><summary>config.yaml (resolved)</summary><pre>${esc(readFileSync(cfgPath, 'utf8'))}</pre></details></section>`);

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(name)}: tsformer run report</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1480px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; } th, td { border: 1px solid #ddd; padding: .25em .6em; }
table.kv th { text-align: left; background: #f6f6f6; font-weight: normal; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; white-space: pre-wrap; }
figure.plot { margin: 1em 0; } figure.plot svg { max-width: 100%; height: auto; border: 1px solid #eee; }
</style></head>
<body>
<h1>${esc(name)}</h1>
<p class="meta">${esc(resolve(runDir))} · report written ${new Date().toISOString()}</p>
${sections.join('\n')}
</body></html>
`;
}

/** Writes the report (default `<run>/report.html`); returns its path. */
export function writeReport(runDir: string, out?: string): string {
  const path = out ?? join(runDir, 'report.html');
  writeFileSync(path, buildReport(runDir));
  return path;
}

/** The end of `tsformer train`: writes the report and says where; a failure is a warning, never the run's. */
export function reportAtEnd(runDir: string, out: { info(m: string): void; warn(m: string): void }): void {
  try {
    out.info(`report: ${writeReport(runDir)}`);
  } catch (e) {
    out.warn(`warning: report.html not written: ${(e as Error).message}`);
  }
}
