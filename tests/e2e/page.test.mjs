// The page in headless Chromium: the engine loads in a Web Worker with SIMD128 (the relaxed-SIMD
// build where the browser has it, else the SIMD128 one), the page says so, nothing goes wrong on the console and nothing is fetched from elsewhere.
// Writes tests/artifacts/page-ready.png.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { test } from 'node:test';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import { openWatchedPage } from '../support/chromium.mjs';
import { serverAndBrowser } from '../support/harness.mjs';

const ARTIFACTS = `${REPO_ROOT}/tests/artifacts`;

const env = serverAndBrowser();

test('the engine loads in a Web Worker with SIMD128 and the page shows it', async () => {
  const origin = env.server.url.replace(/\/$/, '');
  const { context, page, problems } = await openWatchedPage(env.browser, origin);
  try {
    await page.goto(env.server.url);
    await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
    const errorText = await page.locator('#error-panel').textContent();
    assert.ok(await page.evaluate(() => document.body.classList.contains('ready')), `page in error: ${errorText}`);

    // What the engine reported, as the page recorded it.
    const info = await page.evaluate(() => performance.getEntriesByName('qp:engine-ready')[0]?.detail);
    assert.equal(info.simd128, true);
    // Chromium compiles relaxed SIMD, so the worker chose that build (engine-build.js); whether
    // its int8 dot product is used depends on the CPU, which the engine probes (relaxed.rs).
    assert.equal(info.relaxedSimd, true, 'Chromium gets the relaxed-SIMD build');
    assert.equal(typeof info.relaxedDot, 'boolean');
    assert.match(info.version, /^\d+\.\d+\.\d+/);
    assert.equal(info.crossOriginIsolated, true, 'COOP/COEP must make the worker cross-origin isolated');
    assert.ok(info.initMs > 0);

    // It ran in a worker, not on the main thread.
    assert.equal(page.workers().length, 1);
    assert.match(page.workers()[0].url(), /\/worker\.js$/);

    // What the user sees.
    assert.equal(await page.locator('[data-field="status"]').textContent(), 'Engine loaded (wasm SIMD128)');
    assert.equal(await page.locator('[data-field="status-version"]').textContent(), `v${info.version}`);
    assert.equal(
      await page.locator('[data-field="simd"]').textContent(),
      `WebAssembly SIMD128 + relaxed SIMD (${info.relaxedDot ? 'int8 dot product in use' : 'its int8 dot product is not exact on this CPU, not used'})`,
    );
    assert.equal(await page.locator('#error-panel').isHidden(), true);

    // The default model is imported in the worker and its card shown.
    await page.waitForSelector('body.model-loaded, body.error', { timeout: 60_000 });
    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').textContent());
    assert.equal(await page.locator('[data-field="model-name"]').textContent(), 'efficientnet_lite0.onnx');
    assert.equal(await page.locator('[data-field="model-params"]').textContent(), '4,631,000');
    assert.match(await page.locator('[data-field="model-inputs"]').textContent(), /^input \[1, 3, 224, 224\] \(batch = 1 \(default\)\)$/);
    assert.equal(await page.locator('[data-field="model-outputs"]').textContent(), 'logits [1, 1000]');
    assert.match(await page.locator('[data-field="model-quantizable"]').textContent(), /^50 layers with weights/);
    assert.ok(problems.requests.some((url) => url.endsWith('/models/efficientnet_lite0.onnx')), 'the model was fetched');

    // Keyboard: the first Tab reaches the skip link, which moves focus to the main area.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.className), 'skip-link');
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'main');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}/page-ready.png` });

    assert.ok(problems.requests.some((url) => url.endsWith('/pkg/quant_playground_relaxed_bg.wasm')), 'the relaxed-SIMD wasm was fetched');
    assert.ok(!problems.requests.some((url) => url.endsWith('/pkg/quant_playground_bg.wasm')), 'only one build was fetched');
    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local env.server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('a browser without relaxed SIMD gets the SIMD128 build, and the model runs on it', async () => {
  const origin = env.server.url.replace(/\/$/, '');
  const { context, page, problems } = await openWatchedPage(env.browser, origin);
  try {
    // engine-build.js as a browser that does not validate relaxed SIMD sees it.
    await page.route('**/engine-build.js', async (route) => {
      const body = await (await route.fetch()).text();
      assert.ok(body.includes('WebAssembly.validate(RELAXED_SIMD_MODULE)'), 'engine-build.js validates a relaxed-SIMD module');
      await route.fulfill({ contentType: 'text/javascript', body: body.replace('WebAssembly.validate(RELAXED_SIMD_MODULE)', 'false') });
    });
    await page.goto(env.server.url);
    await page.waitForSelector('body.model-loaded, body.error', { timeout: 60_000 });
    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').textContent());
    const info = await page.evaluate(() => performance.getEntriesByName('qp:engine-ready')[0]?.detail);
    assert.deepEqual([info.simd128, info.relaxedSimd, info.relaxedDot], [true, false, false]);
    assert.equal(await page.locator('[data-field="simd"]').textContent(), 'WebAssembly SIMD128');
    assert.ok(problems.requests.some((url) => url.endsWith('/pkg/quant_playground_bg.wasm')), 'the SIMD128 wasm was fetched');
    assert.ok(!problems.requests.some((url) => url.endsWith('/pkg/quant_playground_relaxed_bg.wasm')), 'and not the relaxed one');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('a missing engine build is reported in the page, not only on the console', async () => {
  const origin = env.server.url.replace(/\/$/, '');
  const { context, page } = await openWatchedPage(env.browser, origin);
  try {
    await page.route('**/pkg/quant_playground.js', (route) => route.fulfill({ status: 404, body: 'not found' }));
    await page.goto(env.server.url);
    await page.waitForSelector('body.error', { timeout: 30_000 });
    assert.equal(await page.locator('#error-panel').isVisible(), true);
    assert.match(await page.locator('[data-field="error-message"]').textContent(), /engine could not start: .+/);
    assert.equal(await page.locator('[data-field="status"]').textContent(), 'Engine error');
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}/page-error.png` });

    // Restart with the build back in place: the page recovers.
    await page.unroute('**/pkg/quant_playground.js');
    await page.locator('#retry-button').focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('body.ready', { timeout: 30_000 });
    assert.equal(await page.locator('#error-panel').isHidden(), true);
  } finally {
    await context.close();
  }
});

test("a page module that fails to load is reported in the page (watchdog.js)", async () => {
  const origin = env.server.url.replace(/\/$/, '');
  const { context, page } = await openWatchedPage(env.browser, origin);
  try {
    await page.route('**/decode.js', (route) => route.fulfill({ status: 404, body: 'not found' }));
    await page.goto(env.server.url);
    await page.waitForSelector('body.error', { timeout: 30_000 });
    assert.equal(await page.locator('#error-panel').isVisible(), true);
    assert.match(await page.locator('[data-field="error-message"]').textContent(), /^The page's scripts could not start/);
  } finally {
    await context.close();
  }
});
