/**
 * `tsformer distill` and `tsformer merge-lora`: the LoLCATs recipe (and its linear-student
 * variants) as commands. A run directory `runs/<name>/` holds
 *
 *   config.yaml           the resolved recipe
 *   metrics.jsonl         one line per logged step of each stage ({ type: 'stage1' | 'stage2', ... })
 *   checkpoints/stage1/   stage-1 steps (or stage1-layers-<i_j_k>/ per --layers shard): the trained
 *                         layers' feature maps / gates, optimizer moments, trainer state
 *   checkpoints/stage2/   stage-2 steps: only the trainable parameters (LoRA factors), moments, state
 *   checkpoints/merged/   `merge-lora`: the whole student with the adapters folded in
 *   eval.json  eval.md  eval-layers.svg   the evaluation (see distill-eval.ts)
 *
 * A stage's last step is marked `done` in its trainer state; a finished stage is read, never
 * retrained. A stage with checkpoints but not done continues only with `--resume auto`.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { TsformerError, tf, type BackendName } from '@tsformer/core';
import { BatchLoader, PackedSequences, type Batch } from '@tsformer/data';
import type { DecoderLM } from '@tsformer/model';
import { AdamW, learningRate, type AdamWConfig, type ScheduleConfig } from '@tsformer/train';
import {
  AttentionTransfer,
  attentionErrors,
  buildStudent,
  layersToConvert,
  lmStep,
  loadPartialState,
  mergeStudentLora,
  parseLayers,
  prepareStage2,
  stage2StateDict,
  worstLayers,
  type LayerError,
  type StudentLM,
} from '@tsformer/distill';
import {
  CheckpointWriter,
  decodeSafetensors,
  encodeSafetensors,
  hostToTensors,
  listCompleteSteps,
  openStore,
  readStep,
  saveStep,
  stepDirName,
  tensorsToHost,
  type CheckpointStore,
  type HostTensor,
  type StepFiles,
} from '@tsformer/checkpoint';
import YAML from 'yaml';
import { ConfigError, loadConfig, type RunConfig } from './config.js';
import { gitCommit, TSFORMER_VERSION } from './checkpointing.js';
import { checkpointPart, loadDistillConfig, resolveDistillConfig, type DistillConfig } from './distill-config.js';
import { evaluateDistill, type DistillEval } from './distill-eval.js';
import { convertFromHf } from './convert.js';
import { loadRun } from './inspect-commands.js';
import { loadSplit, makeTokenizer, runDirOf, s3OptionsOf, trainCommand } from './train-command.js';
import type { Out } from './out.js';

export type DistillStage = '1' | '2' | 'all' | 'eval';

export interface DistillOptions {
  config: string;
  overrides?: string[];
  /** Which stage(s): 1, 2, all (1, 2, then the evaluation; default) or eval (evaluation only). */
  stage?: DistillStage;
  /** Stage 1 on these layers only (a shard): "a:b", "0,3", ... Its result merges with the other shards' in stage 2. */
  layers?: string;
  /** `auto`: continue an unfinished stage from its newest complete checkpoint. */
  resume?: string;
  backend?: BackendName;
  /** Stop the running stage with a checkpoint once it reaches this step (resume with --resume auto). */
  stopAt?: number;
  out: Out;
  signal?: AbortSignal;
}

/** What a distillation stage checkpoint's `trainer-state.json` holds. */
export interface DistillState {
  format: 'tsformer-distill-state/1';
  stage: 1 | 2;
  step: number;
  totalSteps: number;
  /** Tokens this stage has trained on so far. */
  tokensSeen: number;
  optimizerStep: number;
  loader: ReturnType<BatchLoader['state']>;
  /** Stage 1: the layers this store trains; stage 2: the converted layers of the student. */
  layers: number[];
  /** Stage 2: layers kept softmax (by config and by the worst stage-1 error). */
  keptSoftmax?: number[];
  /** The stage finished: its result is final. */
  done: boolean;
  backend: string;
  versions: { tsformer: string; tfjs: string; node: string };
  gitCommit?: string;
  createdAt: string;
}

export interface DistillSummary {
  runDir: string;
  stage1?: { layers: number[]; steps: number; tokens: number; status: 'finished' | 'interrupted' | 'reused' };
  stage2?: { steps: number; tokens: number; status: 'finished' | 'interrupted' | 'reused'; keptSoftmax: number[] };
  eval?: DistillEval;
}

/** Everything a distillation command works with once the teacher and the data are loaded. */
export interface DistillContext {
  config: DistillConfig;
  yaml: string;
  runDir: string;
  teacher: DecoderLM;
  teacherRun: string;
  teacherStep: number;
  /** Tokens the teacher was trained on (from its checkpoint's trainer state). */
  teacherTokens: number;
  /** The teacher run's config with `data:` replaced by the recipe's (when it has one). */
  dataConfig: RunConfig;
  train: PackedSequences;
  validation: PackedSequences;
  /** Layers converted before stage 1 (convert.layers minus convert.keepSoftmax). */
  convert: number[];
  root: string;
  backend: string;
  out: Out;
}

const STATE_FORMAT = 'tsformer-distill-state/1';

/** Where a run's stage stores go: `checkpoint.dir` or `<runsDir>/<name>/checkpoints`. */
function checkpointRoot(config: DistillConfig): string {
  return config.checkpoint.dir ?? join(config.runsDir, config.name, 'checkpoints');
}

function stageStore(ctx: { config: DistillConfig; out: Out }, name: string): CheckpointStore {
  return openStore(`${checkpointRoot(ctx.config).replace(/\/+$/, '')}/${name}`, { s3: s3OptionsOf(checkpointPart(ctx.config), ctx.out) });
}

