export { disposeCache, type Attention, type AttentionCache, type AttentionContext, type AttentionDeps, type AttentionOutput } from './types.js';
export { SoftmaxAttention, softmaxAttentionSchema, causalMask, type SoftmaxAttentionConfig, type KvCache } from './softmax.js';
export { attentionRegistry, attentionConfigSchema, createAttention, attentionHeadDim, type AttentionConfig, type AttentionType } from './registry.js';
