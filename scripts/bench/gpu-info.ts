/**
 * Prints the WebGPU adapter Dawn finds (name, limits, features). Also the entry that lets
 * ../shared/gpu/kit.sh build the kit: it needs no workspace package (see bundle-gpu.mjs).
 *
 *   device: bash .gpu/run.sh gpu-info.mjs
 */
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);
const adapter = await create([]).requestAdapter({ powerPreference: 'high-performance' });
if (!adapter) {
  console.log('no WebGPU adapter');
  process.exitCode = 1;
} else {
  const l = adapter.limits;
  const names = ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup', 'maxStorageBuffersPerShaderStage'] as const;
  console.log(JSON.stringify({ info: { vendor: adapter.info.vendor, architecture: adapter.info.architecture, device: adapter.info.device, description: adapter.info.description }, limits: Object.fromEntries(names.map((n) => [n, l[n]])), features: [...adapter.features] }));
  // the features Dawn offers once its unsafe APIs are allowed (is shader-f16 only gated?), and the
  // cooperative-matrix shapes and component types behind chromium-experimental-subgroup-matrix
  const unsafe = await create(['enable-dawn-features=allow_unsafe_apis']).requestAdapter({ powerPreference: 'high-performance' });
  type Config = { componentType: string; resultComponentType: string; M: number; N: number; K: number };
  const info = unsafe?.info as unknown as { subgroupMinSize?: number; subgroupMaxSize?: number; subgroupMatrixConfigs?: Config[] } | undefined;
  // the configs' fields are getters (JSON.stringify sees none)
  const configs = info?.subgroupMatrixConfigs?.map((c) => `${c.componentType} -> ${c.resultComponentType} ${c.M}x${c.N}x${c.K}`);
  console.log(
    JSON.stringify({
      toggles: 'allow_unsafe_apis',
      features: unsafe ? [...unsafe.features] : null,
      subgroupSizes: [info?.subgroupMinSize, info?.subgroupMaxSize],
      subgroupMatrixConfigs: configs ?? null,
    }),
  );
}
