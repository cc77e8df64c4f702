import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { MANIFEST_FILE, MANIFEST_FORMAT } from '@tsformer/checkpoint';
import type { Out } from './out.js';
import { readMetrics } from './plot.js';

export interface RunRow {
  name: string;
  /** The attention of each layer kind, e.g. `mha(h4,kv2,w32)` or `global:mha(h4) local:mha(h4,w32)`. */
  attention: string;
  positional: string;
  step: number;
  tokens: number;
  finalValLoss?: number;
  bestValLoss?: number;
  status: RunStatus;
  /** Model size and training setup, e.g. `d128 L4 ctx256 byte | 300 steps x 8 x 256, adamw lr 3e-3`. */
  summary: string;
}

/**
 * finished: summary.json says so (a distillation run: eval.json is there); running: train.lock names a live process; resumable: stopped before its
 * last step with a complete checkpoint (a step directory whose manifest parses) under
 * <run>/checkpoints, or its summary names the checkpoint it saved wherever checkpoint.dir points (S3);
 * interrupted: stopped with none; no metrics: nothing logged yet.
 */
export type RunStatus = 'finished' | 'interrupted' | 'resumable' | 'running' | 'no metrics';

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
export function describeModel(path: string): { attention: string; positional: string } {
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

/** A one-line summary of a run's config (model size, data, steps, optimizer); '-' for what is absent. */
export function describeConfig(path: string): string {
  try {
    const cfg = YAML.parse(readFileSync(path, 'utf8')) as Record<string, any>;
    const parts: string[] = [];
    const m = cfg?.model;
    if (m) parts.push(`d${m.dModel} L${m.nLayers} ctx${m.maxSeqLen} vocab${m.vocabSize}${m.layers?.pattern ? ` pattern[${(m.layers.pattern as string[]).join(',')}]` : ''}`);
    if (cfg?.teacher?.run) parts.push(`teacher ${cfg.teacher.run}`);
    if (cfg?.student?.type) parts.push(`student ${cfg.student.type}`);
    const t = cfg?.train;
    if (t) parts.push(`${t.steps} steps x ${t.batchSize}${cfg?.data?.seqLen ? ` x ${cfg.data.seqLen}` : ''}, ${t.optimizer?.type ?? '?'} lr ${t.optimizer?.lr ?? '?'}`);
    if (cfg?.data?.tokenizer?.type) parts.push(`${cfg.data.tokenizer.type} tokens`);
    return parts.join('; ') || '-';
  } catch {
    return '-';
  }
}

/** Whether a complete checkpoint (a step directory with a parseable manifest) is under <run>/checkpoints (one level of stage folders included). */
export function hasCompleteCheckpoint(runDir: string): boolean {
  const root = join(runDir, 'checkpoints');
  if (!existsSync(root)) return false;
  const dirs = [root, ...readdirSync(root, { withFileTypes: true }).filter((d) => d.isDirectory() && !d.name.startsWith('step-')).map((d) => join(root, d.name))];
  for (const dir of dirs) {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      if (!d.isDirectory() || !d.name.startsWith('step-')) continue;
      try {
        const m = JSON.parse(readFileSync(join(dir, d.name, MANIFEST_FILE), 'utf8')) as { format?: string };
        if (m.format === MANIFEST_FORMAT) return true;
      } catch {
        // no manifest or a partial one: not complete
      }
    }
  }
  return false;
}

/** Whether train.lock names a live process other than this one (a crash's leftover lock does not count; this process's own lock is the run reporting on itself). */
function lockHeldByOther(lock: string): boolean {
  if (!existsSync(lock)) return false;
  const pid = Number(readFileSync(lock, 'utf8'));
  if (!Number.isInteger(pid) || pid <= 0) return true;
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

/** The status of a run directory (see RunStatus). */
export function runStatus(runDir: string): RunStatus {
  if (lockHeldByOther(join(runDir, 'train.lock'))) return 'running';
  const summary = join(runDir, 'summary.json');
  let savedElsewhere = false; // an interrupted run whose trainer reported a complete checkpoint (on S3, say)
  try {
    if (existsSync(summary)) {
      const sm = JSON.parse(readFileSync(summary, 'utf8')) as { status: string; lastCheckpoint?: string };
      if (sm.status === 'finished') return 'finished';
      savedElsewhere = sm.status === 'interrupted' && typeof sm.lastCheckpoint === 'string';
    }
  } catch {
    // a summary cut short: treated as absent
  }
  // a distillation run writes eval.json after its last stage
  if (existsSync(join(runDir, 'eval.json'))) return 'finished';
  if (!existsSync(join(runDir, 'metrics.jsonl'))) return 'no metrics';
  return savedElsewhere || hasCompleteCheckpoint(runDir) ? 'resumable' : 'interrupted';
}

/** One row per run directory under `runsDir`: what it is, how far it got, its validation loss. */
export function listRuns(runsDir: string): RunRow[] {
  if (!existsSync(runsDir)) return [];
  return readdirSync(runsDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(runsDir, d.name, 'config.yaml')))
    .map((d) => {
      const dir = join(runsDir, d.name);
      const cfg = join(dir, 'config.yaml');
      const row: RunRow = { name: d.name, ...describeModel(cfg), step: 0, tokens: 0, status: runStatus(dir), summary: describeConfig(cfg) };
      if (existsSync(join(dir, 'metrics.jsonl'))) {
        for (const r of readMetrics(dir)) {
          if (r.type === 'train' && r.step >= row.step) [row.step, row.tokens] = [r.step, r.tokens];
          if (r.type === 'eval' && r.valLoss !== undefined) {
            row.finalValLoss = r.valLoss;
            row.bestValLoss = Math.min(row.bestValLoss ?? Infinity, r.valLoss);
          }
        }
      }
      return row;
    });
}

/** `tsformer runs`: a table of the runs in a directory. */
export function runsCommand(o: { runsDir: string; out: Out }): RunRow[] {
  const rows = listRuns(o.runsDir);
  o.out.info('| run | attention | positional | steps | tokens | final val loss | best val loss | status | config |');
  o.out.info('|---|---|---|---:|---:|---:|---:|---|---|');
  const f = (x?: number) => (x === undefined ? '-' : x.toFixed(4));
  for (const r of rows) {
    o.out.info(`| ${r.name} | ${r.attention} | ${r.positional} | ${r.step} | ${r.tokens.toLocaleString('en-US')} | ${f(r.finalValLoss)} | ${f(r.bestValLoss)} | ${r.status} | ${r.summary} |`);
  }
  return rows;
}
