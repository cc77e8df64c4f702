// Bundled for headless Chromium by chromium.ts: the kernel checks on the browser's WebGPU adapter
// (SwiftShader in CI), started through @tsformer/core's selectBackend like every other caller.
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { selectBackend, tf } from '@tsformer/core';
import { registerWebGpuKernels } from '../register.js';
import { runChecks, type CheckGroup } from '../checks.js';
import { modelStepCheck, nonFiniteStepCheck } from './model-step.js';

interface GpuNav {
  gpu?: { requestAdapter(): Promise<{ limits: Record<string, number> } | null> };
}

/** The limits selectBackend must raise to the adapter's values. */
const WATCHED = ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup'];

async function main({ seed, groups }: { seed: number; groups?: CheckGroup[] }) {
  const gpu = (navigator as unknown as GpuNav).gpu;
  const adapter = gpu ? await gpu.requestAdapter() : null;
  if (!adapter) return { error: 'no WebGPU adapter in this browser' };
  const info = await selectBackend('webgpu', { webgpuModule });
  const device = (tf.backend() as unknown as { device: { limits: Record<string, number> } }).device;
  const limits: Record<string, [number, number]> = {};
  for (const name of WATCHED) limits[name] = [adapter.limits[name]!, device.limits[name]!];
  registerWebGpuKernels();
  const before = tf.memory().numTensors;
  const results = await runChecks({ seed, groups });
  return { backend: info.name, adapter: info.detail, limits, leaked: tf.memory().numTensors - before, results };
}

(globalThis as unknown as { runKernelChecks: typeof main }).runKernelChecks = main;

/** A tiny DecoderLM training step on webgpu with the kernels against the same step on cpu. */
async function modelStep(seed: number, variant: 'llama' | 'gpt2' = 'llama') {
  try {
    await selectBackend('webgpu', { webgpuModule });
    registerWebGpuKernels();
    return await modelStepCheck(seed, webgpuModule, variant);
  } catch (e) {
    return { error: String((e as Error).stack ?? e) };
  }
}

(globalThis as unknown as { runModelStepCheck: typeof modelStep }).runModelStepCheck = modelStep;

/** The same with GPT-2's layer (LayerNorm, GELU): the LayerNorm, GELU and sum-of-squares kernels. */
(globalThis as unknown as { runGpt2StepCheck: (seed: number) => ReturnType<typeof modelStep> }).runGpt2StepCheck = (seed: number) => modelStep(seed, 'gpt2');

/** A NaN loss on webgpu: the guarded AdamW leaves every weight as it was; trainStep throws. */
async function nonFinite() {
  try {
    registerWebGpuKernels();
    return await nonFiniteStepCheck(webgpuModule);
  } catch (e) {
    return { error: 'crashed: ' + String((e as Error).stack ?? e) };
  }
}
(globalThis as unknown as { runNonFiniteStepCheck: typeof nonFinite }).runNonFiniteStepCheck = nonFinite;
