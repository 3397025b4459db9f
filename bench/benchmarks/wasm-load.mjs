// How big the release engine is and how long it takes to start in Chromium.
// Needs the release builds in www/pkg (make bench builds them): the sizes of both, the start-up
// of the one the page's worker chooses (the relaxed-SIMD build in Chromium).

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';

export const name = 'wasm-load';
export const description = 'release wasm size; engine start-up in a Web Worker, compile and instantiate in Chromium';

const PAGE_LOADS = 7; // each in a fresh browser context (empty HTTP and code caches)
const COMPILES = 10;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x) => Math.round(x * 100) / 100;
const timing = (metric, samples, note) => ({ metric, unit: 'ms', value: round(median(samples)), samples: samples.map(round), note });

export async function run(ctx) {
  const out = [];
  for (const [file, label] of [['quant_playground_bg.wasm', 'wasm size'], ['quant_playground_relaxed_bg.wasm', 'relaxed-SIMD wasm size']]) {
    const bytes = readFileSync(path.join(ctx.root, 'www', 'pkg', file));
    out.push(
      { metric: label, unit: 'bytes', value: bytes.length },
      { metric: `${label}, gzip level 9 (zlib)`, unit: 'bytes', value: gzipSync(bytes, { level: 9 }).length },
    );
  }

  const server = await ctx.server();
  const browser = await ctx.browser();

  const workerInit = [];
  const pageReady = [];
  for (let i = 0; i < PAGE_LOADS; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(server.url);
    await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
    const mark = await page.evaluate(() => {
      const entry = performance.getEntriesByName('qp:engine-ready')[0];
      return entry ? { at: entry.startTime, initMs: entry.detail.initMs } : null;
    });
    await context.close();
    if (!mark) throw new Error('the page did not reach body.ready');
    workerInit.push(mark.initMs);
    pageReady.push(mark.at);
  }
  out.push(timing('engine start in worker (fetch+compile+instantiate)', workerInit, `${PAGE_LOADS} fresh contexts`));
  out.push(timing('navigation to engine ready', pageReady, `${PAGE_LOADS} fresh contexts`));

  // Compile and instantiate alone, from bytes already in memory, on the page's main thread.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(server.url);
  await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
  const split = await page.evaluate(async (n) => {
    // The file the worker loads (engine-build.js).
    const { BUILDS, preferredBuild } = await import('./engine-build.js');
    const buf = await (await fetch(`pkg/${BUILDS[preferredBuild()]}`)).arrayBuffer();
    const compile = [];
    let module;
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      module = await WebAssembly.compile(buf);
      compile.push(performance.now() - t0);
    }
    // Instantiation with stand-in imports (nothing runs: wasm-bindgen's start is called by
    // its JS glue, not by the module).
    const imports = {};
    let stubbable = true;
    for (const imp of WebAssembly.Module.imports(module)) {
      if (imp.kind !== 'function') stubbable = false;
      (imports[imp.module] ??= {})[imp.name] = () => {
        throw new Error('stub');
      };
    }
    const instantiate = [];
    if (stubbable) {
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await WebAssembly.instantiate(module, imports);
        instantiate.push(performance.now() - t0);
      }
    }
    return { compile, instantiate };
  }, COMPILES);
  await context.close();
  out.push(timing('WebAssembly.compile (main thread)', split.compile, `${COMPILES} runs in one page`));
  if (split.instantiate.length) {
    out.push(timing('WebAssembly.instantiate (main thread)', split.instantiate, `${COMPILES} runs in one page`));
  }
  return out;
}
