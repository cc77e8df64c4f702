export { glaNaive, glaNaiveHost, type GlaNaiveOutput, type GlaHostOptions, type GlaHostOutput } from './naive.js';
export { glaChunk, glaChunkComposite, type GlaChunkOptions } from './chunk.js';
export { glaStep, glaRecurrent, type GlaStepOutput, type GlaRecurrentOptions } from './recurrent.js';
export type { GlaDims, GlaOptions, GlaOutput } from './check.js';
