import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TsformerError } from '@tsformer/core';

export interface Series {
  name: string;
  points: Array<[number, number]>;
  /** Stroke colour; default: the palette colour of the series' index. */
  color?: string;
  /** Dashed line (e.g. training loss beside a solid validation loss of the same run). */
  dashed?: boolean;
}

/** 20 distinct colours (tab10, then darker and earthier tones), so a comparison of many runs never repeats one. */
const COLORS = [
  '#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22',
  '#393b79', '#843c39', '#637939', '#e6550d', '#7b4173', '#8c6d31', '#3182bd', '#31a354', '#636363', '#ad494a',
];

/** The palette colour of the i-th run. */
export function seriesColor(i: number): string {
  return COLORS[i % COLORS.length]!;
}

/** One line of metrics.jsonl (the fields the plots read). */
export interface MetricRecord {
  type: string;
  step: number;
  tokens: number;
  loss?: number;
  valLoss?: number;
  lr?: number;
  tokensPerSec?: number;
  elapsed?: number;
  [key: string]: unknown;
}

/**
 * The records of a run's metrics.jsonl. A resumed run appends again from its resume step, so a
 * (type, step) pair can occur twice: the later line (the one the run continued from) wins.
 */
export function readMetrics(runDir: string): MetricRecord[] {
  const p = join(runDir, 'metrics.jsonl');
  if (!existsSync(p)) throw new TsformerError(`${runDir} has no metrics.jsonl`, 'config');
  const byKey = new Map<string, MetricRecord>();
  for (const line of readFileSync(p, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let m: MetricRecord;
    try {
      m = JSON.parse(line) as MetricRecord;
    } catch {
      continue; // a line cut short by a kill mid-write
    }
    if (typeof m.type !== 'string' || typeof m.step !== 'number') continue;
    const key = `${m.type}:${m.step}`;
    byKey.delete(key);
    byKey.set(key, m);
  }
  return [...byKey.values()].sort((a, b) => a.step - b.step);
}

/** What a plot shows on its y axis. */
export type PlotMetric = 'eval' | 'train' | 'lr' | 'throughput';
/** What a plot shows on its x axis. */
export type PlotX = 'tokens' | 'step';

const METRIC_FIELD: Record<PlotMetric, { type: string; field: keyof MetricRecord; label: string; title: string }> = {
  eval: { type: 'eval', field: 'valLoss', label: 'validation loss (nats/token)', title: 'validation loss' },
  train: { type: 'train', field: 'loss', label: 'training loss (nats/token)', title: 'training loss' },
  lr: { type: 'train', field: 'lr', label: 'learning rate', title: 'learning rate' },
  throughput: { type: 'train', field: 'tokensPerSec', label: 'tokens/s', title: 'throughput' },
};

/** One metric of one run against tokens or steps. `type` overrides the record type (e.g. `stage1`). */
export function seriesOf(records: MetricRecord[], name: string, metric: PlotMetric, x: PlotX = 'tokens', type?: string): Series {
  const f = METRIC_FIELD[metric];
  const points: Array<[number, number]> = [];
  for (const r of records) {
    if (r.type !== (type ?? f.type)) continue;
    const y = r[f.field];
    const xv = x === 'tokens' ? r.tokens : r.step;
    if (typeof y === 'number' && Number.isFinite(y) && typeof xv === 'number') points.push([xv, y]);
  }
  points.sort((a, b) => a[0] - b[0]);
  return { name, points };
}

/** Validation (or training) loss against tokens from each run's metrics.jsonl. */
export function readSeries(runDir: string, kind: 'eval' | 'train'): Series {
  return seriesOf(readMetrics(runDir), basename(runDir), kind);
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * Math.abs(hi); v += step) out.push(+v.toPrecision(12));
  return out;
}

/** A tick label: 1.2k, 3.4M, 2e-4. */
function fmt(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a !== 0 && a < 1e-2) return v.toExponential(1);
  return String(+v.toPrecision(6));
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  xScale?: 'linear' | 'log2';
}

const CHART_W = 720;
const CHART_H = 420;