/** The store name of a stage-1 run over `layers` (all converted layers: `stage1`). */
export function stage1StoreName(layers: readonly number[], all: readonly number[]): string {
  return layers.length === all.length && layers.every((l, i) => l === all[i]) ? 'stage1' : `stage1-layers-${layers.join('_')}`;
}

function parseState(files: ReadonlyMap<string, Uint8Array>, where: string): DistillState {
  const raw = files.get('trainer-state.json');
  if (!raw) throw new TsformerError(`checkpoint ${where} has no trainer-state.json`, 'checkpoint');
  let s: DistillState;
  try {
    s = JSON.parse(new TextDecoder().decode(raw)) as DistillState;
  } catch (e) {
    throw new TsformerError(`${where}/trainer-state.json is not valid JSON (${(e as Error).message})`, 'checkpoint');
  }
  if (s?.format !== STATE_FORMAT) throw new TsformerError(`${where}/trainer-state.json is not a distillation stage state (format ${STATE_FORMAT})`, 'checkpoint');
  return s;
}

interface StagePoint {
  state: DistillState;
  files: Map<string, Uint8Array>;
  where: string;
}

/** The newest complete step of a stage store (undefined when it has none). */
async function newestStep(store: CheckpointStore, out: Out): Promise<StagePoint | undefined> {
  const steps = await listCompleteSteps(store);
  for (let i = steps.length - 1; i >= 0; i--) {
    const where = `${store.location}/${stepDirName(steps[i]!)}`;
    try {
      const files = await readStep(store, steps[i]!);
      return { state: parseState(files, where), files, where };
    } catch (e) {
      if (!(e instanceof TsformerError)) throw e;
      out.warn(`warning: skipping ${where}: ${e.message}`);
    }
  }
  return undefined;
}

/**
 * How a stage starts: `done` (reuse its result), `resume` (from a step), or fresh. A stage with
 * unfinished checkpoints and no `--resume auto` is an error: nothing saved is overwritten.
 */
async function stageStart(store: CheckpointStore, label: string, resume: string | undefined, out: Out): Promise<{ kind: 'fresh' } | ({ kind: 'done' | 'resume' } & StagePoint)> {
  const p = await newestStep(store, out);
  if (!p) return { kind: 'fresh' };
  if (p.state.done) return { kind: 'done', ...p };
  if (resume !== 'auto') {
    throw new TsformerError(`${label} has an unfinished checkpoint (${p.where}, step ${p.state.step} of ${p.state.totalSteps}): pass --resume auto to continue it, or set name=<another> to start a new run`, 'config');
  }
  return { kind: 'resume', ...p };
}

function tensorsOfFile(files: ReadonlyMap<string, Uint8Array>, name: string, where: string): Map<string, HostTensor> {
  const f = files.get(name);
  if (!f) throw new TsformerError(`checkpoint ${where} has no ${name}`, 'checkpoint');
  return decodeSafetensors(f, `${where}/${name}`).tensors;
}

/** Loads host tensors into a student by name (shapes and names checked), then frees the copies. */
function loadInto(student: StudentLM, host: ReadonlyMap<string, HostTensor>, where: string): void {
  const own = student.stateDict();
  const problems: string[] = [];
  for (const [n, t] of host) {
    const mine = own.get(n);
    if (!mine) problems.push(`"${n}" is not a parameter of this student`);
    else if (mine.shape.join(',') !== t.shape.join(',')) problems.push(`"${n}": checkpoint has [${t.shape.join(', ')}], the student has [${mine.shape.join(', ')}]`);
  }
  if (problems.length) throw new TsformerError(`cannot load ${where} into the student (was the recipe changed?)\n  ${problems.join('\n  ')}`, 'checkpoint');
  const ts = hostToTensors(host);
  try {
    loadPartialState(student, ts);
  } finally {
    tf.dispose([...ts.values()]);
  }
}

