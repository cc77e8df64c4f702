import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { selectBackend, tf } from '@tsformer/core';
import { generate } from '@tsformer/model';
import { decodeSafetensors, listCompleteSteps, openStore, readStep, type HostTensor } from '@tsformer/checkpoint';
import { cli, workspace } from './helpers.js';
import { loadDistillConfig } from '../src/distill-config.js';
import { loadFinalStudent, loadMergedStudent, openDistill } from '../src/distill-command.js';
import { memoryOut } from '../src/out.js';

// A tiny softmax teacher trained in the test, then tiny recipes: window 4 over 16-token sequences,
// so both the window and the linear part of the hybrid attention matter.
let ws: ReturnType<typeof workspace>;
let teacherRun: string;

function recipe(name: string, extra: Record<string, unknown> = {}): string {
  const r = {
    name,
    seed: 3,
    backend: 'cpu',
    runsDir: ws.runs,
    teacher: { run: teacherRun },
    student: { type: 'lolcats', featureDim: 8, window: 4 },
    // clipping always active in stage 1: shards equal one run only if each layer is clipped on its own
    stage1: { steps: 4, batchSize: 2, optimizer: { type: 'adamw', lr: 0.01, weightDecay: 0 }, schedule: { type: 'constant' }, clipGradNorm: 1e-4, logEvery: 1 },
    stage2: { steps: 4, batchSize: 2, optimizer: { type: 'adamw', lr: 0.005, weightDecay: 0 }, schedule: { type: 'constant' }, logEvery: 1, lora: { rank: 2, alpha: 4 } },
    eval: { batches: 2, decodeLengths: [8, 16] },
    checkpoint: { every: 1, keepLast: 10, background: false },
    ...extra,
  };
  const file = join(ws.dir, `${name}.yaml`);
  writeFileSync(file, YAML.stringify(r));
  return file;
}

async function stepTensors(dir: string, stage: string, step?: number): Promise<Map<string, HostTensor>> {
  const store = openStore(join(dir, 'checkpoints', stage));
  const steps = await listCompleteSteps(store);
  const files = await readStep(store, step ?? steps.at(-1)!);
  return decodeSafetensors(files.get('model.safetensors')!, stage).tensors;
}

function expectSameTensors(a: Map<string, HostTensor>, b: Map<string, HostTensor>, tol: number): void {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [k, t] of a) {
    const u = b.get(k)!;
    expect(u.shape, k).toEqual(t.shape);
    let worst = 0;
    for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(t.data[i]! - u.data[i]!));
    expect(worst, k).toBeLessThanOrEqual(tol);
  }
}

