export { Linear, type LinearOptions } from './linear.js';
export { Embedding, embeddingLookup } from './embedding.js';
export { RMSNorm, LayerNorm, rmsNormalize } from './norm.js';
export { Dropout } from './dropout.js';
export { SwiGLU, GeluMlp, gelu, type MlpOptions } from './mlp.js';
export { ShortConv1d, type ShortConvOptions, type ShortConvOutput } from './shortconv.js';
export { l2Normalize } from './l2norm.js';
export { GatedRMSNorm } from './gated-norm.js';
export { LoraAdapter, addLora, loraOf, injectLora, loraAdapters, mergeLora, matchesPath, isLoraParameter, baseStateDict, setTrainable, freeze, trainableParameters, trainableStateDict, type LoraOptions } from './lora.js';
