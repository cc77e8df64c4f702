/**
 * Checkpoint step directories on a store:
 *
 *   <root>/step-00000100/model.safetensors, optimizer.safetensors, trainer-state.json, ...
 *   <root>/step-00000100/manifest.json      written last: sizes and sha256 of every file
 *   <root>/latest                           "step-00000100", updated after the manifest
 *
 * Only a step directory whose manifest exists and parses counts as complete, so a crash at any
 * point leaves either the previous complete step or the new one, never a half-written step that
 * looks whole.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TsformerError } from '@tsformer/core';

/**
 * Where checkpoints live. Paths are relative, `/`-separated, with no `.`/`..` segments. A second
 * implementation (S3) maps them to object keys under a prefix.
 */
export interface CheckpointStore {
  /** Human-readable location for messages: a directory path or `s3://bucket/prefix`. */
  readonly location: string;
  /** Writes a whole file atomically: readers see the old content or the new, never a part. */
  writeFile(rel: string, bytes: Uint8Array): Promise<void>;
  /** Reads a whole file; a missing file is a TsformerError. */
  readFile(rel: string): Promise<Uint8Array>;
  /** Relative paths of all files whose path starts with `prefix` (string prefix, like S3), sorted. */
  list(prefix: string): Promise<string[]>;
  /** Removes the file `rel` and everything under the directory `rel/`; absent is not an error. */
  remove(rel: string): Promise<void>;
  /** Whether the file `rel` exists. */
  exists(rel: string): Promise<boolean>;
}

const TMP_MARK = '.tmp-';
let tmpCounter = 0;

function checkRel(rel: string, allowEmpty: boolean): string {
  if (rel === '' && allowEmpty) return rel;
  const parts = rel.split('/');
  if (rel.startsWith('/') || rel.includes('\\') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new TsformerError(`invalid checkpoint store path "${rel}" (relative, '/'-separated, no '.' or '..')`, 'checkpoint');
  }
  return rel;
}

function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** A store in a local directory. Writes go to `<file>.tmp-<pid>-<n>`, are fsynced, then renamed. */
export class LocalStore implements CheckpointStore {
  /** The absolute root directory. */
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  get location(): string {
    return this.root;
  }

