import { registerFlashAttention } from './attention.js';

/**
 * Registers every fused kernel of this package for the `webgpu` backend (and their gradients).
 * Explicit, idempotent, and harmless where webgpu is absent: the composite paths run there.
 */
export function registerWebGpuKernels(): void {
  registerFlashAttention();
}