function sameLayers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Reads the teacher (pretraining it first when the recipe says how), the data, and the layer plan. */
export async function openDistill(config: DistillConfig, yaml: string, o: { resume?: string; out: Out; signal?: AbortSignal }): Promise<DistillContext> {
  const t = config.teacher;
  let teacherRun: string;
  if (t.hf !== undefined) {
    // converted once into the run directory; later commands read that run
    teacherRun = join(config.runsDir, config.name, 'teacher');
    if (!existsSync(join(teacherRun, 'config.yaml'))) {
      o.out.info(`teacher: converting the Hugging Face model ${t.hf} into ${teacherRun}`);
      await convertFromHf({ from: t.hf, runDir: teacherRun, s3: s3OptionsOf(checkpointPart(config), o.out), out: o.out });
    }
  } else teacherRun = t.run!;
  if (t.pretrain !== undefined) {
    // checked before anything trains: the pretraining config must produce teacher.run
    const target = runDirOf(loadConfig(t.pretrain).config);
    if (resolvePath(target) !== resolvePath(teacherRun)) {
      throw new ConfigError('config', [`teacher.pretrain: ${t.pretrain} trains ${target}, but teacher.run is ${teacherRun}`]);
    }
  }
  if (t.pretrain !== undefined && !existsSync(join(teacherRun, 'config.yaml'))) {
    o.out.info(`teacher: ${teacherRun} has no run yet; pretraining it with ${t.pretrain}`);
    const s = await trainCommand({ config: t.pretrain, resume: 'auto', out: o.out, signal: o.signal });
    if (s.status !== 'finished') throw new TsformerError(`teacher pretraining stopped at step ${s.step}; run the command again to continue it`, 'config');
  } else if (t.pretrain !== undefined && !pretrainFinished(teacherRun)) {
    // a run directory without a finished pretraining: continue it (resume auto never overwrites)
    o.out.info(`teacher: continuing the pretraining of ${teacherRun} with ${t.pretrain}`);
    const s = await trainCommand({ config: t.pretrain, resume: 'auto', out: o.out, signal: o.signal });
    if (s.status !== 'finished') throw new TsformerError(`teacher pretraining stopped at step ${s.step}; run the command again to continue it`, 'config');
  }
  const loaded = await loadRun(teacherRun, { step: t.step, backend: config.backend, out: o.out });
  const teacher = loaded.model;
  try {
    const teacherCfg = loaded.config;
    const dataConfig: RunConfig = { ...teacherCfg, data: config.data ? { ...config.data, tokenizer: config.data.tokenizer ?? teacherCfg.data.tokenizer } : teacherCfg.data };
    if (config.data?.tokenizer && JSON.stringify(config.data.tokenizer) !== JSON.stringify(teacherCfg.data.tokenizer)) {
      throw new ConfigError('config', [`data.tokenizer: ${JSON.stringify(config.data.tokenizer)} differs from the teacher's ${JSON.stringify(teacherCfg.data.tokenizer)}`]);
    }
    const tokenizer = await makeTokenizer(dataConfig);
    const train = (await loadSplit(dataConfig, tokenizer, 'train'))!;
    const validation = await loadSplit(dataConfig, tokenizer, 'validation');
    if (!validation) throw new ConfigError('config', ['data.validation: the evaluation needs a validation split (the teacher run has none; add data: to the recipe)']);
    const n = teacher.config.nLayers;
    const convert = layersToConvert(n, { layers: config.convert.layers, keepSoftmax: config.convert.keepSoftmax });
    if (convert.length === 0) throw new ConfigError('config', ['convert: no layer is left to convert']);
    if (config.convert.keepWorst >= convert.length) throw new ConfigError('config', [`convert.keepWorst: ${config.convert.keepWorst} would keep every converted layer (${convert.length}) softmax`]);
    const teacherTokens = await teacherTokensOf(teacherRun, loaded.config, loaded.step, o.out);
    const runDir = join(config.runsDir, config.name);
    return {
      config,
      yaml,
      runDir,
      teacher,
      teacherRun,
      teacherStep: loaded.step,
      teacherTokens,
      dataConfig,
      train,
      validation,
      convert,
      root: checkpointRoot(config),
      backend: tf.getBackend(),
      out: o.out,
    };
  } catch (e) {
    teacher.dispose();
    throw e;
  }
}

function pretrainFinished(run: string): boolean {
  const p = join(run, 'summary.json');
  if (!existsSync(p)) return false;
  try {
    return (JSON.parse(readFileSync(p, 'utf8')) as { status?: string }).status === 'finished';
  } catch {
    return false;
  }
}

async function teacherTokensOf(run: string, cfg: RunConfig, step: number, out: Out): Promise<number> {
  const store = openStore(cfg.checkpoint.dir ?? join(run, 'checkpoints'), { s3: s3OptionsOf(cfg, out) });
  const files = await readStep(store, step);
  const raw = files.get('trainer-state.json');
  const s = raw ? (JSON.parse(new TextDecoder().decode(raw)) as { tokensSeen?: number }) : {};
  return typeof s.tokensSeen === 'number' ? s.tokensSeen : step * cfg.train.batchSize * cfg.train.gradAccum * cfg.data.seqLen;
}

interface StageLoop {
  label: string;
  stage: 1 | 2;
  store: CheckpointStore;
  steps: number;
  batchSize: number;
  gradAccum: number;
  optimizer: AdamW;
  optimizerConfig: AdamWConfig;
  schedule: ScheduleConfig;
  logEvery: number;
  loader: BatchLoader;
  layers: number[];
  keptSoftmax?: number[];
  /** The parameters a checkpoint of this stage holds. */
  weights: () => Map<string, tf.Tensor>;
  /** One optimizer step on micro-batches; returns the loss (and per-layer losses in stage 1). */
  step: (micro: Batch[], lr: number) => Promise<{ loss: number; gradNorm: number; perLayer?: number[] }>;
  from?: StagePoint;
}