describe('tsformer distill (cpu, tiny teacher)', () => {
  beforeAll(async () => {
    await selectBackend('cpu');
    ws = workspace({ model: { vocabSize: 256, dModel: 16, nLayers: 2, maxSeqLen: 16, attention: { type: 'mha', numHeads: 2 }, dropout: 0 } });
    const r = await cli('train', '--config', ws.config);
    expect(r.code, r.text).toBe(0);
    teacherRun = join(ws.runs, 'tiny');
  }, 120_000);

  let full: string;

  it('runs both stages end to end and saves eval.json with every field, eval.md and the plot', async () => {
    const r = await cli('distill', '--config', recipe('full'));
    expect(r.code, r.text).toBe(0);
    full = join(ws.runs, 'full');
    expect(r.text).toContain('after stage 2 (LoRA)');
    const e = JSON.parse(readFileSync(join(full, 'eval.json'), 'utf8'));
    // the run's report.html carries the per-layer error plot and the perplexity table
    const report = readFileSync(join(full, 'report.html'), 'utf8');
    expect(report).toContain('<svg');
    expect(report).toMatch(/after stage 2/);
    const finite = (x: unknown) => expect(Number.isFinite(x), String(x)).toBe(true);
    expect(Object.keys(e).sort()).toEqual(
      ['format', 'run', 'backend', 'teacher', 'student', 'heldOut', 'perplexity', 'loss', 'gapClosed', 'pplVsTeacher', 'trainable', 'tokens', 'layers', 'decode', 'targets', 'wallSeconds'].sort(),
    );
    for (const k of ['teacher', 'swap', 'stage1', 'stage2']) finite(e.perplexity[k]);
    for (const k of ['stage1', 'stage2']) finite(e.gapClosed[k]);
    // the swap is worse than the teacher, and the stages move toward it
    expect(e.perplexity.swap).toBeGreaterThan(e.perplexity.teacher);
    expect(e.perplexity.stage2).toBeLessThan(e.perplexity.swap);
    expect(e.gapClosed.stage2).toBeCloseTo((e.perplexity.swap - e.perplexity.stage2) / (e.perplexity.swap - e.perplexity.teacher), 10);
    expect(e.tokens).toEqual({ stage1: 4 * 2 * 16, stage2: 4 * 2 * 16, total: 256, teacher: 8 * 4 * 16, shareOfTeacher: 256 / 512 });
    expect(e.teacher.tokens).toBe(512);
    // stage 1: 2 layers x (two maps [2, 8, 8] + window factors [2]); stage 2: 2 layers x 4 projections x rank 2 x (16 + 16)
    expect(e.trainable.stage1).toBe(2 * (2 * 2 * 8 * 8 + 2));
    expect(e.trainable.stage2).toBe(2 * 4 * 2 * (16 + 16));
    finite(e.trainable.stage1Share);
    expect(e.layers.map((l: { layer: number }) => l.layer)).toEqual([0, 1]);
    for (const l of e.layers) {
      for (const k of ['swap', 'stage1', 'stage2']) {
        finite(l[k].mse);
        expect(l[k].relative).toBeCloseTo(l[k].mse / l.teacherVariance, 10);
      }
      expect(l.stage1.mse).toBeLessThan(l.swap.mse);
    }
    expect(e.decode.teacher.map((d: { tokens: number }) => d.tokens)).toEqual([8, 16]);
    // the student's cache is constant in length (window 4 + state); the teacher's grows with it
    expect(e.decode.student[0].cacheBytes).toBe(e.decode.student[1].cacheBytes);
    expect(e.decode.teacher[1].cacheBytes).toBe(2 * e.decode.teacher[0].cacheBytes);
    for (const d of [...e.decode.teacher, ...e.decode.student]) finite(d.tokensPerSecond);
    expect(typeof e.targets.pplWithin10Percent).toBe('boolean');
    expect(readFileSync(join(full, 'eval.md'), 'utf8')).toContain('| after stage 1 (ppl@0) |');
    expect(readFileSync(join(full, 'eval-layers.svg'), 'utf8')).toContain('<svg');
    // stage 2 saves only the trainable parameters (the adapters)
    const s2 = await stepTensors(full, 'stage2');
    expect([...s2.keys()].every((k) => /^layers\.\d\.attn\.[qkvo]_proj\.lora_[AB]\.weight$/.test(k))).toBe(true);
    expect(s2.size).toBe(2 * 4 * 2);
    const s1 = await stepTensors(full, 'stage1');
    expect([...s1.keys()].sort()).toEqual(
      [0, 1].flatMap((i) => [`layers.${i}.attn.feature_map_k.weight`, `layers.${i}.attn.feature_map_q.weight`, `layers.${i}.attn.window_factors`]).sort(),
    );
    // --stage eval alone writes the same perplexities again
    rmSync(join(full, 'eval.json'));
    const ev = await cli('distill', '--config', join(ws.dir, 'full.yaml'), '--stage', 'eval');
    expect(ev.code, ev.text).toBe(0);
    expect(JSON.parse(readFileSync(join(full, 'eval.json'), 'utf8')).perplexity).toEqual(e.perplexity);
    // the run belongs to its recipe: a different student is refused, naming the keys
    const other = await cli('distill', '--config', join(ws.dir, 'full.yaml'), 'student.featureDim=4', '--stage', 'eval');
    expect(other.code).toBe(2);
    expect(other.text).toContain('student.featureDim: 8 -> 4');
    // a finished run is reused, not retrained
    const again = await cli('distill', '--config', join(ws.dir, 'full.yaml'), '--stage', '2');
    expect(again.code, again.text).toBe(0);
    expect(again.text).toContain('stage 2: finished already');
  }, 180_000);

  it('--layers shards, merged by stage 2, equal a single stage-1 run', async () => {
    const file = recipe('shards');
    for (const layers of ['0:1', '1:2']) {
      const r = await cli('distill', '--config', file, '--stage', '1', '--layers', layers);
      expect(r.code, r.text).toBe(0);
    }
    const dir = join(ws.runs, 'shards');
    expect(existsSync(join(dir, 'checkpoints', 'stage1-layers-0'))).toBe(true);
    const merged = new Map([...(await stepTensors(dir, 'stage1-layers-0')), ...(await stepTensors(dir, 'stage1-layers-1'))]);
    expectSameTensors(merged, await stepTensors(full, 'stage1'), 1e-6);
    const r2 = await cli('distill', '--config', file, '--stage', '2');
    expect(r2.code, r2.text).toBe(0);
    expect(r2.text).toContain('stage1-layers-0');
    expectSameTensors(await stepTensors(dir, 'stage2'), await stepTensors(full, 'stage2'), 1e-5);
    // a layer outside the recipe's conversion is named
    const bad = await cli('distill', '--config', recipe('shards-bad', { convert: { layers: '0' } }), '--stage', '1', '--layers', '1');
    expect(bad.code).toBe(2);
    expect(bad.text).toContain('--layers 1: layer 1 is not converted');
  }, 180_000);

  it('resuming mid-stage equals an uninterrupted run; an unfinished stage needs --resume auto', async () => {
    const file = recipe('resume');
    const dir = join(ws.runs, 'resume');
    const a = await cli('distill', '--config', file, '--stop-at', '2');
    expect(a.code, a.text).toBe(0);
    expect(a.text).toContain('stage 1: stopped at step 2 of 4');
    // without --resume: refused, and the checkpoint stays
    const refused = await cli('distill', '--config', file);
    expect(refused.code).toBe(2);
    expect(refused.text).toContain('pass --resume auto');
    expect(await listCompleteSteps(openStore(join(dir, 'checkpoints', 'stage1')))).toEqual([1, 2]);
    // stage 1 finishes; then stage 2 stops at its step 3 and finishes
    const b = await cli('distill', '--config', file, '--resume', 'auto', '--stage', '1');
    expect(b.code, b.text).toBe(0);
    expect(b.text).toContain('stage 1: resumed from');
    const c = await cli('distill', '--config', file, '--resume', 'auto', '--stop-at', '3');
    expect(c.code, c.text).toBe(0);
    expect(c.text).toContain('stage 1: finished already');
    expect(c.text).toContain('stage 2: stopped at step 3 of 4');
    const d = await cli('distill', '--config', file, '--resume', 'auto');
    expect(d.code, d.text).toBe(0);
    expect(d.text).toContain('stage 2: resumed from');
    expectSameTensors(await stepTensors(dir, 'stage1'), await stepTensors(full, 'stage1'), 0);
    // metrics: each step of each stage once, with the same losses as the uninterrupted run
    const lines = (d: string) =>
      readFileSync(join(d, 'metrics.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { type: string; step: number; loss: number })
        .map((m) => `${m.type}:${m.step}:${m.loss}`);
    expect(lines(dir)).toEqual(lines(full));
    expectSameTensors(await stepTensors(dir, 'stage2'), await stepTensors(full, 'stage2'), 0);
  }, 180_000);

  let adapterSample = '';
  let adapterLoss = 0;
  it('sample and eval read a distilled run: the stage-2 student with its adapters', async () => {
    const s = await cli('sample', '--run', full, '--prompt', 'the ', '--max-new-tokens', '8', '--temperature', '0');
    expect(s.code, s.text).toBe(0);
    expect(s.text).toContain('distilled student (lolcats on layers 0, 1), stage 2 step 4, adapters attached');
    const m = /--- sample \(distilled, stage 2 step 4\) ---\n([^]*)$/.exec(s.text);
    expect(m, s.text).not.toBeNull();
    adapterSample = m![1]!;
    expect(adapterSample.startsWith('the ')).toBe(true);
    const e = await cli('eval', '--run', full, '--batches', '2');
    expect(e.code, e.text).toBe(0);
    const loss = /distilled, stage 2 step 4: validation loss (\d+\.\d+)/.exec(e.text);
    expect(loss, e.text).not.toBeNull();
    adapterLoss = Number(loss![1]);
    // the teacher on the same batches: a different model, a different loss
    const t = await cli('eval', '--run', teacherRun, '--batches', '2');
    expect(t.code, t.text).toBe(0);
    expect(Number(/validation loss (\d+\.\d+)/.exec(t.text)![1])).not.toBe(adapterLoss);
    // --step belongs to training runs
    const bad = await cli('eval', '--run', full, '--step', '2');
    expect(bad.code).not.toBe(0);
    expect(bad.text).toMatch(/--step: .* is a distillation run/);
  }, 120_000);

  it('merge-lora writes merged weights with the same logits', async () => {
    const r = await cli('merge-lora', full);
    expect(r.code, r.text).toBe(0);
    // sample and eval now read the merged student: the same text and loss
    const s = await cli('sample', '--run', full, '--prompt', 'the ', '--max-new-tokens', '8', '--temperature', '0');
    expect(s.code, s.text).toBe(0);
    expect(s.text).toContain(`--- sample (distilled, stage 2 step 4, merged) ---\n${adapterSample}`);
    const e = await cli('eval', '--run', full, '--batches', '2');
    expect(e.code, e.text).toBe(0);
    expect(Number(/merged: validation loss (\d+\.\d+)/.exec(e.text)![1])).toBeCloseTo(adapterLoss, 3);
    expect(existsSync(join(full, 'checkpoints', 'merged', 'step-00000004', 'manifest.json'))).toBe(true);
    const merged = await stepTensors(full, 'merged');
    expect([...merged.keys()].some((k) => k.includes('lora_'))).toBe(false);
    const { config, yaml } = loadDistillConfig(join(full, 'config.yaml'));
    const ctx = await openDistill(config, yaml, { out: memoryOut() });
    try {
      const { student } = await loadFinalStudent(ctx);
      const plain = await loadMergedStudent(ctx);
      const ids = tf.tensor2d([[116, 104, 101, 32, 106, 117, 114, 121, 32, 115, 97, 105, 100, 32, 116, 104]], [1, 16], 'int32');
      const la = student.forward(ids).logits;
      const lb = plain.forward(ids).logits;
      const diff = (await la.sub(lb).abs().max().data())[0]!;
      expect(diff).toBeLessThan(1e-4);
      expect(plain.namedParameters().some(([n]) => n.includes('lora_'))).toBe(false);
      // the generic generate() takes a student (LanguageModel): cached decoding = full forwards
      const prompt = [116, 104, 101, 32];
      const cached = await generate(plain, prompt, { maxNewTokens: 20, temperature: 0 });
      expect(await generate(plain, prompt, { maxNewTokens: 20, temperature: 0, useCache: false })).toEqual(cached);
      tf.dispose([ids, la, lb]);
      student.dispose();
      plain.dispose();
    } finally {
      ctx.teacher.dispose();
    }
  }, 120_000);

  it('recipe typos fail naming the dotted path; bad flags are named', async () => {
    const typo = recipe('typo', { stage1: { steps: 2, batchSize: 2, optimzer: { type: 'adamw', lr: 0.01 } } });
    const r = await cli('distill', '--config', typo);
    expect(r.code).toBe(2);
    expect(r.text).toContain('stage1.optimzer: unknown key');
    expect(r.text).toContain('stage1.optimizer:');
    const r2 = await cli('distill', '--config', recipe('typo2'), 'stage2.lora.rnak=4', 'student.featureDimm=3');
    expect(r2.code).toBe(2);
    expect(r2.text).toContain('stage2.lora.rnak: unknown key');
    expect(r2.text).toContain('student.featureDimm: unknown key');
    const r3 = await cli('distill', '--config', recipe('typo3', { student: { type: 'lolkats' } }));
    expect(r3.code).toBe(2);
    expect(r3.text).toContain('student.type');
    const r4 = await cli('distill', '--config', recipe('typo4'), '--stage', '2', '--layers', '0:1');
    expect(r4.code).toBe(2);
    expect(r4.text).toContain('--layers');
    const r5 = await cli('distill', '--config', recipe('typo5', { teacher: { run: teacherRun, hf: '/models/llama' } }));
    expect(r5.code).toBe(2);
    expect(r5.text).toContain('name exactly one of teacher.run or teacher.hf');
    expect(existsSync(join(ws.runs, 'typo'))).toBe(false);
  }, 60_000);

  it('hybrid: convert.keepWorst keeps the layer with the largest stage-1 error softmax in stage 2', async () => {
    const r = await cli('distill', '--config', recipe('hybrid', { convert: { keepWorst: 1 } }));
    expect(r.code, r.text).toBe(0);
    const e = JSON.parse(readFileSync(join(ws.runs, 'hybrid', 'eval.json'), 'utf8'));
    const worst = [...e.layers].sort((a: { stage1: { relative: number } }, b: { stage1: { relative: number } }) => b.stage1.relative - a.stage1.relative)[0].layer;
    expect(e.student.keptSoftmax).toEqual([worst]);
    expect(e.student.converted).toEqual([0, 1].filter((l) => l !== worst));
    expect(e.layers.find((l: { layer: number }) => l.layer === worst).stage2).toBe(null);
    const s2 = await stepTensors(join(ws.runs, 'hybrid'), 'stage2');
    expect([...s2.keys()].some((k) => k.startsWith(`layers.${worst}.`))).toBe(false);
    expect(s2.size).toBe(4 * 2);
    // the kept layer's cache grows, so the student's cache does too
    expect(e.decode.student[1].cacheBytes).toBeGreaterThan(e.decode.student[0].cacheBytes);
  }, 120_000);

  it('a GLA student runs both stages from the CLI', async () => {
    const r = await cli('distill', '--config', recipe('gla', { student: { type: 'gla', chunkSize: 4 }, eval: { batches: 2, decodeLengths: [8, 16] } }));
    expect(r.code, r.text).toBe(0);
    const e = JSON.parse(readFileSync(join(ws.runs, 'gla', 'eval.json'), 'utf8'));
    expect(e.student.type).toBe('gla');
    expect(Number.isFinite(e.perplexity.stage2)).toBe(true);
    expect(e.decode.student[0].cacheBytes).toBe(e.decode.student[1].cacheBytes);
    const s1 = await stepTensors(join(ws.runs, 'gla'), 'stage1');
    expect([...s1.keys()].some((k) => /[qkvo]_proj\.weight$/.test(k))).toBe(false);
  }, 120_000);

  it('teacher.hf: a Hugging Face directory is converted once into the run and distilled', async () => {
    const hfDir = join(ws.dir, 'hf-teacher');
    const x = await cli('convert', teacherRun, '--to', 'hf', '--out', hfDir, '--model-type', 'llama');
    expect(x.code, x.text).toBe(0);
    const data = { train: { type: 'text', path: join(ws.dir, 'data', 'train.txt') }, validation: { type: 'text', path: join(ws.dir, 'data', 'val.txt') }, seqLen: 16 };
    const r = await cli('distill', '--config', recipe('from-hf', { teacher: { hf: hfDir }, data, eval: { batches: 2, decodeLengths: [] } }));
    expect(r.code, r.text).toBe(0);
    expect(r.text).toContain(`converting the Hugging Face model ${hfDir}`);
    expect(existsSync(join(ws.runs, 'from-hf', 'teacher', 'config.yaml'))).toBe(true);
    const e = JSON.parse(readFileSync(join(ws.runs, 'from-hf', 'eval.json'), 'utf8'));
    const ours = JSON.parse(readFileSync(join(full, 'eval.json'), 'utf8'));
    // the same teacher weights, the same held-out batches
    expect(e.perplexity.teacher).toBeCloseTo(ours.perplexity.teacher, 4);
    // run again: the converted teacher is reused
    const again = await cli('distill', '--config', join(ws.dir, 'from-hf.yaml'), '--stage', 'eval');
    expect(again.code, again.text).toBe(0);
    expect(again.text).not.toContain('converting');
  }, 120_000);

  it('pretrains a missing teacher with teacher.pretrain, then distills it', async () => {
    const cfg = YAML.parse(readFileSync(ws.config, 'utf8'));
    const pretrain = join(ws.dir, 'teacher2.yaml');
    writeFileSync(pretrain, YAML.stringify({ ...cfg, name: 'tiny2', train: { ...cfg.train, steps: 4 } }));
    const file = recipe('pretrained', { teacher: { run: join(ws.runs, 'tiny2'), pretrain } });
    const r = await cli('distill', '--config', file, '--stage', '1');
    expect(r.code, r.text).toBe(0);
    expect(r.text).toContain('has no run yet; pretraining it with');
    expect(r.text).toContain('step 4 (');
    expect(await listCompleteSteps(openStore(join(ws.runs, 'pretrained', 'checkpoints', 'stage1')))).toContain(4);
    // a pretraining config that trains another run than teacher.run is named
    const wrong = recipe('pretrained-wrong', { teacher: { run: join(ws.runs, 'elsewhere'), pretrain } });
    rmSync(join(ws.runs, 'tiny2'), { recursive: true });
    const w = await cli('distill', '--config', wrong, '--stage', '1');
    expect(w.code).toBe(2);
    expect(w.text).toContain(`teacher.pretrain: ${pretrain} trains ${join(ws.runs, 'tiny2')}, but teacher.run is ${join(ws.runs, 'elsewhere')}`);
    expect(existsSync(join(ws.runs, 'tiny2'))).toBe(false);
  }, 120_000);

  it('the shipped recipes validate', () => {
    for (const f of ['lolcats', 'gla', 'deltanet', 'hybrid']) {
      const { config } = loadDistillConfig(join('configs', 'distill', `${f}.yaml`));
      expect(config.name).toBe(`distill-${f}`);
    }
    expect(loadDistillConfig('configs/distill/hybrid.yaml').config.convert.keepWorst).toBe(1);
    expect(loadDistillConfig('configs/distill/gla.yaml').config.student.type).toBe('gla');
  });
});
