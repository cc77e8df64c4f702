import { resolve } from 'node:path';
import type { Browser, Page } from 'playwright-core';
// Debian's chromium, installed by scripts/install-chromium.sh when missing (CHROMIUM_PATH overrides)
import { chromiumPath } from '../packages/kernels-webgpu/src/testing/chromium.js';

/** The repository root (this file is tests/chromium.ts). */
export const repoRoot = resolve(import.meta.dirname, '..');


export async function launchChromium(): Promise<Browser> {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A page that records page errors, console errors/warnings and every network request it tries. */
export async function watchedPage(browser: Browser): Promise<{ page: Page; errors: string[]; requests: string[] }> {
  const page = await browser.newPage();
  const errors: string[] = [];
  const requests: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${String(e)}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') errors.push(`[${m.type()}] ${m.text().slice(0, 500)}`);
  });
  page.on('request', (r) => requests.push(r.url()));
  return { page, errors, requests };
}

/** Bundles a browser entry with esbuild: workspace packages from source, no externals (a Node-only import fails the build). */
export async function bundle(entry: string, opts: { metafile?: boolean } = {}): Promise<{ js: string; inputs: string[] }> {
  const { build } = await import('esbuild');
  const out = await build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    conditions: ['@tsformer/source'],
    metafile: opts.metafile ?? false,
    logLevel: 'silent',
  });
  return { js: out.outputFiles[0]!.text, inputs: Object.keys(out.metafile?.inputs ?? {}) };
}
