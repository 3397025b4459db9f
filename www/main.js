// The page: starts the engine worker and renders what it reports. The main thread only
// renders; all computation happens in the worker behind engine-client.js.
//
// UI state is a class on <body>: `loading`, `ready` or `error` (tests wait on these).
// When the engine is ready a performance mark `qp:engine-ready` carries its info as detail.

import { EngineClient } from './engine-client.js';

const STATES = ['loading', 'ready', 'error'];

/** @param {string} name */
const field = (name) => document.querySelector(`[data-field="${name}"]`);

function setState(state) {
  document.body.classList.remove(...STATES);
  document.body.classList.add(state);
}

// A tiny module using SIMD128 (i8x16.splat, i8x16.popcnt): validates only where the
// browser implements the feature the engine is built with.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

function checkBrowser() {
  if (typeof WebAssembly !== 'object') {
    throw new Error('This browser cannot run WebAssembly, which the engine needs.');
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw new Error(
      'This browser does not support WebAssembly SIMD128, which the engine needs ' +
        '(Chrome or Edge 91+, Firefox 89+, Safari 16.4+).',
    );
  }
}

const client = new EngineClient();

function showError(err, context = 'The engine could not start') {
  const message = err instanceof Error ? err.message : String(err);
  field('error-message').textContent = `${context}: ${message}`;
  document.getElementById('error-panel').hidden = false;
  field('status').textContent = 'Engine error';
  field('status-version').textContent = '';
  field('state').textContent = 'Failed';
  setState('error');
}

function hideError() {
  document.getElementById('error-panel').hidden = true;
  field('error-message').textContent = '';
}

/** @param {import('./protocol.js').EngineInfo} info */
function renderInfo(info) {
  field('status').textContent = info.simd128 ? 'Engine loaded (wasm SIMD128)' : 'Engine loaded (wasm)';
  field('status-version').textContent = `v${info.version}`;
  field('state').textContent = 'Ready';
  field('version').textContent = info.version;
  field('simd').textContent = info.simd128 ? 'WebAssembly SIMD128' : 'WebAssembly (no SIMD)';
  field('runs-in').textContent = 'Web Worker';
  field('init').textContent = `${Math.round(info.initMs)} ms`;
  field('isolated').textContent = info.crossOriginIsolated ? 'Yes' : 'No (the server sends no COOP/COEP headers)';
}

const DEFAULT_MODEL = 'models/efficientnet_lite0.onnx';

const formatBytes = (n) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);
const formatShape = (shape) => `[${shape.join(', ')}]`;
const formatCounts = (pairs) => pairs.map(([op, n]) => `${op} ×${n}`).join(', ');

/** Renders the model card from the worker's summary (see Session.summary in api.rs). */
function renderModel(summary) {
  field('model-name').textContent = summary.name;
  field('model-status').textContent = `Loaded in ${Math.round(summary.loadMs)} ms`;
  field('model-size').textContent = `${formatBytes(summary.fileBytes)} · opset ${summary.opset}${summary.producer ? ` · ${summary.producer}` : ''}`;
  field('model-params').textContent = summary.parameters.toLocaleString('en');
  field('model-inputs').textContent = summary.inputs
    .map((i) => `${i.name} ${formatShape(i.shape)}${i.choices.length ? ` (${i.choices.join(', ')})` : ''}`)
    .join('; ');
  field('model-outputs').textContent = summary.outputs.map((o) => `${o.name} ${formatShape(o.shape)}`).join('; ');
  field('model-onnx-ops').textContent = formatCounts(Object.entries(summary.onnxOps));
  field('model-ops').textContent = formatCounts(summary.ops);
  const weights = summary.quantizable.reduce((n, l) => n + l.params, 0);
  field('model-quantizable').textContent = `${summary.quantizable.length} layers with weights (${weights.toLocaleString('en')} parameters)`;
  field('model-float').textContent = summary.floatOps.length ? summary.floatOps.join(', ') : 'nothing';
  document.getElementById('model-panel').setAttribute('aria-busy', 'false');
  document.body.classList.add('model-loaded');
}

async function loadDefaultModel() {
  const name = DEFAULT_MODEL.split('/').pop();
  try {
    const response = await fetch(DEFAULT_MODEL);
    if (!response.ok) throw new Error(`${DEFAULT_MODEL}: HTTP ${response.status}`);
    renderModel(await client.loadModel(await response.arrayBuffer(), name));
  } catch (err) {
    field('model-status').textContent = `Could not load ${name}: ${err instanceof Error ? err.message : err}`;
    showError(err, `The model ${name} could not be loaded`);
  }
}

async function loadEngine() {
  hideError();
  setState('loading');
  field('status').textContent = 'Loading engine…';
  field('state').textContent = 'Loading…';
  try {
    checkBrowser();
    const info = await client.info({ timeoutMs: 30_000 });
    renderInfo(info);
    performance.mark('qp:engine-ready', { detail: info });
    setState('ready');
    await loadDefaultModel();
  } catch (err) {
    showError(err);
  }
}

client.addEventListener('crash', (event) => {
  if (document.body.classList.contains('ready')) showError(event.detail.error, 'The engine stopped');
});
window.addEventListener('error', (event) => showError(event.error ?? event.message, 'Unexpected error'));
window.addEventListener('unhandledrejection', (event) => showError(event.reason, 'Unexpected error'));

document.getElementById('retry-button').addEventListener('click', () => {
  client.restart('restarted by the user');
  loadEngine();
});

loadEngine();
