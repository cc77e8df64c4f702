/**
 * `tsformer convert`: Hugging Face model directories <-> run directories.
 *
 *   tsformer convert --from hf <dir | s3://bucket/prefix> --out runs/<name>
 *     runs/<name>/config.yaml                 resolved run config (model from config.json, HF tokenizer)
 *     runs/<name>/tokenizer.json, ...         the tokenizer files of the source, when present
 *     runs/<name>/hf-source.json              the source config.json and on-disk dtypes (for an exact export)
 *     runs/<name>/checkpoints/step-00000000/  model.safetensors (our names and layout, float32), config.yaml, manifest
 *
 *   tsformer convert --to hf runs/<name> --out <dir | s3://bucket/prefix>
 *     config.json, model.safetensors (or shards + index), tokenizer files
 *
 * `sample`, `eval` and the distillation recipes read the run like any trained one.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Argv } from 'yargs';
import YAML from 'yaml';
import { TsformerError } from '@tsformer/core';
import { hfToStateDict, modelConfigToHfConfig, readHfConfig, stateDictToHfTensors, type HfConfig, type HfModelType } from '@tsformer/model';
import {
  LocalStore,
  decodeShardedSafetensors,
  encodeShardedSafetensors,
  findResumeStep,
  readHfDirectory,
  readStep,
  saveStep,
  stepDirName,
  writeHfDirectory,
  HF_TOKENIZER_FILES,
  type CheckpointStore,
  type HostTensor,
  type S3StoreOptions,
  type SafeDType,
} from '@tsformer/checkpoint';
import { resolveConfig } from './config.js';
import { checkpointStoreOf, makeTokenizer } from './train-command.js';
import type { Out } from './out.js';

/** Name of the run-directory file that remembers the Hugging Face source. */
export const HF_SOURCE_FILE = 'hf-source.json';

/** `hf-source.json`: what an export needs to reproduce the source exactly. */
export interface HfSource {
  format: 'tsformer-hf-source/1';
  /** Where it was imported from. */
  from: string;
  /** The source config.json. */
  config: HfConfig;
  /** On-disk dtype of each source tensor, by HF name. */
  dtypes: Record<string, SafeDType>;
}

export interface ConvertFromHfOptions {
  /** The HF directory: a local path or s3://bucket/prefix. */
  from: string;
  /** The run directory to create (`<runsDir>/<name>`); must not exist or be empty. */
  runDir: string;
  /** Training text for later fine-tuning/eval (data.train). Default datasets/brown/train.txt. */
  train?: string;
  /** Validation text (data.validation). Default datasets/brown/validation.txt. */
  validation?: string;
  /** data.seqLen. Default min(max_position_embeddings, 256). */
  seqLen?: number;
  /** Shard our checkpoint's weights above this many MiB. Default 2048 (the trainer's default). */
  maxShardMB?: number;
  s3?: S3StoreOptions;
  out: Out;
}

export interface ConvertResult {
  /** The run directory, or the HF directory written. */
  dir: string;
  /** Parameters (elements) converted. */
  parameters: number;
}

function isEmptyDir(dir: string): boolean {
  return !existsSync(dir) || (statSync(dir).isDirectory() && readdirSync(dir).length === 0);
}

const DTYPE_NAMES: Record<string, SafeDType> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' };

