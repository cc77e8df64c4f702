import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_DAWN_TOGGLES, envDawnToggles } from './backend.js';

describe('Dawn toggles for the webgpu device made in Node', () => {
  const saved = process.env.TSFORMER_DAWN_TOGGLES;
  afterEach(() => {
    if (saved === undefined) delete process.env.TSFORMER_DAWN_TOGGLES;
    else process.env.TSFORMER_DAWN_TOGGLES = saved;
  });

  it('default to robustness off when TSFORMER_DAWN_TOGGLES is unset', () => {
    delete process.env.TSFORMER_DAWN_TOGGLES;
    expect(envDawnToggles()).toEqual(DEFAULT_DAWN_TOGGLES);
    expect(DEFAULT_DAWN_TOGGLES).toContain('disable_robustness');
  });

  it('are the named ones when set, trimmed, and none when set empty', () => {
    process.env.TSFORMER_DAWN_TOGGLES = ' skip_validation , allow_unsafe_apis,';
    expect(envDawnToggles()).toEqual(['skip_validation', 'allow_unsafe_apis']);
    process.env.TSFORMER_DAWN_TOGGLES = '';
    expect(envDawnToggles()).toEqual([]);
  });
});
