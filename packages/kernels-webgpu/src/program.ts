import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '@tsformer/core';

/**
 * The slice of tfjs-backend-webgpu's backend this package uses: it runs a program (one WGSL
 * compute shader with one output buffer) and frees intermediate buffers. Typed here so the package
 * needs the backend module only at run time, and only on `webgpu`.
 */
export interface WebGpuBackendLike {
  runWebGPUProgram(program: KernelProgram, inputs: TensorInfo[], outputDtype: 'float32' | 'int32', uniforms?: UniformData): TensorInfo;
  disposeData(dataId: object): boolean;
  device: { limits: { maxComputeWorkgroupStorageSize: number; maxComputeInvocationsPerWorkgroup: number; maxStorageBuffersPerShaderStage: number } };
}

/** Values of a program's own uniforms, in the order of its `uniforms` declaration. */
export type UniformData = Array<{ type: 'float32' | 'int32' | 'uint32'; data: number[] }>;

/**
 * One compute shader in the shape tfjs-backend-webgpu runs. Every size is baked into the WGSL as a
 * constant and into `shaderKey` (tfjs caches pipelines by that key), so each shape compiles once.
 *
 * tfjs prepends the bindings: `result: array<f32>` (the output, read_write) and one read-only
 * `array<f32>` (or `array<vec4<f32>>`, see `components`) per input, named by `variableNames`.
 * Workgroups are a flat count: `wgIndex()` recovers the linear workgroup id when tfjs has reshaped
 * a large dispatch into two or three dimensions, and workgroups past `numGroups` do nothing.
 */
export class KernelProgram {
  readonly outputShape: number[];
  readonly variableNames: string[];
  readonly variableComponents: number[] | undefined;
  readonly workgroupSize: [number, number, number];
  readonly dispatchLayout: { x: number[] };
  /** WGSL fields appended to tfjs's uniform block (`name: f32, ...`), read as `uniforms.name`. */
  readonly uniforms: string | undefined;
  dispatch: [number, number, number];
  shaderKey: string;
  readonly #body: string;

  constructor(a: {
    /** Unique per distinct WGSL body: the kernel name plus every baked constant. */
    key: string;
    outputShape: number[];
    inputs: string[];
    /** Uniform fields (values that change between calls without a recompile), e.g. `lr: f32,`. */
    uniforms?: string;
    /** Components per input element (4: the input is read as vec4<f32>); default 1 each. */
    components?: number[];
    threads: number;
    numGroups: number;
    /** WGSL declarations and `fn kernel()`; it may use `wgIndex()`, `tid` (local index) and `result`. */
    body: string;
  }) {
    this.outputShape = a.outputShape;
    this.variableNames = a.inputs;
    this.variableComponents = a.components;
    this.workgroupSize = [a.threads, 1, 1];
    this.dispatchLayout = { x: a.outputShape.map((_, i) => i) };
    this.dispatch = [a.numGroups, 1, 1];
    this.shaderKey = a.key;
    this.uniforms = a.uniforms;
    // tfjs names a program by `program.constructor.name` in pipelines and in tf.time's per-kernel
    // profile; give each kernel its own name there (the key's prefix, e.g. tsf_fa_dq).
    const name = a.key.replace(/_\d.*$/, '');
    Object.defineProperty(this, 'constructor', { value: { name }, enumerable: false, configurable: true });
    this.#body = a.body;
  }

  /** The WGSL declarations and `fn kernel()` this program was made with. */
  get body(): string {
    return this.#body;
  }

  getUserCode(): string {
    return `
      fn wgIndex() -> u32 {
        // tfjs always binds its uniform block; a pipeline whose shader never reads it fails validation.
        _ = uniforms.NAN;
        return (workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x + workgroupId.x;
      }
      ${this.#body}
      fn main(index: i32) { kernel(); }
    `;
  }
}

/** What a KernelProgram is made from. */
export type KernelProgramArgs = ConstructorParameters<typeof KernelProgram>[0];

const builtPrograms = new Map<string, KernelProgramArgs>();

/**
 * A KernelProgram for `key`, its WGSL built by `build` only the first time the key is seen (a
 * matmul's body took tens of µs of JS to build, 219 times per GPT-2-small step; the attention
 * kernels' bodies, with their arrays rewritten as variables, cost a GPT-2-small step at T=512 about
 * 15 ms of host time when built per call). Every single-output kernel of the package goes through
 * it, so a key must name everything its program depends on (as tfjs's pipeline cache already
 * requires). A fresh instance each call: tfjs writes `dispatch` and `shaderKey` into the programs
 * it runs.
 */
export function cachedProgram(key: string, build: () => KernelProgramArgs): KernelProgram {
  let args = builtPrograms.get(key);
  if (!args) {
    args = build();
    if (args.key !== key) throw new Error(`cachedProgram: built ${args.key} for ${key}`);
    builtPrograms.set(key, args);
  }
  return new KernelProgram(args);
}

