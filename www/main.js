// The page: wires the controls to the engine worker (engine-client.js) and renders what it
// reports. The main thread only renders; inference, calibration, quantization and training
// run in the worker.
//
// State the user built (the model's bytes and chosen shapes, the preprocessing, the
// calibration frames, the PTQ/QAT settings) lives here, so that when the worker dies a new
// one is given all of it again (restore()).
//
// UI state for tests: `loading`, `ready` or `error` on <body>, plus `model-loaded`,
// `restoring`; `data-state` on the PTQ, QAT and pane elements. Performance marks:
// `qp:engine-ready` (detail: engine info) and `qp:model-loaded` (detail: model name).

import { agreement, classNames, detectTask, interpret } from './decode.js';
import { installDropZone } from './dropzone.js';
import { Insight, loadCharts } from './insight.js';
import { EngineClient } from './engine-client.js';
import { classNamesText, sortIntoFolders, takeInTurn } from './labels.js';
import { CALIBRATION_SIDE, Camera, FrameStore, MAX_FRAMES, decodeImage, fitBitmap, loadSample } from './frames.js';
import { renderModelCard } from './model-card.js';
import { BUNDLED, DEFAULT_MODEL, SAMPLE_IMAGES, bundledByFile, head, isImageKind, sniff } from './models.js';
import { Pane, VARIANTS } from './panes.js';
import * as pre from './preprocess.js';
import { fidelityLine, readLayers, sqnrByNode, worstNodes } from './reports.js';
import { $, download, errorMessage, field, formatBytes, formatDuration, formatShape, h, notice } from './ui.js';

const STATES = ['loading', 'ready', 'error'];

// For watchdog.js: the page's modules loaded and main.js runs.
document.documentElement.dataset.started = 'true';

// A tiny module using SIMD128 (i8x16.splat, i8x16.popcnt): validates only where the
// browser implements the feature the engine is built with.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

const FEATURE_NAMES = { ptq: 'PTQ', qat: 'QAT', runVariant: 'int8 inference', layerErrors: 'layer errors', histogram: 'histograms', exportOnnx: 'ONNX export', sensitivity: 'sensitivity analysis', labels: 'QAT labels' };
const NOT_IN_BUILD = 'not available in this build';

const client = new EngineClient();
const camera = new Camera($('#camera-video'));
const store = new FrameStore();
const panes = Object.fromEntries(VARIANTS.map((v) => [v, new Pane($(`.pane[data-variant="${v}"]`))]));

const state = {
  /** @type {import('./protocol.js').EngineInfo | null} */
  info: null,
  /** What this engine build can do (protocol.js FEATURES). */
  features: {},
  /**
   * The loaded model.
   * @type {null | {name: string, bytes: ArrayBuffer, inputShapes?: Record<string, number[]>, summary: import('./protocol.js').ModelSummary,
   *   bundled: import('./models.js').BundledModel | null, task: ReturnType<typeof detectTask>, names: string[], image: boolean}}
   */
  model: null,
  modelLoading: false,
  /** @type {import('./protocol.js').Preprocess | null} */
  preprocess: null,
  /** 'guess' (the engine's, from the input shape) | 'bundled' | 'edited' */
  preprocessOrigin: 'guess',
  /** layers: reports.js Layer[] (per quantized tensor, SQNR against FP32) */
  ptq: { state: 'idle', config: null, report: null, layers: null, frameIds: [], stale: false },
  /** labels: what the run trained with (null: no labels); labelLosses: [step, cross-entropy] */
  qat: { state: 'idle', config: null, result: null, layers: null, losses: [], saved: null, labels: null, labelLosses: [] },
  /**
   * Labelled images for QAT: what the user picked (labels.js LabelPick) and, for the loaded
   * model, the engine's match (protocol.js LabelMatch) or why there is none (`error`), and the
   * images kept: decoded as calibration frames are, with their class.
   * @type {{pick: import('./labels.js').LabelPick | null, match: import('./protocol.js').LabelMatch | null, error: string | null,
   *   images: {bitmap: ImageBitmap, class: number, folder: string}[], total: number, skipped: string[], busy: boolean}}
   */
  labels: { pick: null, match: null, error: null, images: [], total: 0, skipped: [], busy: false },
  /**
   * The sensitivity analysis: state 'idle' | 'running' | 'done' | 'cancelled' | 'error' |
   * 'unavailable'; ranking: protocol.js Sensitivity; stale: a PTQ was built since.
   */
  sensitivity: { state: 'idle', ranking: null, stale: false },
  /** 'webcam' | 'sample:FILE' | 'frame:ID' */
  source: `sample:${DEFAULT_MODEL.image}`,
  /** @type {Promise<string[]> | null} */
  imagenet: null,
};

// --- errors and notices ------------------------------------------------------------------------

function setState(s) {
  document.body.classList.remove(...STATES);
  document.body.classList.add(s);
}

/** The page-wide error panel. `engineDown`: the engine is unusable until restarted. */
function showError(err, context, { engineDown = false } = {}) {
  field('error-message').textContent = `${context}: ${errorMessage(err)}`;
  $('#error-panel').hidden = false;
  if (engineDown) {
    field('status').textContent = 'Engine error';
    field('status-version').textContent = '';
    field('state').textContent = 'Failed';
    setState('error');
  }
}

function hideError() {
  $('#error-panel').hidden = true;
  field('error-message').textContent = '';
}

let engineNoticeTimer = 0;

/** A notice about the engine, in the toast stack. One about work in progress ("…") stays until
 * replaced; an outcome fades after 20 s or on a click, since a toast covers part of the page. */
function engineNotice(text) {
  const node = $('#engine-notice');
  node.textContent = text ?? '';
  node.hidden = !text;
  clearTimeout(engineNoticeTimer);
  if (text && !text.endsWith('…')) engineNoticeTimer = setTimeout(() => engineNotice(''), 20_000);
}
$('#engine-notice').addEventListener('click', () => engineNotice(''));

function checkBrowser() {
  if (typeof WebAssembly !== 'object') throw new Error('This browser cannot run WebAssembly, which the engine needs.');
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw new Error('This browser does not support WebAssembly SIMD128, which the engine needs (Chrome or Edge 91+, Firefox 89+, Safari 16.4+).');
  }
}

window.addEventListener('error', (event) => {
  // Chromium reports a benign ResizeObserver notice as an error event: not the user's concern.
  if (/ResizeObserver loop/.test(event.message ?? '')) return;
  showError(event.error ?? event.message, 'Unexpected error');
});
window.addEventListener('unhandledrejection', (event) => showError(event.reason, 'Unexpected error'));
$('#dismiss-error').addEventListener('click', hideError);

// --- the engine: start, crash, restore ---------------------------------------------------------

/** @param {import('./protocol.js').EngineInfo} info */
function renderInfo(info) {
  field('status').textContent = info.simd128 ? 'Engine loaded (wasm SIMD128)' : 'Engine loaded (wasm)';
  field('status-version').textContent = `v${info.version}`;
  field('state').textContent = 'Ready';
  field('version').textContent = info.version;
  field('simd').textContent = !info.simd128
    ? 'WebAssembly (no SIMD)'
    : !info.relaxedSimd
      ? 'WebAssembly SIMD128'
      : `WebAssembly SIMD128 + relaxed SIMD (${info.relaxedDot ? 'int8 dot product in use' : 'its int8 dot product is not exact on this CPU, not used'})`;
  field('runs-in').textContent = 'Web Worker';
  field('init').textContent = `${Math.round(info.initMs)} ms`;
  field('isolated').textContent = info.crossOriginIsolated ? 'Yes' : 'No (the server sends no COOP/COEP headers)';
  const f = info.features ?? {};
  const have = Object.keys(FEATURE_NAMES).filter((k) => f[k]);
  const missing = Object.keys(FEATURE_NAMES).filter((k) => !f[k]);
  field('features').textContent =
    `FP32${have.length ? `, ${have.map((k) => FEATURE_NAMES[k]).join(', ')}` : ''}` +
    (missing.length ? `; ${NOT_IN_BUILD}: ${missing.map((k) => FEATURE_NAMES[k]).join(', ')}` : '');
}

let restorePromise = null;
let recentCrashes = [];

/** Resolves once a restore in progress (if any) is over: every engine call waits on this. */
async function ready() {
  while (restorePromise) await restorePromise.catch(() => {});
}

async function startEngine() {
  hideError();
  setState('loading');
  field('status').textContent = 'Loading engine…';
  field('state').textContent = 'Loading…';
  try {
    checkBrowser();
    const info = await client.info({ timeoutMs: 30_000 });
    state.info = info;
    state.features = info.features ?? {};
    renderInfo(info);
    performance.mark('qp:engine-ready', { detail: info });
    setState('ready');
  } catch (err) {
    showError(err, 'The engine could not start', { engineDown: true });
    return false;
  }
  applyFeatures();
  return true;
}

/** Gives a new worker everything the old one had: the model, then the PTQ variant. */
function restore(reason) {
  if (restorePromise) return restorePromise;
  document.body.classList.add('restoring');
  restorePromise = (async () => {
    const done = [];
    try {
      if (!(await startEngine())) return;
      if (!state.model) {
        await loadBundled(DEFAULT_MODEL, { viaRestore: true });
        return;
      }
      const m = state.model;
      setModelStatus(`Loading ${m.name} again in the new engine…`);
      await client.loadModel(m.bytes.slice(0), m.name, m.inputShapes);
      setModelStatus(`Loaded ${m.name} again after the engine restart`);
      done.push('the model');
      const hadQat = state.qat.state === 'done' || state.qat.state === 'running';
      // Rebuilding PTQ resets QAT: what the page kept of it is taken first.
      const keptQat = state.qat.state === 'done' && state.qat.saved ? { ...state.qat } : null;
      if (state.ptq.state === 'done' || state.ptq.state === 'running') {
        const frames = state.ptq.frameIds.map((id) => store.get(id)).filter(Boolean);
        if (frames.length && state.ptq.config) {
          setPtqState('running');
          const built = await buildPtq(frames, state.ptq.config, { job: { cancelled: false } });
          // The same frames and settings: a ranking made on them still holds.
          const { stale } = state.sensitivity;
          finishPtq(built, state.ptq.config, frames);
          state.sensitivity.stale = stale;
          renderSensitivity();
          done.push(`PTQ (rebuilt from ${frames.length} calibration frames)`);
        } else {
          resetPtq('The engine restarted: quantize again.');
        }
      }
      if (hadQat) {
        const report = keptQat && state.ptq.state === 'done' ? await client.restoreVariant('qat', keptQat.saved).catch(() => null) : null;
        if (report) {
          state.qat = { ...keptQat, result: { ...keptQat.result, report } };
          panes.qat.resetMetrics();
          setQatState('done');
          notice(field('qat-notice'), 'The QAT model was given back to the restarted engine.', 'ok');
          renderInsight();
          done.push('the QAT model');
        } else {
          resetQat(keptQat
            ? 'The engine restarted, and the QAT model could not be given back to it: train again.'
            : 'The engine restarted during training, and the run was lost with it: train again.');
          done.push('not QAT (train again)');
        }
      }
      engineNotice(`The engine stopped (${reason}) and was restarted. Re-sent: ${done.join(', ') || 'nothing'}; your settings and ${store.size} calibration frames are kept.`);
    } catch (err) {
      showError(err, 'The engine could not be restarted with your model', { engineDown: true });
    } finally {
      restorePromise = null;
      document.body.classList.remove('restoring');
      kick();
    }
  })();
  return restorePromise;
}

