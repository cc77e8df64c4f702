// Per-kernel time of one training step of the default model: node --conditions=@tsformer/source --import tsx scripts/profile-step.ts wasm [overrides]
import { Rng, selectBackend, tf } from '@tsformer/core';
import { DecoderLM } from '@tsformer/model';
import { AdamW, trainStep } from '@tsformer/train';
import { loadConfig } from '../apps/trainer/src/config.js';
const { config } = loadConfig('configs/pretrain/tiny-brown.yaml', process.argv.slice(3));
await selectBackend(process.argv[2] as 'wasm');
const rng = Rng.seeded(1);
const model = new DecoderLM(config.model, { rng });
const opt = new AdamW(model.namedParameters(), config.train.optimizer);
const B = config.train.batchSize, T = config.data.seqLen;
const batch = () => ({ inputs: Int32Array.from({ length: B * T }, () => rng.int(256)), targets: Int32Array.from({ length: B * T }, () => rng.int(256)), batchSize: B, seqLen: T });
await trainStep(model, opt, [batch()], { lr: 1e-3, clipGradNorm: 1 });
const t0 = performance.now();
const info = await tf.profile(async () => { await trainStep(model, opt, [batch()], { lr: 1e-3, clipGradNorm: 1 }); });
console.log('total', performance.now() - t0);
const agg = new Map<string, [number, number]>();
for (const k of info.kernels) { const a = agg.get(k.name) ?? [0, 0]; a[0] += k.kernelTimeMs as number; a[1]++; agg.set(k.name, a); }
console.log([...agg].sort((a, b) => b[1][0] - a[1][0]).slice(0, 25).map(([n, [t, c]]) => `${n.padEnd(24)} ${t.toFixed(1).padStart(8)} ms  ${c}`).join('\n'));
const mm = new Map<string, [number, number]>();
for (const k of info.kernels) if (k.name === 'BatchMatMul') { const key = k.inputShapes.map((s) => `[${s}]`).join('x'); const a = mm.get(key) ?? [0, 0]; a[0] += k.kernelTimeMs as number; a[1]++; mm.set(key, a); }
console.log([...mm].sort((a, b) => b[1][0] - a[1][0]).map(([n, [t, c]]) => `${n.padEnd(40)} ${t.toFixed(1).padStart(8)} ms  ${c}`).join('\n'));
