/**
 * Kernel checks at full sizes on the GPU (issue 7): every fused kernel against its composite
 * definition on the same webgpu device, outputs and gradients, relative RMS; prints a pass/fail table.
 *
 *   device: bash .gpu/run.sh gpu-check.mjs [--scale 8]
 */
// bundled statically: a bundle cannot import the backend module by name at run time
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { selectBackend } from '@tsformer/core';
import { checkAttention, registerWebGpuKernels, runChecks } from '@tsformer/kernels-webgpu';
import { GPT2_STEP_KERNELS, MODEL_STEP_KERNELS, modelStepCheck, nonFiniteStepCheck } from '../../packages/kernels-webgpu/src/testing/model-step.js';

const i = process.argv.indexOf('--scale');
const scale = i >= 0 ? Number(process.argv[i + 1]) : 8;
const info = await selectBackend('webgpu', { webgpuModule });
registerWebGpuKernels();
console.log(`backend: ${info.name} (${info.detail}); checks at scale ${scale}`);
const seed = Date.now() % 1_000_000;
const results = await runChecks({ scale, seed });
// the benchmark's shapes: B=8, H=12, D=64 at T=1024; and GQA with a window at T=2048
results.push(await checkAttention({ B: 8, T: 1024, H: 12, Hkv: 12, D: 64, opts: {} }, seed + 1000));
results.push(await checkAttention({ B: 2, T: 2048, H: 12, Hkv: 4, D: 64, opts: { window: 512 } }, seed + 2000));
// tiny DecoderLM steps through the model's layers (fused registry) against the same steps on cpu:
// Llama-like (RMSNorm, SwiGLU, GQA, window, ALiBi) and GPT-2-like (LayerNorm, GELU, RoPE, tied)
for (const [variant, kernels] of [
  ['llama', MODEL_STEP_KERNELS],
  ['gpt2', GPT2_STEP_KERNELS],
] as const) {
  const step = await modelStepCheck(seed + 3000, webgpuModule, variant);
  registerWebGpuKernels(); // modelStepCheck leaves cpu active
  await selectBackend('webgpu', { webgpuModule });
  results.push({
    name: `DecoderLM ${variant} step vs cpu (kernels ran: ${kernels.filter((k) => step.kernelCalls[k]! > 0).length}/${kernels.length})`,
    fused: kernels.every((k) => step.kernelCalls[k]! > 0) && step.leaked === 0,
    errors: { loss: step.lossError, lossAfterStep: step.stepLossError, ...step.gradErrors },
    ms: 0,
  });
}
// a NaN loss: the guarded fused AdamW leaves every weight unchanged, and trainStep throws
const nf = await nonFiniteStepCheck(webgpuModule);
results.push({
  name: 'NaN-loss step: weights unchanged, NonFiniteError, step taken back',
  fused: nf.fusedAdamW,
  errors: { unchanged: nf.unchanged ? 0 : 1, threw: /loss is NaN/.test(nf.error) ? 0 : 1, optimizerStep: nf.optimizerStep },
  ms: 0,
});
let fails = 0;
console.log(`\nseed ${seed}\n\n| check | max rel. RMS | result | ms |\n|---|---:|---|---:|`);
for (const r of results) {
  const worst = Math.max(...Object.values(r.errors));
  const ok = r.fused && worst < 1e-4;
  if (!ok) fails++;
  console.log(`| ${r.name} | ${worst.toExponential(1)} | ${ok ? 'pass' : r.fused ? 'FAIL' : 'FAIL (kernel did not run)'} | ${r.ms.toFixed(0)} |`);
}
console.log(`\n${results.length - fails}/${results.length} passed`);
process.exitCode = fails ? 1 : 0;
