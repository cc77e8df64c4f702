/**
 * Saving without stalling training: the caller snapshots the run to host memory (bytes), hands
 * them to `CheckpointWriter.save`, and goes on training while the step is written in the
 * background. At most one save is in flight: a second `save` first waits for the first. A save
 * that fails (the store unreachable after its retries) leaves no manifest, so the step does not
 * exist; training goes on and the next save tries again. `flush()` waits for the save in flight
 * and retries the newest failed one, so a process calls it before it exits.
 */
import { TsformerError } from '@tsformer/core';
import { listCompleteSteps, pruneSteps, saveStep, stepDirName, type CheckpointStore, type StepFiles } from './store.js';

/** Options of `CheckpointWriter`. */
export interface CheckpointWriterOptions {
  /** Keep this many newest complete steps (>= 1). Default 3. */
  keepLast?: number;
  /** Also keep every step that is a multiple of this; 0 = off. Default 0. */
  keepEvery?: number;
  /** Write in the background (true) or within `save` (false). Default true. */
  background?: boolean;
  /** Called when a step is complete on the store (manifest and `latest` written, old steps pruned). */
  onSaved?: (info: SavedInfo) => void;
  /** Called when a save failed; the step has no manifest. Default: `console.warn`. */
  onError?: (step: number, error: Error) => void;
}

/** What `onSaved` receives. */
export interface SavedInfo {
  step: number;
  /** The step directory name. */
  dir: string;
  /** Total bytes of the step's files. */
  bytes: number;
  /** Wall seconds of the write (from the start of the upload). */
  seconds: number;
  /** Steps removed by retention afterwards. */
  pruned: number[];
}

/** Writes checkpoint steps to a store, one at a time, in the background; see the file comment. */
export class CheckpointWriter {
  readonly store: CheckpointStore;
  readonly #keepLast: number;
  readonly #keepEvery: number;
  readonly #background: boolean;
  readonly #onSaved: (info: SavedInfo) => void;
  readonly #onError: (step: number, error: Error) => void;
  #inFlight: Promise<boolean> | undefined;
  #inFlightStep: number | undefined;
  #failed: { step: number; files: StepFiles; error: Error } | undefined;
  #lastSaved: number | undefined;

  constructor(store: CheckpointStore, opts: CheckpointWriterOptions = {}) {
    this.store = store;
    this.#keepLast = opts.keepLast ?? 3;
    this.#keepEvery = opts.keepEvery ?? 0;
    if (!Number.isSafeInteger(this.#keepLast) || this.#keepLast < 1) {
      throw new TsformerError(`CheckpointWriter: keepLast must be an integer >= 1, got ${this.#keepLast}`, 'checkpoint');
    }
    if (!Number.isSafeInteger(this.#keepEvery) || this.#keepEvery < 0) {
      throw new TsformerError(`CheckpointWriter: keepEvery must be an integer >= 0, got ${this.#keepEvery}`, 'checkpoint');
    }
    this.#background = opts.background ?? true;
    this.#onSaved = opts.onSaved ?? (() => {});
    this.#onError = opts.onError ?? ((step, e) => console.warn(`checkpoint ${stepDirName(step)} not saved: ${e.message}`));
  }

  /** The newest step this writer completed, if any. */
  get lastSaved(): number | undefined {
    return this.#lastSaved;
  }

  /** The step being written now, if any. */
  get inFlight(): number | undefined {
    return this.#inFlightStep;
  }

  /**
   * Starts writing `files` as step `step` once the previous save has finished. The bytes must not
   * change afterwards (they are the snapshot). Resolves when the write has started (background) or
   * finished (foreground; a failure then rejects).
   */
  async save(step: number, files: StepFiles): Promise<void> {
    await this.#inFlight;
    this.#failed = undefined; // a newer snapshot supersedes a failed one
    const task = this.#write(step, files);
    this.#inFlight = task;
    if (!this.#background) {
      if (!(await task)) throw this.#failed!.error;
    }
  }

  async #write(step: number, files: StepFiles): Promise<boolean> {
    this.#inFlightStep = step;
    const started = performance.now();
    try {
      const dir = await saveStep(this.store, step, files);
      this.#lastSaved = step;
      const pruned = await pruneSteps(this.store, this.#keepLast, { keepEvery: this.#keepEvery }).catch((e: Error) => {
        // retention failing must not make a complete step look failed
        this.#onError(step, new TsformerError(`saved, but removing old steps failed: ${e.message}`, 'checkpoint'));
        return [] as number[];
      });
      let bytes = 0;
      for (const f of Object.values(files)) bytes += typeof f === 'string' ? Buffer.byteLength(f) : f.byteLength;
      this.#onSaved({ step, dir, bytes, seconds: (performance.now() - started) / 1000, pruned });
      return true;
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      this.#failed = { step, files, error };
      this.#onError(step, error);
      return false;
    } finally {
      this.#inFlightStep = undefined;
    }
  }

  /**
   * Waits for the save in flight; if the newest save failed, tries it once more. Rejects with a
   * message naming the step and the newest complete step on the store when it still fails.
   */
  async flush(): Promise<void> {
    await this.#inFlight;
    const failed = this.#failed;
    if (!failed) return;
    this.#failed = undefined;
    const task = this.#write(failed.step, failed.files);
    this.#inFlight = task;
    if (await task) return;
    const again = this.#failed as { error: Error } | undefined; // set by the failed #write
    let newest: string;
    try {
      const steps = await listCompleteSteps(this.store);
      newest = steps.length > 0 ? `the newest complete step there is ${stepDirName(steps.at(-1)!)}` : 'there is no complete step there';
    } catch {
      newest =
        this.#lastSaved !== undefined ? `the newest step this process saved there is ${stepDirName(this.#lastSaved)}` : 'this process saved no step there';
    }
    throw new TsformerError(
      `checkpoint ${this.store.location}/${stepDirName(failed.step)} could not be saved: ${(again ?? failed).error.message}; ${newest}`,
      'checkpoint',
    );
  }
}
