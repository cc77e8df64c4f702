import { tf } from './tf.js';
import { TsformerError } from './errors.js';
import { installFastUploads } from './webgpu-upload.js';
import { installDispatchCaches } from './webgpu-dispatch.js';

export const BACKENDS = ['auto', 'cpu', 'wasm', 'webgpu', 'tensorflow'] as const;
export type BackendName = (typeof BACKENDS)[number];

export interface BackendInfo {
  /** The tfjs backend now active. */
  name: Exclude<BackendName, 'auto'>;
  /** Human-readable details (adapter name, SIMD, native library). */
  detail: string;
}

const HOW_TO: Record<Exclude<BackendName, 'auto'>, string> = {
  cpu: 'it ships with @tsformer/core',
  wasm: 'it ships with @tsformer/core (@tensorflow/tfjs-backend-wasm); reinstall with `npm ci`',
  webgpu:
    'install the optional packages `webgpu` and `@tensorflow/tfjs-backend-webgpu` (npm install webgpu@0.6.2 @tensorflow/tfjs-backend-webgpu@4.22.0) and run on a machine whose GPU driver offers Vulkan (see docs/gpu-nodes.md)',
  tensorflow:
    'install `@tensorflow/tfjs-node-gpu@4.22.0` (NVIDIA GPU, CUDA 11.2 + cuDNN 8.1) or `@tensorflow/tfjs-node@4.22.0` (CPU); both download libtensorflow at install time (see docs/gpu-nodes.md)',
};

async function importOptional(name: string): Promise<unknown | undefined> {
  try {
    return await import(/* @vite-ignore */ name);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') return undefined;
    throw e;
  }
}

/** Tries one backend; returns its detail string, or undefined when it is not available here. */
async function tryBackend(name: Exclude<BackendName, 'auto'>, opts: SelectOptions = {}): Promise<string | undefined> {
  switch (name) {
    case 'cpu':
      return (await tf.setBackend('cpu')) ? 'tfjs reference kernels' : undefined;
    case 'wasm': {
      const wasm = await importOptional('@tensorflow/tfjs-backend-wasm');
      if (!wasm) return undefined;
      if (!(await tf.setBackend('wasm'))) return undefined;
      const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
      const threads = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
      return `XNNPACK${simd ? ' + SIMD' : ''}${threads ? ' + threads' : ''}`;
    }
    case 'webgpu': {
      const g = globalThis as { navigator?: { gpu?: GPULike } };
      let toggled = '';
      if (!g.navigator?.gpu) {
        // Dawn on Linux needs the Vulkan loader; without it there is no adapter (and Dawn would
        // print a warning while finding that out).
        if (!(await hasVulkanLoader())) return undefined;
        // In Node, Dawn's binding provides navigator.gpu; it must exist before the backend module
        // loads (the module registers `webgpu` at import time only if navigator.gpu is there).
        const dawn = (await importOptional('webgpu')) as { create(o: string[]): GPULike; globals: object } | undefined;
        if (!dawn) return undefined;
        Object.assign(globalThis, dawn.globals);
        const nav = (g.navigator ??= {} as { gpu?: GPULike });
        const toggles = opts.dawnToggles ?? envDawnToggles();
        const flags = toggles.length ? [`enable-dawn-features=${toggles.join(',')}`] : [];
        if (toggles.length) toggled = `; Dawn toggles ${toggles.join(',')}`;
        if (!nav.gpu) Object.defineProperty(nav, 'gpu', { value: dawn.create(flags), configurable: true });
      }
      const adapter = await g.navigator!.gpu!.requestAdapter({ powerPreference: 'high-performance' });
      if (!adapter) return undefined;
      // A bundle for the browser passes the module it imported (a bare dynamic import does not resolve there).
      const mod = (webgpuModule ??= (opts.webgpuModule as WebGpuModule | undefined) ?? ((await importOptional('@tensorflow/tfjs-backend-webgpu')) as WebGpuModule | undefined));
      if (!mod) return undefined;
      if (!tf.findBackend('webgpu')) installWebGpuFactory(adapter, mod);
      if (!(await tf.setBackend('webgpu'))) return undefined;
      return describeAdapter(adapter) + toggled;
    }
    case 'tensorflow': {
      for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
        if (await importOptional(pkg)) {
          if (await tf.setBackend('tensorflow')) return `libtensorflow via ${pkg}`;
        }
      }
      return undefined;
    }
  }
}

