import { describe, expect, it } from 'vitest';
import { resolve } from 'node:path';
import { bundleForBrowser, runInChromium } from './testing/chromium.js';
import type { CheckGroup, CheckResult } from './checks.js';
import { GPT2_STEP_KERNELS, MODEL_STEP_KERNELS, type ModelStepReport, type NonFiniteStepReport } from './testing/model-step.js';

interface Report {
  error?: string;
  backend?: string;
  adapter?: string;
  /** Per limit: [the adapter's, the device's]. */
  limits?: Record<string, [number, number]>;
  leaked?: number;
  results?: CheckResult[];
}

/** The browser entry, bundled once for every test of this file. */
let bundled: Promise<string> | undefined;
const entryScript = () => (bundled ??= bundleForBrowser(resolve(import.meta.dirname, 'testing/browser-entry.ts')));

// Every WGSL kernel against its composite definition, in headless Chromium on SwiftShader.
describe('webgpu kernels in headless chromium (SwiftShader)', () => {
  // In three groups, each its own browser and time limit: SwiftShader runs the attention variants
  // alone for minutes on a 2-core machine.
  for (const [group, what] of [
    ['attention', 'fused attention on the default set, every case'],
    ['attention-variants', 'fused attention: the other kernel sets and code-generation choices'],
    ['others', 'every other kernel'],
  ] as const satisfies ReadonlyArray<readonly [CheckGroup, string]>) {
    it(`${what}: outputs and gradients match the composite definitions, relative RMS < 1e-4`, async () => {
      const script = await entryScript();
      const seed = Date.now() % 1_000_000;
      const { value: report, console: logged } = await runInChromium<Report>(script, 'runKernelChecks', { seed, groups: [group] });
      expect(report.error).toBeUndefined();
      // A shader that fails to compile or a bind group that fails validation leaves its output buffer
      // unwritten (stale pooled memory); WebGPU reports that only on the console.
      expect(logged).toEqual([]);
      // selectBackend('webgpu') raised the device's limits to the adapter's.
      expect(report.backend).toBe('webgpu');
      for (const [name, [adapter, device]] of Object.entries(report.limits!)) expect(device, name).toBe(adapter);
      const results = report.results!;
      expect(results.length).toBeGreaterThan(0);
      const bad: string[] = [];
      for (const r of results) {
        if (!r.fused) bad.push(`${r.name}: fused kernel did not run`);
        for (const [what, e] of Object.entries(r.errors)) if (!(e < 1e-4)) bad.push(`${r.name} ${what}: ${e.toExponential(2)}`);
      }
      const table = results.map((r) => `${r.name.padEnd(48)} ${Object.entries(r.errors).map(([k, e]) => `${k} ${e.toExponential(1)}`).join('  ')}  (${(r.ms / 1000).toFixed(1)} s)`);
      console.log(`kernel checks (${group}) on ${report.adapter}, limits ${JSON.stringify(report.limits)}, seed ${seed}:\n${table.join('\n')}`);
      expect(bad).toEqual([]);
      expect(report.leaked).toBe(0);
    }, 1_200_000);
  }

  // The model's layers reach the kernels through @tsformer/core's fused registry.
  for (const [variant, fn, kernels] of [
    ['Llama-like (RMSNorm, SwiGLU, GQA, window, ALiBi)', 'runModelStepCheck', MODEL_STEP_KERNELS],
    ['GPT-2-like (LayerNorm, GELU, RoPE, tied)', 'runGpt2StepCheck', GPT2_STEP_KERNELS],
  ] as const) {
    it(`a ${variant} DecoderLM training step on webgpu with the kernels matches the step on cpu (loss, gradients, loss after AdamW)`, async () => {
      const script = await entryScript();
      const seed = Date.now() % 1_000_000;
      const { value: report, console: logged } = await runInChromium<ModelStepReport & { error?: string }>(script, fn, seed);
      expect(report.error).toBeUndefined();
      expect(logged).toEqual([]);
      const grads = Object.entries(report.gradErrors);
      console.log(
        `model step, seed ${seed}: kernel calls ${JSON.stringify(report.kernelCalls)}; loss ${report.loss.webgpu} (webgpu) vs ${report.loss.cpu} (cpu), ` +
          `error ${report.lossError.toExponential(1)}, after one step ${report.stepLossError.toExponential(1)}; worst gradient ` +
          `${grads.reduce((a, b) => (b[1] > a[1] ? b : a))[0]} ${Math.max(...grads.map(([, e]) => e)).toExponential(1)}`,
      );
      for (const name of kernels) expect(report.kernelCalls[name], name).toBeGreaterThan(0);
      expect(report.lossError).toBeLessThan(1e-4);
      expect(report.stepLossError).toBeLessThan(1e-4);
      expect(grads.length).toBeGreaterThan(10);
      for (const [name, e] of grads) expect(e, name).toBeLessThan(1e-4);
      expect(report.leaked).toBe(0);
    }, 600_000);
  }

  // The fused AdamW is enqueued before the loss is read back; a NaN step must change nothing.
  it('a training step with a NaN loss on webgpu throws NonFiniteError and leaves every weight unchanged', async () => {
    const script = await entryScript();
    const { value: r, console: logged } = await runInChromium<NonFiniteStepReport>(script, 'runNonFiniteStepCheck', 0);
    expect(logged).toEqual([]);
    expect(r.error).toMatch(/loss is NaN: training stopped before applying this update/);
    expect(r.fusedAdamW).toBe(true);
    expect(r.unchanged).toBe(true);
    expect(r.optimizerStep).toBe(0);
  }, 600_000);
});
