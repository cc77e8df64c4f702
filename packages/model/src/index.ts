export { modelConfigSchema, normConfigSchema, mlpConfigSchema, layerDefSchema, layerScheduleSchema, layerSpecs, mlpHidden, type LayerSpec, type ModelConfig, type ModelConfigInput } from './config.js';
export { DecoderLM, Block, ModuleList, blockForward, decoderForward, disposeCaches, type BlockParts, type DecoderParts, type ForwardOptions } from './decoder.js';
export { generate, sampleToken, type GenerateOptions } from './generate.js';
export * from './hf/index.js';
export type { LanguageModel } from './types.js';
