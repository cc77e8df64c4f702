/**
 * The config of a distillation recipe (`tsformer distill --config configs/distill/<x>.yaml`): a
 * teacher, a student attention, which layers to convert, the two stages and the evaluation.
 * Files may `extends:` another recipe; `dotted.key=value` overrides and error reporting work as
 * for `tsformer train` (unknown keys fail with their dotted path).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { BACKENDS, TsformerError } from '@tsformer/core';
import { studentConfigSchema } from '@tsformer/distill';
import { trainConfigSchema } from '@tsformer/train';
import { tokenizerConfigSchema } from '@tsformer/data';
import YAML from 'yaml';
import { z } from 'zod';
import { ConfigError, applyOverride, checkpointConfigSchema, dataConfigSchema, mergeConfig, type RunConfig } from './config.js';

export const teacherConfigSchema = z
  .object({
    /** A run directory of ours (`runs/<name>`, as `tsformer sample --run` takes it). */
    run: z.string().min(1).optional(),
    /** Checkpoint step of that run. Default: its newest complete one. */
    step: z.number().int().min(0).optional(),
    /**
     * A Hugging Face model directory (a local path or s3://bucket/prefix), converted once into
     * `<runsDir>/<name>/teacher` (as `tsformer convert --from hf` does) and read from there.
     */
    hf: z.string().min(1).optional(),
    /**
     * Pretrain the teacher with this run config (`tsformer train`) when `run` has no complete
     * checkpoint yet; its run directory must be `run`. Default: none (a missing teacher is an error).
     */
    pretrain: z.string().min(1).optional(),
  })
  .strict()
  .refine((t) => (t.run === undefined) !== (t.hf === undefined), { message: 'name exactly one of teacher.run or teacher.hf' })
  .refine((t) => t.pretrain === undefined || t.run !== undefined, { message: 'teacher.pretrain needs teacher.run (the run it trains)', path: ['pretrain'] });

/** `data:` of a recipe: a run config's, with the tokenizer defaulting to the teacher's. */
export const distillDataSchema = dataConfigSchema
  .extend({
    /** Default: the teacher run's tokenizer (which any other must equal). */
    tokenizer: tokenizerConfigSchema.optional(),
  })
  .strict();

export const convertConfigSchema = z
  .object({
    /** Layers whose attention is replaced: "all", a range "a:b", a list "0,3,5". Default all. */
    layers: z.union([z.string().min(1), z.array(z.number().int().min(0))]).default('all'),
    /** Layers that stay softmax (by index). Default none. */
    keepSoftmax: z.array(z.number().int().min(0)).default([]),
    /** After stage 1, also keep this many layers with the largest relative stage-1 error as softmax. Default 0. */
    keepWorst: z.number().int().min(0).default(0),
  })
  .strict();

/** What both stages share with `train:` of a run config; the evaluation settings live in `eval:`. */
const stageBase = trainConfigSchema.omit({ evalEvery: true, evalBatches: true });

export const stage1ConfigSchema = stageBase
  .extend({
    /** Weight of the attention-map cross-entropy next to the output MSE (LoLCATs students; dense in T). Default 0. */
    mapLoss: z.number().min(0).default(0),
  })
  .strict();

export const loraConfigSchema = z
  .object({
    /** Default 8. */
    rank: z.number().int().positive().default(8),
    /** The update is scaled by alpha / rank. Default 16. */
    alpha: z.number().positive().default(16),
    /** Dropout on the adapters' input. Default 0. */
    dropout: z.number().min(0).lt(1).default(0),
    /** Projections of each converted layer's attention. Default q_proj, k_proj, v_proj, o_proj. */
    targets: z.array(z.string().min(1)).min(1).default(['q_proj', 'k_proj', 'v_proj', 'o_proj']),
  })
  .strict();

export const stage2ConfigSchema = stageBase
  .extend({
    lora: loraConfigSchema.prefault({}),
    /** Also train the stage-1 parameters (feature maps, window factors; a linear student's gates). Default false. */
    trainStudentParams: z.boolean().default(false),
  })
  .strict();

