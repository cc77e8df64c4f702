export { tf, type Tensor, type Variable } from './tf.js';
export { TsformerError } from './errors.js';
export { Rng, type RngState } from './rng.js';
export { Module, sameShape, type Parameter, type ParamOptions } from './module.js';
export { init } from './init.js';
export { checkShape } from './shape.js';
export { Registry } from './registry.js';
export { selectBackend, availableBackends, BACKENDS, type BackendName, type BackendInfo } from './backend.js';
export { tensorLeak, relativeError } from './testing.js';
