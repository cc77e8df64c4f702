import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './chromium.js';

const PACKAGES = ['core', 'layers', 'positional', 'ops', 'attention', 'model', 'data', 'checkpoint', 'train'];

/** The example of a package README: the first ```ts block under "## Example". */
function readmeExample(pkg: string): string {
  const md = readFileSync(join(repoRoot, 'packages', pkg, 'README.md'), 'utf8');
  const section = md.slice(md.indexOf('\n## Example\n'));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  if (md.indexOf('\n## Example\n') < 0 || !m) throw new Error(`packages/${pkg}/README.md has no "## Example" with a ts block`);
  return m[1]!;
}

describe('package README examples', () => {
  it('run as written, and print what their last comment says', async () => {
    // under the repository, so `@tsformer/*` resolve to the workspace packages (their source)
    const dir = join(repoRoot, 'node_modules', '.cache', 'tsformer-readme');
    mkdirSync(dir, { recursive: true });
    const expected: Record<string, string> = {};
    for (const pkg of PACKAGES) {
      const code = readmeExample(pkg);
      const last = code.trim().split('\n').filter((l) => l.startsWith('console.log(')).pop();
      expect(last, `${pkg}: the example ends with a console.log(...) // <output>`).toMatch(/\/\/ .+$/);
      expected[pkg] = last!.slice(last!.lastIndexOf('// ') + 3);
      writeFileSync(join(dir, `${pkg}.mts`), `${code}\nexport {};\n`);
    }
    // one process runs them in turn (each is its own module), printing a marker before each
    writeFileSync(join(dir, 'run.mts'), `for (const p of ${JSON.stringify(PACKAGES)}) { console.log('=== ' + p); await import('./' + p + '.mts'); }\n`);
    const script = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.example!;
    const [cmd, ...pre] = script.split(' ');
    const { stdout } = await promisify(execFile)(cmd!, [...pre, join(dir, 'run.mts')], { cwd: repoRoot, maxBuffer: 1 << 24 });
    const printed: Record<string, string> = {};
    for (const part of stdout.split('=== ').slice(1)) {
      const [pkg, ...lines] = part.trimEnd().split('\n');
      printed[pkg!] = lines.join('\n').trim().split('\n').pop() ?? '';
    }
    expect(printed).toEqual(expected);
  }, 180_000);
});
