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
    Object.defineProperty(this, 'constructor', { value: { name }, enumerable: false });
    this.#body = a.body;
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

/** Runs a program on the webgpu backend and returns its float32 output. */
export function run(backend: WebGpuBackendLike, program: KernelProgram, inputs: TensorInfo[], uniforms?: UniformData): TensorInfo {
  return backend.runWebGPUProgram(program, inputs, 'float32', uniforms);
}

/** Copies `size` floats from `src` starting at `offset` into a new tensor of `shape`. */
export function slicePacked(backend: WebGpuBackendLike, src: TensorInfo, offset: number, shape: number[]): TensorInfo {
  const size = shape.reduce((a, b) => a * b, 1);
  const threads = 256;
  const program = new KernelProgram({
    key: `tsf_slice_${offset}_${size}`,
    outputShape: shape,
    inputs: ['X'],
    threads,
    numGroups: Math.ceil(size / threads),
    body: `
      fn kernel() {
        let i = wgIndex() * ${threads}u + localIndex;
        if (i < ${size}u) { result[i] = X[i + ${offset}u]; }
      }`,
  });
  return run(backend, program, [src]);
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
