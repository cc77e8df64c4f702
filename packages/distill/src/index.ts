export { HedgehogFeatureMap, type HedgehogOptions } from './feature-map.js';
export {
  hybridAttention,
  hybridDense,
  hybridBlocked,
  hybridWeights,
  hybridNaive,
  absorbIntoState,
  blockedScoreCount,
  type HybridInputs,
  type HybridState,
  type HybridPath,
} from './hybrid.js';
export { asSoftmaxTeacher, expandKvHeads, softmaxProject, softmaxHeads, softmaxWeights, softmaxOutput } from './teacher.js';
export {
  LolcatsAttention,
  lolcatsConfigSchema,
  copyLinear,
  type LolcatsConfig,
  type LolcatsConfigInput,
  type LolcatsCache,
  type LolcatsProjections,
  type LolcatsShape,
} from './lolcats.js';
