export {
  encodeSafetensors,
  decodeSafetensors,
  tensorsToHost,
  hostToTensors,
  MAX_HEADER_BYTES,
  type SafeDType,
  type HostTensor,
  type EncodeOptions,
  type DecodedSafetensors,
} from './safetensors.js';
export {
  toFloat16Bits,
  fromFloat16Bits,
  toBfloat16Bits,
  fromBfloat16Bits,
  float32BitsToFloat16Bits,
  float16BitsToFloat32Bits,
  float32BitsToBfloat16Bits,
  bfloat16BitsToFloat32Bits,
} from './float16.js';
export {
  LocalStore,
  saveStep,
  listCompleteSteps,
  verifyStep,
  readStep,
  readManifest,
  findResumeStep,
  pruneSteps,
  readResumeStep,
  readLatestStep,
  stepDirName,
  parseStepDirName,
  MANIFEST_FORMAT,
  MANIFEST_FILE,
  LATEST_FILE,
  type CheckpointStore,
  type StepFiles,
  type StepManifest,
  type ManifestEntry,
  type ReadStepOptions,
  type FindResumeOptions,
  type PruneOptions,
} from './store.js';
export {
  S3Store,
  isS3Uri,
  parseS3Uri,
  redactSecrets,
  addSecret,
  type S3StoreOptions,
  type S3Uri,
} from './s3-store.js';
export { openStore, openStepLocation, type OpenStoreOptions } from './open.js';
export {
  encodeShardedSafetensors,
  decodeShardedSafetensors,
  shardIndexName,
  type ShardOptions,
  type ShardIndex,
  type DecodedShards,
} from './shards.js';
export { CheckpointWriter, type CheckpointWriterOptions, type SavedInfo } from './writer.js';
export { readHfDirectory, writeHfDirectory, safetensorsDtypes, HF_TOKENIZER_FILES, type HfDirectory, type HfDirectoryContents, type WriteHfOptions } from './hf.js';
