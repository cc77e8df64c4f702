/**
 * The evaluation `tsformer distill` prints and saves in the run directory:
 *
 *   eval.json        every number below
 *   eval.md          the perplexity table, the per-layer errors and the decoding table (markdown)
 *   eval-layers.svg  per-layer relative attention-output error: swapped, after stage 1, after stage 2
 *
 * Perplexities are on held-out batches (eval.batches of the validation split): the teacher, the
 * swapped model with no training (fresh feature maps), after stage 1 ("ppl@0") and after stage 2.
 * Gap closed = (ppl_swap - ppl) / (ppl_swap - ppl_teacher). Per-layer errors are teacher-forced
 * (every layer sees the teacher's input), absolute and relative to the teacher output's variance.
 * Decoding: greedy, one token at a time from a one-token prompt, with each model's cache; tokens/s
 * over the whole run up to each length and over the last segment, and the cache bytes at that length.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '@tsformer/core';
import type { AttentionCache } from '@tsformer/attention';
import { disposeCaches } from '@tsformer/model';
import { attentionErrors, buildStudent, lmEvaluate, mergeStudentLora, parameterReport, type LanguageModel, type LayerError, type StudentLM } from '@tsformer/distill';
import { lineChartSvg } from './plot.js';
import { heldOutIds, loadFinalStudent, readStage1, stage1Student, valBatches, type DistillContext } from './distill-command.js';
import { reportAtEnd } from './report.js';

export interface DecodePoint {
  /** Generated tokens so far. */
  tokens: number;
  /** Tokens/s from the first token to this one. */
  tokensPerSecond: number;
  /** Tokens/s since the previous reported length. */
  segmentTokensPerSecond: number;
  /** Bytes held by the decoding caches (all layers) at this length. */
  cacheBytes: number;
}

export interface LayerRow {
  layer: number;
  /** Teacher output variance (per element). */
  teacherVariance: number;
  swap: { mse: number; relative: number };
  stage1: { mse: number; relative: number };
  /** Null for layers kept softmax in stage 2, or when stage 2 has not finished. */
  stage2: { mse: number; relative: number } | null;
}

export interface DistillEval {
  format: 'tsformer-distill-eval/1';
  run: string;
  backend: string;
  teacher: { run: string; step: number; parameters: number; tokens: number };
  student: { type: string; converted: number[]; keptSoftmax: number[]; parameters: number };
  heldOut: { batches: number; sequences: number; tokens: number };
  perplexity: { teacher: number; swap: number; stage1: number; stage2: number | null };
  loss: { teacher: number; swap: number; stage1: number; stage2: number | null };
  /** Share of the teacher-vs-swap perplexity gap closed. */
  gapClosed: { stage1: number; stage2: number | null };
  /** Stage-2 perplexity over the teacher's, minus 1. */
  pplVsTeacher: number;
  trainable: { stage1: number; stage1Share: number; stage2: number | null; stage2Share: number | null };
  tokens: { stage1: number; stage2: number | null; total: number; teacher: number; shareOfTeacher: number };
  layers: LayerRow[];
  decode: { lengths: number[]; teacher: DecodePoint[]; student: DecodePoint[]; studentIs: 'merged stage 2' | 'stage 1' };
  /** The issue's targets, checked against the numbers above. */
  targets: { pplWithin10Percent: boolean; gapClosedAtLeast80Percent: boolean; tokensAtMost5PercentOfTeacher: boolean };
  wallSeconds: number;
}

function cacheBytes(caches: readonly AttentionCache[]): number {
  let n = 0;
  for (const c of caches) for (const t of c.tensors) n += t.size * (t.dtype === 'float32' || t.dtype === 'int32' ? 4 : 1);
  return n;
}

/** Greedy decoding from token `first`, reporting speed and cache bytes at each length. */
export async function decodeBench(model: LanguageModel, lengths: readonly number[], first = 84): Promise<DecodePoint[]> {
  const marks = [...new Set(lengths)].sort((a, b) => a - b);
  const out: DecodePoint[] = [];
  if (marks.length === 0) return out;
  const wasTraining = model.training;
  model.eval();
  let caches: AttentionCache[] | undefined = model.initCaches();
  let token = first;
  const t0 = performance.now();
  let tPrev = t0;
  let nPrev = 0;
  try {
    for (let n = 1; n <= marks.at(-1)!; n++) {
      const ids = tf.tensor2d([[token]], [1, 1], 'int32');
      const r = model.forward(ids, { caches });
      ids.dispose();
      disposeCaches(caches);
      caches = r.caches!;
      const next = tf.tidy(() => r.logits.reshape([-1]).argMax());
      token = (await next.data())[0]!;
      tf.dispose([next, r.logits]);
      if (n === marks[out.length]) {
        const now = performance.now();
        out.push({ tokens: n, tokensPerSecond: n / ((now - t0) / 1000), segmentTokensPerSecond: (n - nPrev) / ((now - tPrev) / 1000), cacheBytes: cacheBytes(caches) });
        tPrev = now;
        nPrev = n;
      }
    }
  } finally {
    disposeCaches(caches);
    model.train(wasTraining);
  }
  return out;
}

