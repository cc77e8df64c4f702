export { noPositional, type PositionalEncoding } from './types.js';
export { Rope, type RopeOptions } from './rope.js';
export { Alibi, alibiSlopes } from './alibi.js';
export {
  rotaryDimFor,
  baseInverseFrequencies,
  ntkTheta,
  dynamicNtkTheta,
  yarnCorrectionDim,
  yarnCorrectionRange,
  yarnAttentionFactor,
  yarnInverseFrequencies,
  ropeFrequencies,
  type RopeFrequencies,
} from './frequencies.js';
export {
  ropeConfigSchema,
  ropeScalingSchema,
  linearScalingSchema,
  ntkScalingSchema,
  dynamicScalingSchema,
  yarnScalingSchema,
  alibiConfigSchema,
  noneConfigSchema,
  type RopeConfig,
  type RopeScaling,
  type RopeScalingInput,
  type RopeLayout,
  type AlibiConfig,
  type NoneConfig,
} from './schema.js';
export { llama3ScalingSchema, llama3InverseFrequencies, type Llama3Scaling } from './llama3.js';
export { positionalRegistry, positionalConfigSchema, createPositional, type PositionalConfig } from './config.js';