/** Whether libvulkan.so.1 is in a standard library directory or LD_LIBRARY_PATH (Linux only). */
async function hasVulkanLoader(): Promise<boolean> {
  const proc = (globalThis as { process?: { platform?: string; env?: Record<string, string | undefined> } }).process;
  if (proc?.platform !== 'linux') return true;
  // Node only (the platform check above returns first in a browser). The specifier is a variable so
  // bundlers (esbuild, vite) leave this import alone and browser bundles need no `node:fs` stub.
  const fsModule = 'node:fs';
  const { existsSync } = (await import(/* @vite-ignore */ fsModule)) as typeof import('node:fs');
  const dirs = [
    ...(proc.env?.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    '/usr/lib/x86_64-linux-gnu',
    '/lib/x86_64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
    '/usr/local/lib',
    '/usr/lib/aarch64-linux-gnu',
  ];
  return dirs.some((d) => existsSync(`${d}/libvulkan.so.1`));
}

interface GPUAdapterLike {
  info?: { vendor?: string; architecture?: string; device?: string; description?: string };
  limits: Record<string, number>;
  features: { has(name: string): boolean };
  requestDevice(d: { requiredFeatures: string[]; requiredLimits: Record<string, number> }): Promise<unknown>;
}
interface GPULike {
  requestAdapter(o?: { powerPreference?: string }): Promise<GPUAdapterLike | null>;
}
interface WebGpuModule {
  WebGPUBackend: new (device: unknown, adapterInfo?: unknown) => object;
}
let webgpuModule: WebGpuModule | undefined;

/**
 * Device limits raised to what the adapter offers (WebGPU's defaults cap a storage binding at
 * 128 MiB, a buffer at 256 MiB, workgroup memory at 16 KiB and storage buffers per stage at 8).
 */
export const RAISED_WEBGPU_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxUniformBufferBindingSize',
  'maxStorageBuffersPerShaderStage',
  'maxBindingsPerBindGroup',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
] as const;

/** Features requested when offered: GPU timers for profiling, f16 arithmetic for f16 kernels. */
const OPTIONAL_WEBGPU_FEATURES = ['timestamp-query', 'shader-f16'];

function describeAdapter(adapter: GPUAdapterLike): string {
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.device, info.description].filter((x) => x).join(' ') || 'unknown adapter';
  const mib = (n: number | undefined) => (n === undefined ? '?' : `${Math.round(n / 2 ** 20)} MiB`);
  const l = adapter.limits;
  const f16 = adapter.features.has('shader-f16') ? ', shader-f16' : '';
  return `${name} (buffer ${mib(l.maxBufferSize)}, storage binding ${mib(l.maxStorageBufferBindingSize)}, workgroup memory ${l.maxComputeWorkgroupStorageSize} B${f16})`;
}

let webgpuLogged = false;

/**
 * Replaces the backend module's factory (it raises six limits) with one that requests every limit
 * in RAISED_WEBGPU_LIMITS at the adapter's value, and logs the adapter's name and limits once.
 */
function installWebGpuFactory(adapter: GPUAdapterLike, mod: WebGpuModule): void {
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend(
    'webgpu',
    async () => {
      const requiredLimits: Record<string, number> = {};
      for (const name of RAISED_WEBGPU_LIMITS) if (typeof adapter.limits[name] === 'number') requiredLimits[name] = adapter.limits[name];
      const requiredFeatures = OPTIONAL_WEBGPU_FEATURES.filter((f) => adapter.features.has(f));
      const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
      if (!webgpuLogged) {
        webgpuLogged = true;
        console.info(`tsformer: webgpu on ${describeAdapter(adapter)}; limits ${JSON.stringify(requiredLimits)}`);
      }
      const backend = new mod.WebGPUBackend(device, adapter.info);
      // host-made tensors reach the GPU through queue.writeBuffer (see webgpu-upload.ts)
      if (!installFastUploads(backend)) console.warn('tsformer: this tfjs-backend-webgpu has unexpected internals; host uploads stay on its own path');
      // uniform buffers reused across dispatches (see webgpu-dispatch.ts);
      // TSFORMER_DISPATCH_CACHES=off leaves tfjs's own per-dispatch path
      const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
      if (env?.TSFORMER_DISPATCH_CACHES !== 'off' && !installDispatchCaches(backend)) {
        console.warn('tsformer: this tfjs-backend-webgpu has unexpected internals; uniform buffers stay uncached');
      }
      return backend as tf.KernelBackend;
    },
    3,
  );
}

