export { registerWebGpuKernels } from './register.js';
export {
  flashAttention,
  flashAttentionComposite,
  flashAttentionSupported,
  setFlashAttentionImpl,
  flashAttentionImplFor,
  type FlashAttentionImpl,
  FLASH_ATTENTION,
  FLASH_ATTENTION_GRAD,
  type FlashAttentionOptions,
} from './attention.js';
export { setV2Tuning, v2TuningFromFlags, type V2Tuning } from './attention-v2.js';
export { rmsNorm, rmsNormComposite, RMS_NORM, RMS_NORM_GATED, RMS_NORM_GRAD } from './rmsnorm.js';
export { layerNorm, layerNormComposite, LAYER_NORM, LAYER_NORM_GRAD } from './layernorm.js';
export { gelu, geluComposite, GELU, GELU_GRAD } from './gelu.js';
export { sumSquares, sumSquaresComposite, SUM_SQUARES } from './sumsq.js';
export { rope, ropeComposite, ROPE, type RopeLayout } from './rope.js';
export { adamwUpdate, adamwUpdateMany, adamwUpdateComposite, ADAMW, type AdamWHyper, type AdamWResult, type AdamWGuard, type AdamWItem } from './adamw.js';
export { sparseCrossEntropy, sparseCrossEntropyComposite, SPARSE_XENT, SPARSE_XENT_GRAD } from './xent.js';
export { kernelActive } from './program.js';
export { glaWebGpu, glaSupported, registerGla, GLA, GLA_INIT, GLA_GRAD, type GlaWebGpuOptions } from './gla.js';
export {
  deltaChunkKernels,
  deltaKernelSupported,
  registerDelta,
  DELTA_SOLVE,
  DELTA_RECUR,
  DELTA_RECUR_GRAD,
  DELTA_MAX_DIM,
  type DeltaKernelOptions,
} from './delta.js';
export { runChecks, checkAttention, checkMatMul, matMulCases, type CheckResult, type MatMulCase } from './checks.js';
export { checkGla, glaCases, checkCumsum, type GlaCase } from './checks.js';
export { registerCumsumFix, originalCumsum } from './cumsum.js';
export { checkDelta, deltaCases, type DeltaCase } from './checks.js';
export {
  registerFastMatMul,
  runMatMul,
  matMulShape,
  matMulTiles,
  matMulCombo,
  setMatMulPolicy,
  originalMatMul,
  type MatMulShape,
  type TileChoice,
  type MatMulCombo,
  type MatMulPolicy,
} from './matmul.js';