/** The step loop both stages share: schedule, logging, checkpoints, stop/abort. */
async function runStageLoop(ctx: DistillContext, s: StageLoop, o: DistillOptions): Promise<{ step: number; tokens: number; done: boolean }> {
  let step = 0;
  let tokens = 0;
  if (s.from) {
    step = s.from.state.step;
    tokens = s.from.state.tokensSeen;
    const moments = hostToTensors(tensorsOfFile(s.from.files, 'optimizer.safetensors', s.from.where));
    try {
      s.optimizer.loadStateDict(moments, s.from.state.optimizerStep);
    } finally {
      tf.dispose([...moments.values()]);
    }
    s.loader.restore(s.from.state.loader);
    dropMetricsAfter(join(ctx.runDir, 'metrics.jsonl'), s.stage, s.layers, step);
    ctx.out.info(`${s.label}: resumed from ${s.from.where} at step ${step} (${tokens.toLocaleString('en-US')} tokens)`);
  }
  const cfg = ctx.config;
  const writer = new CheckpointWriter(s.store, {
    keepLast: cfg.checkpoint.keepLast,
    keepEvery: cfg.checkpoint.keepEvery,
    background: cfg.checkpoint.background,
    onError: (st, e) => ctx.out.warn(`warning: ${s.label} checkpoint ${stepDirName(st)} was not saved (${e.message}); the next one tries again`),
  });
  const metrics = join(ctx.runDir, 'metrics.jsonl');
  const save = async (done: boolean) => {
    const weights = await tensorsToHost(s.weights());
    const moments = await tensorsToHost(s.optimizer.stateDict());
    const state: DistillState = {
      format: STATE_FORMAT,
      stage: s.stage,
      step,
      totalSteps: s.steps,
      tokensSeen: tokens,
      optimizerStep: s.optimizer.step,
      loader: s.loader.state(),
      layers: s.layers,
      ...(s.keptSoftmax ? { keptSoftmax: s.keptSoftmax } : {}),
      done,
      backend: ctx.backend,
      versions: { tsformer: TSFORMER_VERSION, tfjs: tf.version_core, node: process.versions.node },
      ...(gitCommit() ? { gitCommit: gitCommit() } : {}),
      createdAt: new Date().toISOString(),
    };
    const files: StepFiles = {
      'model.safetensors': encodeSafetensors(weights, { producer: 'tsformer' }),
      'optimizer.safetensors': encodeSafetensors(moments, { producer: 'tsformer' }),
      'trainer-state.json': `${JSON.stringify(state, null, 2)}\n`,
      'config.yaml': ctx.yaml,
    };
    await writer.save(step, files);
  };
  const started = performance.now();
  let savedAt = s.from?.state.step ?? -1;
  try {
    while (step < s.steps) {
      if (o.signal?.aborted || (o.stopAt !== undefined && step >= o.stopAt)) break;
      const lr = learningRate(s.schedule, s.optimizerConfig.lr, step, s.steps);
      const micro = Array.from({ length: s.gradAccum }, () => s.loader.next());
      const r = await s.step(micro, lr);
      step++;
      tokens += micro.reduce((n, b) => n + b.batchSize * b.seqLen, 0);
      if (step % s.logEvery === 0 || step === s.steps) {
        const elapsed = (performance.now() - started) / 1000;
        appendFileSync(metrics, `${JSON.stringify({ type: `stage${s.stage}`, layers: s.layers, step, tokens, loss: r.loss, lr, gradNorm: r.gradNorm, ...(r.perLayer ? { perLayer: r.perLayer } : {}), elapsed })}\n`);
        const per = r.perLayer ? ` (per layer ${r.perLayer.map((x) => x.toExponential(2)).join(' ')})` : '';
        ctx.out.info(`${s.label} step ${step}/${s.steps}: loss ${r.loss.toFixed(5)}${per}, lr ${lr.toExponential(2)}, ${tokens.toLocaleString('en-US')} tokens, ${elapsed.toFixed(1)} s`);
      }
      if (step % cfg.checkpoint.every === 0 || step === s.steps) {
        await save(step === s.steps);
        savedAt = step;
      }
      await new Promise<void>((r2) => setImmediate(r2));
    }
    if (step < s.steps && savedAt !== step && step > 0) await save(false);
    await writer.flush();
  } finally {
    await writer.flush().catch(() => undefined);
  }
  if (step < s.steps) ctx.out.info(`${s.label}: stopped at step ${step} of ${s.steps} with a checkpoint in ${s.store.location}; continue with --resume auto`);
  return { step, tokens, done: step === s.steps };
}

/** On resume, drops this stage's (and these layers') metric lines logged after the checkpoint: they are logged again. */
function dropMetricsAfter(path: string, stage: 1 | 2, layers: readonly number[], step: number): void {
  if (!existsSync(path)) return;
  const kept = readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => {
      if (!l.trim()) return false;
      const m = JSON.parse(l) as { type?: string; step?: number; layers?: number[] };
      return !(m.type === `stage${stage}` && sameLayers(m.layers ?? [], layers) && (m.step ?? 0) > step);
    });
  writeFileSync(path, kept.map((l) => `${l}\n`).join(''));
}

function idsOf(b: Batch): tf.Tensor {
  return tf.tensor2d(b.inputs, [b.batchSize, b.seqLen], 'int32');
}

/** Stage 1 over `layers` (all converted layers, or a shard). */
async function stage1(ctx: DistillContext, layers: number[], o: DistillOptions): Promise<NonNullable<DistillSummary['stage1']>> {
  const cfg = ctx.config;
  const name = stage1StoreName(layers, ctx.convert);
  const store = stageStore(ctx, name);
  const label = `stage 1${name === 'stage1' ? '' : ` (layers ${layers.join(', ')})`}`;
  const start = await stageStart(store, label, o.resume, ctx.out);
  if (start.kind === 'done') {
    ctx.out.info(`${label}: finished already (${start.where}); reusing it`);
    return { layers, steps: start.state.step, tokens: start.state.tokensSeen, status: 'reused' };
  }
  if (start.kind === 'resume' && !sameLayers(start.state.layers, layers)) {
    throw new TsformerError(`${start.where} trained layers ${start.state.layers.join(', ')}, not ${layers.join(', ')}`, 'checkpoint');
  }
  const student = buildStudent(ctx.teacher, { convert: ctx.convert, student: cfg.student, seed: cfg.seed, shareProjections: cfg.student.type === 'lolcats' });
  try {
    const transfer = new AttentionTransfer(ctx.teacher, student, { layers, mapLoss: cfg.stage1.mapLoss });
    if (start.kind === 'resume') loadInto(student, tensorsOfFile(start.files, 'model.safetensors', start.where), start.where);
    const report = transfer.report();
    ctx.out.info(`${label}: ${cfg.student.type} student, training ${report.trainable.toLocaleString('en-US')} of ${report.total.toLocaleString('en-US')} parameters (${(report.share * 100).toFixed(3)}%)`);
    const optimizer = new AdamW(transfer.trainableParameters(), cfg.stage1.optimizer);
    try {
      const loader = new BatchLoader({ sequences: ctx.train, batchSize: cfg.stage1.batchSize, seed: cfg.seed + 1 });
      const r = await runStageLoop(
        ctx,
        {
          label,
          stage: 1,
          store,
          steps: cfg.stage1.steps,
          batchSize: cfg.stage1.batchSize,
          gradAccum: cfg.stage1.gradAccum,
          optimizer,
          optimizerConfig: cfg.stage1.optimizer,
          schedule: cfg.stage1.schedule,
          logEvery: cfg.stage1.logEvery,
          loader,
          layers,
          weights: () => transfer.stateDict(),
          step: async (micro, lr) => {
            const ids = micro.map(idsOf);
            try {
              return await transfer.step(optimizer, ids, { lr, clipGradNorm: cfg.stage1.clipGradNorm });
            } finally {
              tf.dispose(ids);
            }
          },
          from: start.kind === 'resume' ? start : undefined,
        },
        o,
      );
      return { layers, steps: r.step, tokens: r.tokens, status: r.done ? 'finished' : 'interrupted' };
    } finally {
      optimizer.dispose();
    }
  } finally {
    student.dispose();
  }
}

