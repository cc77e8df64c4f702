import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { main } from '../src/cli.js';
import { memoryOut } from '../src/out.js';

/** A temp workspace with a small text dataset and a tiny config; paths inside are absolute. */
export function workspace(overrides: Record<string, unknown> = {}): { dir: string; config: string; runs: string } {
  const dir = mkdtempSync(join(tmpdir(), 'tsformer-cli-'));
  const words = ['the', 'jury', 'said', 'city', 'election', 'was', 'conducted', 'in', 'a', 'manner', 'of', 'praise', 'and', 'thanks'];
  let text = '';
  let s = 12345;
  for (let i = 0; i < 3000; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    text += words[s % words.length] + (i % 11 === 10 ? '.\n' : ' ');
  }
  mkdirSync(join(dir, 'data'));
  writeFileSync(join(dir, 'data', 'train.txt'), text);
  writeFileSync(join(dir, 'data', 'val.txt'), text.slice(0, 2000));
  const runs = join(dir, 'runs');
  const cfg = {
    name: 'tiny',
    seed: 7,
    backend: 'cpu',
    runsDir: runs,
    model: { vocabSize: 256, dModel: 16, nLayers: 2, maxSeqLen: 16, attention: { type: 'mha', numHeads: 2 }, dropout: 0.1 },
    data: { tokenizer: { type: 'byte' }, train: { type: 'text', path: join(dir, 'data', 'train.txt') }, validation: { type: 'text', path: join(dir, 'data', 'val.txt') }, seqLen: 16 },
    train: { steps: 8, batchSize: 4, optimizer: { type: 'adamw', lr: 0.01 }, schedule: { type: 'cosine', warmupSteps: 2 }, logEvery: 1, evalEvery: 4, evalBatches: 2 },
    checkpoint: { every: 2, keepLast: 10 },
    sample: { prompt: 'the ', maxNewTokens: 8 },
    ...overrides,
  };
  const config = join(dir, 'config.yaml');
  writeFileSync(config, YAML.stringify(cfg));
  return { dir, config, runs };
}

/** Runs the CLI in-process; returns its exit code and everything it printed. */
export async function cli(...args: string[]): Promise<{ code: number; text: string }> {
  const out = memoryOut();
  const code = await main(args, out);
  return { code, text: out.text() };
}
