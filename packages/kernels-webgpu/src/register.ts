import { registerFlashAttention } from './attention.js';
import { registerRmsNorm } from './rmsnorm.js';
import { registerRope } from './rope.js';
import { registerAdamW } from './adamw.js';
import { registerSparseCrossEntropy } from './xent.js';
import { registerChunkedAddN, registerFastSum } from './reduce.js';

/**
 * Registers every fused kernel of this package for the `webgpu` backend (and their gradients).
 * Explicit, idempotent, and harmless where webgpu is absent: the composite paths run there.
 */
export function registerWebGpuKernels(): void {
  registerFlashAttention();
  registerRmsNorm();
  registerRope();
  registerAdamW();
  registerSparseCrossEntropy();
  registerFastSum();
  registerChunkedAddN();
}
