import { registerFused } from '@tsformer/core';
import { FLASH_ATTENTION, flashAttention, flashAttentionSupported, registerFlashAttention } from './attention.js';
import { RMS_NORM, registerRmsNorm, rmsNorm } from './rmsnorm.js';
import { ROPE, registerRope, rope } from './rope.js';
import { ADAMW, adamwUpdateMany, registerAdamW } from './adamw.js';
import { SPARSE_XENT, registerSparseCrossEntropy, sparseCrossEntropy } from './xent.js';
import { registerChunkedAddN, registerFastSum } from './reduce.js';
import { registerFastMatMul } from './matmul.js';
import { kernelActive } from './program.js';
import { LAYER_NORM, layerNorm, registerLayerNorm } from './layernorm.js';
import { GELU, gelu, registerGelu } from './gelu.js';
import { SUM_SQUARES, registerSumSquares, sumSquares } from './sumsq.js';
import { GLA, glaSupported, glaWebGpu, registerGla } from './gla.js';
import { registerCumsumFix } from './cumsum.js';
import { deltaChunkKernels, deltaKernelsActive, registerDelta } from './delta.js';

/**
 * Registers every fused kernel of this package for the `webgpu` backend (and their gradients), and
 * their dispatch entries in @tsformer/core's fused registry, through which the model's layers
 * (attention, RMSNorm, RoPE, the loss, AdamW) reach them. Explicit, idempotent, and harmless where
 * webgpu is absent: `fused(name)` answers only on webgpu, and the composite paths run elsewhere.
 */
export function registerWebGpuKernels(): void {
  registerFlashAttention();
  registerRmsNorm();
  registerRope();
  registerAdamW();
  registerSparseCrossEntropy();
  registerFastSum();
  registerChunkedAddN();
  registerFastMatMul();
  registerLayerNorm();
  registerGelu();
  registerSumSquares();
  registerCumsumFix();
  registerGla();
  registerDelta();
  registerModelHooks();
}

/** Each entry returns undefined when its kernel is not registered or does not take the shapes. */
function registerModelHooks(): void {
  registerFused('attention', (q, k, v, o) => {
    if (!kernelActive(FLASH_ATTENTION) || !flashAttentionSupported(q.shape[3]!)) return undefined;
    return flashAttention(q, k, v, { score: o.score, sigmoidBias: o.sigmoidBias, window: o.window, alibiSlopes: o.alibiSlopes });
  });
  registerFused('rmsNorm', (x, weight, eps, gate) => (kernelActive(RMS_NORM) ? rmsNorm(x, weight, eps, gate) : undefined));
  registerFused('rope', (x, cos, sin, layout) => (kernelActive(ROPE) ? rope(x, cos, sin, layout) : undefined));
  registerFused('sparseCrossEntropy', (logits, targets) => (kernelActive(SPARSE_XENT) ? sparseCrossEntropy(logits, targets) : undefined));
  registerFused('adamw', (items, h, guard) => (kernelActive(ADAMW) ? adamwUpdateMany(items, h, guard) : undefined));
  registerFused('layerNorm', (x, weight, bias, eps) => (kernelActive(LAYER_NORM) ? layerNorm(x, weight, bias, eps) : undefined));
  registerFused('gelu', (x) => (kernelActive(GELU) && x.dtype === 'float32' ? gelu(x) : undefined));
  registerFused('sumSquares', (xs) => (kernelActive(SUM_SQUARES) && xs.every((x) => x.dtype === 'float32') ? sumSquares(xs) : undefined));
  registerFused('glaChunk', (q, k, v, g, o) =>
    kernelActive(GLA) && glaSupported(q.shape[3]!, v.shape[3]!) ? glaWebGpu(q, k, v, g, { scale: o.scale, initialState: o.initialState, outputFinalState: o.outputFinalState, chunkSize: o.chunkSize }) : undefined,
  );
  registerFused('deltaChunk', (q, k, v, beta, g, o) => (deltaKernelsActive(q.shape[3]!, v.shape[3]!) ? deltaChunkKernels(q, k, v, beta, g, o) : undefined));
}
