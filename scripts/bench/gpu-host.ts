/**
 * Where the host time of a webgpu training step goes (issue 7). Runs on the lent H100 through the kit:
 *
 *   node scripts/bench/bundle-gpu.mjs scripts/bench/gpu-host.ts
 *   device: bash .gpu/run.sh gpu-host.mjs [--gpt2 8x512] [--model L,d,heads,vocab] [--dawn TOGGLES] [--batch-size N]
 *           [--matmul-only | --no-matmul] [--by-shape] [--steps-only N] [--native]
 *   a CPU profile (NODE_OPTIONS may not carry --cpu-prof): after one run.sh call has unpacked node,
 *           /tmp/node --cpu-prof --cpu-prof-dir=$OUT/prof .gpu/gpu-host.mjs --steps-only 15
 *   (TSFORMER_DAWN_TOGGLES=a,b sets Dawn toggles too, as for every entry that calls selectBackend)
 *
 * Prints (1) the host cost of single dispatches (a tfjs binary op, a scalar op that uploads its
 * scalar, a reshape that dispatches nothing), timed as the wall time to enqueue N of them and then
 * to drain the queue; (2) for a GPT-2-small-shaped DecoderLM step: the dispatches per step by
 * program, the uploads from the host, buffers created, queue submits, the wall time spent inside
 * tfjs's runWebGPUProgram against the whole step, and the GPU time per program (`--by-shape`: the
 * matmuls by shape); (3) the model's matmul shapes under each tile choice (TFLOP/s).
 * `--steps-only N`: only N timed training steps (for profiles). `--native`: the host cost of each
 * WebGPU call tfjs makes per dispatch (bind group, layout, uniform write, recording, submit).
 */
// bundled statically: a bundle cannot import the backend module by name at run time
import * as webgpuModule from '@tensorflow/tfjs-backend-webgpu';
import { Rng, selectBackend, tf } from '@tsformer/core';
import { originalMatMul, registerWebGpuKernels, runMatMul, setMatMulPolicy, type MatMulPolicy, type TileChoice } from '@tsformer/kernels-webgpu';
import { gpt2Model, profileGpu, topPrograms } from './gpu-common.js';
import { AdamW, sparseCrossEntropy, trainStep, type Batch } from '@tsformer/train';

const args = process.argv.slice(2);
const arg = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const [b, T] = arg('gpt2', '8x512').split('x').map(Number) as [number, number];
const [L, dModel, heads, vocab] = arg('model', '12,768,12,50257').split(',').map(Number) as [number, number, number, number];
const dawnToggles = arg('dawn', '');
const submitBatch = Number(arg('batch-size', '0'));
const now = () => performance.now();

if (dawnToggles) {
  // navigator.gpu made here (before selectBackend) carries Dawn toggles, e.g. skip_validation
  const dawn = (await import('webgpu')) as unknown as { create(o: string[]): unknown; globals: object };
  Object.assign(globalThis, dawn.globals);
  const g = globalThis as { navigator?: { gpu?: unknown } };
  g.navigator ??= {};
  Object.defineProperty(g.navigator, 'gpu', { value: dawn.create([`enable-dawn-features=${dawnToggles}`]), configurable: true });
}
const info = await selectBackend('webgpu', { webgpuModule });
registerWebGpuKernels();
if (submitBatch > 0) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', submitBatch);
// --policy '{"nn":{"block":128}}': route the matmul transpose combinations (setMatMulPolicy)
const policyArg = arg('policy', '');
if (policyArg) setMatMulPolicy(JSON.parse(policyArg) as MatMulPolicy);
console.log(`backend ${info.name} (${info.detail}); dawn toggles '${dawnToggles}'; submit batch ${tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE')}`);

interface Counters {
  dispatches: number;
  programMs: number;
  uploads: number;
  uploadBytes: number;
  submits: number;
  buffers: number;
  byProgram: Map<string, number>;
}
const c: Counters = { dispatches: 0, programMs: 0, uploads: 0, uploadBytes: 0, submits: 0, buffers: 0, byProgram: new Map() };
const reset = () => Object.assign(c, { dispatches: 0, programMs: 0, uploads: 0, uploadBytes: 0, submits: 0, buffers: 0, byProgram: new Map() });

