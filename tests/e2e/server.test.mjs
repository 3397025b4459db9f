// The static server (scripts/serve.mjs): MIME types, the headers the page needs, the model
// files at /models/, the page's npm modules at /vendor/, and nothing served from outside its
// folders.

import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { REPO_ROOT, startServer } from '../../scripts/serve.mjs';

let server;
before(async () => {
  server = await startServer({ port: 0 });
});
after(() => server?.close());

const get = (path, init) => fetch(new URL(path, server.url), { redirect: 'manual', ...init });

test('serves only on the loopback interface', () => {
  assert.equal(server.server.address().address, '127.0.0.1');
});

test('the page comes with COOP/COEP and a strict CSP that allows wasm', async () => {
  const res = await get('/');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.equal(res.headers.get('cross-origin-opener-policy'), 'same-origin');
  assert.equal(res.headers.get('cross-origin-embedder-policy'), 'require-corp');
  const csp = res.headers.get('content-security-policy');
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'(;|$)/);
  assert.doesNotMatch(csp, /'unsafe-inline'|'unsafe-eval'|\*/);
  assert.match(await res.text(), /<title>Quant Playground<\/title>/);
});

test('JavaScript modules and the wasm have the right MIME types', async () => {
  for (const [path, type] of [
    ['/main.js', 'text/javascript; charset=utf-8'],
    ['/worker.js', 'text/javascript; charset=utf-8'],
    ['/style.css', 'text/css; charset=utf-8'],
    ['/pkg/quant_playground.js', 'text/javascript; charset=utf-8'],
    ['/pkg/quant_playground_bg.wasm', 'application/wasm'],
    ['/pkg/quant_playground_relaxed_bg.wasm', 'application/wasm'],
    ['/engine-build.js', 'text/javascript; charset=utf-8'],
  ]) {
    const res = await get(path, { method: 'HEAD' });
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get('content-type'), type, path);
  }
});

test("the page's npm modules are served from node_modules at /vendor/", async () => {
  const res = await get('/vendor/uplot/uPlot.esm.js');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.match(await res.text(), /export \{ uPlot as default \}/);
  assert.equal((await get('/vendor/uplot/uPlot.min.css', { method: 'HEAD' })).headers.get('content-type'), 'text/css; charset=utf-8');
  // Only the mounted package folder, nothing else of node_modules.
  for (const path of ['/vendor/uplot/../../package.json', '/vendor/uplot/%2e%2e/package.json', '/vendor/playwright-core/package.json']) {
    assert.ok([400, 404].includes((await get(path)).status), path);
  }
});

test('the bundled models and labels are served from /models/', async () => {
  for (const name of ['efficientnet_lite0.onnx', 'blazeface_front_128.onnx', 'ppocr_cls_mobile_v2.onnx']) {
    const res = await get(`/models/${name}`, { method: 'HEAD' });
    assert.equal(res.status, 200, name);
    assert.equal(Number(res.headers.get('content-length')), statSync(`${REPO_ROOT}/models/${name}`).size, name);
  }
  const labels = await (await get('/models/imagenet_classes.txt')).text();
  assert.equal(labels.trim().split('\n').length, 1000);
  assert.equal((await get('/models/images/astronaut.png', { method: 'HEAD' })).headers.get('content-type'), 'image/png');
});

test('revalidation answers 304 for an unchanged file', async () => {
  const first = await get('/main.js');
  const etag = first.headers.get('etag');
  assert.ok(etag);
  const again = await get('/main.js', { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
});

test('nothing outside www/ and models/ is reachable', async () => {
  for (const path of ['/../Cargo.toml', '/%2e%2e/Cargo.toml', '/..%2fCargo.toml', '/models/..%2f..%2fCargo.toml', '/missing.js']) {
    const res = await get(path);
    assert.ok(res.status === 404 || res.status === 400, `${path}: ${res.status}`);
  }
  assert.equal((await get('/', { method: 'POST' })).status, 405);
});
