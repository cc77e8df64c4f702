export { deltaNaive, gatedDeltaNaive, deltaHost, gatedDeltaHost, type DeltaHostInputs, type DeltaHostResult } from './naive.js';
export { deltaChunk, gatedDeltaChunk, deltaChunkComposite, gatedDeltaChunkComposite } from './chunk.js';
export { deltaStep, gatedDeltaStep, deltaRecurrent, gatedDeltaRecurrent } from './recurrent.js';
export { type DeltaOptions, type DeltaChunkOptions, type DeltaResult, type DeltaDims } from './types.js';