// Instrument the backend instance (methods of tfjs-backend-webgpu 4.22's WebGPUBackend).
type Fn = (...a: unknown[]) => unknown;
const be = tf.backend() as unknown as Record<string, Fn> & {
  tensorMap: { get(id: object): { values: unknown; resource: unknown; shape: number[] } };
  bufferManager: { device: Record<string, Fn> };
  device: Record<string, Fn>;
};
const run0 = be.runWebGPUProgram!.bind(be);
// --by-shape: matmuls named by shape in the GPU profile (tsf_matmul nt 4096x768x2304 [b3], from the shader key)
const byShape = args.includes('--by-shape');
be.runWebGPUProgram = (...a: unknown[]) => {
  const t0 = now();
  const program = a[0] as { constructor: { name: string }; shaderKey?: string };
  const mm = byShape ? /^tsf_matmul_(\d+)_\d+_\d+_(\d+)_(\d+)_(\d+)_(true|false)_(true|false)_(\w+?)_\d+x\d+_[nm]_(\d+)/.exec(program.shaderKey ?? '') : null;
  if (mm) {
    const [, batch, M, N, K, tA, tB, tiles, split] = mm;
    const name = `tsf_matmul ${tA === 'true' ? 't' : 'n'}${tB === 'true' ? 't' : 'n'} ${M}x${K}x${N}${batch !== '1' ? ` b${batch}` : ''} ${tiles}${split !== '1' ? ` split ${split}` : ''}`;
    Object.defineProperty(program, 'constructor', { value: { name }, enumerable: false });
  }
  const r = run0(...a);
  c.programMs += now() - t0;
  c.dispatches++;
  const name = program.constructor.name;
  c.byProgram.set(name, (c.byProgram.get(name) ?? 0) + 1);
  return r;
};
const up0 = be.uploadToGPU!.bind(be);
be.uploadToGPU = (id: unknown) => {
  const d = be.tensorMap.get(id as object);
  if (d.resource == null && d.values != null) {
    c.uploads++;
    c.uploadBytes += 4 * d.shape.reduce((x, y) => x * y, 1);
  }
  return up0(id);
};
const sub0 = be.submitQueue!.bind(be);
be.submitQueue = () => {
  c.submits++;
  return sub0();
};
const dev = be.device;
const cb0 = dev.createBuffer!.bind(dev);
try {
  dev.createBuffer = (d: unknown) => {
    c.buffers++;
    return cb0(d);
  };
} catch {
  console.log('(could not count createBuffer on this device object)');
}

// a GPU-resident tensor: tfjs-webgpu runs small ops whose inputs are all on the host on the CPU, and
// reading such a result would not wait for the GPU
const onGpu = tf.tidy(() => tf.randomNormal([4096]).add(1));
/** Waits until the GPU has finished everything submitted so far (queue order). */
async function drain(): Promise<void> {
  const s = tf.tidy(() => onGpu.sum());
  await s.data();
  s.dispose();
}

/** Host ms per call to enqueue n calls of f, and ms per call until the GPU is done. */
async function perCall(name: string, n: number, f: () => void): Promise<void> {
  tf.tidy(f);
  await drain();
  reset();
  const t0 = now();
  tf.tidy(() => {
    for (let i = 0; i < n; i++) f();
  });
  const t1 = now();
  await drain();
  const t2 = now();
  console.log(
    `| ${name} | ${(((t1 - t0) / n) * 1000).toFixed(1)} | ${(((t2 - t0) / n) * 1000).toFixed(1)} | ${(c.dispatches / n).toFixed(2)} | ${(c.uploads / n).toFixed(2)} | ${(c.buffers / n).toFixed(2)} | ${(c.submits / n).toFixed(3)} |`,
  );
}

