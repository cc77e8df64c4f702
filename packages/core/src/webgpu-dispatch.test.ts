import { describe, expect, it } from 'vitest';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { installDispatchCaches, packUniforms, UNIFORM_CACHE } from './webgpu-dispatch.js';

type Uniform = { type: string; data: number[] };

// tfjs's makeUniforms names the WebGPU usage flags (spec values); Node without Dawn has none
(globalThis as { GPUBufferUsage?: object }).GPUBufferUsage ??= { MAP_READ: 1, MAP_WRITE: 2, COPY_SRC: 4, COPY_DST: 8, INDEX: 16, VERTEX: 32, UNIFORM: 64, STORAGE: 128, INDIRECT: 256, QUERY_RESOLVE: 512 };

/** tfjs 4.22's own makeUniforms on a stand-in backend: the bytes it writes. */
function tfjsUniformBytes(u: Uniform[]): number[] {
  let written: number[] = [];
  const fake = {
    bufferManager: { acquireBuffer: () => ({}) },
    queue: { writeBuffer: (_b: unknown, _o: number, data: ArrayBuffer, off: number, size: number) => (written = [...new Uint8Array(data, off, size)]) },
    uniformPendingDisposal: [] as unknown[],
  };
  (WebGPUBackend.prototype as unknown as { makeUniforms(this: unknown, u: Uniform[]): unknown }).makeUniforms.call(fake, u);
  return written;
}

const clone = (u: Uniform[]) => u.map((d) => ({ type: d.type, data: [...d.data] }));

/** A device and backend stand-in that counts what the caches let through to them. */
function fakeBackend() {
  const made = { layouts: 0, buffers: 0, writes: 0 };
  const device = {
    createBuffer: () => (made.buffers++, {}),
    createComputePipeline: (_d?: unknown) => ({ getBindGroupLayout: (_i: number) => (made.layouts++, {}) }),
  };
  const be = {
    device,
    queue: { writeBuffer: () => void made.writes++ },
    bufferManager: { acquireBuffer: () => device.createBuffer() },
    uniformPendingDisposal: [] as unknown[],
    makeUniforms: (_u: Uniform[]): { buffer: unknown; offset: number; size: number } => {
      throw new Error('replaced');
    },
  };
  return { be, device, made };
}

describe('webgpu dispatch caches (uniforms, bind group layouts)', () => {
  it('pack uniforms byte for byte as tfjs-backend-webgpu 4.22 does', () => {
    const cases: Uniform[][] = [
      [{ type: 'float32', data: [NaN] }, { type: 'float32', data: [Infinity] }],
      [{ type: 'float32', data: [NaN] }, { type: 'float32', data: [Infinity] }, { type: 'int32', data: [2, 3, 4] }, { type: 'int32', data: [12, 4] }, { type: 'int32', data: [24] }, { type: 'int32', data: [] }],
      [{ type: 'float32', data: [1] }, { type: 'int32', data: [1, 2, 3, 4, 5] }, { type: 'int32', data: [7] }, { type: 'uint32', data: [1, 2, 3, 4, 5, 6] }, { type: 'float32', data: [0.5, -2] }],
      [{ type: 'int32', data: [4, 5] }, { type: 'float32', data: [1e-3] }, { type: 'int32', data: [9, 8, 7, 6] }],
    ];
    for (const u of cases) expect([...new Uint8Array(packUniforms(clone(u)))]).toEqual(tfjsUniformBytes(clone(u)));
  });

  it('reuse a uniform buffer for equal contents, and one layout object per pipeline', () => {
    const { be, device, made } = fakeBackend();
    const stats = installDispatchCaches(be)!;
    expect(stats).toBeDefined();
    const u = () => [{ type: 'float32', data: [NaN] }, { type: 'int32', data: [3, 4] }];
    const a = be.makeUniforms(u() as Uniform[]);
    const b = be.makeUniforms(u() as Uniform[]);
    const c = be.makeUniforms([{ type: 'float32', data: [NaN] }, { type: 'int32', data: [3, 5] }] as Uniform[]);
    expect(b).toBe(a);
    expect(c.buffer).not.toBe(a.buffer);
    expect(made.writes).toBe(2);
    expect(stats).toEqual({ uniformHits: 1, uniformMisses: 2 });
    const pipeline = device.createComputePipeline();
    expect(pipeline.getBindGroupLayout(0)).toBe(pipeline.getBindGroupLayout(0));
    expect(made.layouts).toBe(1);
  });

  it('hand an evicted uniform buffer back through tfjs pending disposal (released after the next submit)', () => {
    const { be } = fakeBackend();
    installDispatchCaches(be);
    const first = be.makeUniforms([{ type: 'int32', data: [0] }] as Uniform[]);
    for (let i = 1; i <= UNIFORM_CACHE; i++) be.makeUniforms([{ type: 'int32', data: [i] }] as Uniform[]);
    expect(be.uniformPendingDisposal).toEqual([first.buffer]);
  });

  it('leave a backend without the expected internals unchanged', () => {
    const odd = { device: {} };
    expect(installDispatchCaches(odd)).toBeUndefined();
    expect(Object.keys(odd.device)).toEqual([]);
  });
});
