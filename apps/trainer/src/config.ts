import { readFileSync, existsSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { BACKENDS, TsformerError } from '@tsformer/core';
import { modelConfigSchema } from '@tsformer/model';
import { datasetConfigSchema, tokenizerConfigSchema } from '@tsformer/data';
import { trainConfigSchema } from '@tsformer/train';
import YAML from 'yaml';
import { z } from 'zod';

export const dataConfigSchema = z
  .object({
    tokenizer: tokenizerConfigSchema.default({ type: 'byte' }),
    train: datasetConfigSchema,
    validation: datasetConfigSchema.optional(),
    /** Tokens per training sequence (at most model.maxSeqLen). */
    seqLen: z.number().int().positive(),
  })
  .strict();

const checksumMode = z.enum(['WHEN_SUPPORTED', 'WHEN_REQUIRED']);

/** S3 settings, used when `checkpoint.dir` is `s3://bucket/prefix`. Credentials never go here: they come from the AWS chain. */
export const s3ConfigSchema = z
  .object({
    /** AWS region. Default: the AWS chain (`AWS_REGION`, shared config), else us-east-1. */
    region: z.string().min(1).optional(),
    /** Endpoint of an S3-compatible store (MinIO, R2, Ceph), e.g. http://127.0.0.1:9000. Default: AWS (or AWS_ENDPOINT_URL_S3). */
    endpoint: z
      .url({ protocol: /^https?$/ })
      .refine((u) => !/^[a-z]+:\/\/[^/]*@/i.test(u), 'must not contain credentials (use the AWS credential chain)')
      .optional(),
    /** Path-style URLs (`<endpoint>/<bucket>/<key>`), which most self-hosted stores need. Default false. */
    forcePathStyle: z.boolean().default(false),
    /** `WHEN_REQUIRED` for stores that reject the SDK's default CRC32 checksums. Default WHEN_SUPPORTED. */
    requestChecksumCalculation: checksumMode.default('WHEN_SUPPORTED'),
    /** `WHEN_REQUIRED` to skip validating response checksums. Default WHEN_SUPPORTED. */
    responseChecksumValidation: checksumMode.default('WHEN_SUPPORTED'),
    /** Multipart part size in MiB (at least 5). Default 16. */
    partSizeMB: z.number().min(5).default(16),
    /** Attempts of each upload/download, with exponential backoff. Default 5. */
    attempts: z.number().int().min(1).default(5),
    /** First backoff in ms (doubles per attempt, at most 8 s). Default 250. */
    backoffMs: z.number().int().min(1).default(250),
  })
  .strict();

export const checkpointConfigSchema = z
  .object({
    /** Where step directories go: a local path or s3://bucket/prefix. Default `<runsDir>/<name>/checkpoints`. */
    dir: z.string().min(1).optional(),
    /** Save every this many steps (and at the end). Default 100. */
    every: z.number().int().min(0).default(100),
    /** Keep this many newest complete steps. Default 3. */
    keepLast: z.number().int().positive().default(3),
    /** Also keep every step that is a multiple of this; 0 = off. Default 0. */
    keepEvery: z.number().int().min(0).default(0),
    /** Shard model weights into files of at most this many MiB (with model.safetensors.index.json). Default 2048. */
    maxShardMB: z.number().positive().default(2048),
    /** Upload in the background while training goes on (at most one upload in flight). Default true. */
    background: z.boolean().default(true),
    s3: s3ConfigSchema.prefault({}),
  })
  .strict();

export const sampleConfigSchema = z
  .object({
    /** Text the end-of-run sample continues. Default "The ". */
    prompt: z.string().min(1).default('The '),
    /** Default 200. */
    maxNewTokens: z.number().int().positive().default(200),
    /** 0 = greedy. Default 0.8. */
    temperature: z.number().min(0).default(0.8),
    /** Default 40; 0 = off. */
    topK: z.number().int().min(0).default(40),
    /** Default 0.95. */
    topP: z.number().gt(0).max(1).default(0.95),
  })
  .strict();

/** A whole run: one file reproduces it. */
export const runConfigSchema = z
  .object({
    /** Run name: the run directory is `<runsDir>/<name>`. */
    name: z.string().regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, ".", "_" and "-" only'),
    /** Seeds init, dropout, shuffling and sampling. Default 1337. */
    seed: z.number().int().min(0).default(1337),
    /** Default auto (fastest available). */
    backend: z.enum(BACKENDS).default('auto'),
    /** Default `runs`. */
    runsDir: z.string().min(1).default('runs'),
    model: modelConfigSchema,
    data: dataConfigSchema,
    train: trainConfigSchema,
    checkpoint: checkpointConfigSchema.prefault({}),
    sample: sampleConfigSchema.default({ prompt: 'The ', maxNewTokens: 200, temperature: 0.8, topK: 40, topP: 0.95 }),
  })
  .strict();

export type RunConfig = z.infer<typeof runConfigSchema>;

/** Every problem in a config, each with the dotted path of its key. */
export class ConfigError extends TsformerError {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: invalid config\n  ${problems.join('\n  ')}`, 'config');
  }
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  const path = issue.path.map(String).join('.');
  const at = (p: string) => p || '(top level)';
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((k) => `${path ? `${path}.` : ''}${k}: unknown key`);
    case 'invalid_union':
      // a discriminated union reports its `type` key: name the choices
      if (issue.path.at(-1) === 'type') return [`${at(path)}: unknown type; ${issue.message.replace('Invalid discriminator value. Expected', 'expected one of')}`];
      return [`${at(path)}: ${issue.message}`];
    default:
      return [`${at(path)}: ${issue.message}`];
  }
}

/** Sets `a.b.c` in a plain object, creating objects on the way. The value is parsed as YAML. */
export function applyOverride(raw: Record<string, unknown>, override: string): void {
  const eq = override.indexOf('=');
  if (eq <= 0) throw new ConfigError('command line', [`override "${override}" must look like dotted.key=value`]);
  const keys = override.slice(0, eq).split('.');
  const value = YAML.parse(override.slice(eq + 1));
  let node: Record<string, unknown> = raw;
  keys.slice(0, -1).forEach((k, i) => {
    const next = node[k];
    if (next === undefined || next === null) node[k] = {};
    else if (typeof next !== 'object' || Array.isArray(next)) {
      throw new ConfigError('command line', [`${keys.slice(0, i + 1).join('.')}: is a ${typeof next}, cannot set ${override.slice(0, eq)}`]);
    }
    node = node[k] as Record<string, unknown>;
  });
  node[keys.at(-1)!] = value;
}

export interface LoadedConfig {
  config: RunConfig;
  /** The resolved config as YAML (defaults filled), as saved in the run directory. */
  yaml: string;
}

/** Validates a raw config object (after overrides): every problem reported at once, by dotted path. */
export function resolveConfig(raw: unknown, source: string): LoadedConfig {
  const parsed = runConfigSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(source, parsed.error.issues.flatMap(formatIssue));
  const config = parsed.data;
  const problems: string[] = [];
  if (config.data.seqLen > config.model.maxSeqLen) {
    problems.push(`data.seqLen: ${config.data.seqLen} exceeds model.maxSeqLen (${config.model.maxSeqLen})`);
  }
  if (problems.length) throw new ConfigError(source, problems);
  return { config, yaml: YAML.stringify(config) };
}

type Raw = Record<string, unknown>;

function isMapping(v: unknown): v is Raw {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * Deep merge: mappings merge key by key, anything else replaces, and `null` deletes the key. A mapping
 * that names a different `type:` than the base's replaces it whole (the base's keys belong to the
 * other component).
 */
export function mergeConfig(base: Raw, over: Raw): Raw {
  const out: Raw = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    if (v === null) delete out[k];
    else if (isMapping(v) && isMapping(b) && (v.type === undefined || v.type === b.type)) out[k] = mergeConfig(b, v);
    else out[k] = v;
  }
  return out;
}

/**
 * Reads a YAML file; `extends: <path relative to this file>` makes it a diff against another config
 * (merged recursively; `key: null` removes a key of the base).
 */
function readRaw(file: string, chain: string[] = []): Raw {
  if (!existsSync(file)) {
    throw new TsformerError(chain.length ? `${chain.at(-1)}: extends: file not found: ${file}` : `config file not found: ${file}`, 'config');
  }
  if (chain.includes(resolvePath(file))) throw new ConfigError(file, [`extends: cycle (${[...chain, resolvePath(file)].join(' -> ')})`]);
  let raw: unknown;
  try {
    raw = YAML.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ConfigError(file, [`not valid YAML: ${(e as Error).message}`]);
  }
  if (!isMapping(raw)) throw new ConfigError(file, ['(top level): expected a mapping of keys']);
  const { extends: parent, ...rest } = raw;
  if (parent === undefined) return rest;
  if (typeof parent !== 'string') throw new ConfigError(file, ['extends: expected a path to another config file']);
  return mergeConfig(readRaw(resolvePath(dirname(file), parent), [...chain, resolvePath(file)]), rest);
}

/** Reads a YAML config file (following `extends:`), applies `dotted.key=value` overrides, validates. */
export function loadConfig(file: string, overrides: string[] = []): LoadedConfig {
  const raw = readRaw(file);
  for (const o of overrides) applyOverride(raw, o);
  return resolveConfig(raw, overrides.length ? `${file} (with overrides)` : file);
}

/** Files a config refers to that must exist before a run starts (checked before any directory is created). */
export function checkConfigFiles(config: RunConfig): void {
  const problems: string[] = [];
  const check = (key: string, path: string) => {
    if (!existsSync(path)) {
      const hint = path.includes('datasets/brown') ? ' (run `npm run data:brown` to prepare it)' : '';
      problems.push(`${key}: file not found: ${path}${hint}`);
    }
  };
  check('data.train.path', config.data.train.path);
  if (config.data.validation) check('data.validation.path', config.data.validation.path);
  if (config.data.tokenizer.type === 'hf') check('data.tokenizer.path', config.data.tokenizer.path);
  if (problems.length) throw new ConfigError('config', problems);
}