client.addEventListener('crash', (event) => {
  const error = event.detail.error;
  if (!document.body.classList.contains('ready') && !document.body.classList.contains('restoring')) return;
  const now = Date.now();
  recentCrashes = recentCrashes.filter((t) => now - t < 30_000);
  recentCrashes.push(now);
  if (recentCrashes.length > 3) {
    showError(error, 'The engine keeps stopping; it was not restarted again', { engineDown: true });
    return;
  }
  engineNotice(`The engine stopped (${error.message}); restarting it with your model, settings and frames…`);
  // Restart after the failed requests have settled, so they see the crash and not the restore.
  setTimeout(() => restore(error.message), 0);
});

$('#retry-button').addEventListener('click', () => {
  client.restart('restarted by the user');
  recentCrashes = [];
  hideError();
  restore('restarted by the user');
});

// --- model: loading and the card ---------------------------------------------------------------

function setModelStatus(text, kind = 'info') {
  notice(field('model-status'), text, kind);
}

function renderBundledButtons() {
  const box = $('#bundled-models');
  box.replaceChildren(
    ...BUNDLED.map((m) =>
      h(
        'button',
        { type: 'button', 'aria-pressed': 'false', dataset: { model: m.id }, onclick: () => loadBundled(m) },
        h('span', {}, m.title),
        h('span', { class: 'sub' }, m.task),
      ),
    ),
  );
}

function markBundled(bundled) {
  for (const b of $('#bundled-models').children) b.setAttribute('aria-pressed', String(b.dataset.model === bundled?.id));
}

function setModelBusy(busy) {
  state.modelLoading = busy;
  $('#model-panel').setAttribute('aria-busy', String(busy));
  for (const b of $('#bundled-models').children) b.disabled = busy;
  $('#model-file').disabled = busy;
}

async function loadBundled(bundled, { viaRestore = false } = {}) {
  const url = `models/${bundled.file}`;
  setModelStatus(`Downloading ${bundled.file}…`);
  let bytes;
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    bytes = await response.arrayBuffer();
  } catch (err) {
    setModelStatus(`Could not fetch ${bundled.file}: ${errorMessage(err)}`, 'error');
    return;
  }
  await loadModel(bytes, bundled.file, { inputShapes: bundled.inputShapes, bundled, viaRestore });
}

/**
 * Loads ONNX bytes into the engine. On failure the previous model stays loaded and usable.
 * @param {ArrayBuffer} bytes  (transferred to the worker; a copy is kept for restarts)
 */
async function loadModel(bytes, name, { inputShapes, bundled = bundledByFile(name), viaRestore = false } = {}) {
  if (!viaRestore) await ready();
  hideLoadError();
  const kind = sniff(new Uint8Array(bytes, 0, Math.min(16, bytes.byteLength)));
  if (isImageKind(kind)) {
    showLoadError(name, new Error(`this is a ${kind.toUpperCase()} image, not an ONNX model. To calibrate with images, add them under Calibration data.`));
    return;
  }
  const keep = bytes.slice(0);
  // Calibration and training belong to the model being replaced: stop them first.
  if (ptqJob) ptqJob.cancelled = true;
  qatRun?.cancel();
  setModelBusy(true);
  setModelStatus(`Loading ${name}…`);
  try {
    const summary = await client.loadModel(bytes, name, inputShapes);
    await modelLoaded({ name, bytes: keep, inputShapes, summary, bundled });
  } catch (err) {
    pendingPreprocess = null;
    showLoadError(name, err, { bytes: keep });
  } finally {
    setModelBusy(false);
  }
}

async function modelLoaded({ name, bytes, inputShapes, summary, bundled }) {
  const task = detectTask(summary);
  let names = [];
  if (task.kind === 'classification' || task.kind === 'yolo') {
    const imagenet = await imagenetLabels().catch(() => null);
    names = classNames(task.classes, { imagenet, labels: bundled?.labels });
  }
  const input = summary.inputs[0];
  const image = summary.inputs.length === 1 && !!pre.imageLayout(input?.shape);
  const sameModel = state.model?.name === name; // the same file again, with other input shapes
  state.model = { name, bytes, inputShapes, summary, bundled, task, names, image };
  // The input: the webcam when it runs, else a new bundled model's own sample, else as it was.
  if (camera.on) state.source = 'webcam';
  else if (bundled && !sameModel) state.source = `sample:${bundled.image}`;
  else if (state.source === 'webcam') state.source = `sample:${DEFAULT_MODEL.image}`;
  resetPtq('');
  resetQat('');
  resetPreprocess();
  // Folder names are matched to this model's classes now (without waiting: the page is usable).
  if (state.labels.pick) matchLabels();
  // Edits made before a reload for a new input size stay, when they fit the new shape.
  if (pendingPreprocess && state.preprocess && !pre.mismatch(pendingPreprocess, summary.inputs[0].shape)) {
    state.preprocess = pendingPreprocess;
    state.preprocessOrigin = 'edited';
    renderPreprocess();
  }
  pendingPreprocess = null;
  renderModelCard(summary, task, names);
  renderLayerList();
  markBundled(bundled);
  for (const p of Object.values(panes)) p.resetMetrics();
  panes.fp32.setSize(summary.parameters * 4);
  renderSourceOptions();
  setModelStatus(`Loaded in ${Math.round(summary.loadMs)} ms`, 'ok');
  document.body.classList.add('model-loaded');
  performance.mark('qp:model-loaded', { detail: name });
  updatePanes();
  updateDownloads();
  kick();
}

function imagenetLabels() {
  state.imagenet ??= fetch('models/imagenet_classes.txt')
    .then((r) => {
      if (!r.ok) throw new Error(`imagenet_classes.txt: HTTP ${r.status}`);
      return r.text();
    })
    .then((text) => text.split('\n').map((l) => l.trim()).filter(Boolean));
  return state.imagenet;
}

$('#dims-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!state.model) return;
  const shapes = {};
  for (const input of state.model.summary.inputs) shapes[input.name] = [...input.shape];
  for (const el of field('dims').querySelectorAll('input')) {
    const v = Number(el.value);
    if (!Number.isInteger(v) || v < 1) {
      setModelStatus(`Dimension ${el.dataset.axis} of ${el.dataset.input} must be a whole number above 0`, 'error');
      el.focus();
      return;
    }
    shapes[el.dataset.input][Number(el.dataset.axis)] = v;
  }
  reloadWithShapes(shapes);
});

/** Loads the current model again with other input shapes (dynamic dims). */
function reloadWithShapes(shapes) {
  const m = state.model;
  const dynamic = Object.fromEntries(
    Object.entries(shapes).filter(([name]) => m.summary.inputs.find((i) => i.name === name)?.declared.some((d) => typeof d === 'string')),
  );
  loadModel(m.bytes.slice(0), m.name, { inputShapes: dynamic, bundled: m.bundled });
}

let pendingShapeModel = null;
/** Preprocessing edits to re-apply once the model re-loaded for a new input size. */
let pendingPreprocess = null;

/** A model that did not load: the engine's message, unsupported operators listed one per line. */
function showLoadError(name, err, { bytes } = {}) {
  const message = errorMessage(err);
  const previous = state.model ? ` Still using ${state.model.name}.` : '';
  setModelStatus(`${name} could not be loaded.${previous}`, 'error');
  field('load-error-title').textContent = `${name}: ${message}`;
  const unsupported = /^unsupported operators?: (.+)$/s.exec(message);
  field('unsupported').replaceChildren(
    ...(unsupported ? unsupported[1].split('; ').map((op) => h('li', {}, op)) : []),
  );
  if (unsupported) {
    const n = unsupported[1].split('; ').length;
    field('load-error-title').textContent = `${name} uses ${n === 1 ? 'an operator' : `${n} operators`} the engine does not support yet:`;
  }
  // An input whose shape the engine cannot guess: ask for it.
  const shapeNeeded = /^input '(.+?)': .*choose the input shape/.exec(message);
  const form = $('#shape-request');
  form.hidden = !(shapeNeeded && bytes);
  if (shapeNeeded && bytes) {
    pendingShapeModel = { name, bytes, input: shapeNeeded[1] };
    field('shape-request-input').textContent = shapeNeeded[1];
  }
  $('#load-error').hidden = false;
}

function hideLoadError() {
  $('#load-error').hidden = true;
  $('#shape-request').hidden = true;
}
$('#load-error-close').addEventListener('click', hideLoadError);

$('#shape-request').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = event.target.elements.shape.value;
  const dims = text.split(/[\s,x×]+/).filter(Boolean).map(Number);
  if (!dims.length || !dims.every((d) => Number.isInteger(d) && d > 0)) {
    setModelStatus(`"${text}" is not a shape: give whole numbers separated by commas, e.g. 1, 3, 224, 224`, 'error');
    return;
  }
  const { name, bytes, input } = pendingShapeModel;
  loadModel(bytes.slice(0), name, { inputShapes: { [input]: dims } });
});

$('#model-file').addEventListener('change', async (event) => {
  const [file] = event.target.files;
  event.target.value = '';
  if (file) await loadModel(await file.arrayBuffer(), file.name);
});

// --- preprocessing -------------------------------------------------------------------------------

const ppForm = $('#preprocess-form');

/** The preprocessing the model starts with: the bundled model's preset, else the engine's guess. */
function defaultPreprocess() {
  const m = state.model;
  const layout = pre.imageLayout(m.summary.inputs[0]?.shape);
  if (!m.image || !layout) return { preprocess: null, origin: 'none' };
  if (m.bundled) return { preprocess: pre.preset(m.bundled.preset, layout.width, layout.height, layout.layout), origin: 'bundled' };
  const guess = m.summary.preprocess ?? pre.preset('imagenet', layout.width, layout.height, layout.layout);
  return { preprocess: guess, origin: 'guess' };
}

function resetPreprocess() {
  const { preprocess, origin } = defaultPreprocess();
  state.preprocess = preprocess;
  state.preprocessOrigin = origin;
  renderPreprocess();
}

const ORIGINS = {
  guess: 'guessed from the input shape',
  bundled: "the bundled model's preset",
  edited: 'edited',
  none: 'not an image model',
};

function renderPreprocess() {
  const p = state.preprocess;
  const els = ppForm.elements;
  const disabled = !p;
  for (const el of els) el.disabled = disabled;
  field('preprocess-origin').textContent = ORIGINS[state.preprocessOrigin];
  if (!p) {
    const m = state.model;
    notice(
      field('preprocess-notice'),
      m ? `The page runs models with one image input; ${m.name} takes ${m.summary.inputs.map((i) => `${i.name} ${formatShape(i.shape)}`).join(', ')}.` : '',
      'warn',
    );
    return;
  }
  els.preset.value = pre.presetName(p) ?? 'custom';
  els.width.value = p.width;
  els.height.value = p.height;
  // The size follows the input shape: editable where the model leaves it dynamic.
  const input = state.model.summary.inputs[0];
  const spatial = p.layout === 'nchw' ? [2, 3] : [1, 2];
  const dynamic = spatial.map((a) => typeof input.declared[a] === 'string');
  els.width.disabled = !dynamic[1];
  els.height.disabled = !dynamic[0];
  els.width.title = els.height.title = dynamic.some(Boolean) ? 'Changing the size loads the model again with that input shape' : 'Fixed by the model';
  els.layout.value = p.layout;
  els.bgr.value = String(p.bgr);
  p.mean.forEach((v, i) => (els[`mean${i}`].value = round(v)));
  p.std.forEach((v, i) => (els[`std${i}`].value = round(v)));
  els.fit.value = p.fit.kind;
  const param = p.fit.kind === 'centerCrop' ? p.fit.crop : p.fit.kind === 'stretch' ? '' : p.fit.pad;
  els.fitParam.value = param;
  els.fitParam.disabled = p.fit.kind === 'stretch';
  field('fit-param-label').firstChild.textContent = { stretch: 'Crop / pad ', centerCrop: 'Crop fraction ', letterbox: 'Pad value ', padRight: 'Pad value ' }[p.fit.kind];
  checkPreprocess();
}

