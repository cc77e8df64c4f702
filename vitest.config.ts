import { readdirSync, existsSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// One vitest project per package/app; each resolves sibling packages to their TypeScript source
// through the `@tsformer/source` export condition, so no build step is needed.
const projects = ['packages', 'apps'].flatMap((dir) =>
  readdirSync(dir)
    .filter((name) => existsSync(`${dir}/${name}/package.json`))
    .map((name) => ({ extends: true as const, test: { name, root: `${dir}/${name}`, include: ['src/**/*.test.ts', 'test/**/*.test.ts'] } })),
);
// Whole-repository tests (packed install, browser, examples): tests/
projects.push({ extends: true as const, test: { name: 'repo', root: 'tests', include: ['**/*.test.ts'] } });

export default defineConfig({
  resolve: { conditions: ['@tsformer/source'] },
  ssr: { resolve: { conditions: ['@tsformer/source'], externalConditions: ['@tsformer/source'] } },
  test: {
    projects,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // 2-core machines: two workers keep both cores busy without thrashing
    maxWorkers: 2,
  },
});