/** The elements of one chart (no outer <svg>), drawn in a CHART_W x CHART_H box. */
function chartBody(series: Series[], opts: ChartOptions): string[] {
  const W = CHART_W, H = CHART_H, L = 70, R = 170, T = 40, B = 50;
  const log2 = opts.xScale === 'log2';
  if (log2) {
    // Plot log2(x); ticks are labelled with x itself.
    series = series.map((s) => ({ ...s, points: s.points.filter(([x]) => x > 0).map(([x, y]) => [Math.log2(x), y] as [number, number]) }));
  }
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) throw new TsformerError(`nothing to plot: no points for "${opts.title}" in the given runs`, 'config');
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const pad = (y1 - y0 || Math.abs(y1) || 1) * 0.05;
  const [ya, yb] = [y0 - pad, y1 + pad];
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - ya) / (yb - ya)) * (H - T - B);
  const parts: string[] = [
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - R / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title)}</text>`,
  ];
  const xTicks = log2 ? Array.from({ length: Math.floor(x1) - Math.ceil(x0) + 1 }, (_, i) => Math.ceil(x0) + i) : niceTicks(x0, x1);
  for (const t of xTicks) {
    parts.push(`<line x1="${sx(t)}" x2="${sx(t)}" y1="${T}" y2="${H - B}" stroke="#eee"/>`, `<text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${log2 ? String(2 ** t) : fmt(t)}</text>`);
  }
  for (const t of niceTicks(ya, yb)) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`, `<text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  parts.push(
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">${esc(opts.xLabel)}</text>`,
    `<text transform="translate(18 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const c = s.color ?? seriesColor(i);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<polyline class="series" data-name="${esc(s.name)}" fill="none" stroke="${c}" stroke-width="2"${dash} points="${pts}"/>`);
    // markers only where they stay readable
    if (s.points.length <= 60) for (const [x, y] of s.points) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${c}"/>`);
    const ly = T + 10 + i * 18;
    parts.push(`<line x1="${W - R + 12}" x2="${W - R + 34}" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="2"${dash}/>`, `<text x="${W - R + 40}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  return parts;
}

const svgOpen = (w: number, h: number) => `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="12">`;

/** A self-contained SVG line plot: one polyline per series, axes, ticks and a legend. */
export function lineChartSvg(series: Series[], opts: ChartOptions): string {
  return [svgOpen(CHART_W, CHART_H), ...chartBody(series, opts), '</svg>'].join('\n');
}

/** Several charts in one SVG, `cols` per row. */
export function chartGridSvg(charts: Array<{ series: Series[]; opts: ChartOptions }>, cols = 2): string {
  const rows = Math.ceil(charts.length / cols);
  const w = CHART_W * Math.min(cols, charts.length);
  const h = CHART_H * rows;
  const parts = [svgOpen(w, h), `<rect width="${w}" height="${h}" fill="white"/>`];
  charts.forEach((c, i) => {
    parts.push(`<g class="chart" data-title="${esc(c.opts.title)}" transform="translate(${(i % cols) * CHART_W} ${Math.floor(i / cols) * CHART_H})">`, ...chartBody(c.series, c.opts), '</g>');
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/**
 * Renders an SVG to PNG with resvg (a Rust SVG renderer; `@resvg/resvg-js` ships prebuilt
 * binaries on npm, so no browser, no Cairo and no network are needed). Text uses the system's
 * fonts (DejaVu Sans preferred); `scale` multiplies the SVG's pixel size.
 */
export async function svgToPng(svg: string, scale = 2): Promise<Uint8Array> {
  let mod: { Resvg: new (svg: string, o: object) => { render(): { asPng(): Uint8Array } } };
  try {
    mod = (await import('@resvg/resvg-js')) as unknown as typeof mod;
  } catch (e) {
    throw new TsformerError(`PNG output needs @resvg/resvg-js (npm install -D @resvg/resvg-js; it is a root devDependency of this repository): ${(e as Error).message}`, 'config');
  }
  const r = new mod.Resvg(svg, {
    fitTo: { mode: 'zoom', value: scale },
    background: 'white',
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' },
  });
  return r.render().asPng();
}

/** The charts of `tsformer plot --metric`: `loss` overlays training (dashed) and validation loss; `all` is loss, lr and tokens/s. */
export type PlotChoice = PlotMetric | 'loss' | 'all';
export const PLOT_CHOICES = ['eval', 'train', 'loss', 'lr', 'throughput', 'all'] as const satisfies readonly PlotChoice[];

/** The charts for `choice` over named runs' records; panels where no run has a point are left out. */
export function runCharts(runs: Array<{ name: string; records: MetricRecord[] }>, choice: PlotChoice, x: PlotX = 'tokens'): Array<{ series: Series[]; opts: ChartOptions }> {
  const xLabel = x === 'tokens' ? 'tokens' : 'step';
  const single = (m: PlotMetric) => ({
    series: runs.map((r, i) => ({ ...seriesOf(r.records, r.name, m, x), color: seriesColor(i) })),
    opts: { title: METRIC_FIELD[m].title, xLabel, yLabel: METRIC_FIELD[m].label },
  });
  const loss = {
    series: runs.flatMap((r, i) => [
      { ...seriesOf(r.records, `${r.name} (train)`, 'train', x), color: seriesColor(i), dashed: true },
      { ...seriesOf(r.records, `${r.name} (val)`, 'eval', x), color: seriesColor(i) },
    ]),
    opts: { title: 'training (dashed) and validation loss', xLabel, yLabel: 'loss (nats/token)' },
  };
  const charts = choice === 'all' ? [loss, single('lr'), single('throughput')] : choice === 'loss' ? [loss] : [single(choice)];
  const kept = charts
    .map((c) => ({ ...c, series: c.series.filter((s) => s.points.length > 0) }))
    .filter((c) => c.series.length > 0);
  if (kept.length === 0) throw new TsformerError(`nothing to plot: no ${choice === 'all' ? 'metrics' : METRIC_FIELD[choice === 'loss' ? 'eval' : choice].title} in ${runs.map((r) => r.name).join(', ')}`, 'config');
  return kept;
}

export interface PlotOptions {
  runs: string[];
  /** The SVG's path; the PNG goes beside it (same name, .png) unless `png` is false. */
  out: string;
  metric: PlotChoice;
  x?: PlotX;
  title?: string;
  png?: boolean;
}

/** `tsformer plot`: metrics of several runs overlaid (one colour per run, with a legend), as SVG and PNG. */
export async function plotCommand(o: PlotOptions): Promise<string[]> {
  const runs = o.runs.map((r) => ({ name: basename(r), records: readMetrics(r) }));
  const charts = runCharts(runs, o.metric, o.x ?? 'tokens');
  if (o.title) charts[0]!.opts.title = o.title;
  const svg = charts.length === 1 ? lineChartSvg(charts[0]!.series, charts[0]!.opts) : chartGridSvg(charts);
  const svgPath = o.out.endsWith('.png') ? o.out.replace(/\.png$/, '.svg') : o.out;
  writeFileSync(svgPath, svg);
  const written = [svgPath];
  if (o.png !== false) {
    const pngPath = svgPath.replace(/(\.svg)?$/, '.png');
    writeFileSync(pngPath, await svgToPng(svg));
    written.push(pngPath);
  }
  return written;
}