/** `convert --from hf`: a Hugging Face directory into a run directory. */
export async function convertFromHf(o: ConvertFromHfOptions): Promise<ConvertResult> {
  if (!isEmptyDir(o.runDir)) throw new TsformerError(`--out ${o.runDir} exists and is not empty; give a new run directory`, 'config');
  const hf = await readHfDirectory(o.from, { s3: o.s3 });
  const spec = readHfConfig(hf.config);
  if (spec.ignored.length > 0) o.out.warn(`warning: config.json keys not used: ${spec.ignored.join(', ')}`);
  const state = hfToStateDict(hf.tensors, hf.config);
  hf.tensors.clear(); // the mapped copies are all that is needed from here: let the source go
  const parameters = [...state.values()].reduce((n, t) => n + t.data.length, 0);

  const name = basename(o.runDir);
  const hasTokenizer = hf.extraFiles.has('tokenizer.json');
  if (!hasTokenizer) {
    if (spec.model.vocabSize < 256) throw new TsformerError(`${hf.location} has no tokenizer.json (and vocab_size ${spec.model.vocabSize} is too small for the byte tokenizer)`, 'config');
    o.out.warn(`warning: ${hf.location} has no tokenizer.json; the run uses the byte tokenizer`);
  }
  const raw = {
    name,
    runsDir: dirname(o.runDir),
    model: spec.model,
    data: {
      tokenizer: hasTokenizer ? { type: 'hf', path: join(o.runDir, 'tokenizer.json') } : { type: 'byte' },
      train: { type: 'text', path: o.train ?? 'datasets/brown/train.txt' },
      validation: { type: 'text', path: o.validation ?? 'datasets/brown/validation.txt' },
      seqLen: o.seqLen ?? Math.min(spec.model.maxSeqLen, 256),
    },
    // fine-tuning defaults: a small learning rate from the converted weights
    train: { steps: 100, batchSize: 4, optimizer: { type: 'adamw', lr: 3e-5, weightDecay: 0 }, schedule: { type: 'cosine', warmupSteps: 10, minLrRatio: 0.1 } },
    checkpoint: { ...(o.maxShardMB ? { maxShardMB: o.maxShardMB } : {}) },
  };
  const { config, yaml } = resolveConfig(raw, `${o.runDir}/config.yaml`);

  const existed = existsSync(o.runDir);
  mkdirSync(o.runDir, { recursive: true });
  let dir: string;
  const store = new LocalStore(join(o.runDir, 'checkpoints'));
  try {
    for (const [file, bytes] of hf.extraFiles) writeFileSync(join(o.runDir, file), bytes);
    // the tokenizer loads and fits the embedding, or the conversion stops here
    const tokenizer = await makeTokenizer(config);
    if (hasTokenizer) o.out.info(`tokenizer: ${tokenizer.name}, vocabulary ${tokenizer.vocabSize} (model ${config.model.vocabSize})`);
    const source: HfSource = { format: 'tsformer-hf-source/1', from: hf.location, config: hf.config, dtypes: hf.dtypes };
    writeFileSync(join(o.runDir, HF_SOURCE_FILE), `${JSON.stringify(source, null, 2)}\n`);
    const files: Record<string, Uint8Array | string> = { 'config.yaml': yaml };
    const maxShardBytes = config.checkpoint.maxShardMB * 1024 * 1024;
    for (const [file, bytes] of encodeShardedSafetensors(state, { maxShardBytes, metadata: { format: 'pt', producer: 'tsformer', source: `hf:${hf.location}` } })) files[file] = bytes;
    dir = await saveStep(store, 0, files);
    writeFileSync(join(o.runDir, 'config.yaml'), yaml); // last: a run directory with config.yaml is complete
  } catch (e) {
    // leave no half-made run behind (the directory was absent or empty)
    if (existed) for (const f of readdirSync(o.runDir)) rmSync(join(o.runDir, f), { recursive: true, force: true });
    else rmSync(o.runDir, { recursive: true, force: true });
    throw e;
  }
  o.out.info(
    `converted ${hf.location} (${spec.modelType}, ${parameters.toLocaleString('en-US')} parameters, ${hf.weightFiles.length} weight file(s)) -> ${o.runDir} (${store.location}/${dir})`,
  );
  return { dir: o.runDir, parameters };
}

export interface ConvertToHfOptions {
  /** The run directory (with config.yaml and checkpoints). */
  runDir: string;
  /** Where the HF directory goes: a local path or s3://bucket/prefix. */
  hfDir: string;
  /** Checkpoint step. Default: the newest complete, verified step. */
  step?: number;
  /** On-disk dtype for every tensor. Default: the source's dtype of each tensor for an imported run, else config.json's torch_dtype, else F32. */
  dtype?: SafeDType;
  /** Model type when the run was not imported. Default mistral for windowed models, else llama. */
  modelType?: HfModelType;
  /** Shard above this many bytes. Default 5e9 (transformers' default). */
  maxShardBytes?: number;
  s3?: S3StoreOptions;
  out: Out;
}

/** The tokenizer files of a run with an HF tokenizer (`data.tokenizer.path`: the file or its directory). */
function tokenizerFiles(path: string): Map<string, Uint8Array> {
  const isFile = existsSync(path) && statSync(path).isFile();
  const dir = isFile ? dirname(path) : path;
  const out = new Map<string, Uint8Array>();
  const main = isFile ? path : join(dir, 'tokenizer.json');
  if (!existsSync(main)) throw new TsformerError(`data.tokenizer.path: ${path} has no tokenizer.json`, 'config');
  out.set('tokenizer.json', readFileSync(main));
  for (const f of HF_TOKENIZER_FILES) if (f !== 'tokenizer.json' && existsSync(join(dir, f))) out.set(f, readFileSync(join(dir, f)));
  return out;
}

function readSource(runDir: string): HfSource | undefined {
  const p = join(runDir, HF_SOURCE_FILE);
  if (!existsSync(p)) return undefined;
  const s = JSON.parse(readFileSync(p, 'utf8')) as HfSource;
  if (s?.format !== 'tsformer-hf-source/1' || typeof s.config !== 'object') throw new TsformerError(`${p} is not a tsformer-hf-source/1 file`, 'checkpoint');
  return s;
}

