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
  const made = { bindGroups: 0, layouts: 0, buffers: 0, writes: 0 };
  const device = {
    createBindGroup: (d: unknown): unknown => (made.bindGroups++, { d }),
    createBuffer: () => (made.buffers++, { destroyed: false, destroy() { this.destroyed = true; } }),
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

describe('webgpu dispatch caches (bind groups, uniforms)', () => {
  it('pack uniforms byte for byte as tfjs-backend-webgpu 4.22 does', () => {
    const cases: Uniform[][] = [
      [{ type: 'float32', data: [NaN] }, { type: 'float32', data: [Infinity] }],
      [{ type: 'float32', data: [NaN] }, { type: 'float32', data: [Infinity] }, { type: 'int32', data: [2, 3, 4] }, { type: 'int32', data: [12, 4] }, { type: 'int32', data: [24] }, { type: 'int32', data: [] }],
      [{ type: 'float32', data: [1] }, { type: 'int32', data: [1, 2, 3, 4, 5] }, { type: 'int32', data: [7] }, { type: 'uint32', data: [1, 2, 3, 4, 5, 6] }, { type: 'float32', data: [0.5, -2] }],
      [{ type: 'int32', data: [4, 5] }, { type: 'float32', data: [1e-3] }, { type: 'int32', data: [9, 8, 7, 6] }],
    ];
    for (const u of cases) expect([...new Uint8Array(packUniforms(clone(u)))]).toEqual(tfjsUniformBytes(clone(u)));
  });

  it('reuse a uniform buffer for equal contents and a bind group for equal bindings', () => {
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
    const pipeline = device.createComputePipeline();
    expect(pipeline.getBindGroupLayout(0)).toBe(pipeline.getBindGroupLayout(0));
    expect(made.layouts).toBe(1);
    const x = device.createBuffer();
    const y = device.createBuffer();
    const entries = (p: object, q: object) => [{ binding: 0, resource: { buffer: p } }, { binding: 1, resource: { buffer: q } }, { binding: 2, resource: a }];
    const layout = pipeline.getBindGroupLayout(0);
    const g1 = device.createBindGroup({ layout, entries: entries(x, y) });
    const g2 = device.createBindGroup({ layout, entries: entries(x, y) });
    const g3 = device.createBindGroup({ layout, entries: entries(y, x) });
    expect(g2).toBe(g1);
    expect(g3).not.toBe(g1);
    expect(made.bindGroups).toBe(2);
    expect(stats).toMatchObject({ uniformHits: 1, uniformMisses: 2, bindGroupHits: 1, bindGroupMisses: 2 });
  });

  it('drop the bind groups of a destroyed buffer (the buffer is still destroyed)', () => {
    const { be, device, made } = fakeBackend();
    const stats = installDispatchCaches(be)!;
    const layout = device.createComputePipeline().getBindGroupLayout(0);
    const x = device.createBuffer() as ReturnType<typeof device.createBuffer>;
    const desc = { layout, entries: [{ binding: 0, resource: { buffer: x } }] } as never;
    const g1 = device.createBindGroup(desc);
    x.destroy();
    expect(x.destroyed).toBe(true);
    expect(stats.invalidated).toBe(1);
    const g2 = device.createBindGroup(desc);
    expect(g2).not.toBe(g1);
    expect(made.bindGroups).toBe(2);
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
