import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TsformerError } from '@tsformer/core';

export interface Series {
  name: string;
  points: Array<[number, number]>;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

/** Validation (or training) loss against tokens from each run's metrics.jsonl. */
export function readSeries(runDir: string, kind: 'eval' | 'train'): Series {
  const p = join(runDir, 'metrics.jsonl');
  if (!existsSync(p)) throw new TsformerError(`${runDir} has no metrics.jsonl`, 'config');
  const points: Array<[number, number]> = [];
  for (const line of readFileSync(p, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const m = JSON.parse(line) as { type: string; tokens: number; valLoss?: number; loss?: number };
    if (m.type !== kind) continue;
    const y = kind === 'eval' ? m.valLoss : m.loss;
    if (y !== undefined) points.push([m.tokens, y]);
  }
  points.sort((a, b) => a[0] - b[0]);
  return { name: basename(runDir), points };
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const step0 = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

/** A self-contained SVG line plot: one polyline per series, axes, ticks and a legend. */
export function lineChartSvg(series: Series[], opts: { title: string; xLabel: string; yLabel: string; xScale?: 'linear' | 'log2' }): string {
  const W = 720, H = 420, L = 70, R = 170, T = 40, B = 50;
  const log2 = opts.xScale === 'log2';
  if (log2) {
    // Plot log2(x); ticks are labelled with x itself.
    series = series.map((s) => ({ name: s.name, points: s.points.filter(([x]) => x > 0).map(([x, y]) => [Math.log2(x), y] as [number, number]) }));
  }
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) throw new TsformerError('nothing to plot: no points in the given runs', 'config');
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const pad = (y1 - y0 || 1) * 0.05;
  const [ya, yb] = [y0 - pad, y1 + pad];
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - ya) / (yb - ya)) * (H - T - B);
  const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - R / 2}" y="22" text-anchor="middle" font-size="15">${esc(opts.title)}</text>`,
  ];
  const xTicks = log2 ? Array.from({ length: Math.floor(x1) - Math.ceil(x0) + 1 }, (_, i) => Math.ceil(x0) + i) : niceTicks(x0, x1);
  const xLabel = (t: number) => {
    const v = log2 ? 2 ** t : t;
    return v >= 1e6 ? `${+(v / 1e6).toFixed(2)}M` : v >= 1e3 ? `${+(v / 1e3).toFixed(1)}k` : String(v);
  };
  for (const t of xTicks) {
    parts.push(`<line x1="${sx(t)}" x2="${sx(t)}" y1="${T}" y2="${H - B}" stroke="#eee"/>`, `<text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${xLabel(t)}</text>`);
  }
  for (const t of niceTicks(ya, yb)) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`, `<text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`);
  }
  parts.push(
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">${esc(opts.xLabel)}</text>`,
    `<text transform="translate(18 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length]!;
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<polyline class="series" data-name="${esc(s.name)}" fill="none" stroke="${c}" stroke-width="2" points="${pts}"/>`);
    for (const [x, y] of s.points) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${c}"/>`);
    const ly = T + 10 + i * 18;
    parts.push(`<line x1="${W - R + 12}" x2="${W - R + 34}" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="2"/>`, `<text x="${W - R + 40}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** `tsformer plot`: validation (or training) loss of several runs against tokens, as one SVG. */
export function plotCommand(o: { runs: string[]; out: string; metric: 'eval' | 'train'; title?: string }): string {
  const series = o.runs.map((r) => readSeries(r, o.metric));
  const svg = lineChartSvg(series, {
    title: o.title ?? (o.metric === 'eval' ? 'validation loss' : 'training loss'),
    xLabel: 'tokens',
    yLabel: o.metric === 'eval' ? 'validation loss (nats/token)' : 'training loss (nats/token)',
  });
  writeFileSync(o.out, svg);
  return o.out;
}