  #abs(rel: string): string {
    return path.join(this.root, ...checkRel(rel, true).split('/'));
  }

  async writeFile(rel: string, bytes: Uint8Array): Promise<void> {
    const file = this.#abs(checkRel(rel, false));
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}${TMP_MARK}${process.pid}-${tmpCounter++}`;
    try {
      const handle = await fsp.open(tmp, 'w');
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fsp.rename(tmp, file);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw new TsformerError(`cannot write ${file}: ${(e as Error).message}`, 'checkpoint');
    }
    // make the rename itself durable; not every platform can fsync a directory
    try {
      const dir = await fsp.open(path.dirname(file), 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    } catch {
      // best effort
    }
  }

  async readFile(rel: string): Promise<Uint8Array> {
    const file = this.#abs(checkRel(rel, false));
    try {
      const buf = await fsp.readFile(file);
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (e) {
      const why = isNotFound(e) ? 'file not found' : (e as Error).message;
      throw new TsformerError(`cannot read ${file}: ${why}`, 'checkpoint');
    }
  }

  async list(prefix: string): Promise<string[]> {
    checkRel(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix, true);
    // walk only the directory part of the prefix, then filter by the full string prefix
    const slash = prefix.lastIndexOf('/');
    const dirRel = slash < 0 ? '' : prefix.slice(0, slash);
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      let entries;
      try {
        entries = await fsp.readdir(this.#abs(rel), { withFileTypes: true });
      } catch (e) {
        if (isNotFound(e) || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw e;
      }
      for (const entry of entries) {
        const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
        if (entry.isDirectory()) {
          // only descend where a match is possible
          if (child.startsWith(prefix) || prefix.startsWith(`${child}/`)) await walk(child);
        } else if (entry.isFile() && child.startsWith(prefix) && !entry.name.includes(TMP_MARK)) {
          out.push(child);
        }
      }
    };
    await walk(dirRel);
    return out.sort();
  }

  async remove(rel: string): Promise<void> {
    await fsp.rm(this.#abs(checkRel(rel, false)), { recursive: true, force: true });
  }

  async exists(rel: string): Promise<boolean> {
    try {
      return (await fsp.stat(this.#abs(checkRel(rel, false)))).isFile();
    } catch (e) {
      if (isNotFound(e) || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
      throw e;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Step directories

/** Files of one checkpoint step by name, e.g. `model.safetensors`, `trainer-state.json`. Strings are written as UTF-8. */
export interface StepFiles {
  [file: string]: Uint8Array | string;
}

/** Size and hash of one file of a step. */
export interface ManifestEntry {
  /** Size in bytes. */
  bytes: number;
  /** Lowercase hex sha256 of the content. */
  sha256: string;
}

/** `manifest.json` of a step directory; its presence marks the step complete. */
export interface StepManifest {
  /** Always `tsformer-checkpoint/1`. */
  format: typeof MANIFEST_FORMAT;
  /** The training step, equal to the number in the directory name. */
  step: number;
  /** ISO 8601 time the step was written. */
  created: string;
  /** Every file of the step (the manifest itself excluded). */
  files: Record<string, ManifestEntry>;
}

/** The manifest format tag. */
export const MANIFEST_FORMAT = 'tsformer-checkpoint/1';
/** Name of the manifest file inside a step directory. */
export const MANIFEST_FILE = 'manifest.json';
/** Name of the root file that holds the most recently saved step directory's name. */
export const LATEST_FILE = 'latest';

const STEP_DIR = /^step-(\d{8,})$/;
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

function checkStep(step: number): void {
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new TsformerError(`invalid checkpoint step ${step} (a non-negative integer)`, 'checkpoint');
  }
}

/** `step-00000042`: the directory name of a step (8 digits, more when needed). */
export function stepDirName(step: number): string {
  checkStep(step);
  return `step-${String(step).padStart(8, '0')}`;
}

/** The step number of a directory name written by `stepDirName`, or undefined. */
export function parseStepDirName(name: string): number | undefined {
  const m = STEP_DIR.exec(name);
  if (!m) return undefined;
  const step = Number(m[1]);
  // reject non-canonical spellings (extra leading zeros) so one step has one directory
  return Number.isSafeInteger(step) && stepDirName(step) === name ? step : undefined;
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function where(store: CheckpointStore, step: number): string {
  return `checkpoint ${store.location}/${stepDirName(step)}`;
}

/**
 * Writes one step: removes an existing directory of that step (its manifest first, so it never
 * looks complete while half-written), writes the files, then `manifest.json`, then the `latest`
 * pointer. Returns the step directory name.
 */
export async function saveStep(store: CheckpointStore, step: number, files: StepFiles): Promise<string> {
  const dir = stepDirName(step);
  const names = Object.keys(files).sort();
  for (const name of names) {
    if (!FILE_NAME.test(name) || name === MANIFEST_FILE || name.includes(TMP_MARK)) {
      throw new TsformerError(`${where(store, step)}: invalid file name "${name}"`, 'checkpoint');
    }
  }

  await store.remove(`${dir}/${MANIFEST_FILE}`);
  await store.remove(dir);

  const entries: Record<string, ManifestEntry> = {};
  const encoder = new TextEncoder();
  for (const name of names) {
    const content = files[name]!;
    const bytes = typeof content === 'string' ? encoder.encode(content) : content;
    await store.writeFile(`${dir}/${name}`, bytes);
    entries[name] = { bytes: bytes.byteLength, sha256: sha256Hex(bytes) };
  }
  const manifest: StepManifest = { format: MANIFEST_FORMAT, step, created: new Date().toISOString(), files: entries };
  await store.writeFile(`${dir}/${MANIFEST_FILE}`, encoder.encode(`${JSON.stringify(manifest, null, 2)}\n`));
  await store.writeFile(LATEST_FILE, encoder.encode(dir));
  return dir;
}

/** Parses and checks a manifest; throws a plain message on any problem. */
function parseManifest(bytes: Uint8Array, step: number): StepManifest {
  let m: unknown;
  try {
    m = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new Error(`manifest.json is not valid JSON (${(e as Error).message})`);
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new Error('manifest.json is not an object');
  const { format, step: mStep, created, files } = m as Record<string, unknown>;
  if (format !== MANIFEST_FORMAT) throw new Error(`manifest.json has format ${JSON.stringify(format)}, expected "${MANIFEST_FORMAT}"`);
  if (mStep !== step) throw new Error(`manifest.json says step ${JSON.stringify(mStep)}, the directory is step ${step}`);
  if (typeof created !== 'string') throw new Error('manifest.json has no "created" time');
  if (typeof files !== 'object' || files === null || Array.isArray(files)) throw new Error('manifest.json has no "files" object');
  for (const [name, entry] of Object.entries(files)) {
    const { bytes: size, sha256 } = (entry ?? {}) as Record<string, unknown>;
    if (!FILE_NAME.test(name) || name === MANIFEST_FILE) throw new Error(`manifest.json lists an invalid file name "${name}"`);
    if (!Number.isSafeInteger(size) || (size as number) < 0 || typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) {
      throw new Error(`manifest.json entry for "${name}" needs { bytes, sha256 }`);
    }
  }
  return m as StepManifest;
}

/** Reads and checks the manifest of a step; a missing or bad manifest is a TsformerError naming the step. */
export async function readManifest(store: CheckpointStore, step: number): Promise<StepManifest> {
  const rel = `${stepDirName(step)}/${MANIFEST_FILE}`;
  if (!(await store.exists(rel))) {
    throw new TsformerError(`${where(store, step)}: manifest.json is missing (incomplete step)`, 'checkpoint');
  }
  try {
    return parseManifest(await store.readFile(rel), step);
  } catch (e) {
    if (e instanceof TsformerError) throw e;
    throw new TsformerError(`${where(store, step)}: bad manifest: ${(e as Error).message}`, 'checkpoint');
  }
}

/** Steps with a directory of files on the store, complete or not, ascending. */
async function listStepDirs(store: CheckpointStore): Promise<number[]> {
  const steps = new Set<number>();
  for (const rel of await store.list('step-')) {
    const step = parseStepDirName(rel.split('/')[0]!);
    if (step !== undefined && rel.includes('/')) steps.add(step);
  }
  return [...steps].sort((a, b) => a - b);
}

/** Complete steps (manifest present and parsing), ascending. Files are not hashed here. */
export async function listCompleteSteps(store: CheckpointStore): Promise<number[]> {
  const files = new Set(await store.list('step-'));
  const out: number[] = [];
  for (const step of await listStepDirs(store)) {
    if (!files.has(`${stepDirName(step)}/${MANIFEST_FILE}`)) continue;
    try {
      await readManifest(store, step);
      out.push(step);
    } catch {
      // a manifest that does not parse means the step is not complete
    }
  }
  return out;
}

function checkFile(store: CheckpointStore, step: number, name: string, entry: ManifestEntry, bytes: Uint8Array): void {
  if (bytes.byteLength !== entry.bytes) {
    throw new TsformerError(`${where(store, step)}: file "${name}" has ${bytes.byteLength} bytes, the manifest says ${entry.bytes}`, 'checkpoint');
  }
  const sha = sha256Hex(bytes);
  if (sha !== entry.sha256) {
    throw new TsformerError(`${where(store, step)}: file "${name}" sha256 mismatch (manifest ${entry.sha256}, file ${sha})`, 'checkpoint');
  }
}

async function readListedFile(store: CheckpointStore, step: number, name: string): Promise<Uint8Array> {
  const rel = `${stepDirName(step)}/${name}`;
  if (!(await store.exists(rel))) throw new TsformerError(`${where(store, step)}: file "${name}" is missing`, 'checkpoint');
  return store.readFile(rel);
}

/**
 * Checks a step against its manifest: every listed file present with the right size and sha256.
 * Throws a TsformerError naming the step directory and the bad file.
 */
export async function verifyStep(store: CheckpointStore, step: number): Promise<void> {
  const manifest = await readManifest(store, step);
  for (const [name, entry] of Object.entries(manifest.files)) {
    checkFile(store, step, name, entry, await readListedFile(store, step, name));
  }
}

/** Options of `readStep`. */
export interface ReadStepOptions {
  /** Check each file's size and sha256 against the manifest. Default true. */
  verify?: boolean;
}

/** Reads the files a step's manifest lists (the manifest itself excluded), verified by default. */
export async function readStep(store: CheckpointStore, step: number, opts: ReadStepOptions = {}): Promise<Map<string, Uint8Array>> {
  const manifest = await readManifest(store, step);
  const out = new Map<string, Uint8Array>();
  for (const [name, entry] of Object.entries(manifest.files)) {
    const bytes = await readListedFile(store, step, name);
    if (opts.verify ?? true) checkFile(store, step, name, entry, bytes);
    out.set(name, bytes);
  }
  return out;
}

/** Options of `findResumeStep`. */
export interface FindResumeOptions {
  /** Receives a message for each complete step skipped because it failed verification. Default `console.warn`. */
  onWarning?: (msg: string) => void;
}

/**
 * The newest complete step that passes verification, or undefined when there is none. A newer step
 * that fails is reported through `onWarning` (naming it and why) and the previous one is tried.
 * This hashes every file of the chosen step; read it afterwards with `{ verify: false }` to avoid
 * hashing twice.
 */
export async function findResumeStep(store: CheckpointStore, opts: FindResumeOptions = {}): Promise<number | undefined> {
  const warn = opts.onWarning ?? ((msg: string) => console.warn(msg));
  const steps = await listCompleteSteps(store);
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i]!;
    try {
      await verifyStep(store, step);
      return step;
    } catch (e) {
      if (!(e instanceof TsformerError)) throw e;
      const next = i > 0 ? `falling back to ${stepDirName(steps[i - 1]!)}` : 'no earlier complete step';
      warn(`skipping ${stepDirName(step)}: ${e.message}; ${next}`);
    }
  }
  return undefined;
}

/** Options of `pruneSteps`. */
export interface PruneOptions {
  /** Also keep every step that is a multiple of this (0 = off). Default 0. */
  keepEvery?: number;
}

/**
 * Deletes the oldest complete steps beyond the newest `keepLast` (>= 1), except multiples of
 * `keepEvery`, and incomplete step directories older than the newest complete step (left by
 * crashes). Never touches the newest complete step, nor incomplete directories newer than it
 * (possibly being written), so a step is deleted only once a newer manifest exists. Each removal
 * deletes the manifest first. Returns the removed steps, ascending.
 */
export async function pruneSteps(store: CheckpointStore, keepLast: number, opts: PruneOptions = {}): Promise<number[]> {
  if (!Number.isSafeInteger(keepLast) || keepLast < 1) {
    throw new TsformerError(`pruneSteps: keepLast must be an integer >= 1, got ${keepLast}`, 'checkpoint');
  }
  const keepEvery = opts.keepEvery ?? 0;
  if (!Number.isSafeInteger(keepEvery) || keepEvery < 0) {
    throw new TsformerError(`pruneSteps: keepEvery must be an integer >= 0, got ${keepEvery}`, 'checkpoint');
  }
  const complete = await listCompleteSteps(store);
  const newest = complete[complete.length - 1];
  if (newest === undefined) return [];
  const completeSet = new Set(complete);
  const kept = (step: number) => keepEvery > 0 && step % keepEvery === 0;
  const doomed = new Set(complete.slice(0, Math.max(0, complete.length - keepLast)).filter((s) => !kept(s)));
  for (const step of await listStepDirs(store)) {
    if (!completeSet.has(step) && step < newest) doomed.add(step);
  }
  const removed = [...doomed].sort((a, b) => a - b);
  for (const step of removed) {
    const dir = stepDirName(step);
    await store.remove(`${dir}/${MANIFEST_FILE}`);
    await store.remove(dir);
  }
  return removed;
}

/**
 * Like `findResumeStep`, but returns the chosen step's files too, so each file is downloaded and
 * hashed once (what a remote store wants). A newer complete step whose files fail verification is
 * reported through `onWarning` and skipped. Undefined when no complete step passes.
 */
export async function readResumeStep(store: CheckpointStore, opts: FindResumeOptions = {}): Promise<{ step: number; files: Map<string, Uint8Array> } | undefined> {
  const warn = opts.onWarning ?? ((msg: string) => console.warn(msg));
  const steps = await listCompleteSteps(store);
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i]!;
    try {
      return { step, files: await readStep(store, step) };
    } catch (e) {
      if (!(e instanceof TsformerError)) throw e;
      const next = i > 0 ? `falling back to ${stepDirName(steps[i - 1]!)}` : 'no earlier complete step';
      warn(`skipping ${stepDirName(step)}: ${e.message}; ${next}`);
    }
  }
  return undefined;
}

/** The step the `latest` pointer names, or undefined when there is no (readable) pointer. */
export async function readLatestStep(store: CheckpointStore): Promise<number | undefined> {
  if (!(await store.exists(LATEST_FILE))) return undefined;
  const text = new TextDecoder().decode(await store.readFile(LATEST_FILE)).trim();
  return parseStepDirName(text);
}