export interface Stage1Result {
  /** The merged stage-1 parameters of every converted layer. */
  state: Map<string, HostTensor>;
  tokens: number;
  /** Where each part came from. */
  sources: string[];
}

/**
 * The finished stage-1 result of every converted layer: the `stage1` store, or the shards
 * (`stage1-layers-*`) that together cover the converted layers, merged. Names what is missing.
 */
export async function readStage1(ctx: DistillContext): Promise<Stage1Result> {
  const whole = await newestStep(stageStore(ctx, 'stage1'), ctx.out);
  if (whole?.state.done) {
    return { state: tensorsOfFile(whole.files, 'model.safetensors', whole.where), tokens: whole.state.tokensSeen, sources: [whole.where] };
  }
  const rootStore = openStore(ctx.root, { s3: s3OptionsOf(checkpointPart(ctx.config), ctx.out) });
  const names = [...new Set((await rootStore.list('stage1-layers-')).map((p) => p.split('/')[0]!))].sort();
  const state = new Map<string, HostTensor>();
  const covered = new Map<number, string>();
  const sources: string[] = [];
  const unfinished: string[] = [];
  let tokens = 0;
  for (const name of names) {
    const p = await newestStep(stageStore(ctx, name), ctx.out);
    if (!p) continue;
    if (!p.state.done) {
      unfinished.push(`${p.where} (step ${p.state.step} of ${p.state.totalSteps})`);
      continue;
    }
    for (const l of p.state.layers) {
      if (covered.has(l)) throw new TsformerError(`stage 1 shards overlap: layer ${l} is in ${covered.get(l)} and ${p.where}`, 'checkpoint');
      covered.set(l, p.where);
    }
    for (const [k, t] of tensorsOfFile(p.files, 'model.safetensors', p.where)) state.set(k, t);
    tokens += p.state.tokensSeen;
    sources.push(p.where);
  }
  const missing = ctx.convert.filter((l) => !covered.has(l));
  if (missing.length) {
    const hint = unfinished.length ? `; unfinished: ${unfinished.join(', ')}` : '';
    throw new TsformerError(
      `stage 1 has no finished result for layer${missing.length > 1 ? 's' : ''} ${missing.join(', ')} in ${ctx.root}${hint} (run tsformer distill --stage 1${sources.length ? ' --layers <the missing ones>' : ''})`,
      'config',
    );
  }
  const extra = [...covered.keys()].filter((l) => !ctx.convert.includes(l));
  if (extra.length) throw new TsformerError(`stage 1 shards trained layers ${extra.join(', ')}, which the recipe does not convert`, 'config');
  return { state, tokens, sources };
}

/** The stage-1 student of every converted layer, loaded from the stage-1 result. */
export function stage1Student(ctx: DistillContext, s1: Stage1Result, convert = ctx.convert): StudentLM {
  const student = buildStudent(ctx.teacher, { convert, student: ctx.config.student, seed: ctx.config.seed });
  try {
    const keep = new Set(convert.map((i) => `layers.${i}.`));
    const part = new Map([...s1.state].filter(([k]) => [...keep].some((p) => k.startsWith(p))));
    loadInto(student, part, 'the stage-1 result');
    return student;
  } catch (e) {
    student.dispose();
    throw e;
  }
}

/** Held-out token-id batches for the per-layer errors (the caller disposes them). */
export function heldOutIds(ctx: DistillContext): tf.Tensor[] {
  return valBatches(ctx).map(idsOf);
}

export function valBatches(ctx: DistillContext): Batch[] {
  const bs = Math.min(ctx.config.stage2.batchSize, ctx.validation.length);
  const out: Batch[] = [];
  // evalBatches spreads a capped number of batches over the whole split
  for (let b = 0, available = Math.floor(ctx.validation.length / bs), count = Math.min(available, ctx.config.eval.batches); b < count; b++) {
    const start = Math.floor((b * available) / count) * bs;
    const inputs = new Int32Array(bs * ctx.validation.seqLen);
    const targets = new Int32Array(bs * ctx.validation.seqLen);
    for (let r = 0; r < bs; r++) ctx.validation.copyInto(start + r, inputs, targets, r);
    out.push({ inputs, targets, batchSize: bs, seqLen: ctx.validation.seqLen, epoch: 0 });
  }
  if (out.length === 0) throw new TsformerError(`validation split too small for a batch of ${bs}`, 'data');
  return out;
}

