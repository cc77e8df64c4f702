export * from './gla/index.js';
export * from './delta/index.js';
export * from './path/index.js';
