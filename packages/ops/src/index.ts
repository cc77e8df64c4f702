export * from './gla/index.js';
export * from './delta/index.js';
