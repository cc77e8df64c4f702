import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import type { Out } from './out.js';

export interface RunRow {
  name: string;
  /** The attention of each layer kind, e.g. `mha(h4,kv2,w32)` or `global:mha(h4) local:mha(h4,w32)`. */
  attention: string;
  positional: string;
  step: number;
  tokens: number;
  finalValLoss?: number;
  bestValLoss?: number;
  status: 'finished' | 'interrupted' | 'running' | 'no metrics';
}

function describeAttention(a: Record<string, unknown>): string {
  const parts = [`h${a.numHeads}`];
  if (a.numKvHeads !== undefined) parts.push(`kv${a.numKvHeads}`);
  if (a.window !== undefined) parts.push(`w${a.window}`);
  if (a.score === 'sigmoid') parts.push('sigmoid');
  if (a.type === 'mla') parts.push(`latent${a.kvLoraRank}+rope${a.qkRopeHeadDim}`);
  return `${a.type}(${parts.join(',')})`;
}

/**
 * The attention and positional columns of a run from its config.yaml; runs without a `model:` (a
 * distillation run names its teacher instead) or with a config this version cannot read say so
 * rather than failing the listing.
 */
function describeModel(path: string): { attention: string; positional: string } {
  try {
    const cfg = YAML.parse(readFileSync(path, 'utf8')) as { model?: Record<string, any>; teacher?: unknown };
    const m = cfg?.model;
    if (!m) return { attention: cfg?.teacher !== undefined ? '(distillation run)' : '(no model in config)', positional: '-' };
    const attention = m.layers
      ? Object.entries(m.layers.defs as Record<string, any>).map(([k, def]) => `${k}:${describeAttention(def.attention)}`).join(' ')
      : describeAttention(m.attention);
    const positional = m.layers
      ? Object.entries(m.layers.defs as Record<string, any>).map(([k, def]) => `${k}:${(def.positional ?? m.positional)?.type ?? '-'}`).join(' ')
      : (m.positional?.type ?? '-');
    return { attention, positional };
  } catch (e) {
    return { attention: `(unreadable config: ${(e as Error).message.split('\n')[0]})`, positional: '-' };
  }
}

/** One row per run directory under `runsDir`: what it is, how far it got, its validation loss. */
export function listRuns(runsDir: string): RunRow[] {
  if (!existsSync(runsDir)) return [];
  return readdirSync(runsDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(runsDir, d.name, 'config.yaml')))
    .map((d) => {
      const dir = join(runsDir, d.name);
      const row: RunRow = { name: d.name, ...describeModel(join(dir, 'config.yaml')), step: 0, tokens: 0, status: 'no metrics' };
      const mp = join(dir, 'metrics.jsonl');
      if (existsSync(mp)) {
        for (const line of readFileSync(mp, 'utf8').split('\n')) {
          if (!line.trim()) continue;
          const r = JSON.parse(line) as { type: string; step: number; tokens: number; valLoss?: number };
          if (r.type === 'train' && r.step >= row.step) [row.step, row.tokens] = [r.step, r.tokens];
          if (r.type === 'eval' && r.valLoss !== undefined) {
            row.finalValLoss = r.valLoss;
            row.bestValLoss = Math.min(row.bestValLoss ?? Infinity, r.valLoss);
          }
        }
        const summary = join(dir, 'summary.json');
        row.status = existsSync(join(dir, 'train.lock'))
          ? 'running'
          : existsSync(summary) && (JSON.parse(readFileSync(summary, 'utf8')) as { status: string }).status === 'finished'
            ? 'finished'
            : 'interrupted';
      }
      return row;
    });
}

/** `tsformer runs`: a table of the runs in a directory. */
export function runsCommand(o: { runsDir: string; out: Out }): RunRow[] {
  const rows = listRuns(o.runsDir);
  o.out.info('| run | attention | positional | steps | tokens | final val loss | best val loss | status |');
  o.out.info('|---|---|---|---:|---:|---:|---:|---|');
  const f = (x?: number) => (x === undefined ? '-' : x.toFixed(4));
  for (const r of rows) {
    o.out.info(`| ${r.name} | ${r.attention} | ${r.positional} | ${r.step} | ${r.tokens.toLocaleString('en-US')} | ${f(r.finalValLoss)} | ${f(r.bestValLoss)} | ${r.status} |`);
  }
  return rows;
}
