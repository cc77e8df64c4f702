import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

/** The repository root (this file is packages/kernels-webgpu/src/testing/chromium.ts). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

/** Chromium flags that give a WebGPU adapter on SwiftShader (CPU Vulkan), with no network. */
export const SWIFTSHADER_FLAGS = [
  '--enable-unsafe-webgpu',
  '--enable-unsafe-swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--use-vulkan=swiftshader',
  '--enable-features=Vulkan',
  '--no-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/** Path of a chromium binary; installs Debian's package through scripts/install-chromium.sh when missing. */
export function chromiumPath(): string {
  return execFileSync('bash', [resolve(repoRoot, 'scripts/install-chromium.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
}

/** Bundles a browser entry (workspace packages from their TypeScript source) into one script. */
export async function bundleForBrowser(entry: string): Promise<string> {
  const { build } = await import('esbuild');
  const out = await build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    conditions: ['@tsformer/source'],
    external: ['node:*', 'webgpu', '@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu'],
    logLevel: 'error',
  });
  return out.outputFiles[0]!.text;
}

/**
 * Loads `script` into a page of headless Chromium (a secure localhost origin, served from memory,
 * so WebGPU is exposed) and returns `globalThis[fn](arg)` with the console's errors and warnings.
 */
export async function runInChromium<T>(script: string, fn: string, arg: unknown): Promise<{ value: T; console: string[] }> {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: SWIFTSHADER_FLAGS });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // WebGPU validation and shader-compilation errors reach the console only: they are returned.
    const logged: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') logged.push(`[${m.type()}] ${m.text().slice(0, 2000)}`);
    });
    await page.route('http://localhost/**', (route) => {
      const url = route.request().url();
      if (url.endsWith('/bundle.js')) return route.fulfill({ contentType: 'text/javascript', body: script });
      return route.fulfill({ contentType: 'text/html', body: '<!doctype html><script src="/bundle.js"></script>' });
    });
    await page.goto('http://localhost/index.html');
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    const value = (await page.evaluate(([name, a]) => (globalThis as unknown as Record<string, (x: unknown) => Promise<unknown>>)[name as string]!(a), [fn, arg] as const)) as T;
    return { value, console: logged };
  } finally {
    await browser.close();
  }
}
