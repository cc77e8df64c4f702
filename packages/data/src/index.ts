export { ByteTokenizer, loadHfTokenizer, type Tokenizer } from './tokenizer.js';
export {
  tokenizerConfigSchema,
  datasetConfigSchema,
  createTokenizer,
  parseConfig,
  type TokenizerConfig,
  type TokenizerConfigInput,
  type DatasetConfig,
  type DatasetConfigInput,
} from './config.js';
export { loadTokens } from './dataset.js';
export { PackedSequences } from './packing.js';
export { BatchLoader, evalBatches, type Batch, type LoaderState, type BatchLoaderOptions } from './loader.js';
export { prepareBrown, brownDocumentToText, detokenize, type PrepareBrownOptions, type PreparedBrown } from './brown.js';