const round = (v) => String(Math.round(v * 1e4) / 1e4);

/** Shows why the preprocessing cannot feed the model, if it cannot; returns that reason. */
function checkPreprocess() {
  const p = state.preprocess;
  if (!p || !state.model) return 'no preprocessing';
  const problem = pre.invalid(p) ?? pre.mismatch(p, state.model.summary.inputs[0].shape);
  const staleNote = state.ptq.state === 'done' && state.ptq.stale ? ' It changed since calibration: quantize again for PTQ to match.' : '';
  if (problem) notice(field('preprocess-notice'), `Cannot run: ${problem}.`, 'error');
  else notice(field('preprocess-notice'), `Input tensor ${formatShape(pre.shapeOf(p))}.${staleNote}`, staleNote ? 'warn' : 'info');
  return problem;
}

function readPreprocessForm() {
  const els = ppForm.elements;
  const num = (name) => Number(els[name].value);
  const kind = els.fit.value;
  const param = num('fitParam');
  const fit =
    kind === 'centerCrop' ? { kind, crop: els.fitParam.value === '' ? 0.875 : param }
      : kind === 'letterbox' || kind === 'padRight' ? { kind, pad: els.fitParam.value === '' ? 0 : param }
        : { kind: 'stretch' };
  return {
    width: num('width'),
    height: num('height'),
    layout: els.layout.value,
    bgr: els.bgr.value === 'true',
    mean: [num('mean0'), num('mean1'), num('mean2')],
    std: [num('std0'), num('std1'), num('std2')],
    fit,
  };
}

function preprocessChanged(next) {
  state.preprocess = next;
  state.preprocessOrigin = 'edited';
  if (state.ptq.state === 'done') state.ptq.stale = true;
  renderPreprocess();
  kick();
}

ppForm.addEventListener('submit', (event) => event.preventDefault());
ppForm.addEventListener('change', (event) => {
  if (!state.preprocess) return;
  const name = event.target.name;
  if (name === 'preset') {
    if (event.target.value === 'custom') return;
    const p = state.preprocess;
    preprocessChanged(pre.preset(event.target.value, p.width, p.height, p.layout));
    return;
  }
  const next = readPreprocessForm();
  if (name === 'width' || name === 'height') {
    if (pre.invalid(next)) {
      notice(field('preprocess-notice'), pre.invalid(next), 'error');
      return;
    }
    // A new input size means a new input shape: load the model again with it.
    const input = state.model.summary.inputs[0];
    const shape = [...input.shape];
    if (next.layout === 'nchw') [shape[2], shape[3]] = [next.height, next.width];
    else [shape[1], shape[2]] = [next.height, next.width];
    pendingPreprocess = { ...next };
    reloadWithShapes({ [input.name]: shape });
    return;
  }
  if (name === 'fit') {
    next.fit = { stretch: { kind: 'stretch' }, centerCrop: { kind: 'centerCrop', crop: 0.875 }, letterbox: { kind: 'letterbox', pad: 114 }, padRight: { kind: 'padRight', pad: 127.5 } }[next.fit.kind];
  }
  preprocessChanged(next);
});


$('#preprocess-reset').addEventListener('click', () => {
  resetPreprocess();
  if (state.ptq.state === 'done') state.ptq.stale = true;
  kick();
});

// --- frames: webcam, images, samples; the calibration strip --------------------------------------

const stripItems = new Map();

function renderStrip() {
  const strip = $('#strip');
  const ids = new Set(store.frames.map((f) => f.id));
  for (const [id, li] of stripItems) {
    if (!ids.has(id)) {
      li.remove();
      stripItems.delete(id);
    }
  }
  for (const frame of store.frames) {
    if (stripItems.has(frame.id)) continue;
    const canvas = h('canvas', { width: 96, height: 72 });
    const ctx = canvas.getContext('2d');
    const s = Math.max(96 / frame.bitmap.width, 72 / frame.bitmap.height);
    ctx.drawImage(frame.bitmap, (96 - frame.bitmap.width * s) / 2, (72 - frame.bitmap.height * s) / 2, frame.bitmap.width * s, frame.bitmap.height * s);
    const button = h(
      'button',
      {
        type: 'button',
        'aria-label': `${frame.label}: show in the panes (Delete removes it)`,
        title: frame.label,
        onclick: () => chooseSource(`frame:${frame.id}`),
        onkeydown: (event) => {
          if (event.key !== 'Delete' && event.key !== 'Backspace') return;
          event.preventDefault();
          const li = stripItems.get(frame.id);
          const next = li?.nextElementSibling ?? li?.previousElementSibling;
          store.remove(frame.id);
          next?.querySelector('button')?.focus();
        },
      },
      canvas,
      h('span', { class: 'tag' }, frame.source),
    );
    const li = h('li', { dataset: { frame: String(frame.id) } }, button);
    stripItems.set(frame.id, li);
    strip.append(li);
  }
  for (const [id, li] of stripItems) li.querySelector('button').setAttribute('aria-current', String(state.source === `frame:${id}`));
  const n = store.size;
  field('frame-count').textContent = `${n} frame${n === 1 ? '' : 's'}`;
  field('strip-empty').hidden = n > 0;
  $('#frames-clear').disabled = n === 0 || !!framesJob;
  updatePtqButton();
}

let stripSize = 0;
store.addEventListener('change', () => {
  renderStrip();
  if (state.source.startsWith('frame:') && !store.get(Number(state.source.slice(6)))) chooseSource(`sample:${state.model?.bundled?.image ?? DEFAULT_MODEL.image}`);
  // New frames come in at the end: keep them in view.
  if (store.size > stripSize) $('#strip').scrollLeft = $('#strip').scrollWidth;
  stripSize = store.size;
});

/** The one frame-adding job at a time (capture, files, samples): progress and cancel. */
let framesJob = null;

async function framesTask(label, total, work) {
  if (framesJob) {
    notice(field('frames-notice'), 'Wait for the current job to finish, or cancel it.', 'warn');
    return;
  }
  const job = { cancelled: false };
  framesJob = job;
  const bar = $('#frames-progress');
  bar.max = Math.max(1, total);
  bar.value = 0;
  bar.classList.add('active');
  $('#frames-cancel').disabled = false;
  $('#frames-clear').disabled = true;
  notice(field('frames-notice'), `${label}…`);
  let added = 0;
  const problems = [];
  try {
    await work({
      job,
      step: (n = 1) => {
        bar.value += n;
      },
      added: () => added++,
      problem: (text) => problems.push(text),
    });
    const stopped = job.cancelled ? ' (cancelled)' : '';
    const more = store.size >= MAX_FRAMES ? ` The set is full (${MAX_FRAMES} frames; the oldest are dropped).` : '';
    const skipped = problems.length ? ` Skipped ${problems.length}: ${problems.slice(0, 3).join('; ')}${problems.length > 3 ? '; …' : ''}.` : '';
    notice(field('frames-notice'), `${label}: added ${added} frame${added === 1 ? '' : 's'}${stopped}.${more}${skipped}`, problems.length ? 'warn' : 'ok');
  } catch (err) {
    notice(field('frames-notice'), `${label} failed: ${errorMessage(err)}`, 'error');
  } finally {
    framesJob = null;
    bar.classList.remove('active');
    $('#frames-cancel').disabled = true;
    renderStrip();
  }
}