/** `convert --to hf`: a run's checkpoint as a Hugging Face directory. */
export async function convertToHf(o: ConvertToHfOptions): Promise<ConvertResult> {
  const cfgPath = join(o.runDir, 'config.yaml');
  if (!existsSync(cfgPath)) throw new TsformerError(`${o.runDir} is not a run directory (no config.yaml)`, 'config');
  const { config } = resolveConfig(YAML.parse(readFileSync(cfgPath, 'utf8')), cfgPath);
  const store: CheckpointStore = config.checkpoint.dir ? checkpointStoreOf(config, o.out) : new LocalStore(join(o.runDir, 'checkpoints'));
  const step = o.step ?? (await findResumeStep(store, { onWarning: (m) => o.out.warn(`warning: ${m}`) }));
  if (step === undefined) throw new TsformerError(`run ${o.runDir} has no complete checkpoint in ${store.location}`, 'checkpoint');
  const files = await readStep(store, step);
  const where = `${store.location}/${stepDirName(step)}`;
  // the step's own config (what its weights were trained with) over the run's
  const stepYaml = files.get('config.yaml');
  const model = stepYaml ? resolveConfig(YAML.parse(new TextDecoder().decode(stepYaml)), `${where}/config.yaml`).config.model : config.model;
  const state: Map<string, HostTensor> = decodeShardedSafetensors(files, 'model', where).tensors;

  const source = readSource(o.runDir);
  const hfConfig = modelConfigToHfConfig(model, { base: source?.config, modelType: o.modelType });
  const tensors = stateDictToHfTensors(state, hfConfig);
  const declared = DTYPE_NAMES[String(hfConfig.torch_dtype ?? hfConfig.dtype)] ?? 'F32';
  const dtype: Record<string, SafeDType> = {};
  for (const name of tensors.keys()) dtype[name] = o.dtype ?? source?.dtypes[name] ?? declared;

  const extraFiles = config.data.tokenizer.type === 'hf' ? tokenizerFiles(config.data.tokenizer.path) : new Map<string, Uint8Array>();
  if (config.data.tokenizer.type !== 'hf') o.out.warn('warning: the run uses the byte tokenizer; no tokenizer.json is written');
  const written = await writeHfDirectory(o.hfDir, { config: hfConfig, tensors, extraFiles }, { dtype, maxShardBytes: o.maxShardBytes, s3: o.s3 });
  const parameters = [...tensors.values()].reduce((n, t) => n + t.data.length, 0);
  o.out.info(`exported ${where} (${String(hfConfig.model_type)}, ${parameters.toLocaleString('en-US')} parameters) -> ${o.hfDir}: ${written.join(', ')}`);
  return { dir: o.hfDir, parameters };
}

/** The yargs options of `convert <source>`. */
export function convertBuilder<T>(y: Argv<T>) {
  return y
    .positional('source', { type: 'string', demandOption: true, describe: 'with --from hf: the HF directory (path or s3://); with --to hf: the run directory' })
    .option('from', { choices: ['hf'] as const, describe: 'import from this format into a run directory' })
    .option('to', { choices: ['hf'] as const, describe: 'export a run directory to this format' })
    .option('out', { type: 'string', demandOption: true, describe: '--from: the new run directory (runs/<name>); --to: the HF directory (path or s3://)' })
    .option('step', { type: 'number', describe: '--to: checkpoint step (default: newest complete)' })
    .option('dtype', { choices: ['F32', 'F16', 'BF16'] as const, describe: "--to: on-disk dtype (default: the source's, else config.json torch_dtype)" })
    .option('model-type', { choices: ['llama', 'mistral', 'qwen2'] as const, describe: '--to: HF model_type of a run that was not imported' })
    .option('max-shard-mb', { type: 'number', describe: 'shard weights above this many MiB' })
    .option('train-data', { type: 'string', describe: '--from: data.train text file of the run (default datasets/brown/train.txt)' })
    .option('validation-data', { type: 'string', describe: '--from: data.validation text file (default datasets/brown/validation.txt)' })
    .option('seq-len', { type: 'number', describe: '--from: data.seqLen (default min(max_position_embeddings, 256))' })
    .option('s3-endpoint', { type: 'string', describe: 'S3-compatible endpoint for s3:// locations (default: AWS, or AWS_ENDPOINT_URL_S3)' })
    .option('s3-region', { type: 'string' })
    .option('s3-path-style', { type: 'boolean', describe: 'path-style S3 URLs (most self-hosted stores)' });
}

type ConvertArgs = Awaited<ReturnType<typeof convertBuilder>['argv']>;

/** Runs `convert` from parsed arguments. */
export async function convertHandler(a: ConvertArgs, out: Out): Promise<ConvertResult> {
  if ((a.from === undefined) === (a.to === undefined)) throw new TsformerError('convert: give exactly one of --from hf or --to hf', 'config');
  const s3: S3StoreOptions = { region: a['s3-region'], endpoint: a['s3-endpoint'], forcePathStyle: a['s3-path-style'], onRetry: (m) => out.warn(`warning: ${m}`) };
  if (a.from === 'hf') {
    return convertFromHf({ from: a.source, runDir: a.out, train: a['train-data'], validation: a['validation-data'], seqLen: a['seq-len'], maxShardMB: a['max-shard-mb'], s3, out });
  }
  return convertToHf({
    runDir: a.source,
    hfDir: a.out,
    step: a.step,
    dtype: a.dtype,
    modelType: a['model-type'],
    maxShardBytes: a['max-shard-mb'] === undefined ? undefined : a['max-shard-mb'] * 1024 * 1024,
    s3,
    out,
  });
}
