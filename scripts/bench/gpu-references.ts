/**
 * The references gpu.ts compares against, run by gpu.ts itself in the same command (one command, one
 * table): PyTorch (attention_torch.py, linear_torch.py: JSON lines on stdout) and the TypeScript peer
 * (@genai-fi/nanogpt, the kit's peer-gpu.mjs beside this bundle: JSON lines per logged step). Each runs
 * to completion before our measurements start, so no two processes share the GPU. A reference that
 * cannot run (no python3, no torch, no peer bundle) leaves its columns empty and says why.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

export type JsonLine = Record<string, unknown>;

/** JSON lines (starting with `{`) of a text. */
export function jsonLines(text: string): JsonLine[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as JsonLine);
}

/** Runs `cmd argv` to completion; its stdout, or undefined after printing why it gave none. */
export function runReference(label: string, cmd: string, argv: string[], timeoutMs = 20 * 60_000): string | undefined {
  const t0 = performance.now();
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 256 * 2 ** 20 });
  const secs = ((performance.now() - t0) / 1000).toFixed(0);
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : `exit ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().split('\n').slice(-2).join(' / ')}`;
    console.log(`reference ${label}: not run (${cmd} ${argv.join(' ')}: ${why})`);
    return undefined;
  }
  console.log(`reference ${label}: ${cmd} ${argv.join(' ')} (${secs} s)`);
  return r.stdout;
}

/** PyTorch's attention, GPT-2-small training and matmul references (attention_torch.py). */
export function torchReference(a: { T: string; B: number; H: number; D: number; gpt2: string; vocab: string; matmul: string }): JsonLine[] {
  const out = runReference('PyTorch', 'python3', ['scripts/bench/attention_torch.py', '--T', a.T, '--B', String(a.B), '--H', String(a.H), '--D', String(a.D), '--gpt2', a.gpt2, '--vocab', a.vocab, '--matmul', a.matmul]);
  return out ? jsonLines(out) : [];
}

/** PyTorch's naive chunked GLA / DeltaNet references (linear_torch.py). */
export function linearTorchReference(a: { T: string; B: number; H: number; D: number }): JsonLine[] {
  const out = runReference('PyTorch linear attention', 'python3', ['scripts/bench/linear_torch.py', '--T', a.T, '--B', String(a.B), '--H', String(a.H), '--D', String(a.D)]);
  return out ? jsonLines(out) : [];
}

/**
 * The peer's training logs at batch b and each sequence length (12 layers, d=768, 12 heads, its byte
 * vocabulary), from the kit's peer-gpu.mjs and peer.txt beside this bundle; keyed `${b}x${T}`.
 */
export function peerReference(shapes: Array<[b: number, T: number]>, dims: { layers: number; width: number; heads: number }): Map<string, string> {
  const logs = new Map<string, string>();
  const dir = dirname(process.argv[1] ?? '.');
  const entry = join(dir, 'peer-gpu.mjs');
  const text = join(dir, 'peer.txt');
  if (!existsSync(entry) || !existsSync(text)) {
    console.log(`reference peer: not run (${entry} or ${text} missing: ../shared/peer/setup.sh --gpu, then copy a text to ${text})`);
    return logs;
  }
  for (const [b, T] of shapes) {
    const cfg = JSON.stringify({ nLayer: dims.layers, nHead: dims.heads, nEmbed: dims.width, blockSize: T });
    const out = runReference(`peer ${b}x${T}`, process.execPath, [entry, 'webgpu', '8', cfg, String(b), text]);
    if (out) logs.set(`${b}x${T}`, out);
  }
  return logs;
}