$('#frames-cancel').addEventListener('click', () => {
  if (framesJob) framesJob.cancelled = true;
});
$('#frames-clear').addEventListener('click', () => {
  store.clear();
  notice(field('frames-notice'), 'All calibration frames removed.');
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

$('#capture-button').addEventListener('click', () => {
  const n = Math.max(1, Math.min(MAX_FRAMES, Math.round(Number($('#capture-count').value) || 16)));
  framesTask(`Capturing ${n} webcam frames`, n, async ({ job, step, added }) => {
    for (let i = 0; i < n && !job.cancelled; i++) {
      const bitmap = await camera.grab(CALIBRATION_SIDE);
      if (!bitmap) throw new Error(`the webcam stopped (${camera.reason || 'off'})`);
      store.add(bitmap, `webcam frame ${i + 1}`, 'webcam');
      added();
      step();
      if (i + 1 < n) await sleep(120); // frames apart, so that movement shows
    }
  });
});

let sampling = null;

function stopSampling() {
  if (!sampling) return;
  clearInterval(sampling.timer);
  notice(field('frames-notice'), `Stopped sampling: ${sampling.count} webcam frames added.`, 'ok');
  sampling = null;
  $('#sample-button').setAttribute('aria-pressed', 'false');
  $('#sample-button').textContent = 'Keep sampling';
}

$('#sample-button').addEventListener('click', () => {
  if (sampling) return stopSampling();
  sampling = { count: 0, timer: 0 };
  $('#sample-button').setAttribute('aria-pressed', 'true');
  $('#sample-button').textContent = 'Stop sampling';
  const s = sampling;
  s.timer = setInterval(async () => {
    if (sampling !== s) return;
    if (store.size >= MAX_FRAMES) return stopSampling();
    const bitmap = await camera.grab(CALIBRATION_SIDE);
    if (!bitmap || sampling !== s) return bitmap?.close();
    s.count += 1;
    store.add(bitmap, `webcam sample ${s.count}`, 'webcam');
    notice(field('frames-notice'), `Sampling the webcam: ${s.count} frames added. Move around, then stop.`);
  }, 500);
});

/** Adds image files (others are skipped, named). */
function addImageFiles(files, label) {
  const list = [...files];
  if (!list.length) return;
  return framesTask(label, list.length, async ({ job, step, added, problem }) => {
    for (const file of list) {
      if (job.cancelled) break;
      const kind = sniff(await head(file));
      if (!isImageKind(kind)) {
        problem(`${file.name} is not an image`);
      } else {
        try {
          store.add(await decodeImage(file, file.name, CALIBRATION_SIDE), file.name, 'image');
          added();
        } catch (err) {
          problem(errorMessage(err));
        }
      }
      step();
    }
  });
}

$('#image-files').addEventListener('change', (event) => {
  const files = [...event.target.files];
  event.target.value = '';
  addImageFiles(files, `Adding ${files.length} image${files.length === 1 ? '' : 's'}`);
});
$('#image-folder').addEventListener('change', (event) => {
  const files = [...event.target.files].filter((f) => !f.name.startsWith('.'));
  event.target.value = '';
  addImageFiles(files, `Adding the folder's ${files.length} files`);
});

$('#samples-button').addEventListener('click', () =>
  framesTask(`Adding ${SAMPLE_IMAGES.length} sample images`, SAMPLE_IMAGES.length, async ({ job, step, added, problem }) => {
    for (const [file, what] of SAMPLE_IMAGES) {
      if (job.cancelled) break;
      try {
        const shared = await sampleBitmap(file, { shared: true });
        store.add(await fitBitmap(shared, shared.width, shared.height, CALIBRATION_SIDE, { keep: true }), `${what} (${file})`, 'sample');
        added();
      } catch (err) {
        problem(errorMessage(err));
      }
      step();
    }
  }),
);

/** Sample images decoded once; the store gets its own copy (it closes what it drops). */
const sampleCache = new Map();
async function sampleBitmap(file, { shared = false } = {}) {
  if (!sampleCache.has(file)) sampleCache.set(file, loadSample(file));
  const promise = sampleCache.get(file);
  promise.catch(() => sampleCache.delete(file));
  const bitmap = await promise;
  return shared ? bitmap : createImageBitmap(bitmap);
}

// --- the webcam --------------------------------------------------------------------------------

function renderCamera() {
  const on = camera.on;
  const button = $('#camera-button');
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? 'Stop the webcam' : camera.state === 'starting' ? 'Starting the webcam…' : 'Use my webcam';
  button.disabled = camera.state === 'starting';
  $('#capture-button').disabled = !on;
  $('#sample-button').disabled = !on;
  field('camera-preview').classList.toggle('on', on);
  if (!on) stopSampling();
  if (camera.state === 'unavailable') field('webcam-hint').textContent = `Unavailable: ${camera.reason}.`;
  else field('webcam-hint').textContent = on ? 'Capture a burst while you move, or keep sampling.' : 'Start the webcam (above) to capture frames while you move.';
  renderCameraNotice();
  renderSourceOptions();
}

function renderCameraNotice() {
  if (camera.state === 'unavailable') {
    notice(field('camera-notice'), `No webcam: ${camera.reason}. Everything works on images: choose one as the input, and calibrate with your images or the samples.`, 'warn');
  } else if (camera.on) {
    notice(field('camera-notice'), state.source === 'webcam' ? 'Live: the webcam runs through the models.' : 'The webcam is on: choose "Webcam (live)" as the input to see it here.');
  } else {
    notice(field('camera-notice'), '');
  }
}

camera.addEventListener('change', () => {
  if (camera.on) state.source = 'webcam';
  else if (state.source === 'webcam') state.source = `sample:${state.model?.bundled?.image ?? DEFAULT_MODEL.image}`;
  renderCamera();
  kick();
});

$('#camera-button').addEventListener('click', () => (camera.on ? camera.stop() : camera.start()));

// Start the camera without asking when the user already allowed it for this page.
navigator.permissions
  ?.query({ name: 'camera' })
  .then((status) => {
    if (status.state === 'granted') camera.start();
  })
  .catch(() => {});

// --- the comparison: source, loop, rendering -----------------------------------------------------

function renderSourceOptions() {
  const select = $('#compare-source');
  const options = [h('option', { value: 'webcam' }, camera.on ? 'Webcam (live)' : camera.state === 'unavailable' ? 'Webcam (unavailable)' : 'Webcam (start it)')];
  const samples = h('optgroup', { label: 'Sample images' }, SAMPLE_IMAGES.map(([file, what]) => h('option', { value: `sample:${file}` }, what)));
  options.push(samples);
  if (state.source.startsWith('frame:')) {
    const frame = store.get(Number(state.source.slice(6)));
    if (frame) options.push(h('optgroup', { label: 'Calibration frame' }, h('option', { value: state.source }, frame.label)));
  }
  select.replaceChildren(...options);
  select.value = state.source;
  for (const [id, li] of stripItems) li.querySelector('button').setAttribute('aria-current', String(state.source === `frame:${id}`));
}

function chooseSource(source) {
  if (source === 'webcam') {
    if (!camera.on) camera.start();
    state.source = camera.on ? 'webcam' : state.source;
  } else {
    state.source = source;
  }
  renderSourceOptions();
  renderCameraNotice();
  for (const p of Object.values(panes)) p.resetMetrics();
  panes.fp32.setSize(state.model ? state.model.summary.parameters * 4 : NaN);
  updatePanes();
  kick();
}

$('#compare-source').addEventListener('change', (event) => chooseSource(event.target.value));

const loop = { busy: false, dirty: true, paused: false, raf: 0, lastStart: 0, offscreen: false };

// Live frames slow down while the panes are scrolled out of view: the engine's time goes to
// what the user is doing (calibration, training), and the numbers still move.
new IntersectionObserver(([entry]) => {
  loop.offscreen = !entry.isIntersecting;
  if (!loop.offscreen) kick();
}).observe($('.panes'));

function kick() {
  loop.dirty = true;
  schedule();
}

function schedule() {
  if (loop.raf || loop.paused) return;
  loop.raf = requestAnimationFrame(() => {
    loop.raf = 0;
    tick();
  });
}

$('#pause-button').addEventListener('click', (event) => {
  loop.paused = !loop.paused;
  event.currentTarget.setAttribute('aria-pressed', String(loop.paused));
  event.currentTarget.textContent = loop.paused ? 'Resume' : 'Pause';
  if (!loop.paused) kick();
});

/** What the panes run on now: {live, bitmap} or null. */
async function currentFrame() {
  if (state.source === 'webcam') return camera.on ? { live: true, bitmap: await camera.grab() } : null;
  if (state.source.startsWith('frame:')) {
    const frame = store.get(Number(state.source.slice(6)));
    return frame ? { live: false, bitmap: frame.bitmap } : null;
  }
  return { live: false, bitmap: await sampleBitmap(state.source.slice(7), { shared: true }) };
}

/** The variants that have something to run. */
function variantsToRun() {
  const v = ['fp32'];
  if (state.features.runVariant && state.ptq.state === 'done') v.push('ptq');
  if (state.features.runVariant && state.qat.state === 'done') v.push('qat');
  return v;
}

async function tick() {
  if (loop.busy || loop.paused || !state.model || state.modelLoading || restorePromise) return;
  const live = state.source === 'webcam' && camera.on;
  if (!live && !loop.dirty) return;
  if (!state.model.image) {
    panes.fp32.setState('empty', 'This model does not take one image: nothing to show here.');
    loop.dirty = false;
    return;
  }
  const problem = checkPreprocess();
  if (problem) {
    panes.fp32.setState('error', `Fix the preprocessing: ${problem}`);
    loop.dirty = false;
    return;
  }
  // While the engine calibrates or trains, or nobody sees the panes, the live view slows down.
  const slow = state.ptq.state === 'running' || state.qat.state === 'running' || loop.offscreen;
  if (live && slow && performance.now() - loop.lastStart < 1000) {
    setTimeout(schedule, 250);
    return;
  }
  loop.busy = true;
  loop.dirty = false;
  loop.lastStart = performance.now();
  let frame = null;
  let failed = false;
  try {
    const source = state.source;
    frame = await currentFrame();
    if (state.source !== source) {
      loop.dirty = true;
      return;
    }
    if (!frame?.bitmap) return;
    const { model, preprocess } = state;
    const sent = await createImageBitmap(frame.bitmap);
    const result = await client.run({ bitmap: sent }, preprocess, variantsToRun());
    if (state.model !== model || state.preprocess !== preprocess || state.source !== source) {
      loop.dirty = true; // superseded while running: run again with the new settings
      return;
    }
    renderResults(result, frame.bitmap, preprocess);
    notice(field('compare-notice'), '');
  } catch (err) {
    failed = true;
    if (err.kind === 'crash' || err.kind === 'timeout') {
      notice(field('compare-notice'), 'The engine stopped; it is being restarted…', 'warn');
    } else {
      panes.fp32.setState('error', errorMessage(err));
      notice(field('compare-notice'), `Could not run the model: ${errorMessage(err)}`, 'error');
    }
  } finally {
    if (frame?.live) frame.bitmap?.close();
    loop.busy = false;
    // A live source that fails tries again a second later, not on every animation frame.
    if (live && failed) setTimeout(schedule, 1000);
    else if (live || loop.dirty) schedule();
  }
}

function renderResults(result, bitmap, preprocess) {
  const m = state.model;
  const context = { names: m.names, inputWidth: preprocess.width, inputHeight: preprocess.height };
  const detectionLabel = m.task.kind === 'blazeface' ? 'face' : 'detection';
  const byVariant = Object.fromEntries(result.results.map((r) => [r.variant, r]));
  const fp = byVariant.fp32;
  let reference = null;
  if (fp?.outputs) {
    reference = interpret(m.task, fp.outputs, context);
    panes.fp32.render(bitmap, reference, { ms: fp.ms, preprocess, detectionLabel });
  } else if (fp?.error) {
    panes.fp32.setState('error', fp.error.message);
  }
  for (const variant of ['ptq', 'qat']) {
    const r = byVariant[variant];
    if (!r) continue;
    if (r.error) {
      panes[variant].setState(r.error.name === 'NotAvailableError' ? 'unavailable' : 'error', r.error.message);
      continue;
    }
    const read = interpret(m.task, r.outputs, context);
    const agree = reference ? agreement(reference, read, fp.outputs, r.outputs) : undefined;
    panes[variant].render(bitmap, read, { ms: r.ms, preprocess, agreement: agree, detectionLabel });
  }
}

/** The PTQ and QAT panes' messages, from what exists. */
function updatePanes() {
  const f = state.features;
  const ptq = panes.ptq;
  const qat = panes.qat;
  if (!state.model) return;
  if (!f.ptq || !f.runVariant) {
    ptq.setState('unavailable', `PTQ: ${NOT_IN_BUILD} of the engine.`);
  } else if (state.ptq.state === 'running') {
    ptq.setState('empty', 'Calibrating…');
  } else if (state.ptq.state !== 'done') {
    ptq.setState('empty', 'Add calibration frames (4), then calibrate and quantize (5) to see the int8 model here.');
  } else {
    ptq.setSize(state.ptq.report.weightBytes, sizeRatio(state.ptq.report.weightBytes));
  }
  if (!f.qat || !f.runVariant) {
    qat.setState('unavailable', `QAT: ${NOT_IN_BUILD} of the engine.`);
  } else if (state.qat.state === 'running') {
    qat.setState('empty', 'Training…');
  } else if (state.qat.state !== 'done') {
    qat.setState('empty', state.ptq.state === 'done' ? 'Train (6) to see the fine-tuned int8 model here.' : 'QAT starts from PTQ: quantize first (5), then train (6).');
  } else {
    const bytes = state.qat.result?.report?.weightBytes ?? state.ptq.report?.weightBytes;
    qat.setSize(bytes, sizeRatio(bytes));
  }
}

function sizeRatio(bytes) {
  const fp32 = state.model ? state.model.summary.parameters * 4 : NaN;
  return Number.isFinite(bytes) && bytes > 0 && Number.isFinite(fp32) ? ` (÷${(fp32 / bytes).toFixed(1)})` : '';
}

// --- PTQ ------------------------------------------------------------------------------------------

const ptqForm = $('#ptq-form');
let ptqJob = null;

function readPtqConfig() {
  const els = ptqForm.elements;
  const method = els.method.value;
  const calibration = { method };
  if (method === 'percentile') calibration.percentile = Number(els.percentile.value) || 99.99;
  return {
    weightBits: Number(els.weightBits.value),
    perChannel: els.granularity.value === 'channel',
    calibration,
    keepFloat: [...$('#layer-list').querySelectorAll('input:checked')].map((el) => el.value),
    biasCorrection: els.biasCorrection.checked,
    equalize: els.equalize.checked,
    requantization: els.requantization.value,
  };
}

ptqForm.elements.method.addEventListener('change', (event) => {
  ptqForm.elements.percentile.disabled = event.target.value !== 'percentile' || !state.features.ptq;
});

function setPtqState(s) {
  state.ptq.state = s;
  $('#ptq-panel').dataset.state = s;
  const running = s === 'running';
  $('#ptq-cancel').disabled = !running;
  $('#ptq-progress').classList.toggle('active', running);
  field('ptq-badge').textContent = { idle: 'not run', running: 'running', done: 'done', error: 'failed', unavailable: NOT_IN_BUILD, cancelled: 'cancelled' }[s] ?? s;
  updatePtqButton();
  updateQatButton();
  updateSensitivityButtons();
  updatePanes();
  updateDownloads();
}

function updatePtqButton() {
  const button = $('#ptq-run');
  button.disabled =
    !state.features.ptq || !state.model?.image || state.ptq.state === 'running' || state.qat.state === 'running' || state.sensitivity.state === 'running' || store.size === 0;
  button.title = !state.features.ptq ? NOT_IN_BUILD : store.size === 0 ? 'Add calibration frames first' : '';
}

function resetPtq(message) {
  // A calibration in progress stops, and its late replies are ignored (ptqJob !== job).
  if (ptqJob) ptqJob.cancelled = true;
  ptqJob = null;
  state.ptq = { state: 'idle', config: null, report: null, layers: null, frameIds: [], stale: false };
  for (const name of ['ptq-weights', 'ptq-layers', 'ptq-float', 'ptq-fidelity']) field(name).textContent = '–';
  setPtqState(state.features.ptq ? 'idle' : 'unavailable');
  if (state.features.ptq) notice(field('ptq-notice'), message);
  resetSensitivity('');
  renderInsight();
}

/** Calibrates on `frames` and builds the PTQ variant. Returns null when cancelled. */
async function buildPtq(frames, config, { job, onProgress = () => {} }) {
  await client.calibrationBegin(config);
  for (let i = 0; i < frames.length; i++) {
    if (job.cancelled) return null;
    const bitmap = await createImageBitmap(frames[i].bitmap);
    await client.calibrate({ bitmap }, state.preprocess);
    onProgress(i + 1, frames.length);
  }
  if (job.cancelled) return null;
  onProgress(frames.length, frames.length, 'Quantizing…');
  const report = await client.quantize();
  // The report has the per-tensor errors; older API sketches left them to layerErrors().
  let layerErrors = null;
  if (!Array.isArray(report.layers) && state.features.layerErrors) layerErrors = await client.layerErrors('ptq');
  return { report, layerErrors };
}

function finishPtq(built, config, frames) {
  const r = built.report;
  const layers = readLayers(built.layerErrors ?? r.layers);
  state.ptq = { state: 'done', config, report: r, layers, frameIds: frames.map((f) => f.id), stale: false };
  const fp32Bytes = r.floatWeightBytes ?? state.model.summary.parameters * 4;
  field('ptq-weights').textContent = `${formatBytes(r.weightBytes)}${sizeRatio(r.weightBytes)} · FP32 ${formatBytes(fp32Bytes)}`;
  const what = Number.isFinite(r.quantizedWeights)
    ? `${r.quantizedWeights} weight tensors and ${r.quantizedTensors} activations quantized`
    : `${layers.length} tensors quantized`;
  const method = config.calibration.method + (config.calibration.percentile ? ` ${config.calibration.percentile}` : '');
  field('ptq-layers').textContent = `${what}; ${config.weightBits}-bit weights ${config.perChannel ? 'per channel' : 'per tensor'}, ${method}${config.biasCorrection ? ', bias corrected' : ''}${config.equalize ? ', equalized' : ''}${config.requantization === 'fixed-point' ? ', fixed-point rounding' : ''}`;
  field('ptq-float').textContent = (r.floatNodes ?? []).length ? r.floatNodes.map((n) => `${n.name} (${n.op}: ${n.why})`).join('; ') : 'nothing';
  field('ptq-fidelity').textContent = fidelityLine(r.fidelity) || '–';
  for (const v of ['ptq', 'qat']) panes[v].resetMetrics();
  setPtqState('done');
  resetQat('');
  if (state.sensitivity.ranking) {
    state.sensitivity.stale = true;
    renderSensitivity();
  }
  renderLayerList();
  renderInsight();
  checkPreprocess();
}

ptqForm.addEventListener('submit', (event) => {
  event.preventDefault();
  runPtq();
});

/** Calibrates on every frame of the strip with the form's settings and quantizes. Resolves
 * true when the PTQ variant was built. */
async function runPtq() {
  if (!state.features.ptq || state.ptq.state === 'running' || state.sensitivity.state === 'running') return false;
  if (!store.size) {
    notice(field('ptq-notice'), 'Add calibration frames first (4).', 'warn');
    return false;
  }
  await ready();
  const config = readPtqConfig();
  const frames = [...store.frames];
  const job = { cancelled: false };
  ptqJob = job;
  state.ptq.config = config;
  state.ptq.frameIds = frames.map((f) => f.id);
  resetQat('');
  setPtqState('running');
  const bar = $('#ptq-progress');
  bar.max = frames.length + 1;
  bar.value = 0;
  const t0 = performance.now();
  try {
    const built = await buildPtq(frames, config, {
      job,
      onProgress: (done, total, what) => {
        bar.value = done;
        notice(field('ptq-notice'), what ?? `Calibrating: frame ${done} of ${total}`);
        panes.ptq.setState('empty', what ?? `Calibrating: frame ${done} of ${total}…`);
      },
    });
    if (ptqJob !== job) return false; // superseded (new model, restart)
    if (!built) {
      state.ptq.frameIds = [];
      setPtqState('cancelled');
      notice(field('ptq-notice'), 'Cancelled: nothing was quantized.', 'warn');
      return false;
    }
    finishPtq(built, config, frames);
    notice(field('ptq-notice'), `Quantized from ${frames.length} frames in ${formatDuration(performance.now() - t0)}.`, 'ok');
    return true;
  } catch (err) {
    if (ptqJob !== job) return false;
    if (err.notAvailable) {
      state.features.ptq = false;
      setPtqState('unavailable');
      notice(field('ptq-notice'), `PTQ is ${NOT_IN_BUILD} of the engine: ${err.message}`, 'warn');
    } else if (err.kind === 'crash' || err.kind === 'timeout') {
      setPtqState('error');
      notice(field('ptq-notice'), `The engine stopped while quantizing (${err.message}); it was restarted with your frames: try again.`, 'error');
    } else {
      setPtqState('error');
      notice(field('ptq-notice'), `Quantization failed: ${err.message}`, 'error');
    }
    return false;
  } finally {
    if (ptqJob === job) ptqJob = null;
    kick();
  }
}

$('#ptq-cancel').addEventListener('click', () => {
  if (ptqJob) ptqJob.cancelled = true;
  notice(field('ptq-notice'), 'Cancelling after the current frame…');
});

/** The keep-in-float list: every layer with weights, with its SQNR once known. */
function renderLayerList() {
  const list = $('#layer-list');
  const m = state.model;
  if (!m) return list.replaceChildren();
  const kept = new Set(state.ptq.config?.keepFloat ?? [...list.querySelectorAll('input:checked')].map((el) => el.value));
  const sqnr = sqnrByNode(state.ptq.layers ?? []);
  // Layers without weights (Add, activations, pools...) are listed once the PTQ settings keep
  // them in float (the sensitivity analysis's choice); not from the ticks alone, which may be
  // another model's.
  const weighted = new Set(m.summary.quantizable.map((l) => l.name));
  const extra = (state.ptq.config?.keepFloat ?? []).filter((name) => !weighted.has(name)).map((name) => ({ name, op: opOfNode(name), weightShape: null }));
  list.replaceChildren(
    ...[...m.summary.quantizable, ...extra].map((layer) => {
      const s = sqnr.get(layer.name);
      return h(
        'li',
        { dataset: { layer: layer.name } },
        h(
          'label',
          { title: layer.weightShape ? `${layer.name}: ${layer.op}, weights ${formatShape(layer.weightShape)}` : `${layer.name}: ${layer.op} (no weights)` },
          h('input', { type: 'checkbox', value: layer.name, checked: kept.has(layer.name), disabled: !state.features.ptq }),
          h('span', { class: 'layer-name' }, layer.name),
          h('span', { class: `sqnr${Number.isFinite(s) && s < 20 ? ' bad' : ''}` }, Number.isFinite(s) ? `${s.toFixed(1)} dB` : s === Infinity ? 'lossless' : layer.op),
        ),
      );
    }),
  );
  updateKeepCount();
  $('#keep-worst').disabled = !sqnr.size || !state.features.ptq;
  filterLayers();
}

/** A node's op as the engine reported it (sensitivity ranking, PTQ float nodes), else ''. */
function opOfNode(name) {
  const ranked = state.sensitivity.ranking?.layers.find((l) => l.node === name);
  const float = state.ptq.report?.floatNodes?.find((n) => n.name === name);
  return ranked?.op ?? float?.op ?? '';
}

function updateKeepCount() {
  const n = $('#layer-list').querySelectorAll('input:checked').length;
  field('keep-count').textContent = n ? `(${n} kept)` : '(none)';
}

function filterLayers() {
  const q = $('#layer-filter').value.trim().toLowerCase();
  for (const li of $('#layer-list').children) li.hidden = !!q && !li.dataset.layer.toLowerCase().includes(q);
}

$('#layer-list').addEventListener('change', updateKeepCount);
$('#layer-filter').addEventListener('input', filterLayers);
$('#keep-none').addEventListener('click', () => {
  for (const el of $('#layer-list').querySelectorAll('input')) el.checked = false;
  updateKeepCount();
});
$('#keep-worst').addEventListener('click', () => {
  const listed = new Set(state.model.summary.quantizable.map((l) => l.name));
  const worst = new Set(worstNodes((state.ptq.layers ?? []).filter((l) => listed.has(l.node)), 3).map((w) => w.node));
  for (const el of $('#layer-list').querySelectorAll('input')) if (worst.has(el.value)) el.checked = true;
  updateKeepCount();
  notice(field('ptq-notice'), `Keeping ${[...worst].join(', ')} in float: quantize again to see the difference.`);
});

// --- sensitivity analysis -----------------------------------------------------------------------

let sensitivityRun = null;

function setSensitivityState(s) {
  state.sensitivity.state = s;
  $('#sensitivity').dataset.state = s;
  $('#sensitivity-progress').classList.toggle('active', s === 'running');
  updateSensitivityButtons();
  updatePtqButton();
  updateQatButton();
}

function updateSensitivityButtons() {
  const f = state.features;
  const running = state.sensitivity.state === 'running';
  const run = $('#sensitivity-run');
  run.disabled = !f.sensitivity || running || state.ptq.state !== 'done' || state.qat.state === 'running';
  run.title = !f.sensitivity ? NOT_IN_BUILD : state.ptq.state !== 'done' ? 'Quantize first: the analysis uses the calibration' : '';
  $('#sensitivity-cancel').disabled = !running;
  const ranking = state.sensitivity.ranking;
  $('#sensitivity-keep').disabled =
    !ranking || state.sensitivity.stale || running || !f.ptq || state.ptq.state === 'running' || state.qat.state === 'running' || !ranking.layers.length;
}

function resetSensitivity(message) {
  if (sensitivityRun) sensitivityRun.cancel();
  sensitivityRun = null;
  state.sensitivity = { state: 'idle', ranking: null, stale: false };
  setSensitivityState(state.features.sensitivity ? 'idle' : 'unavailable');
  renderSensitivity();
  if (state.features.sensitivity) notice(field('sensitivity-notice'), message);
}

/** The ranking: rank, layer, op, share of the output noise as a bar and a percentage. */
function renderSensitivity() {
  const { ranking, stale } = state.sensitivity;
  const list = $('#sensitivity-list');
  $('#sensitivity').dataset.stale = String(!!stale);
  list.hidden = !ranking;
  field('sensitivity-keep-row').hidden = !ranking;
  if (!ranking) {
    list.replaceChildren();
    updateSensitivityButtons();
    return;
  }
  const kept = new Set(state.ptq.config?.keepFloat ?? []);
  const most = Math.max(...ranking.layers.map((l) => l.noiseShare), 1e-12);
  list.replaceChildren(
    ...ranking.layers.map((l, i) => {
      const bar = h('span', { class: 'meter', 'aria-hidden': 'true' }, h('span'));
      bar.firstChild.style.setProperty('--p', String(l.noiseShare / most));
      return h(
        'li',
        { dataset: { layer: l.node }, class: kept.has(l.node) ? 'kept' : null, title: `${l.node} (${l.op}) quantized alone: outputs at ${l.outputSqnrDb.toFixed(1)} dB SQNR` },
        h('span', { class: 'rank' }, `${i + 1}`),
        h('span', { class: 'layer-name' }, l.node),
        h('span', { class: 'op' }, l.op),
        bar,
        h('span', { class: 'share' }, `${(100 * l.noiseShare).toFixed(1)}%`),
      );
    }),
  );
  const n = $('#sensitivity-n');
  n.max = String(Math.max(1, ranking.layers.length));
  updateSensitivityButtons();
}

$('#sensitivity-run').addEventListener('click', async () => {
  if (!state.features.sensitivity || state.sensitivity.state === 'running' || state.ptq.state !== 'done') return;
  await ready();
  state.sensitivity = { state: 'running', ranking: null, stale: false };
  setSensitivityState('running');
  renderSensitivity();
  const bar = $('#sensitivity-progress');
  bar.max = 1;
  bar.value = 0;
  notice(field('sensitivity-notice'), 'Finding sensitive layers: starting…');
  const run = client.sensitivity({
    onProgress: (p) => {
      bar.max = p.total;
      bar.value = p.done;
      if (!p.layer) {
        notice(field('sensitivity-notice'), `Finding sensitive layers: ${p.layers} layers to measure on the calibration frames; first the reference outputs…`);
        return;
      }
      const eta = p.done ? (p.elapsedMs / p.done) * (p.total - p.done) : NaN;
      notice(field('sensitivity-notice'), `Finding sensitive layers: layer ${p.layersDone + 1} of ${p.layers} (${p.layer}), about ${formatDuration(eta)} left…`);
    },
  });
  sensitivityRun = run;
  try {
    const result = await run.promise;
    if (sensitivityRun !== run) return;
    if (result.cancelled) {
      setSensitivityState('cancelled');
      const p = result.progress;
      notice(field('sensitivity-notice'), `Cancelled after ${p.layersDone} of ${p.layers} layers: no ranking.`, 'warn');
      return;
    }
    const r = result.ranking;
    state.sensitivity.ranking = r;
    setSensitivityState('done');
    renderSensitivity();
    const top = r.layers[0];
    notice(
      field('sensitivity-notice'),
      r.layers.length
        ? `Ranked ${r.layers.length} layers on ${r.frames} calibration frames in ${formatDuration(result.ms)}: outputs at ${r.outputSqnrDb.toFixed(1)} dB SQNR with every layer quantized; ${top.node} (${top.op}) alone adds ${(100 * top.noiseShare).toFixed(1)}% of the noise.`
        : 'No layer is quantized: there is nothing to rank.',
      'ok',
    );
  } catch (err) {
    if (sensitivityRun !== run) return;
    if (err.notAvailable) {
      state.features.sensitivity = false;
      setSensitivityState('unavailable');
      notice(field('sensitivity-notice'), `The sensitivity analysis is ${NOT_IN_BUILD} of the engine: ${err.message}`, 'warn');
    } else if (err.kind === 'crash' || err.kind === 'timeout') {
      setSensitivityState('error');
      notice(field('sensitivity-notice'), `The engine stopped during the analysis (${err.message}); it was restarted with your frames: run it again.`, 'error');
    } else {
      setSensitivityState('error');
      notice(field('sensitivity-notice'), `The sensitivity analysis failed: ${err.message}`, 'error');
    }
  } finally {
    if (sensitivityRun === run) sensitivityRun = null;
  }
});

$('#sensitivity-cancel').addEventListener('click', () => {
  sensitivityRun?.cancel();
  notice(field('sensitivity-notice'), 'Cancelling after the current step…');
});

// "Keep the N most sensitive": ticks them in the keep-in-float list (the page's one choice of
// float layers, kept in the PTQ settings, so an engine restart rebuilds the same model) and
// quantizes again.
$('#sensitivity-keep').addEventListener('click', async () => {
  const ranking = state.sensitivity.ranking;
  if (!ranking || state.sensitivity.stale) return;
  const n = Math.max(1, Math.min(ranking.layers.length, Math.round(Number($('#sensitivity-n').value) || 1)));
  const chosen = ranking.layers.slice(0, n).map((l) => l.node);
  const list = $('#layer-list');
  const ticked = new Set([...list.querySelectorAll('input:checked')].map((el) => el.value));
  // renderLayerList takes the ticks from the last PTQ's settings when there is one: give it the
  // list as it will be.
  state.ptq.config = { ...(state.ptq.config ?? readPtqConfig()), keepFloat: [...new Set([...ticked, ...chosen])] };
  renderLayerList();
  for (const el of list.querySelectorAll('input')) if (chosen.includes(el.value)) el.checked = true;
  updateKeepCount();
  $('.keep-float').open = true;
  notice(field('sensitivity-notice'), `Keeping the ${n} most sensitive in float (${chosen.join(', ')}); quantizing again…`);
  const before = state.ptq.report?.fidelity;
  if (await runPtq()) {
    const now = state.ptq.report.fidelity;
    notice(
      field('sensitivity-notice'),
      `Kept ${chosen.join(', ')} in float and quantized again. ${fidelityLine(now) || ''}${before ? ` (before: ${fidelityLine(before)})` : ''}`.trim(),
      'ok',
    );
  } else if (state.ptq.state === 'error') {
    notice(field('sensitivity-notice'), `Quantizing again failed: see above.`, 'error');
  }
});

// --- QAT ------------------------------------------------------------------------------------------

const qatForm = $('#qat-form');
let qatRun = null;
let lossChart = null;

function setQatState(s) {
  state.qat.state = s;
  $('#qat-panel').dataset.state = s;
  const running = s === 'running';
  $('#qat-cancel').disabled = !running;
  $('#qat-progress').classList.toggle('active', running);
  field('qat-badge').textContent = { idle: 'not run', running: 'training', done: 'done', error: 'failed', unavailable: NOT_IN_BUILD, lost: 'lost' }[s] ?? s;
  updateQatButton();
  updatePtqButton();
  updateSensitivityButtons();
  updatePanes();
  updateDownloads();
}

function updateQatButton() {
  const button = $('#qat-run');
  button.disabled = !state.features.qat || state.ptq.state !== 'done' || state.qat.state === 'running' || state.sensitivity.state === 'running' || state.labels.busy;
  button.title = !state.features.qat
    ? NOT_IN_BUILD
    : state.ptq.state !== 'done'
      ? 'Quantize first (5): QAT starts from PTQ'
      : state.labels.busy
        ? 'Reading the labelled images…'
        : '';
  $('#labels-clear').disabled = !state.labels.pick || state.qat.state === 'running';
}

function resetQat(message) {
  if (qatRun) qatRun.cancel();
  qatRun = null;
  state.qat = { state: 'idle', config: state.qat.config, result: null, layers: null, losses: [], saved: null, labels: null, labelLosses: [] };
  setQatState(state.features.qat ? 'idle' : 'unavailable');
  if (state.features.qat) notice(field('qat-notice'), message);
  panes.qat.resetMetrics();
  renderInsight();
}

/** The form's recipe: empty fields and "automatic" are left to the engine's default recipe. */
function readQatConfig() {
  const els = qatForm.elements;
  const config = {};
  if (els.steps.value.trim()) config.steps = Math.max(1, Math.round(Number(els.steps.value) || 1));
  if (els.lr.value.trim()) config.lr = Number(els.lr.value);
  if (els.mode.value !== 'auto') config.mode = els.mode.value;
  if (els.freezeStem.value.trim()) config.freezeStem = Number(els.freezeStem.value) / 100;
  if (els.freezeStemAt.value.trim()) config.freezeStemAt = Number(els.freezeStemAt.value) / 100;
  return config;
}

const QAT_MODES = { scales: 'step sizes and biases', full: 'weights, step sizes and biases' };

/** qatBegin's `frozenStem` in words ('' when nothing is frozen); `stepsDone`, once the run is over,
 * tells a stem that froze from one whose step the run (cancelled) never reached. */
function frozenStemText(stem, stepsDone = Infinity) {
  const n = stem?.layers?.length ?? 0;
  if (!n) return '';
  const weights = (100 * stem.weights) / Math.max(1, stem.totalWeights);
  const layers = `the first ${n} layer${n === 1 ? '' : 's'}`;
  const share = `${Math.round(100 * stem.macsShare)}% of the work, ${weights < 10 ? weights.toFixed(1) : Math.round(weights)}% of the weights`;
  if (stem.fromStep === 0) return ` after ${layers} (${share}, kept as PTQ made them)`;
  const when = stepsDone > stem.fromStep ? `frozen after step ${stem.fromStep}` : `to freeze after step ${stem.fromStep}, which the run did not reach`;
  return ` (${layers}, ${share}, ${when})`;
}

/** What QAT trains on, from qatBegin's `augmentation` (protocol.js QatAugmentation). */
function augmentationText({ augment: a, frames, images, heldOut = 0, views: drawn, labelled }, labelWeight = 1, framesTrained = 0) {
  const pct = (x) => `${Math.round(100 * x)}%`;
  const reuse = drawn && framesTrained ? ` (drawn once for the run, each trained on about ${Math.max(1, Math.round(framesTrained / drawn))} times, so its FP32 targets are computed once)` : '';
  const views =
    `${drawn ? `${drawn} ` : ''}random views of ${images === frames ? `the ${frames}` : `${images} of the ${frames}`} training frames${reuse}, as the command line trains: ` +
    `a crop of ${pct(a.minArea)}–100% of the image (width/height ${a.aspect[0].toFixed(2)}–${a.aspect[1].toFixed(2)}) scaled to the input` +
    `${a.flip ? ', mirrored half the time' : ''}, brightness ±${Math.round(a.brightness)}, contrast ±${pct(a.contrast)}; ` +
    'each made from the frame\'s image and preprocessed as for calibration';
  const tensors = frames - images;
  const mirrored = `${tensors} frame${tensors === 1 ? ' was' : 's were'} given as tensors, without an image: ${tensors === 1 ? 'it is' : 'they are'} only mirrored`;
  const body = images === 0 ? `the ${frames} training frames as given: they came as tensors, without an image, so they are only mirrored` : tensors ? `${views}. ${mirrored}` : views;
  const held = heldOut ? ` ${heldOut} more frame${heldOut === 1 ? ' is' : 's are'} held out, unchanged, to keep the best weights.` : ' No frame is held out: with so few, all of them train.';
  const n = labelled?.images ?? 0;
  const labels = n
    ? ` Also ${n} labelled image${n === 1 ? '' : 's'} in ${labelled.classes} class${labelled.classes === 1 ? '' : 'es'}, viewed the same way and preprocessed as the calibration frames; ` +
      `each frame of a step is drawn from the training frames and the labelled images alike, and a labelled one adds the cross-entropy to its class (weight ${labelWeight}).`
    : '';
  return `Trains on ${body}.${held}${labels}`;
}

qatForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!state.features.qat || state.qat.state === 'running' || state.ptq.state !== 'done' || state.labels.busy) return;
  const config = readQatConfig();
  if ('lr' in config && !(config.lr > 0)) {
    notice(field('qat-notice'), 'The learning rate must be above 0.', 'error');
    return;
  }
  if ('freezeStem' in config && !(config.freezeStem >= 0 && config.freezeStem <= 1)) {
    notice(field('qat-notice'), 'The frozen stem is a share of the work from 0 to 100%.', 'error');
    return;
  }
  if ('freezeStemAt' in config && !(config.freezeStemAt >= 0 && config.freezeStemAt < 1)) {
    notice(field('qat-notice'), 'The stem freezes after a share of the steps from 0 to below 100%.', 'error');
    return;
  }
  const images = state.features.labels ? state.labels.images : [];
  if (images.length) {
    const weight = qatForm.elements.labelWeight.value.trim() === '' ? 1 : Number(qatForm.elements.labelWeight.value);
    if (!Number.isFinite(weight) || weight < 0) {
      notice(field('qat-notice'), 'The label weight must be a number, 0 or more (0: labelled images are only distilled, like the others).', 'error');
      return;
    }
    config.labelWeight = weight;
  }
  await ready();
  state.qat.config = config;
  state.qat.losses = [];
  state.qat.labelLosses = [];
  state.qat.labels = images.length ? labelSummary(config.labelWeight) : null;
  const trainedLabels = state.qat.labels;
  setQatState('running');
  const bar = $('#qat-progress');
  bar.max = config.steps ?? 1;
  bar.value = 0;
  let plan = { total: config.steps, mode: config.mode };
  const chart = await loadCharts().catch((err) => {
    notice(field('qat-notice'), errorMessage(err), 'error');
    return null;
  });
  if (chart) {
    lossChart ??= new chart.LossChart($('#loss-chart'));
    lossChart.reset({ labels: images.length > 0 });
  }
  notice(field('qat-notice'), 'Training: starting…');
  // Copies: the worker takes the bitmaps it is sent, and the page keeps its own for later runs.
  let labelled;
  try {
    labelled = await Promise.all(images.map(async (l) => ({ frame: { bitmap: await createImageBitmap(l.bitmap) }, class: l.class })));
  } catch (err) {
    setQatState('error');
    notice(field('qat-notice'), `Training did not start: the labelled images could not be read (${errorMessage(err)}); choose their folder again.`, 'error');
    return;
  }
  // The last label loss measured (a slice of steps that drew no labelled frame has none).
  let labelLoss = null;
  const run = client.qat(config, {
    labelled,
    onProgress: (p) => {
      if (p.done === 0) {
        // The plan: what the engine chose where the form said "auto".
        plan = { total: p.total, mode: p.mode, frozenStem: p.frozenStem };
        bar.max = p.total;
        if (p.augmentation) field('qat-augment').textContent = augmentationText(p.augmentation, config.labelWeight, (p.total ?? 0) * (p.batchSize ?? 0));
        const why = config.mode ? '' : ` (chosen for ${state.ptq.config?.weightBits ?? '?'}-bit weights)`;
        const withLabels = trainedLabels
          ? `, with ${trainedLabels.images} labelled images in ${new Set(trainedLabels.classes.map((c) => c.class)).size} classes`
          : state.labels.pick
            ? ', without labels (the labelled images cannot be used: see above)'
            : '';
        notice(field('qat-notice'), `Training: step 0 of ${p.total}, learning ${QAT_MODES[p.mode] ?? p.mode}${frozenStemText(p.frozenStem)}${why}, ${p.batchSize ?? '?'} frames a step${withLabels}…`);
        return;
      }
      bar.value = p.done;
      state.qat.losses.push([p.done, p.loss]);
      if (Number.isFinite(p.labelLoss)) {
        labelLoss = p.labelLoss;
        state.qat.labelLosses.push([p.done, p.labelLoss]);
      }
      // The training curve is the distillation, as the held-out one is (with labels the total
      // also holds the cross-entropy, which only batches that drew labelled frames have).
      lossChart?.push(p.done, p.distillLoss ?? p.loss, p.holdoutLoss, p.labelLoss);
      const eta = (p.elapsedMs / p.done) * (p.total - p.done);
      const label = labelLoss != null ? `, label loss ${labelLoss.toPrecision(4)}` : '';
      notice(field('qat-notice'), `Training: step ${p.done} of ${p.total}, loss ${Number(p.loss).toPrecision(4)}${label}, about ${formatDuration(eta)} left`);
      panes.qat.setState('empty', `Training: step ${p.done} of ${p.total}…`);
    },
  });
  qatRun = run;
  try {
    const result = await run.promise;
    if (qatRun !== run) return;
    let layerErrors = null;
    if (state.features.layerErrors) layerErrors = await client.layerErrors('qat');
    state.qat.result = result;
    state.qat.layers = layerErrors ? readLayers(layerErrors) : result.report?.layers ? readLayers(result.report.layers) : null;
    // Kept in the page, so that an engine restart does not cost the user the training.
    state.qat.saved = state.features.keepVariant ? await client.variantState('qat').catch(() => null) : null;
    if (qatRun !== run) return;
    setQatState('done');
    panes.qat.resetMetrics();
    updatePanes();
    const what = `${QAT_MODES[result.mode ?? plan.mode] ?? result.mode ?? plan.mode}${frozenStemText(plan.frozenStem, result.steps)}`;
    const total = result.total ?? plan.total;
    const how = result.cancelled ? `Stopped after ${result.steps} of ${total} steps of ${what} (the model keeps what it learned)` : `Trained ${what} for ${result.steps} steps`;
    let labels = '';
    if (trainedLabels) {
      const frames = `${result.labelledFrames} labelled frame${result.labelledFrames === 1 ? '' : 's'} trained on`;
      labels = Number.isFinite(result.labelLoss)
        ? `; label loss ${result.labelLoss.toPrecision(4)} (cross-entropy to the labels, ${frames})`
        : `; no labelled frame was drawn in these steps, so the labels were not used (${frames})`;
    }
    notice(field('qat-notice'), `${how} in ${formatDuration(result.ms)}; final loss ${Number(result.loss).toPrecision(4)}${labels}.`, result.cancelled ? 'warn' : 'ok');
    renderInsight();
  } catch (err) {
    if (qatRun !== run) return;
    if (err.notAvailable) {
      state.features.qat = false;
      setQatState('unavailable');
      notice(field('qat-notice'), `QAT is ${NOT_IN_BUILD} of the engine: ${err.message}`, 'warn');
    } else {
      setQatState('error');
      notice(field('qat-notice'), `Training failed: ${err.message}`, 'error');
    }
  } finally {
    if (qatRun === run) qatRun = null;
    kick();
  }
});