if (args.includes('--native')) {
  // the host cost of each WebGPU call tfjs makes per dispatch (Dawn's Node binding), N calls each
  type Dev = {
    createShaderModule(d: { code: string }): unknown;
    createComputePipeline(d: unknown): { getBindGroupLayout(i: number): unknown };
    createBuffer(d: { size: number; usage: number }): unknown;
    createBindGroup(d: unknown): unknown;
    createCommandEncoder(): { beginComputePass(): { setPipeline(p: unknown): void; setBindGroup(i: number, g: unknown): void; dispatchWorkgroups(x: number): void; end(): void }; finish(): unknown };
    queue: { writeBuffer(b: unknown, o: number, d: ArrayBufferView): void; submit(c: unknown[]): void; onSubmittedWorkDone(): Promise<void> };
  };
  const device = (tf.backend() as unknown as { device: Dev }).device;
  const U = (globalThis as unknown as { GPUBufferUsage: Record<string, number> }).GPUBufferUsage;
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
      @group(0) @binding(1) var<storage, read> b: array<f32>;
      @group(0) @binding(2) var<uniform> u: vec4<f32>;
      @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < 64u) { a[g.x] = b[g.x] + u.x; } }`,
  });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bufs = Array.from({ length: 8 }, () => device.createBuffer({ size: 4096, usage: U.STORAGE! | U.COPY_DST! | U.COPY_SRC! }));
  const ubuf = device.createBuffer({ size: 256, usage: U.UNIFORM! | U.COPY_DST! });
  const layout = pipeline.getBindGroupLayout(0);
  const group = (i: number) => device.createBindGroup({ layout, entries: [{ binding: 0, resource: { buffer: bufs[i % 8] } }, { binding: 1, resource: { buffer: bufs[(i + 1) % 8] } }, { binding: 2, resource: { buffer: ubuf } }] });
  const data = new Float32Array(64);
  const time = async (name: string, n: number, f: (i: number) => void, per = 1) => {
    for (let i = 0; i < 100; i++) f(i);
    await device.queue.onSubmittedWorkDone();
    const t0 = now();
    for (let i = 0; i < n; i++) f(i);
    const us = ((now() - t0) / n / per) * 1000;
    await device.queue.onSubmittedWorkDone();
    console.log(`| ${name} | ${us.toFixed(1)} |`);
  };
  console.log('\n| WebGPU call (Dawn, Node) | host µs each |\n|---|---:|');
  await time('pipeline.getBindGroupLayout(0)', 5000, () => void pipeline.getBindGroupLayout(0));
  await time('device.createBindGroup (3 entries)', 5000, (i) => void group(i));
  await time('queue.writeBuffer 256 B', 5000, () => device.queue.writeBuffer(ubuf, 0, data));
  const groups = Array.from({ length: 8 }, (_, i) => group(i));
  for (const per of [1, 15, 200]) {
    await time(`encoder + pass + ${per} x (setPipeline, setBindGroup, dispatch) + finish + submit, per dispatch`, Math.ceil(3000 / per), (i) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (let j = 0; j < per; j++) {
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, groups[(i + j) % 8]);
        pass.dispatchWorkgroups(1);
      }
      pass.end();
      device.queue.submit([enc.finish()]);
    }, per);
  }
  process.exit(0);
}
const stepsOnly = Number(arg('steps-only', '0'));
if (stepsOnly > 0) {
  // only training steps (for a host CPU profile: node --cpu-prof .gpu/gpu-host.mjs --steps-only 10)
  const rng = Rng.seeded(1);
  const model = gpt2Model({ vocab, dModel, layers: L, heads, T: T, rng });
  const opt = new AdamW(model.namedParameters(), { type: 'adamw', lr: 1e-4, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 });
  const n = b * T;
  const batch: Batch = { inputs: new Int32Array(n).map(() => rng.int(vocab)), targets: new Int32Array(n).map(() => rng.int(vocab)), batchSize: b, seqLen: T };
  for (let i = 0; i < 2; i++) await trainStep(model, opt, [batch], { lr: 1e-4, clipGradNorm: 1 });
  const t0 = now();
  for (let i = 0; i < stepsOnly; i++) await trainStep(model, opt, [batch], { lr: 1e-4, clipGradNorm: 1 });
  const caches = (tf.backend() as { tsformerDispatchCaches?: object }).tsformerDispatchCaches;
  console.log(`steps only: ${((now() - t0) / stepsOnly).toFixed(1)} ms/step over ${stepsOnly} (${L} layers, d=${dModel}, vocab ${vocab}, ${b}x${T}); dispatch caches ${caches ? JSON.stringify(caches) : 'off'}`);
  process.exit(0);
}
if (!args.includes('--matmul-only')) {
const x = tf.randomNormal([1024]);
const y = tf.randomNormal([1024]);
const big = tf.randomNormal([8 * 512 * 768]);
console.log('\n| op | host µs/op (enqueue) | µs/op (to done) | dispatches/op | uploads/op | buffers/op | submits/op |\n|---|---:|---:|---:|---:|---:|---:|');
await perCall('add [1024]', 3000, () => void tf.add(x, y));
await perCall('add [1024], results kept to the end of the tidy', 3000, () => void x.add(y));
await perCall('mul by a JS number [1024] (scalar upload)', 3000, () => void x.mul(0.5));
await perCall('reshape (no dispatch)', 3000, () => void x.reshape([32, 32]));
await perCall('add [8*512*768]', 500, () => void tf.add(big, big));
tf.dispose([x, y, big]);

const rng = Rng.seeded(1);
const model = gpt2Model({ vocab, dModel, layers: L, heads, T: T, rng });
const opt = new AdamW(model.namedParameters(), { type: 'adamw', lr: 1e-4, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 });
const n = b * T;
const batch: Batch = { inputs: new Int32Array(n).map(() => rng.int(vocab)), targets: new Int32Array(n).map(() => rng.int(vocab)), batchSize: b, seqLen: T };
const step = () => trainStep(model, opt, [batch], { lr: 1e-4, clipGradNorm: 1 });
await step();
await step();
reset();
// host time until the step's read-back is requested (enqueueing) against the wait for the GPU after it
let enqueueMs = 0;
let waitMs = 0;
const proto = tf.Tensor.prototype as unknown as { data: (this: tf.Tensor) => Promise<unknown> };
const data0 = proto.data;
let stepStart = 0;
let inRead = false;
proto.data = function (this: tf.Tensor) {
  if (inRead) return data0.call(this);
  inRead = true;
  const t = now();
  enqueueMs += t - stepStart;
  return data0.call(this).finally(() => {
    waitMs += now() - t;
  });
};
const steps = 5;
const t0 = now();
for (let i = 0; i < steps; i++) {
  stepStart = now();
  inRead = false;
  await step();
}
const ms = (now() - t0) / steps;
proto.data = data0;
console.log(`per step: ${(enqueueMs / steps).toFixed(0)} ms of host work before the read-back, then ${(waitMs / steps).toFixed(0)} ms waiting for the GPU`);
console.log(`\nGPT-2-small-shaped step (${L} layers, d=${dModel}, T=${T}, batch ${b}): ${ms.toFixed(0)} ms/step, ${Math.round((n / ms) * 1000)} tokens/s`);
console.log(
  `per step: ${c.dispatches / steps} dispatches (${(c.programMs / steps).toFixed(0)} ms inside runWebGPUProgram, ${((c.programMs / c.dispatches) * 1000).toFixed(0)} µs each), ${c.uploads / steps} uploads (${(c.uploadBytes / steps / 1024).toFixed(0)} KiB), ${c.buffers / steps} buffers created, ${c.submits / steps} submits`,
);
console.log(
  'dispatches per step by program: ' +
    [...c.byProgram]
      .sort((p, q) => q[1] - p[1])
      .map(([k, v]) => `${k} ${v / steps}`)
      .join(', '),
);
// the same step's phases, host wall each (no read-back between them except the step's own)
{
  reset();
  const ids = tf.tensor(batch.inputs, [b, T], 'int32');
  const vars = model.namedParameters().map(([, p]) => p.variable);
  const tA = now();
  const { value, grads } = tf.variableGrads(() => model.forward(ids).logits.mean() as tf.Scalar, vars);
  const tB = now();
  const d1 = c.dispatches;
  await value.data();
  const tC = now();
  console.log(`forward+backward (logits.mean loss): enqueue ${(tB - tA).toFixed(0)} ms for ${d1} dispatches (${(((tB - tA) / d1) * 1000).toFixed(0)} µs each), then ${(tC - tB).toFixed(0)} ms until done`);
  tf.dispose([ids, value, ...Object.values(grads)]);
}
// GPU time of one forward+backward by program (timestamp queries; each program in its own pass)
{
  const ids = tf.tensor(batch.inputs, [b, T], 'int32');
  const targets = tf.tensor(batch.targets, [b, T], 'int32');
  const vars = model.namedParameters().map(([, p]) => p.variable);
  const p = await profileGpu(() => {
    const { value, grads } = tf.variableGrads(() => sparseCrossEntropy(model.forward(ids).logits, targets), vars);
    return [value, ...Object.values(grads)];
  });
  console.log(`forward+backward GPU time ${p.kernelMs.toFixed(0)} ms: ${topPrograms(p.by, 40)}`);
  if (policyArg) console.log(`matmul policy ${policyArg}`);
  if (byShape) {
    const mms = [...p.by].filter(([k]) => k.startsWith('tsf_matmul '));
    console.log(`matmuls by shape: ${mms.reduce((acc, [, v]) => acc + v, 0).toFixed(1)} ms in ${mms.length} shapes\n| product | GPU ms per step |\n|---|---:|\n${mms.sort((x, y) => y[1] - x[1]).map(([k, v]) => `| ${k.slice(11)} | ${v.toFixed(2)} |`).join('\n')}`);
  }
  tf.dispose([ids, targets]);
}
model.dispose();
opt.dispose();
}
// the model's matmul shapes: this package's kernel (default tiles, and each forced tile choice)
// against tfjs's, TFLOP/s, 20 calls after a warm-up, synced on the GPU
if (!args.includes('--no-matmul')) {
  const N = b * T;
  const shapes: Array<[string, number, number, number, boolean, boolean]> = [
    ['qkv fwd', N, dModel, 3 * dModel, false, false],
    ['o fwd', N, dModel, dModel, false, false],
    ['fc1 fwd', N, dModel, 4 * dModel, false, false],
    ['fc2 fwd', N, 4 * dModel, dModel, false, false],
    ['fc1 dX (dY W^T)', N, 4 * dModel, dModel, false, true],
    ['fc1 dW (X^T dY)', dModel, N, 4 * dModel, true, false],
    ['qkv dW (X^T dY)', dModel, N, 3 * dModel, true, false],
    ['o dW (X^T dY)', dModel, N, dModel, true, false],
    ['fc2 dW (X^T dY)', 4 * dModel, N, dModel, true, false],
    ['lm head fwd (E^T)', N, dModel, vocab, false, true],
    ['lm head dX (dY E)', N, vocab, dModel, false, false],
    ['lm head dE (dY^T X)', vocab, N, dModel, true, false],
    ['square nn', 4096, 4096, 4096, false, false],
    ['square nt', 4096, 4096, 4096, false, true],
    ['square tn', 4096, 4096, 4096, true, false],
  ];
  const be = tf.backend() as unknown as Parameters<typeof runMatMul>[0];
  const tfjs = originalMatMul()!;
  // the automatic choice last: the first column timed after the inputs are made reads low
  const variants: Array<[string, TileChoice | 'tfjs' | 'policy']> = [
    ['tfjs', 'tfjs'],
    ['128/8', { block: 128, bk: 8, split: 1 }],
    ['128/8 u', { block: 128, bk: 8, split: 1, unroll: true }],
    ['64x128/8', { bm: 64, bn: 128, bk: 8, split: 1 }],
    ['64x128/8 u', { bm: 64, bn: 128, bk: 8, split: 1, unroll: true }],
    ['128x64/8', { bm: 128, bn: 64, bk: 8, split: 1 }],
    ['128x64/8 u', { bm: 128, bn: 64, bk: 8, split: 1, unroll: true }],
    ['64x128/16 u', { bm: 64, bn: 128, bk: 16, split: 1, unroll: true }],
    ['64/16', { block: 64, bk: 16, split: 1 }],
    ['64/16 u', { block: 64, bk: 16, split: 1, unroll: true }],
    ['128/8 split', { block: 128, bk: 8 }],
    ['64x128/8 u split', { bm: 64, bn: 128, bk: 8, unroll: true }],
    ['policy', 'policy'],
  ];

  console.log(`\n| product | M x K x N | ${variants.map(([v]) => v).join(' | ')} |\n|---|---|${variants.map(() => '---:').join('|')}|`);
  for (const [name, M, K, Nn, tA, tB] of shapes) {
    const x = tf.randomNormal(tA ? [K, M] : [M, K]);
    const w = tf.randomNormal(tB ? [Nn, K] : [K, Nn]);
    const cells: string[] = [];
    // the GPU idles while the inputs are made on the host: keep it busy for 300 ms first (the first
    // kernel timed after that read 40-60% low in earlier runs, likely clocks)
    for (const t1 = now(); now() - t1 < 300; ) {
      tf.matMul(x, w, tA, tB).dispose();
      await drain();
    }
    for (const [, v] of variants) {
      const call = () =>
        v === 'policy'
          ? tf.matMul(x, w, tA, tB)
          : v === 'tfjs'
            ? tf.engine().makeTensorFromTensorInfo(tfjs.kernelFunc({ inputs: { a: x, b: w }, backend: tf.backend(), attrs: { transposeA: tA, transposeB: tB } }) as tf.TensorInfo)
            : tf.engine().makeTensorFromTensorInfo(runMatMul(be, x, w, tA, tB, v)!);
      for (let i = 0; i < 3; i++) call().dispose();
      await drain();
      const reps = 20;
      const t1 = now();
      for (let i = 0; i < reps; i++) call().dispose();
      await drain();
      const ms = (now() - t1) / reps;
      cells.push(`${((2 * M * K * Nn) / (ms * 1e9)).toFixed(1)}`);
    }
    console.log(`| ${name} | ${M} x ${K} x ${Nn} | ${cells.join(' | ')} |`);
    tf.dispose([x, w]);
  }
}
onGpu.dispose();
console.log(`tensors left: ${tf.memory().numTensors}`);
