export { noPositional, type PositionalEncoding } from './types.js';
export { Rope, type RopeOptions } from './rope.js';
export { positionalRegistry, positionalConfigSchema, createPositional, type PositionalConfig } from './config.js';
