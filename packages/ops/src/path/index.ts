export { pathNaive, pathHost, type PathHostInputs } from './naive.js';
export { pathBlockwise } from './blockwise.js';
export { pathDecodeStep, disposePathState, type PathStepResult } from './decode.js';
export { type PathState, type PathOptions, type PathBlockwiseOptions, type PathResult, type PathDims } from './types.js';