$('#qat-cancel').addEventListener('click', () => {
  qatRun?.cancel();
  notice(field('qat-notice'), 'Stopping after the current steps…');
});

// --- labelled images for QAT -----------------------------------------------------------------

/** Decoded labelled images by file, for the pick: a new model re-matches without decoding again. */
let labelBitmaps = new Map();
/** Bumped by each pick, match and removal: a match still reading images stops when it changes. */
let labelsJob = 0;

/** Takes a picked or dropped folder of class folders (files with their paths in it). */
function pickLabels(entries) {
  for (const bitmap of labelBitmaps.values()) bitmap.close();
  labelBitmaps = new Map();
  state.labels.pick = sortIntoFolders(entries);
  return matchLabels();
}

function clearLabels() {
  labelsJob += 1;
  for (const bitmap of labelBitmaps.values()) bitmap.close();
  labelBitmaps = new Map();
  state.labels = { pick: null, match: null, error: null, images: [], total: 0, skipped: [], busy: false };
  renderLabels();
  updateQatButton();
}

/**
 * Matches the picked class folders to the loaded model's classes (the engine's ClassMap) and
 * reads the images of those that match: decoded as calibration images are (at most
 * CALIBRATION_SIDE a side, and no more pixels than the engine keeps), at most as many as the
 * engine keeps, taken from each class in turn. A folder that matches no class is listed with
 * the engine's message and left out; a model that takes no labels leaves them all out, with
 * its message. Nothing else of the page changes.
 */
