export { disposeCache, type Attention, type AttentionCache, type AttentionContext, type AttentionDeps, type AttentionOutput } from './types.js';
export { SoftmaxAttention, softmaxAttentionSchema, causalMask, type SoftmaxAttentionConfig, type KvCache } from './softmax.js';
export { MlaAttention, mlaAttentionSchema, type MlaAttentionConfig, type MlaCache } from './mla.js';
export { GlaAttention, glaAttentionSchema, type GlaAttentionConfig, type GlaCache, type GlaConvStates, type GlaProjected } from './gla.js';
export {
  DeltaNetAttention,
  deltaNetAttentionSchema,
  gatedDeltaNetAttentionSchema,
  mamba2DecayInit,
  type DeltaNetAttentionConfig,
  type GatedDeltaNetAttentionConfig,
  type DeltaNetCache,
  type DeltaProjected,
} from './deltanet.js';
export { type ConvStates, type RecurrentCache } from './recurrent.js';
export { PathAttention, pathAttentionSchema, pathKvNumbersPerToken, type PathAttentionConfig, type PathCache, type PathProjected } from './path.js';
export { attentionRegistry, attentionConfigSchema, createAttention, attentionHeadDim,
  attentionUsesPositional, kvCacheNumbersPerToken, recurrentStateNumbers, type AttentionConfig, type AttentionType } from './registry.js';
export { scoreAttention, type AttentionPath, type ScoreSpec } from './softmax.js';
export { bandedAttention, bandable } from './window.js';
export { naiveAttention, type NaiveAttentionArgs } from './softmax-naive.js';
