export {
  HF_MODEL_TYPES,
  readHfConfig,
  hfConfigToModelConfig,
  modelConfigToHfConfig,
  type HfModelType,
  type HfConfig,
  type HfModelSpec,
  type ToHfConfigOptions,
} from './config.js';
export {
  hfTensorMap,
  hfToOurName,
  ourToHfName,
  hfToStateDict,
  stateDictToHfTensors,
  stateDictToHf,
  loadHfWeights,
  type HostArray,
  type HfTensorEntry,
} from './weights.js';