async function matchLabels() {
  const job = ++labelsJob;
  const L = state.labels;
  Object.assign(L, { match: null, error: null, images: [], total: 0, skipped: [], busy: false });
  const pick = L.pick;
  if (!pick) return renderLabels();
  if (!state.features.labels) {
    L.error = `labelled images are ${NOT_IN_BUILD} of the engine`;
    return renderLabels();
  }
  if (!state.model) return renderLabels();
  if (!pick.folders.size) {
    const where = pick.root ? `'${pick.root}'` : 'What was dropped';
    L.error = `${where} holds no class folders${pick.loose.length ? ` (only ${pick.loose.length} files)` : ''}: choose the folder that holds one folder per class, each named by its class`;
    return renderLabels();
  }
  L.busy = true;
  updateQatButton();
  renderLabels('Matching the folders to the model\'s classes…');
  const model = state.model;
  try {
    await ready();
    const match = await client.labelFolders([...pick.folders.keys()], classNamesText(model.names));
    if (job !== labelsJob) return;
    // Only images count (a folder may hold other files), so that the cap is spent on images.
    const used = match.folders.filter((f) => f.error == null);
    const lists = [];
    for (const f of used) {
      const images = [];
      for (const entry of pick.folders.get(f.folder)) {
        if (isImageKind(sniff(await head(entry.file)))) images.push(entry);
        else L.skipped.push(`${entry.path} is not an image`);
      }
      if (job !== labelsJob) return;
      lists.push(images);
    }
    L.total = lists.reduce((n, list) => n + list.length, 0);
    const taken = takeInTurn(lists, match.maxImages);
    const side = Math.min(CALIBRATION_SIDE, Math.floor(Math.sqrt(match.maxPixels)));
    const count = taken.reduce((n, list) => n + list.length, 0);
    let read = 0;
    for (const [k, f] of used.entries()) {
      f.images = 0;
      for (const entry of taken[k]) {
        renderLabels(`Reading the labelled images: ${read} of ${count}…`);
        read += 1;
        try {
          let bitmap = labelBitmaps.get(entry.file);
          if (!bitmap) {
            bitmap = await decodeImage(entry.file, entry.path, side);
            labelBitmaps.set(entry.file, bitmap);
          }
          if (job !== labelsJob) return;
          L.images.push({ bitmap, class: f.class, folder: f.folder });
          f.images += 1;
        } catch (err) {
          if (job !== labelsJob) return;
          L.skipped.push(errorMessage(err));
        }
      }
    }
    L.match = match;
  } catch (err) {
    if (job !== labelsJob) return;
    L.images = [];
    L.error = `the labelled images cannot be used with ${model.name}: ${errorMessage(err)}`;
  } finally {
    if (job === labelsJob) {
      L.busy = false;
      renderLabels();
      updateQatButton();
    }
  }
}

