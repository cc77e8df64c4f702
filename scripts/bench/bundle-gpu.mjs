// Bundles GPU entry points into .gpu/ like ../shared/gpu/kit.sh does, but resolving the workspace
// packages to their TypeScript source (the `@tsformer/source` export condition; they have no dist/).
// Run kit.sh first (it fetches Node, the Vulkan loader and Dawn and writes .gpu/run.sh):
//   ../shared/gpu/kit.sh scripts/bench/gpu-info.ts && node scripts/bench/bundle-gpu.mjs scripts/bench/gpu.ts scripts/bench/gpu-check.ts
import { build } from 'esbuild';
import { basename } from 'node:path';

// TSFORMER_ROOT=<a checkout, e.g. a git worktree of HEAD>: bundle that tree's packages and entries
// instead of this working tree's (a measurement of a commit while this tree has unfinished edits)
const root = process.env.TSFORMER_ROOT;
const fromRoot = root
  ? [
      {
        name: 'tsformer-root',
        setup(b) {
          b.onResolve({ filter: /^@tsformer\/[a-z-]+$/ }, (a) => ({ path: `${root}/packages/${a.path.slice('@tsformer/'.length)}/src/index.ts` }));
        },
      },
    ]
  : [];

for (const arg of process.argv.slice(2)) {
  const entry = root ? `${root}/${arg}` : arg;
  await build({
    plugins: fromRoot,
    nodePaths: root ? [`${process.cwd()}/node_modules`] : [],
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
