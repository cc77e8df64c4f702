// Shared by the checkpoint tests of the trainer: the real binary in a child process, S3 settings
// for a run config, and the tensors of a saved step.
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { decodeSafetensors, decodeShardedSafetensors, readStep, S3Store, type CheckpointStore } from '@tsformer/checkpoint';
import type { S3TestServer } from '@tsformer/checkpoint/testing';

export const BIN = resolve(__dirname, '../bin/tsformer.mjs');
export const REPO = resolve(__dirname, '../../..');

/** A `checkpoint:` config section that saves to `s3://<bucket>/<prefix>` on the test server. */
export function s3Checkpoint(server: S3TestServer, prefix: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    dir: `s3://${server.bucket}/${prefix}`,
    every: 2,
    keepLast: 10,
    s3: {
      endpoint: server.endpoint,
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      attempts: 2,
      backoffMs: 20,
    },
    ...extra,
  };
}

/** An S3Store on the test server, for checking what a run wrote. */
export function s3Store(server: S3TestServer, prefix: string): S3Store {
  return new S3Store(`s3://${server.bucket}/${prefix}`, server.storeOptions());
}

export interface Child {
  proc: ChildProcess;
  /** stdout and stderr so far. */
  output(): string;
  /** Resolves once the output matches. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }>;
}

/** Starts `tsformer <args>` in a fresh process (the standard AWS credential chain: environment variables). */
export function startTrainer(args: string[], env: Record<string, string> = {}): Child {
  const proc = spawn(process.execPath, [BIN, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const waiters: Array<{ re: RegExp; resolve: () => void }> = [];
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of waiters.splice(0)) {
      if (w.re.test(out)) w.resolve();
      else waiters.push(w);
    }
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }>((res) =>
    proc.on('close', (code, signal) => res({ code, signal, output: out })),
  );
  return {
    proc,
    output: () => out,
    exited,
    waitFor: (re, timeoutMs = 60_000) =>
      new Promise<void>((res, rej) => {
        if (re.test(out)) return res();
        const timer = setTimeout(() => rej(new Error(`timed out waiting for ${re} in:\n${out}`)), timeoutMs);
        const done = () => {
          clearTimeout(timer);
          res();
        };
        waiters.push({ re, resolve: done });
        void exited.then(() => {
          if (!re.test(out)) {
            clearTimeout(timer);
            rej(new Error(`process exited before ${re} appeared:\n${out}`));
          }
        });
      }),
  };
}

/** Runs `tsformer <args>` in a fresh process to the end. */
export async function runTrainer(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  return startTrainer(args, env).exited;
}

/** Every tensor of a verified step (model, sharded or not, and optimizer) as raw bytes by name. */
export async function stepTensors(store: CheckpointStore, step: number): Promise<Map<string, Buffer>> {
  const files = await readStep(store, step);
  const out = new Map<string, Buffer>();
  const add = (prefix: string, tensors: Map<string, { shape: number[]; data: Float32Array | Int32Array }>) => {
    for (const [name, t] of tensors) out.set(`${prefix}${name} [${t.shape.join(',')}]`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  };
  add('model/', decodeShardedSafetensors(files, 'model').tensors);
  add('optimizer/', decodeSafetensors(files.get('optimizer.safetensors')!).tensors);
  return out;
}

/** Asserts two steps hold the same tensors bit for bit; returns the number compared. */
export function sameTensors(a: Map<string, Buffer>, b: Map<string, Buffer>): string[] {
  const problems: string[] = [];
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w) problems.push(`${k} missing`);
    else if (!v.equals(w)) problems.push(`${k} differs`);
  }
  for (const k of b.keys()) if (!a.has(k)) problems.push(`${k} unexpected`);
  return problems;
}