/** The labelled images in use, for the QAT report: per class folder, its class and images. */
function labelSummary(weight) {
  const L = state.labels;
  const folders = (L.match?.folders ?? []).filter((f) => f.error == null && f.images > 0);
  return {
    folder: L.pick?.root || null,
    weight,
    images: L.images.length,
    found: L.total,
    classes: folders.map((f) => ({ folder: f.folder, class: f.class, name: f.name, images: f.images })),
  };
}

/** The labelled images' list and notice; `busy`: what is being done, while it is. */
function renderLabels(busy) {
  const L = state.labels;
  const box = $('#qat-labels');
  const list = $('#label-folders');
  const out = field('labels-notice');
  const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
  if (!L.pick) {
    box.dataset.state = 'empty';
    list.replaceChildren();
    notice(out, '');
    return;
  }
  const byFolder = new Map((L.match?.folders ?? []).map((f) => [f.folder, f]));
  list.replaceChildren(
    ...[...L.pick.folders].map(([folder, files]) => {
      const f = byFolder.get(folder);
      if (f?.error != null) return h('li', { class: 'bad', dataset: { folder } }, `${f.error}. Not used.`);
      const what = f ? `→ ${f.name ? `${f.name} (class ${f.class})` : `class ${f.class}`}` : '';
      const count = f?.images != null ? `${plural(f.images, 'image')}${f.images < files.length ? ` of ${files.length} files` : ''}` : plural(files.length, 'file');
      return h('li', { dataset: { folder } }, h('span', { class: 'folder', title: folder }, `${folder} ${what}`), h('span', { class: 'count' }, count));
    }),
  );
  if (busy) {
    box.dataset.state = 'busy';
    notice(out, busy);
    return;
  }
  if (L.error) {
    box.dataset.state = 'error';
    list.replaceChildren();
    notice(out, `${L.error[0].toUpperCase()}${L.error.slice(1)}.`, 'error');
    return;
  }
  if (!L.match) {
    box.dataset.state = 'idle';
    notice(out, `${plural(L.pick.folders.size, 'class folder')} chosen: they are matched to the model's classes once it is loaded.`);
    return;
  }
  const bad = L.match.folders.filter((f) => f.error != null);
  const classes = new Set(L.images.map((i) => i.class)).size;
  const from = L.pick.root ? ` from '${L.pick.root}'` : '';
  const parts = [`${plural(L.images.length, 'labelled image')} in ${plural(classes, 'class', 'classes')}${from}.`];
  if (L.total > L.match.maxImages) {
    parts.push(`Kept ${L.images.length} of the ${L.total} images: at most ${L.match.maxImages} are kept (memory), taken from each class in turn.`);
  }
  if (bad.length) parts.push(`${plural(bad.length, 'folder')} matched no class and ${bad.length === 1 ? 'is' : 'are'} not used: ${bad.map((f) => `'${f.folder}'`).join(', ')} (below).`);
  if (L.pick.loose.length) parts.push(`${plural(L.pick.loose.length, 'file')} outside the class folders ${L.pick.loose.length === 1 ? 'is' : 'are'} not used.`);
  if (L.skipped.length) parts.push(`Skipped ${L.skipped.length}: ${L.skipped.slice(0, 3).join('; ')}${L.skipped.length > 3 ? '; …' : ''}.`);
  const kind = bad.length || !L.images.length ? 'error' : parts.length > 1 ? 'warn' : 'ok';
  box.dataset.state = L.images.length ? 'ready' : 'error';
  notice(out, parts.join(' '), kind);
}

