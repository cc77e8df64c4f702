export * from './gla/index.js';