/** Runs a program on the webgpu backend and returns its float32 output. */
export function run(backend: WebGpuBackendLike, program: KernelProgram, inputs: TensorInfo[], uniforms?: UniformData): TensorInfo {
  return backend.runWebGPUProgram(program, inputs, 'float32', uniforms);
}

/**
 * WGSL: workgroup memory `red` and `fn wgSum(v: f32, tid: u32) -> f32`, the sum of `v` over a
 * workgroup of `threads` threads (a power of two; `tid` the local index), returned to every thread.
 * Call it from uniform control flow (it has barriers).
 */
export function workgroupSumWgsl(threads: number): string {
  return `
    var<workgroup> red: array<f32, ${threads}>;
    fn wgSum(v: f32, tid: u32) -> f32 {
      red[tid] = v;
      workgroupBarrier();
      for (var s = ${threads / 2}u; s > 0u; s >>= 1u) {
        if (tid < s) { red[tid] += red[tid + s]; }
        workgroupBarrier();
      }
      let total = red[0];
      workgroupBarrier();
      return total;
    }`;
}

/** WGSL float literal (always with a decimal point or exponent). */
export function f32(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`non-finite WGSL constant ${x}`);
  const s = x.toPrecision(9);
  return /[.e]/.test(s) ? s : `${s}.0`;
}

/** Whether a kernel is registered for the backend now active (then the fused path runs). */
export function kernelActive(kernelName: string): boolean {
  return tf.getBackend() === 'webgpu' && tf.getKernel(kernelName, 'webgpu') !== undefined;
}

/** The slice of tfjs-backend-webgpu 4.22's backend that `runMultiOutput` drives. */
interface RecordingBackend {
  device: {
    createShaderModule(d: { code: string; label?: string }): unknown;
    createComputePipeline(d: { layout: 'auto'; compute: { module: unknown; entryPoint: string }; label?: string }): { getBindGroupLayout(i: number): unknown };
    limits: { maxComputeWorkgroupsPerDimension: number };
  };
  makeTensorInfo(shape: number[], dtype: 'float32'): TensorInfo;
  uploadToGPU(dataId: object): void;
  recordAndSubmit(program: object, output: TensorInfo, inputs: TensorInfo[], uniforms?: UniformData): void;
}

/** One shader with several outputs (see `runMultiOutput`). */
export interface MultiOutputProgram {
  /** Unique per distinct WGSL: the kernel name plus every baked constant; also the name in tf.time profiles (up to the first `_<digit>`). */
  key: string;
  /** Input names (read-only `array<f32>` bindings) in the order of the inputs passed. */
  inputs: string[];
  /** Output names and shapes (read-write `array<f32>` bindings). */
  outputs: Array<{ name: string; shape: number[] }>;
  /** Components per input element (4: read as vec4<f32>); default 1 each. */
  components?: number[];
  threads: number;
  numGroups: number;
  /**
   * WGSL declarations and `fn kernel(wg: u32, tid: u32)` (linear workgroup index, local index);
   * with `legacy`, a KernelProgram body instead: `fn kernel()` reading `localIndex` and `wgIndex()`.
   */
  body: string;
  legacy?: boolean;
}

const pipelines = new WeakMap<object, Map<string, { getBindGroupLayout(i: number): unknown }>>();

/**
 * Runs one compute shader that writes several float32 outputs, as ONE dispatch recorded through
 * tfjs's own `recordAndSubmit` (its command encoder, pass batching, deferred buffer release and
 * tf.time profiling all apply). tfjs programs have a single output, which made kernels with two
 * or three results write a packed buffer and slice it (two or three more dispatches each).
 *
 * The shader is written here: tfjs binds the first output at binding 0, then everything passed as
 * "inputs", then its uniform block. The extra outputs ride along as inputs in that call, so they
 * are bound in order after the real inputs; the WGSL declares them read-write. The uniform block
 * is tfjs's (it begins with NaN); the shader only touches that first field.
 */