$('#label-folder').addEventListener('change', (event) => {
  const entries = [...event.target.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
  event.target.value = '';
  if (entries.length) pickLabels(entries);
});
$('#labels-clear').addEventListener('click', clearLabels);

// --- insight: per-layer SQNR and activation histograms -------------------------------------------

const insight = new Insight({
  histogram: async (value) => {
    await ready();
    return client.histogram(value);
  },
});

function renderInsight() {
  insight.update({ ptq: state.ptq.layers, qat: state.qat.layers, features: state.features });
}

// --- downloads ------------------------------------------------------------------------------------

function updateDownloads() {
  const f = state.features;
  $('#download-ptq').disabled = !(f.exportOnnx && state.ptq.state === 'done');
  $('#download-qat').disabled = !(f.exportOnnx && state.qat.state === 'done');
  $('#download-report').disabled = !state.model;
  $('#download-ptq').title = f.exportOnnx ? (state.ptq.state === 'done' ? '' : 'Quantize first') : `ONNX export: ${NOT_IN_BUILD}`;
  $('#download-qat').title = f.exportOnnx ? (state.qat.state === 'done' ? '' : 'Train first') : `ONNX export: ${NOT_IN_BUILD}`;
  if (state.model && !f.exportOnnx) notice(field('downloads-notice'), `Quantized models: ONNX export is ${NOT_IN_BUILD} of the engine. The report works.`, 'warn');
}

const baseName = () => (state.model?.name ?? 'model').replace(/\.onnx$/i, '');

async function exportModel(variant) {
  const button = $(`#download-${variant}`);
  button.disabled = true;
  notice(field('downloads-notice'), `Exporting the ${variant.toUpperCase()} model…`);
  try {
    await ready();
    const { bytes } = await client.exportOnnx(variant);
    const name = `${baseName()}.${variant}.int${state.ptq.config?.weightBits ?? 8}.qdq.onnx`;
    download(new Blob([bytes], { type: 'application/octet-stream' }), name);
    notice(field('downloads-notice'), `Saved ${name} (${formatBytes(bytes.byteLength)}).`, 'ok');
  } catch (err) {
    notice(field('downloads-notice'), `Export failed: ${errorMessage(err)}`, 'error');
  } finally {
    updateDownloads();
  }
}

$('#download-ptq').addEventListener('click', () => exportModel('ptq'));
$('#download-qat').addEventListener('click', () => exportModel('qat'));

function report() {
  const m = state.model;
  const sources = {};
  for (const id of state.ptq.frameIds) {
    const f = store.get(id);
    if (f) sources[f.source] = (sources[f.source] ?? 0) + 1;
  }
  return {
    generator: 'Quant Playground',
    createdAt: new Date().toISOString(),
    engine: state.info && { version: state.info.version, simd128: state.info.simd128, relaxedSimd: state.info.relaxedSimd, relaxedDot: state.info.relaxedDot, features: state.features },
    model: {
      name: m.name,
      fileBytes: m.summary.fileBytes,
      producer: m.summary.producer,
      opset: m.summary.opset,
      parameters: m.summary.parameters,
      inputs: m.summary.inputs,
      outputs: m.summary.outputs,
      task: m.task.kind,
      quantizableLayers: m.summary.quantizable.length,
    },
    preprocess: state.preprocess,
    preprocessOrigin: state.preprocessOrigin,
    calibration: { frames: state.ptq.frameIds.length, sources },
    ptq: state.ptq.report ? { ...state.ptq.report, config: state.ptq.config, layers: state.ptq.layers, preprocessChangedSince: state.ptq.stale } : null,
    qat: state.qat.result
      ? { config: state.qat.config, ...state.qat.result, losses: state.qat.losses, labels: state.qat.labels, labelLosses: state.qat.labelLosses, layers: state.qat.layers }
      : null,
    sensitivity: state.sensitivity.ranking ? { ...state.sensitivity.ranking, rankedBeforeTheLastPtq: state.sensitivity.stale } : null,
    comparison: {
      input: state.source,
      ...Object.fromEntries(VARIANTS.map((v) => [v, panes[v].frames ? panes[v].metrics() : null])),
    },
  };
}

$('#download-report').addEventListener('click', () => {
  if (!state.model) return;
  const name = `${baseName()}.quant-report.json`;
  download(new Blob([JSON.stringify(report(), null, 2)], { type: 'application/json' }), name);
  notice(field('downloads-notice'), `Saved ${name}.`, 'ok');
});

// --- drag and drop anywhere ---------------------------------------------------------------------

installDropZone(routeFiles);

/** Images go to the calibration set; anything else is taken as a model (the first one). A
 * folder dropped on the labelled images of the QAT section is taken as class folders. */
async function routeFiles(files, { paths, target } = {}) {
  if (target instanceof Element && target.closest('#qat-labels') && !$('#qat-labels').disabled) {
    const entries = files.map((file) => ({ file, path: paths?.get(file) ?? file.name }));
    if (entries.length) await pickLabels(entries);
    return;
  }
  const images = [];
  const others = [];
  for (const file of files) (isImageKind(sniff(await head(file))) ? images : others).push(file);
  if (others.length) {
    const model = others.find((f) => /\.onnx$/i.test(f.name)) ?? others[0];
    if (others.length > 1) setModelStatus(`Dropped ${others.length} files that are not images: loading ${model.name}.`, 'warn');
    loadModel(await model.arrayBuffer(), model.name);
  }
  if (images.length) await addImageFiles(images, `Adding ${images.length} dropped image${images.length === 1 ? '' : 's'}`);
}

// --- feature availability -----------------------------------------------------------------------

/** Enables what this engine build can do; says 'not available in this build' for the rest. */
function applyFeatures() {
  const f = state.features;
  for (const el of ptqForm.elements) if (el.id !== 'ptq-cancel') el.disabled = !f.ptq;
  ptqForm.elements.percentile.disabled = !f.ptq || ptqForm.elements.method.value !== 'percentile';
  for (const el of qatForm.elements) if (el.id !== 'qat-cancel') el.disabled = !f.qat;
  $('#qat-labels').disabled = !f.qat || !f.labels;
  if (f.qat && !f.labels) notice(field('labels-notice'), `Labelled images are ${NOT_IN_BUILD} of the engine.`, 'warn');
  if (!f.ptq) {
    setPtqState('unavailable');
    notice(field('ptq-notice'), `PTQ is ${NOT_IN_BUILD} of the engine: the FP32 model runs; calibration frames can be collected for when it is.`, 'warn');
  } else if (state.ptq.state === 'unavailable') {
    setPtqState('idle');
    notice(field('ptq-notice'), '');
  }
  if (!f.qat) {
    setQatState('unavailable');
    notice(field('qat-notice'), `QAT is ${NOT_IN_BUILD} of the engine.`, 'warn');
  } else if (state.qat.state === 'unavailable') {
    setQatState('idle');
    notice(field('qat-notice'), '');
  }
  if (!f.sensitivity) {
    setSensitivityState('unavailable');
    notice(field('sensitivity-notice'), `The sensitivity analysis is ${NOT_IN_BUILD} of the engine.`, 'warn');
  } else if (state.sensitivity.state === 'unavailable') {
    setSensitivityState('idle');
    notice(field('sensitivity-notice'), '');
  }
  renderLayerList();
  updatePtqButton();
  updateQatButton();
  updateSensitivityButtons();
  updatePanes();
  updateDownloads();
  renderInsight();
}

// --- start ---------------------------------------------------------------------------------------

renderBundledButtons();
renderSourceOptions();
renderCamera();
renderStrip();
for (const p of Object.values(panes)) p.setState('empty', 'Waiting for the engine…');

(async () => {
  if (await startEngine()) await loadBundled(DEFAULT_MODEL);
})();