/** Layers kept softmax for stage 2: convert.keepWorst layers with the largest relative stage-1 error. */
async function chooseKept(ctx: DistillContext, s1: Stage1Result): Promise<{ kept: number[]; errors?: LayerError[] }> {
  const k = ctx.config.convert.keepWorst;
  if (k === 0) return { kept: [] };
  const student = stage1Student(ctx, s1);
  const ids = heldOutIds(ctx);
  try {
    const errors = await attentionErrors(ctx.teacher, student, ids);
    const kept = worstLayers(errors, k);
    ctx.out.info(`hybrid: keeping layer${kept.length > 1 ? 's' : ''} ${kept.join(', ')} softmax (largest relative stage-1 error: ${kept.map((l) => errors.find((e) => e.layer === l)!.relative.toExponential(2)).join(', ')})`);
    return { kept, errors };
  } finally {
    tf.dispose(ids);
    student.dispose();
  }
}

/** The stage-2 student: the final converted set, stage-1 parameters loaded, adapters attached. */
export function stage2Student(ctx: DistillContext, s1: Stage1Result, kept: readonly number[]): { student: StudentLM; trainable: ReturnType<typeof prepareStage2>['trainable'] } {
  const convert = ctx.convert.filter((l) => !kept.includes(l));
  const student = stage1Student(ctx, s1, convert);
  try {
    const c = ctx.config.stage2;
    const { trainable } = prepareStage2(student, { rank: c.lora.rank, alpha: c.lora.alpha, dropout: c.lora.dropout, targets: c.lora.targets, trainStudentParams: c.trainStudentParams, seed: ctx.config.seed });
    return { student, trainable };
  } catch (e) {
    student.dispose();
    throw e;
  }
}

async function stage2(ctx: DistillContext, o: DistillOptions): Promise<NonNullable<DistillSummary['stage2']>> {
  const cfg = ctx.config;
  const store = stageStore(ctx, 'stage2');
  const start = await stageStart(store, 'stage 2', o.resume, ctx.out);
  if (start.kind === 'done') {
    ctx.out.info(`stage 2: finished already (${start.where}); reusing it`);
    return { steps: start.state.step, tokens: start.state.tokensSeen, status: 'reused', keptSoftmax: start.state.keptSoftmax ?? [] };
  }
  const s1 = await readStage1(ctx);
  ctx.out.info(`stage 2: stage-1 result from ${s1.sources.join(', ')}`);
  const kept = start.kind === 'resume' ? (start.state.keptSoftmax ?? []) : (await chooseKept(ctx, s1)).kept;
  const { student, trainable } = stage2Student(ctx, s1, kept);
  try {
    if (start.kind === 'resume') {
      if (!sameLayers(start.state.layers, student.converted)) throw new TsformerError(`${start.where} converted layers ${start.state.layers.join(', ')}, the recipe now ${student.converted.join(', ')}`, 'checkpoint');
      loadInto(student, tensorsOfFile(start.files, 'model.safetensors', start.where), start.where);
    }
    const trainableCount = trainable.reduce((n, [, p]) => n + p.variable.size, 0);
    ctx.out.info(`stage 2: LoRA rank ${cfg.stage2.lora.rank} on ${cfg.stage2.lora.targets.join('/')} of layers ${student.converted.join(', ')}: ${trainableCount.toLocaleString('en-US')} trainable parameters`);
    const optimizer = new AdamW(trainable, cfg.stage2.optimizer);
    try {
      const loader = new BatchLoader({ sequences: ctx.train, batchSize: cfg.stage2.batchSize, seed: cfg.seed + 2 });
      const r = await runStageLoop(
        ctx,
        {
          label: 'stage 2',
          stage: 2,
          store,
          steps: cfg.stage2.steps,
          batchSize: cfg.stage2.batchSize,
          gradAccum: cfg.stage2.gradAccum,
          optimizer,
          optimizerConfig: cfg.stage2.optimizer,
          schedule: cfg.stage2.schedule,
          logEvery: cfg.stage2.logEvery,
          loader,
          layers: student.converted,
          keptSoftmax: kept,
          weights: () => stage2StateDict(student),
          step: async (micro, lr) => {
            student.train();
            try {
              return await lmStep(student, optimizer, micro, { lr, clipGradNorm: cfg.stage2.clipGradNorm });
            } finally {
              student.eval();
            }
          },
          from: start.kind === 'resume' ? start : undefined,
        },
        o,
      );
      return { steps: r.step, tokens: r.tokens, status: r.done ? 'finished' : 'interrupted', keptSoftmax: kept };
    } finally {
      optimizer.dispose();
    }
  } finally {
    student.dispose();
  }
}

/** The finished stage-2 result: the adapters (and trainable stage-1 parameters) and the kept layers. */
export async function readStage2(ctx: DistillContext): Promise<{ state: Map<string, HostTensor>; keptSoftmax: number[]; tokens: number; step: number; where: string }> {
  const p = await newestStep(stageStore(ctx, 'stage2'), ctx.out);
  if (!p?.state.done) {
    throw new TsformerError(p ? `stage 2 is unfinished (${p.where}, step ${p.state.step} of ${p.state.totalSteps}): continue it with --stage 2 --resume auto` : `stage 2 has no checkpoint in ${ctx.root}/stage2: run tsformer distill --stage 2`, 'config');
  }
  return { state: tensorsOfFile(p.files, 'model.safetensors', p.where), keptSoftmax: p.state.keptSoftmax ?? [], tokens: p.state.tokensSeen, step: p.state.step, where: p.where };
}