const ratio = (swap: number, teacher: number, x: number) => (swap - teacher === 0 ? 1 : (swap - x) / (swap - teacher));

function errorsBy(errors: readonly LayerError[]): Map<number, LayerError> {
  return new Map(errors.map((e) => [e.layer, e]));
}

/** Runs the evaluation, writes eval.json / eval.md / eval-layers.svg and prints the tables. */
export async function evaluateDistill(ctx: DistillContext): Promise<DistillEval> {
  const started = performance.now();
  const out = ctx.out;
  out.info('evaluation: held-out perplexities and per-layer errors...');
  const batches = valBatches(ctx);
  const ids = heldOutIds(ctx);
  const students: StudentLM[] = [];
  try {
    const s1 = await readStage1(ctx);
    let final: Awaited<ReturnType<typeof loadFinalStudent>> | undefined;
    try {
      final = await loadFinalStudent(ctx);
      students.push(final.student);
    } catch (e) {
      out.warn(`evaluation: no finished stage 2 (${(e as Error).message}); reporting stage 1 only`);
    }
    const kept = final?.s2.keptSoftmax ?? [];
    const finalConvert = ctx.convert.filter((l) => !kept.includes(l));
    const cfg = ctx.config;

    const teacher = await lmEvaluate(ctx.teacher, batches);
    // the swapped model: the same construction and seed as stage 1's, no training
    const swapAll = buildStudent(ctx.teacher, { convert: ctx.convert, student: cfg.student, seed: cfg.seed });
    students.push(swapAll);
    const swapErrors = errorsBy(await attentionErrors(ctx.teacher, swapAll, ids));
    const swapFinal = sameSet(finalConvert, ctx.convert) ? swapAll : buildStudent(ctx.teacher, { convert: finalConvert, student: cfg.student, seed: cfg.seed });
    if (swapFinal !== swapAll) students.push(swapFinal);
    const swap = await lmEvaluate(swapFinal, batches);
    const s1All = stage1Student(ctx, s1);
    students.push(s1All);
    const s1Errors = errorsBy(await attentionErrors(ctx.teacher, s1All, ids));
    const s1Final = sameSet(finalConvert, ctx.convert) ? s1All : stage1Student(ctx, s1, finalConvert);
    if (s1Final !== s1All) students.push(s1Final);
    const stage1 = await lmEvaluate(s1Final, batches);
    const stage2 = final ? await lmEvaluate(final.student, batches) : undefined;
    const s2Errors = final ? errorsBy(await attentionErrors(ctx.teacher, final.student, ids)) : undefined;

    // each variable once (the student shares the teacher's embeddings, norms, MLPs and kept layers)
    const total = parameterReport(final?.student ?? s1Final).total;
    const teacherParams = ctx.teacher.numParameters();
    const studentParams = total;
    const stage1Trainable = [...s1.state.values()].reduce((n, t) => n + t.data.length, 0);
    const stage2Trainable = final ? [...final.s2.state.values()].reduce((n, t) => n + t.data.length, 0) : null;
    const tokens2 = final ? final.s2.tokens : null;
    const tokensTotal = s1.tokens + (tokens2 ?? 0);

    let decode: DistillEval['decode'] = { lengths: cfg.eval.decodeLengths, teacher: [], student: [], studentIs: final ? 'merged stage 2' : 'stage 1' };
    if (cfg.eval.decodeLengths.length) {
      out.info(`evaluation: decoding ${Math.max(...cfg.eval.decodeLengths).toLocaleString('en-US')} tokens with the teacher and with the student...`);
      const teacherDecode = await decodeBench(ctx.teacher, cfg.eval.decodeLengths);
      const decoder = final ? final.student : s1Final;
      if (final) mergeStudentLora(final.student); // deployment form: adapters folded in (the logits are the same)
      const studentDecode = await decodeBench(decoder, cfg.eval.decodeLengths);
      decode = { ...decode, teacher: teacherDecode, student: studentDecode };
    }

    const heldTokens = batches.reduce((n, b) => n + b.batchSize * b.seqLen, 0);
    const result: DistillEval = {
      format: 'tsformer-distill-eval/1',
      run: ctx.runDir,
      backend: ctx.backend,
      teacher: { run: ctx.teacherRun, step: ctx.teacherStep, parameters: teacherParams, tokens: ctx.teacherTokens },
      student: { type: cfg.student.type, converted: finalConvert, keptSoftmax: [...ctx.config.convert.keepSoftmax, ...kept].sort((a, b) => a - b), parameters: studentParams },
      heldOut: { batches: batches.length, sequences: batches.reduce((n, b) => n + b.batchSize, 0), tokens: heldTokens },
      perplexity: { teacher: teacher.perplexity, swap: swap.perplexity, stage1: stage1.perplexity, stage2: stage2?.perplexity ?? null },
      loss: { teacher: teacher.loss, swap: swap.loss, stage1: stage1.loss, stage2: stage2?.loss ?? null },
      gapClosed: {
        stage1: ratio(swap.perplexity, teacher.perplexity, stage1.perplexity),
        stage2: stage2 ? ratio(swap.perplexity, teacher.perplexity, stage2.perplexity) : null,
      },
      pplVsTeacher: (stage2 ?? stage1).perplexity / teacher.perplexity - 1,
      trainable: {
        stage1: stage1Trainable,
        stage1Share: stage1Trainable / total,
        stage2: stage2Trainable,
        stage2Share: stage2Trainable === null ? null : stage2Trainable / total,
      },
      tokens: { stage1: s1.tokens, stage2: tokens2, total: tokensTotal, teacher: ctx.teacherTokens, shareOfTeacher: tokensTotal / ctx.teacherTokens },
      layers: ctx.convert.map((layer) => {
        const a = swapErrors.get(layer)!;
        const b = s1Errors.get(layer)!;
        const c = s2Errors?.get(layer);
        return {
          layer,
          teacherVariance: b.teacherVariance,
          swap: { mse: a.mse, relative: a.relative },
          stage1: { mse: b.mse, relative: b.relative },
          stage2: c ? { mse: c.mse, relative: c.relative } : null,
        };
      }),
      decode,
      targets: { pplWithin10Percent: false, gapClosedAtLeast80Percent: false, tokensAtMost5PercentOfTeacher: false },
      wallSeconds: 0,
    };
    const gap = result.gapClosed.stage2 ?? result.gapClosed.stage1;
    result.targets = {
      pplWithin10Percent: result.pplVsTeacher <= 0.1,
      gapClosedAtLeast80Percent: gap >= 0.8,
      tokensAtMost5PercentOfTeacher: result.tokens.shareOfTeacher <= 0.05,
    };
    result.wallSeconds = (performance.now() - started) / 1000;
    writeFileSync(join(ctx.runDir, 'eval.json'), `${JSON.stringify(result, null, 2)}\n`);
    const md = evalMarkdown(result);
    writeFileSync(join(ctx.runDir, 'eval.md'), md);
    writeFileSync(join(ctx.runDir, 'eval-layers.svg'), layersSvg(result));
    out.info(`\n${md}`);
    out.info(`wrote ${join(ctx.runDir, 'eval.json')}, eval.md and eval-layers.svg`);
    reportAtEnd(ctx.runDir, out); // report.html with the per-layer errors and the perplexity table
    return result;
  } finally {
    tf.dispose(ids);
    for (const s of new Set(students)) s.dispose();
  }
}

