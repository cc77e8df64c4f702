import { afterEach, describe, expect, it } from 'vitest';
import { tf } from './tf.js';
import { fused, registerFused, unregisterFused } from './fused.js';

describe('fused registry', () => {
  afterEach(() => {
    unregisterFused('rmsNorm', 'webgpu');
    unregisterFused('rmsNorm', 'cpu');
  });

  it('answers only for the backend an implementation was registered for', async () => {
    await tf.setBackend('cpu');
    expect(fused('rmsNorm')).toBeUndefined();
    const impl = (x: tf.Tensor) => x.mul(2);
    registerFused('rmsNorm', impl); // default: webgpu
    expect(fused('rmsNorm')).toBeUndefined();
    registerFused('rmsNorm', impl, 'cpu');
    expect(fused('rmsNorm')).toBe(impl);
    expect(fused('rope')).toBeUndefined();
    unregisterFused('rmsNorm', 'cpu');
    expect(fused('rmsNorm')).toBeUndefined();
  });
});
