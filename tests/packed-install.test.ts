import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './chromium.js';

const run = promisify(execFile);
const PACKAGES = ['core', 'layers', 'positional', 'ops', 'attention', 'model', 'data', 'checkpoint', 'train'];

/** What an outside project does with the published packages: ESM imports of dist, training steps, a generation, a safetensors round trip (bytes as tokens). */
const CONSUMER_MJS = `
import { selectBackend, tf } from '@tsformer/core';
import { DecoderLM, generate } from '@tsformer/model';
import { AdamW, adamwConfigSchema, trainStep } from '@tsformer/train';
import { encodeSafetensors, decodeSafetensors, tensorsToHost, hostToTensors } from '@tsformer/checkpoint';

const backend = await selectBackend('cpu');
const tok = { encode: (s) => Array.from(new TextEncoder().encode(s)), decode: (ids) => new TextDecoder().decode(Uint8Array.from(ids)) };
const model = new DecoderLM({
  vocabSize: 256, dModel: 32, nLayers: 2, maxSeqLen: 32,
  layers: { pattern: ['linear', 'softmax'], defs: { linear: { attention: { type: 'gated-deltanet', numHeads: 2, chunkSize: 8 }, positional: { type: 'none' } }, softmax: { attention: { type: 'mha', numHeads: 2 } } } },
}, { seed: 1 });
const optimizer = new AdamW(model.namedParameters(), adamwConfigSchema.parse({ type: 'adamw', lr: 1e-2 }));
const ids = Int32Array.from(tok.encode('outside the workspace, outside the workspace!'.repeat(2)));
const T = 32;
const batch = { inputs: ids.slice(0, T), targets: ids.slice(1, T + 1), batchSize: 1, seqLen: T };
const losses = [];
for (let i = 0; i < 3; i++) losses.push((await trainStep(model, optimizer, [batch], { lr: 1e-2, clipGradNorm: 1 })).loss);
model.eval();
const tokens = await generate(model, tok.encode('outside '), { maxNewTokens: 10, temperature: 0 });
const bytes = encodeSafetensors(await tensorsToHost(model.stateDict()));
const copy = new DecoderLM(model.config, { seed: 99 }).eval();
const loaded = hostToTensors(decodeSafetensors(bytes).tensors);
copy.loadStateDict(loaded);
const again = await generate(copy, tok.encode('outside '), { maxNewTokens: 10, temperature: 0 });
console.log(JSON.stringify({ backend: backend.name, losses, tokens, again, text: tok.decode(tokens), params: model.namedParameters().length }));
`;

/** The same through TypeScript: the published .d.ts files resolve through the exports maps. */
const CONSUMER_TS = `
import { Rng, type Tensor } from '@tsformer/core';
import { DecoderLM, type ModelConfigInput } from '@tsformer/model';
import { createAttention, attentionConfigSchema } from '@tsformer/attention';
import { noPositional } from '@tsformer/positional';
import { learningRate, scheduleConfigSchema } from '@tsformer/train';
const cfg: ModelConfigInput = { vocabSize: 256, dModel: 16, nLayers: 1, maxSeqLen: 8, attention: { type: 'mha', numHeads: 2 } };
const m: DecoderLM = new DecoderLM(cfg);
const a = createAttention(attentionConfigSchema.parse({ type: 'gla', numHeads: 2 }), { dModel: 16, positional: noPositional, rng: Rng.seeded(0), contextLength: 8 });
const lr: number = learningRate(scheduleConfigSchema.parse({ type: 'cosine', warmupSteps: 1 }), 1e-3, 0, 10);
export const used: Array<unknown> = [m, a, lr, null as unknown as Tensor];
`;

describe('the packages as published', () => {
  it('npm pack: dist, README and package.json only; installed outside the workspace they train a step and generate', async () => {
    const t0 = Date.now();
    const lap = (what: string) => console.log(`packed install: ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // build (nx caches it: a rebuild without source changes takes seconds)
    await run('npx', ['nx', 'run-many', '-t', 'build', `--projects=${PACKAGES.map((p) => `@tsformer/${p}`).join(',')}`, '--outputStyle=static'], { cwd: repoRoot, maxBuffer: 1 << 24 });
    lap('built');
    const packDir = mkdtempSync(join(tmpdir(), 'tsformer-pack-'));
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', packDir, ...PACKAGES.flatMap((p) => ['-w', `packages/${p}`])], { cwd: repoRoot, maxBuffer: 1 << 24 });
    const packs = JSON.parse(stdout.slice(stdout.indexOf('['))) as Array<{ name: string; filename: string; files: Array<{ path: string }> }>;
    expect(packs.map((p) => p.name).sort()).toEqual(PACKAGES.map((p) => `@tsformer/${p}`).sort());
    for (const p of packs) {
      const files = p.files.map((f) => f.path);
      expect(files, p.name).toContain('package.json');
      expect(files, p.name).toContain('README.md');
      expect(files, p.name).toContain('dist/index.js');
      expect(files, p.name).toContain('dist/index.d.ts');
      // nothing but dist, the README and package.json: no sources, tests, build info
      expect(files.filter((f) => !/^(dist\/.+\.(js|d\.ts|js\.map)|README\.md|package\.json)$/.test(f)), p.name).toEqual([]);
      expect(files.filter((f) => /\.test\.|\/testing\//.test(f)), p.name).toEqual([]);
    }

    // a project outside the workspace: the tarballs, third-party packages from the registry (through the local cache)
    const project = mkdtempSync(join(tmpdir(), 'tsformer-consumer-'));
    // all but @tsformer/data (its Brown corpus and tokenizer library are 15 MB the script does not need)
    const deps = Object.fromEntries(packs.filter((p) => p.name !== '@tsformer/data').map((p) => [p.name, `file:${join(packDir, p.filename)}`]));
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: deps }, null, 2));
    await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--omit=optional', '--loglevel=error'], { cwd: project, maxBuffer: 1 << 24, timeout: 240_000 });
    lap('installed');
    writeFileSync(join(project, 'main.mjs'), CONSUMER_MJS);
    const out = await run('node', ['main.mjs'], { cwd: project });
    const r = JSON.parse(out.stdout.trim().split('\n').pop()!) as { backend: string; losses: number[]; tokens: number[]; again: number[]; text: string; params: number };
    expect(r.backend).toBe('cpu');
    expect(r.losses).toHaveLength(3);
    expect(r.losses[2]!).toBeLessThan(r.losses[0]!); // the same batch three times
    expect(r.tokens).toHaveLength(10);
    expect(r.again).toEqual(r.tokens); // weights through safetensors give the same greedy tokens
    expect(r.params).toBeGreaterThan(10);
    // the installed packages resolve to the tarballs' dist, not to the workspace
    const resolved = await run('node', ['--input-type=module', '-e', "console.log(import.meta.resolve('@tsformer/model'))"], { cwd: project });
    expect(resolved.stdout.trim()).toBe(`file://${join(project, 'node_modules/@tsformer/model/dist/index.js')}`);

    lap('ran');
    // types: tsc (the workspace's) against the published .d.ts
    writeFileSync(join(project, 'main.ts'), CONSUMER_TS);
    writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({ compilerOptions: { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', lib: ['ES2023', 'DOM'], noEmit: true, skipLibCheck: true }, files: ['main.ts'] }));
    await run('node', [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: project }).catch((e: { stdout?: string }) => {
      throw new Error(`tsc on the consumer failed:\n${e.stdout}`);
    });
    expect(readFileSync(join(project, 'node_modules/@tsformer/core/package.json'), 'utf8')).toMatch(/"version": "0\.1\.0"/);
  }, 600_000);
});
