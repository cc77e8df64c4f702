// vitest's default reporter plus the plain closing line CI reads: `N passed, N failed`.
import { DefaultReporter } from 'vitest/reporters';
import type { TestModule } from 'vitest/node';

export default class SummaryReporter extends DefaultReporter {
  override onTestRunEnd(testModules: ReadonlyArray<TestModule>, ...rest: unknown[]): void {
    // @ts-expect-error forwarded as received
    super.onTestRunEnd(testModules, ...rest);
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const m of testModules) {
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
      // a module that failed to load (syntax error, import error) counts as a failure
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) failed++;
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  }
}