/** The distilled student after stage 2, adapters attached (not merged). */
export async function loadFinalStudent(ctx: DistillContext): Promise<{ student: StudentLM; s1: Stage1Result; s2: Awaited<ReturnType<typeof readStage2>> }> {
  const s1 = await readStage1(ctx);
  const s2 = await readStage2(ctx);
  const { student } = stage2Student(ctx, s1, s2.keptSoftmax);
  try {
    loadInto(student, s2.state, s2.where);
  } catch (e) {
    student.dispose();
    throw e;
  }
  return { student, s1, s2 };
}

function flatten(prefix: string, v: unknown, out: Map<string, string>): void {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flatten(prefix ? `${prefix}.${k}` : k, x, out);
  } else out.set(prefix, JSON.stringify(v));
}

/**
 * A run directory belongs to one recipe: what its saved stages depend on (teacher, student,
 * conversion, data, seed) must not change, or the saved results would be read into a different
 * student. Other settings (steps, learning rates, evaluation) may change; they are listed.
 */
function checkSameRecipe(runDir: string, config: DistillConfig, out: Out): void {
  const p = join(runDir, 'config.yaml');
  if (!existsSync(p)) return;
  const saved = new Map<string, string>();
  const now = new Map<string, string>();
  flatten('', YAML.parse(readFileSync(p, 'utf8')), saved);
  flatten('', config, now);
  const fixed = (k: string) => ['teacher.', 'student.', 'convert.', 'data.', 'seed'].some((f) => k === f || k.startsWith(f));
  const diffs: string[] = [];
  const changed: string[] = [];
  for (const k of [...new Set([...saved.keys(), ...now.keys()])].sort()) {
    const a = saved.get(k);
    const b = now.get(k);
    if (a === b) continue;
    (fixed(k) ? diffs : changed).push(`${k}: ${a ?? '(unset)'} -> ${b ?? '(unset)'}`);
  }
  if (diffs.length) throw new ConfigError(`${runDir} was made with another recipe (set name=<another> for a new run)`, diffs);
  if (changed.length) out.info(`settings changed since ${p}:\n  ${changed.join('\n  ')}`);
}

/** `tsformer distill`. */
export async function distillCommand(o: DistillOptions): Promise<DistillSummary> {
  const stage = o.stage ?? 'all';
  if (!['1', '2', 'all', 'eval'].includes(stage)) throw new ConfigError('command line', [`--stage: expected 1, 2, all or eval, got ${stage}`]);
  if (o.layers !== undefined && stage !== '1') throw new ConfigError('command line', ['--layers: shards are a stage-1 thing; use it with --stage 1 (stage 2 merges the shards)']);
  if (o.resume !== undefined && o.resume !== 'auto') throw new ConfigError('command line', [`--resume: only "auto" is supported for distillation, got ${o.resume}`]);
  const overrides = [...(o.overrides ?? []), ...(o.backend ? [`backend=${o.backend}`] : [])];
  const { config, yaml } = loadDistillConfig(o.config, overrides);
  const ctx = await openDistill(config, yaml, o);
  const summary: DistillSummary = { runDir: ctx.runDir };
  try {
    checkSameRecipe(ctx.runDir, config, o.out);
    mkdirSync(ctx.runDir, { recursive: true });
    writeFileSync(join(ctx.runDir, 'config.yaml'), yaml);
    ctx.out.info(
      `teacher: ${ctx.teacherRun} step ${ctx.teacherStep} (${ctx.teacher.numParameters().toLocaleString('en-US')} parameters, ${ctx.teacherTokens.toLocaleString('en-US')} tokens); ` +
        `student: ${config.student.type} on layers ${ctx.convert.join(', ')}`,
    );
    if (stage === '1' || stage === 'all') {
      const layers = o.layers !== undefined ? parseLayers(o.layers, ctx.teacher.config.nLayers) : ctx.convert;
      const notConverted = layers.filter((l) => !ctx.convert.includes(l));
      if (notConverted.length) throw new ConfigError('command line', [`--layers ${o.layers}: layer${notConverted.length > 1 ? 's' : ''} ${notConverted.join(', ')} ${notConverted.length > 1 ? 'are' : 'is'} not converted by this recipe (converted: ${ctx.convert.join(', ')})`]);
      summary.stage1 = await stage1(ctx, layers, o);
      if (summary.stage1.status === 'interrupted') return summary;
    }
    if (stage === '2' || stage === 'all') {
      summary.stage2 = await stage2(ctx, o);
      if (summary.stage2.status === 'interrupted') return summary;
    }
    if (stage === 'all' || stage === '2' || stage === 'eval') {
      summary.eval = await evaluateDistill(ctx);
    }
    return summary;
  } finally {
    ctx.teacher.dispose();
  }
}

export interface MergeLoraOptions {
  run: string;
  backend?: BackendName;
  out: Out;
}

/**
 * `tsformer merge-lora <run>`: folds the stage-2 adapters into their projections and saves the whole
 * student (teacher layout plus the converted layers' own parameters, no adapter factors) as
 * `checkpoints/merged/step-<stage-2 step>` with the recipe.
 */