export interface SelectOptions {
  /**
   * The `@tensorflow/tfjs-backend-webgpu` module, for bundles that import it themselves (in a
   * browser the package cannot be imported by name at run time). Default: imported on demand.
   */
  webgpuModule?: unknown;
  /**
   * Dawn toggles for the adapter and device made in Node (e.g. `skip_validation`), default from
   * the environment variable `TSFORMER_DAWN_TOGGLES` (comma-separated), else DEFAULT_DAWN_TOGGLES.
   * Only where this module makes `navigator.gpu` itself (not in a browser, not when a caller set
   * it first).
   */
  dawnToggles?: string[];
}

/**
 * Dawn toggles for the WebGPU device made in Node when none are given: robustness off. Dawn
 * otherwise clamps every array index in every shader (tfjs's and ours) to its buffer's bounds; our
 * kernels bound their own indices and are checked against their composites, and on the H100 a
 * GPT-2-small step went 137 -> 120 ms without the clamps (matmul 86 -> 78 ms, attention backward
 * 23 -> 17 ms). `TSFORMER_DAWN_TOGGLES=` (set, empty) keeps Dawn's defaults.
 */
export const DEFAULT_DAWN_TOGGLES = ['allow_unsafe_apis', 'disable_robustness'];

/** Dawn toggles named by `TSFORMER_DAWN_TOGGLES` (comma-separated; set and empty: none), else the defaults. */
export function envDawnToggles(): string[] {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  const named = env?.TSFORMER_DAWN_TOGGLES;
  if (named === undefined) return [...DEFAULT_DAWN_TOGGLES];
  return named
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
}

/**
 * Activates a backend. `auto` picks the fastest one available: tensorflow, then webgpu, then wasm,
 * then cpu. Asking for a specific backend that is absent is an error that says how to get it.
 */
export async function selectBackend(name: BackendName = 'auto', opts: SelectOptions = {}): Promise<BackendInfo> {
  if (!BACKENDS.includes(name)) {
    throw new TsformerError(`unknown backend "${name}" (choose one of ${BACKENDS.join(', ')})`, 'backend');
  }
  const order: Array<Exclude<BackendName, 'auto'>> = name === 'auto' ? ['tensorflow', 'webgpu', 'wasm', 'cpu'] : [name];
  for (const candidate of order) {
    let detail: string | undefined;
    try {
      detail = await tryBackend(candidate, opts);
    } catch (e) {
      if (name !== 'auto') {
        throw new TsformerError(`backend "${candidate}" failed to start: ${(e as Error).message}. To use it, ${HOW_TO[candidate]}.`, 'backend');
      }
    }
    if (detail !== undefined) {
      await tf.ready();
      return { name: candidate, detail };
    }
  }
  if (name === 'auto') throw new TsformerError('no tfjs backend could be started', 'backend');
  throw new TsformerError(`backend "${name}" is not available here. To use it, ${HOW_TO[name]}.`, 'backend');
}

/** Backends that start on this machine (tries each in turn; leaves `cpu` active). */
export async function availableBackends(): Promise<Array<Exclude<BackendName, 'auto'>>> {
  const out: Array<Exclude<BackendName, 'auto'>> = [];
  for (const b of ['cpu', 'wasm', 'webgpu', 'tensorflow'] as const) {
    try {
      if ((await tryBackend(b)) !== undefined) out.push(b);
    } catch {
      // not available
    }
  }
  await tf.setBackend('cpu');
  return out;
}
