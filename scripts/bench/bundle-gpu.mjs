// Bundles GPU entry points into .gpu/ like ../shared/gpu/kit.sh does, but resolving the workspace
// packages to their TypeScript source (the `@tsformer/source` export condition; they have no dist/).
// Run kit.sh first (it fetches Node, the Vulkan loader and Dawn and writes .gpu/run.sh):
//   ../shared/gpu/kit.sh scripts/bench/gpu-info.ts && node scripts/bench/bundle-gpu.mjs scripts/bench/gpu.ts scripts/bench/gpu-check.ts
import { build } from 'esbuild';
import { basename } from 'node:path';

for (const entry of process.argv.slice(2)) {
  await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    conditions: ['@tsformer/source'],
    external: ['webgpu', '@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu'],
    outfile: `.gpu/${basename(entry).replace(/\.ts$/, '')}.mjs`,
    minifyWhitespace: true,
    logLevel: 'error',
    banner: { js: "import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);" },
  });
  console.log(`bundled ${entry}`);
}