export async function mergeLoraCommand(o: MergeLoraOptions): Promise<{ where: string; parameters: number }> {
  const ctx = await openDistillRun(o.run, o);
  const { config, yaml } = ctx;
  try {
    const { student, s2 } = await loadFinalStudent(ctx);
    try {
      const merged = mergeStudentLora(student);
      const host = await tensorsToHost(merged);
      const store = stageStore(ctx, 'merged');
      await saveStep(store, s2.step, {
        'model.safetensors': encodeSafetensors(host, { producer: 'tsformer', format: 'pt' }),
        'merge.json': `${JSON.stringify({ format: 'tsformer-merged-student/1', stage2: s2.where, converted: student.converted, keptSoftmax: s2.keptSoftmax, student: config.student }, null, 2)}\n`,
        'config.yaml': yaml,
      });
      const where = `${store.location}/${stepDirName(s2.step)}`;
      const parameters = [...host.values()].reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
      o.out.info(`merged ${s2.where} into ${where} (${parameters.toLocaleString('en-US')} parameters, no adapter factors)`);
      return { where, parameters };
    } finally {
      student.dispose();
    }
  } finally {
    ctx.teacher.dispose();
  }
}

/** A distillation run's saved recipe, as parsed YAML; undefined when the directory holds none (no config.yaml with a teacher:). */
function distillRecipeOf(run: string): Record<string, unknown> | undefined {
  const p = join(run, 'config.yaml');
  if (!existsSync(p)) return undefined;
  let raw: unknown;
  try {
    raw = YAML.parse(readFileSync(p, 'utf8'));
  } catch {
    return undefined; // not a recipe; the training-run loader names what is wrong with it
  }
  return raw !== null && typeof raw === 'object' && (raw as Record<string, unknown>).teacher !== undefined ? (raw as Record<string, unknown>) : undefined;
}

/** Whether a run directory holds a distillation run (its config.yaml has a teacher:). */
export function isDistillRun(run: string): boolean {
  return distillRecipeOf(run) !== undefined;
}

/** Opens a distillation run from its directory: its saved recipe, the teacher and the data. */
export async function openDistillRun(run: string, o: { backend?: BackendName; out: Out }): Promise<DistillContext> {
  const cfgPath = join(run, 'config.yaml');
  if (!existsSync(cfgPath)) throw new TsformerError(`${run} is not a distillation run directory (no config.yaml)`, 'config');
  const raw = distillRecipeOf(run);
  if (!raw) throw new TsformerError(`${run} is not a distillation run (its config.yaml has no teacher:)`, 'config');
  if (o.backend) raw.backend = o.backend;
  const { config, yaml } = resolveDistillConfig(raw, cfgPath);
  // the run directory given wins over runsDir/name (the run may have been moved)
  return openDistill({ ...config, checkpoint: { ...config.checkpoint, dir: config.checkpoint.dir ?? join(run, 'checkpoints') } }, yaml, { out: o.out });
}

/** A distilled student as `tsformer sample` and `tsformer eval` read it. */
export interface DistilledRun {
  /** The teacher run's config with the recipe's data: tokenizer, splits, sampling settings. */
  config: RunConfig;
  model: StudentLM;
  /** The stage-2 step the student comes from. */
  step: number;
  /** Which student: merged (after merge-lora) or with its adapters. */
  label: string;
  /** Frees the student and the teacher it shares modules with. */
  dispose(): void;
}

/**
 * The student of a finished distillation run: the merged one when `merge-lora` has run, else the
 * stage-2 student with its adapters attached (the same function, up to float rounding).
 */
export async function loadDistilledRun(run: string, o: { backend?: BackendName; out: Out }): Promise<DistilledRun> {
  const ctx = await openDistillRun(run, o);
  try {
    const step = (await readStage2(ctx)).step; // names an unfinished stage 2
    const mergedStep = (await listCompleteSteps(stageStore(ctx, 'merged'))).at(-1);
    const merged = mergedStep === step;
    if (mergedStep !== undefined && !merged) {
      ctx.out.warn(`warning: the merged student (step ${mergedStep}) is not stage 2's newest (step ${step}): using the adapters; run tsformer merge-lora ${run} again`);
    }
    const student = merged ? await loadMergedStudent(ctx) : (await loadFinalStudent(ctx)).student;
    student.eval();
    o.out.info(`backend: ${ctx.backend}; distilled student (${ctx.config.student.type} on layers ${student.converted.join(', ')}), stage 2 step ${step}, ${merged ? 'merged' : 'adapters attached'}`);
    return {
      config: ctx.dataConfig,
      model: student,
      step,
      label: `distilled, stage 2 step ${step}${merged ? ', merged' : ''}`,
      dispose: () => {
        student.dispose();
        ctx.teacher.dispose();
      },
    };
  } catch (e) {
    ctx.teacher.dispose();
    throw e;
  }
}

/** Reads the merged student of a run (after merge-lora): a student without adapters, weights loaded. */
export async function loadMergedStudent(ctx: DistillContext): Promise<StudentLM> {
  const store = stageStore(ctx, 'merged');
  const steps = await listCompleteSteps(store);
  if (steps.length === 0) throw new TsformerError(`no merged student in ${store.location}: run tsformer merge-lora ${ctx.runDir}`, 'config');
  const where = `${store.location}/${stepDirName(steps.at(-1)!)}`;
  const files = await readStep(store, steps.at(-1)!);
  const info = JSON.parse(new TextDecoder().decode(files.get('merge.json')!)) as { converted: number[] };
  const student = buildStudent(ctx.teacher, { convert: info.converted, student: ctx.config.student, seed: ctx.config.seed });
  try {
    loadInto(student, tensorsOfFile(files, 'model.safetensors', where), where);
  } catch (e) {
    student.dispose();
    throw e;
  }
  return student;
}
