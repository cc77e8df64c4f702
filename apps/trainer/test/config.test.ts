import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, mergeConfig } from '../src/config.js';

describe('config files', () => {
  it('every shipped config validates', async () => {
    const { readdirSync } = await import('node:fs');
    const dir = join(__dirname, '../../../configs/pretrain');
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(() => loadConfig(join(dir, f)), f).not.toThrow();
  });

  it('extends another file as a recursive diff; null removes a key', () => {
    const d = mkdtempSync(join(tmpdir(), 'tsformer-cfg-'));
    writeFileSync(
      join(d, 'base.yaml'),
      'name: base\nmodel: { vocabSize: 256, dModel: 32, nLayers: 2, maxSeqLen: 16, attention: { type: mha, numHeads: 4 } }\n' +
        'data: { train: { type: text, path: a.txt }, seqLen: 16 }\ntrain: { steps: 10, batchSize: 2, optimizer: { type: adamw, lr: 0.001 } }\n',
    );
    writeFileSync(join(d, 'child.yaml'), 'extends: base.yaml\nname: child\nmodel: { attention: { numKvHeads: 2 } }\ntrain: { steps: 20 }\n');
    const { config } = loadConfig(join(d, 'child.yaml'), ['train.batchSize=3']);
    expect(config.name).toBe('child');
    expect(config.model.attention).toMatchObject({ type: 'mha', numHeads: 4, numKvHeads: 2 });
    expect(config.train).toMatchObject({ steps: 20, batchSize: 3 });
    writeFileSync(join(d, 'hybrid.yaml'), 'extends: base.yaml\nmodel:\n  attention: null\n  layers: { pattern: [g], defs: { g: { attention: { type: mha, numHeads: 2 } } } }\n');
    expect(loadConfig(join(d, 'hybrid.yaml')).config.model.attention).toBeUndefined();
    writeFileSync(join(d, 'bad.yaml'), 'extends: missing.yaml\n');
    expect(() => loadConfig(join(d, 'bad.yaml'))).toThrow(/bad\.yaml: extends: file not found: .*missing\.yaml/);
    writeFileSync(join(d, 'loop.yaml'), 'extends: loop.yaml\n');
    expect(() => loadConfig(join(d, 'loop.yaml'))).toThrow(/extends: cycle/);
  });

  it('mergeConfig replaces arrays and scalars, merges mappings', () => {
    expect(mergeConfig({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3] }, d: null })).toEqual({ a: { b: 1, c: [3] } });
    // a different component type replaces the mapping instead of inheriting the other type's keys
    expect(mergeConfig({ p: { type: 'rope', theta: 5 } }, { p: { type: 'alibi' } })).toEqual({ p: { type: 'alibi' } });
    expect(mergeConfig({ p: { type: 'rope', theta: 5 } }, { p: { type: 'rope', fraction: 0.5 } })).toEqual({ p: { type: 'rope', theta: 5, fraction: 0.5 } });
  });
});
