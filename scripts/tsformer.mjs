#!/usr/bin/env node
// `npm run tsformer -- <args>` and the npm scripts go through here: the trainer app's bin.
await import('../apps/trainer/bin/tsformer.mjs');
