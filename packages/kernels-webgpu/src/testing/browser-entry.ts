// Bundled for headless Chromium by chromium.ts: the kernel checks on the browser's WebGPU adapter
// (SwiftShader in CI). The backend module registers `webgpu` at import when navigator.gpu exists.
import '@tensorflow/tfjs-backend-webgpu';
import { tf } from '@tsformer/core';
import { registerWebGpuKernels } from '../register.js';
import { runChecks } from '../checks.js';

interface GpuNav {
  gpu?: { requestAdapter(): Promise<{ info?: Record<string, string>; limits: Record<string, number>; features: Set<string> } | null> };
}

async function main(seed: number) {
  const gpu = (navigator as unknown as GpuNav).gpu;
  const adapter = gpu ? await gpu.requestAdapter() : null;
  if (!adapter) return { error: 'no WebGPU adapter in this browser' };
  if (!(await tf.setBackend('webgpu'))) return { error: 'tf.setBackend("webgpu") failed' };
  await tf.ready();
  registerWebGpuKernels();
  const before = tf.memory().numTensors;
  const results = await runChecks({ seed });
  return {
    adapter: { vendor: adapter.info?.vendor, architecture: adapter.info?.architecture, device: adapter.info?.device },
    limits: { maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize, maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize },
    leaked: tf.memory().numTensors - before,
    results,
  };
}

(globalThis as unknown as { runKernelChecks: typeof main }).runKernelChecks = main;
