import { selectBackend, type BackendInfo, type BackendName } from '@tsformer/core';
import { registerWebGpuKernels } from '@tsformer/kernels-webgpu';

/**
 * `selectBackend`, then on `webgpu` the fused WGSL kernels (attention, RMSNorm, RoPE, the loss,
 * AdamW, matmul), which the model's layers reach through @tsformer/core's fused registry. Every
 * other backend is left exactly as selectBackend leaves it.
 */
export async function useBackend(name: BackendName): Promise<BackendInfo> {
  const info = await selectBackend(name);
  if (info.name === 'webgpu') registerWebGpuKernels();
  return info;
}