export const distillEvalConfigSchema = z
  .object({
    /** Held-out (validation) batches for perplexities and per-layer errors, spread over the split. Default 16. */
    batches: z.number().int().positive().default(16),
    /** Generated lengths at which decoding speed and cache memory are reported ([] = skip). Default 1024, 4096, 16384. */
    decodeLengths: z.array(z.number().int().positive()).default([1024, 4096, 16384]),
  })
  .strict();

export const distillConfigSchema = z
  .object({
    /** Run name: the run directory is `<runsDir>/<name>`. */
    name: z.string().regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, ".", "_" and "-" only'),
    /** Seeds the new parameters, the adapters and the data order. Default 1337. */
    seed: z.number().int().min(0).default(1337),
    /** Default auto (fastest available). */
    backend: z.enum(BACKENDS).default('auto'),
    /** Default `runs`. */
    runsDir: z.string().min(1).default('runs'),
    teacher: teacherConfigSchema,
    /** The attention of converted layers. Default `{ type: lolcats }` (Hedgehog maps, window 64). */
    student: studentConfigSchema.default({ type: 'lolcats', featureDim: 64, window: 64, featureMapInit: 'kaiming', windowWeightInit: 0.1 }),
    convert: convertConfigSchema.prefault({}),
    /** Splits and sequence length (tokenizer: the teacher's). Default: the teacher run's `data:`. */
    data: distillDataSchema.optional(),
    stage1: stage1ConfigSchema,
    stage2: stage2ConfigSchema,
    eval: distillEvalConfigSchema.prefault({}),
    checkpoint: checkpointConfigSchema.prefault({}),
  })
  .strict();

export type DistillConfig = z.infer<typeof distillConfigSchema>;

export interface LoadedDistillConfig {
  config: DistillConfig;
  /** Resolved (defaults filled), as saved in the run directory. */
  yaml: string;
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  const path = issue.path.map(String).join('.');
  const at = path || '(top level)';
  if (issue.code === 'unrecognized_keys') return issue.keys.map((k) => `${path ? `${path}.` : ''}${k}: unknown key`);
  if (issue.code === 'invalid_union' && issue.path.at(-1) === 'type') return [`${at}: unknown type; ${issue.message.replace('Invalid discriminator value. Expected', 'expected one of')}`];
  return [`${at}: ${issue.message}`];
}

/** Validates a raw recipe (after overrides); every problem at once, by dotted path. */
export function resolveDistillConfig(raw: unknown, source: string): LoadedDistillConfig {
  const parsed = distillConfigSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(source, parsed.error.issues.flatMap(formatIssue));
  const config = parsed.data;
  const problems: string[] = [];
  if (config.checkpoint.every === 0) problems.push('checkpoint.every: must be at least 1 for distillation (stages resume from their checkpoints)');
  if (problems.length) throw new ConfigError(source, problems);
  return { config, yaml: YAML.stringify(config) };
}

type Raw = Record<string, unknown>;

function readRaw(file: string, chain: string[] = []): Raw {
  if (!existsSync(file)) throw new TsformerError(chain.length ? `${chain.at(-1)}: extends: file not found: ${file}` : `config file not found: ${file}`, 'config');
  if (chain.includes(resolvePath(file))) throw new ConfigError(file, [`extends: cycle (${[...chain, resolvePath(file)].join(' -> ')})`]);
  let raw: unknown;
  try {
    raw = YAML.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ConfigError(file, [`not valid YAML: ${(e as Error).message}`]);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(file, ['(top level): expected a mapping of keys']);
  const { extends: parent, ...rest } = raw as Raw;
  if (parent === undefined) return rest;
  if (typeof parent !== 'string') throw new ConfigError(file, ['extends: expected a path to another config file']);
  return mergeConfig(readRaw(resolvePath(dirname(file), parent), [...chain, resolvePath(file)]), rest);
}

/** Reads a recipe (following `extends:`), applies `dotted.key=value` overrides, validates. */
export function loadDistillConfig(file: string, overrides: string[] = []): LoadedDistillConfig {
  const raw = readRaw(file);
  for (const o of overrides) applyOverride(raw, o);
  return resolveDistillConfig(raw, overrides.length ? `${file} (with overrides)` : file);
}

/** The part of a run config that `s3OptionsOf`/`checkpointStoreOf` read, from a recipe. */
export function checkpointPart(config: DistillConfig): RunConfig {
  return { checkpoint: config.checkpoint } as RunConfig;
}