function sameSet(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const num = (x: number) => x.toLocaleString('en-US');

/** The markdown tables of an evaluation (what `distill` prints and `eval.md` holds). */
export function evalMarkdown(e: DistillEval): string {
  const L: string[] = [];
  L.push(`### ${e.run}: ${e.student.type} student, layers ${e.student.converted.join(', ')} converted${e.student.keptSoftmax.length ? ` (softmax kept: ${e.student.keptSoftmax.join(', ')})` : ''}`);
  L.push('');
  L.push(`Held-out: ${e.heldOut.batches} batches, ${num(e.heldOut.tokens)} tokens. Backend ${e.backend}.`);
  L.push('');
  L.push('| model | val loss | val perplexity | gap closed | trainable parameters | tokens |');
  L.push('|---|---:|---:|---:|---:|---:|');
  L.push(`| teacher (softmax) | ${e.loss.teacher.toFixed(4)} | ${e.perplexity.teacher.toFixed(3)} | | ${num(e.teacher.parameters)} | ${num(e.teacher.tokens)} |`);
  L.push(`| swapped, no training | ${e.loss.swap.toFixed(4)} | ${e.perplexity.swap.toFixed(3)} | 0% | 0 | 0 |`);
  L.push(`| after stage 1 (ppl@0) | ${e.loss.stage1.toFixed(4)} | ${e.perplexity.stage1.toFixed(3)} | ${pct(e.gapClosed.stage1)} | ${num(e.trainable.stage1)} (${pct(e.trainable.stage1Share)}) | ${num(e.tokens.stage1)} |`);
  if (e.perplexity.stage2 !== null) {
    L.push(`| after stage 2 (LoRA) | ${e.loss.stage2!.toFixed(4)} | ${e.perplexity.stage2.toFixed(3)} | ${pct(e.gapClosed.stage2!)} | ${num(e.trainable.stage2!)} (${pct(e.trainable.stage2Share!)}) | ${num(e.tokens.stage2!)} |`);
  }
  L.push('');
  const ok = (b: boolean) => (b ? 'met' : 'NOT met');
  L.push(
    `Student perplexity ${e.pplVsTeacher >= 0 ? '+' : ''}${pct(e.pplVsTeacher)} vs the teacher (target <= +10%: ${ok(e.targets.pplWithin10Percent)}); ` +
      `gap closed ${pct(e.gapClosed.stage2 ?? e.gapClosed.stage1)} (target >= 80%: ${ok(e.targets.gapClosedAtLeast80Percent)}); ` +
      `stages 1 + 2 used ${num(e.tokens.total)} tokens = ${pct(e.tokens.shareOfTeacher)} of the teacher's ${num(e.tokens.teacher)} (target <= 5%: ${ok(e.targets.tokensAtMost5PercentOfTeacher)}).`,
  );
  L.push('');
  L.push('| layer | teacher var | swap MSE (rel) | stage 1 MSE (rel) | stage 2 MSE (rel) |');
  L.push('|---:|---:|---:|---:|---:|');
  const cell = (x: { mse: number; relative: number } | null) => (x ? `${x.mse.toExponential(3)} (${x.relative.toFixed(4)})` : 'softmax / -');
  for (const r of e.layers) L.push(`| ${r.layer} | ${r.teacherVariance.toExponential(3)} | ${cell(r.swap)} | ${cell(r.stage1)} | ${cell(r.stage2)} |`);
  if (e.decode.teacher.length) {
    L.push('');
    L.push(`Decoding (greedy, batch 1; student = ${e.decode.studentIs}):`);
    L.push('');
    L.push('| generated tokens | teacher tok/s (segment) | teacher cache | student tok/s (segment) | student cache |');
    L.push('|---:|---:|---:|---:|---:|');
    const kb = (b: number) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
    e.decode.teacher.forEach((t, i) => {
      const s = e.decode.student[i]!;
      L.push(`| ${num(t.tokens)} | ${t.tokensPerSecond.toFixed(1)} (${t.segmentTokensPerSecond.toFixed(1)}) | ${kb(t.cacheBytes)} | ${s.tokensPerSecond.toFixed(1)} (${s.segmentTokensPerSecond.toFixed(1)}) | ${kb(s.cacheBytes)} |`);
    });
  }
  return `${L.join('\n')}\n`;
}

/** Per-layer relative error (log10) of the swapped, stage-1 and stage-2 students. */
export function layersSvg(e: DistillEval): string {
  const lg = (x: number) => Math.log10(Math.max(x, 1e-12));
  const series = [
    { name: 'swapped', points: e.layers.map((r) => [r.layer, lg(r.swap.relative)] as [number, number]) },
    { name: 'stage 1', points: e.layers.map((r) => [r.layer, lg(r.stage1.relative)] as [number, number]) },
  ];
  const s2 = e.layers.filter((r) => r.stage2).map((r) => [r.layer, lg(r.stage2!.relative)] as [number, number]);
  if (s2.length) series.push({ name: 'stage 2', points: s2 });
  return lineChartSvg(series, { title: `attention-output error per layer (${e.student.type})`, xLabel: 'layer', yLabel: 'log10(MSE / teacher variance)' });
}
