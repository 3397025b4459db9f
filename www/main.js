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
