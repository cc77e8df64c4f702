#!/usr/bin/env node
// Runs the CLI from TypeScript source: tsx compiles on the fly, and a resolve hook adds the
// `@tsformer/source` export condition so workspace packages resolve to their src/ (no build step).
import { register } from 'node:module';

register(new URL('./source-condition.mjs', import.meta.url));
const { register: registerTsx } = await import('tsx/esm/api');
registerTsx();
const { main } = await import('../src/cli.ts');
process.exitCode = await main(process.argv.slice(2));
