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
export {
  linearStudentFromTeacher,
  linearStudentHeads,
  linearStudentProjections,
  isLinearStudent,
  glaStudentSchema,
  deltaNetStudentSchema,
  gatedDeltaNetStudentSchema,
  linearStudentSchema,
  PROJECTIONS,
  type LinearStudent,
  type LinearStudentConfig,
  type LinearStudentConfigInput,
} from './students.js';
export {
  StudentLM,
  StudentBlock,
  buildStudent,
  layersToConvert,
  parseLayers,
  studentConfigSchema,
  type StudentConfig,
  type StudentConfigInput,
  type BuildStudentOptions,
  type LanguageModel,
} from './student.js';
export { gradStep, lmLoss, lmStep, lmEvaluate, type Optimizer, type GradStepResult } from './step.js';
export {
  AttentionTransfer,
  captureAttentionInputs,
  studentHeads,
  transferParameterFilter,
  parameterReport,
  attentionErrors,
  worstLayers,
  mergeShardStates,
  loadPartialState,
  type TransferOptions,
  type TransferStepResult,
  type ParameterReport,
  type LayerError,
} from './transfer.js';
export { prepareStage2, stage2StateDict, mergeStudentLora, type Stage2Options } from './stage2.js';
