export { modelConfigSchema, normConfigSchema, mlpConfigSchema, mlpHidden, type ModelConfig, type ModelConfigInput } from './config.js';
export { DecoderLM, Block, ModuleList, disposeCaches, type ForwardOptions } from './decoder.js';
export { generate, sampleToken, type GenerateOptions } from './generate.js';