export function runMultiOutput(backend: WebGpuBackendLike, p: MultiOutputProgram, inputs: TensorInfo[]): TensorInfo[] {
  const be = backend as unknown as RecordingBackend;
  if (inputs.length !== p.inputs.length) throw new Error(`${p.key}: ${inputs.length} inputs for ${p.inputs.length} names`);
  let cache = pipelines.get(be.device);
  if (!cache) pipelines.set(be.device, (cache = new Map()));
  let pipeline = cache.get(p.key);
  if (!pipeline) {
    const [first, ...rest] = p.outputs;
    const decl = [
      `@group(0) @binding(0) var<storage, read_write> ${first!.name}: array<f32>;`,
      ...p.inputs.map((n, i) => `@group(0) @binding(${1 + i}) var<storage, read> ${n}: array<${p.components?.[i] === 4 ? 'vec4<f32>' : 'f32'}>;`),
      ...rest.map((o, j) => `@group(0) @binding(${1 + p.inputs.length + j}) var<storage, read_write> ${o.name}: array<f32>;`),
      `struct Uniforms { NAN: f32, }`,
      `@group(0) @binding(${p.inputs.length + p.outputs.length}) var<uniform> uniforms: Uniforms;`,
    ].join('\n');
    // a KernelProgram body reads tfjs's `localIndex` and our `wgIndex()`: private copies set in main
    const legacy = p.legacy ? 'var<private> localIndex: u32;\n      var<private> wgLinear: u32;\n      fn wgIndex() -> u32 { return wgLinear; }' : '';
    const code = `${decl}
      ${legacy}
      ${p.body}
      @compute @workgroup_size(${p.threads}, 1, 1)
      fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
        // the uniform block is bound by tfjs; a pipeline whose shader never reads it fails validation
        _ = uniforms.NAN;
        let wg = (wid.z * nwg.y + wid.y) * nwg.x + wid.x;
        if (wg >= ${p.numGroups}u) { return; }
        ${p.legacy ? 'localIndex = tid; wgLinear = wg; kernel();' : 'kernel(wg, tid);'}
      }`;
    const module = be.device.createShaderModule({ code, label: p.key });
    pipeline = be.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: p.key });
    cache.set(p.key, pipeline);
  }
  // inputs made on the host (or by tfjs's small-op CPU forwarding) get their GPU buffers here
  for (const t of inputs) be.uploadToGPU(t.dataId);
  const outs = p.outputs.map((o) => {
    const t = be.makeTensorInfo(o.shape, 'float32');
    be.uploadToGPU(t.dataId); // allocates its buffer (from the pool)
    return t;
  });
  const max = be.device.limits.maxComputeWorkgroupsPerDimension;
  const side = Math.ceil(Math.sqrt(p.numGroups));
  const dispatch: [number, number, number] = p.numGroups <= max ? [p.numGroups, 1, 1] : [side, side, 1];
  if (side > max) throw new Error(`${p.key}: ${p.numGroups} workgroups exceed the device's limit`);
  const name = p.key.replace(/_\d.*$/, '');
  const program = { pipeline, dispatch, pixelsOpType: undefined, size: false, constructor: { name } };
  be.recordAndSubmit(program, outs[0]!, [...inputs, ...outs.slice(1)]);
  return outs;
}

/** runPacked's renamed bodies by key (the renaming is regular expressions over the whole WGSL). */
const renamedBodies = new Map<string, string>();

/**
 * Runs a KernelProgram with several outputs (`shapes`, in order) as one dispatch writing each to its
 * own tensor. Its body writes output 0 as `result[i]` and output j > 0 as `result_j[i]`, each
 * indexed from 0; its `outputShape` is the outputs' total size. (The alternatives cost more: a
 * packed buffer and a slicing copy per output; or one store function that picks the output by
 * index, a branch per store that kept the compiler from unrolling store loops over register
 * arrays: the attention forward ran 2x slower with it on the H100.)
 */
export function runPacked(backend: WebGpuBackendLike, program: KernelProgram, inputs: TensorInfo[], shapes: number[][]): TensorInfo[] {
  const sizes = shapes.map((sh) => sh.reduce((a, b) => a * b, 1));
  if (sizes.reduce((a, b) => a + b, 0) !== program.outputShape.reduce((a, b) => a * b, 1)) {
    throw new Error(`${program.shaderKey}: outputs of ${sizes} elements for a packed result of ${program.outputShape}`);
  }
  const key = `${program.shaderKey}_packed_${sizes.join('_')}`;
  let renamed = renamedBodies.get(key);
  if (renamed === undefined) {
    const body = program.body.replace(/\bresult_(\d+)\[/g, (_, j: string) => {
      if (Number(j) >= shapes.length || j === '0') throw new Error(`${program.shaderKey}: result_${j} names no output (${shapes.length} outputs)`);
      return `R${j}[`;
    });
    renamed = body.replace(/\bresult\[/g, 'R0[');
    if (/\bresult\b/.test(renamed)) throw new Error(`${program.shaderKey}: a use of result that runPacked cannot rename`);
    renamedBodies.set(key, renamed);
  }
  return runMultiOutput(
    backend,
    {
      key,
      inputs: program.variableNames,
      components: program.variableComponents,
      outputs: shapes.map((shape, j) => ({ name: `R${j}`, shape })),
      threads: program.workgroupSize[0],
      numGroups: program.dispatch[0],
      body: renamed,
      legacy: true,
    },
    inputs,
  );
}
