// The QAT benchmark page. Two measurements per model, both on the release wasm (www/pkg,
// served with the rest of www/ at /app/), one thread:
//
// timeModel: the engine on this page's main thread. The model is loaded, the bundled sample
//   images are added the way the page's "samples" button adds them and calibrated with the
//   page's default PTQ settings (read from www/index.html) and the bundled model's
//   preprocessing preset, then quantized. Timed: one FP32 forward and one int8 forward
//   (runVariant on one preprocessed image), and QAT steps (qatStep(1), batch of the recipe),
//   each timed step followed by a timed FP32 forward.
//   The trainer is started with `evalEvery: 2`, so every second step also measures the loss on
//   the 4 held-out frames: 4 training forwards (the fake-quantized simulation on the tape)
//   without a backward. (eval step - plain step) / 4 is one simulation forward, and the plain
//   step per frame minus it is the backward (+ loss, + the update shared by the batch).
//
// defaultRecipe: the page's own engine worker (www/worker.js through www/engine-client.js),
//   driven as main.js drives it when the user presses "Add samples", "Calibrate and quantize"
//   and "Train" without changing a setting: the QAT config is the form's defaults. The wall
//   time is from sending the request to its result (qatBegin, the steps in the worker's
//   ~150 ms chunks, qatFinish and its report). A run projected past `budgetMs` is cancelled
//   after `minSteps` and its full length extrapolated by bench/benchmarks/qat.mjs.
//
// Driven by bench/benchmarks/qat.mjs through window.qpBench; body.ready / body.error as in fp32.js.

import * as glue from '/app/pkg/quant_playground.js';
import { EngineClient } from '/app/engine-client.js';
import { CALIBRATION_SIDE, decodeImage, fitBitmap } from '/app/frames.js';
import { BUNDLED, SAMPLE_IMAGES } from '/app/models.js';
import * as pre from '/app/preprocess.js';

import { initOurEngine, median, normalizedTensor } from './shared.js';

const { Session, engineInfo } = glue;

/** The defaults of the page's PTQ and QAT forms, read as main.js's readPtqConfig / readQatConfig read them. */
async function pageDefaults() {
  const html = await (await fetch('/app/index.html')).text();
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const ptq = doc.querySelector('#ptq-form');
  const qat = doc.querySelector('#qat-form');
  if (!ptq || !qat) throw new Error('www/index.html has no #ptq-form / #qat-form');
  const checked = (form, name) => form.querySelector(`input[name="${name}"][checked]`)?.getAttribute('value');
  const selected = (form, name) => {
    const select = form.querySelector(`select[name="${name}"]`);
    return (select.querySelector('option[selected]') ?? select.querySelector('option')).getAttribute('value');
  };
  const attr = (form, name) => form.querySelector(`input[name="${name}"]`).getAttribute('value') ?? '';
  const method = selected(ptq, 'method');
  const calibration = { method };
  if (method === 'percentile') calibration.percentile = Number(attr(ptq, 'percentile')) || 99.99;
  return {
    ptq: {
      weightBits: Number(checked(ptq, 'weightBits')),
      perChannel: checked(ptq, 'granularity') === 'channel',
      calibration,
      keepFloat: [],
      biasCorrection: ptq.querySelector('input[name="biasCorrection"]').hasAttribute('checked'),
    },
    qat: readQatConfig(qat, attr, selected),
  };
}

/** main.js readQatConfig on the form's initial values: empty fields and mode 'auto' are left to the engine. */
function readQatConfig(form, attr, selected) {
  const config = {};
  const steps = attr(form, 'steps').trim();
  const lr = attr(form, 'lr').trim();
  const mode = selected(form, 'mode');
  if (steps) config.steps = Math.max(1, Math.round(Number(steps) || 1));
  if (lr) config.lr = Number(lr);
  if (mode !== 'auto') config.mode = mode;
  const freezeStem = attr(form, 'freezeStem').trim();
  const freezeStemAt = attr(form, 'freezeStemAt').trim();
  if (freezeStem) config.freezeStem = Number(freezeStem) / 100;
  if (freezeStemAt) config.freezeStemAt = Number(freezeStemAt) / 100;
  return config;
}

/** The sample images as the page's "samples" button stores them (decoded at 640, kept at 480). */
let samplesPromise = null;
function sampleBitmaps() {
  samplesPromise ??= Promise.all(
    SAMPLE_IMAGES.map(async ([file]) => {
      const response = await fetch(`/models/images/${file}`);
      if (!response.ok) throw new Error(`models/images/${file}: HTTP ${response.status}`);
      const shared = await decodeImage(await response.blob(), file);
      return fitBitmap(shared, shared.width, shared.height, CALIBRATION_SIDE, { keep: true });
    }),
  );
  return samplesPromise;
}

/** RGBA bytes of a bitmap, as the worker's frameToRgba reads them. */
function rgbaOf(bitmap) {
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const g = canvas.getContext('2d', { willReadFrequently: true });
  g.drawImage(bitmap, 0, 0);
  const { data } = g.getImageData(0, 0, width, height);
  return { rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width, height };
}

function bundled(file) {
  const m = BUNDLED.find((b) => b.file === file);
  if (!m) throw new Error(`${file} is not a bundled model (www/models.js)`);
  return m;
}

async function modelBytes(file) {
  const response = await fetch(`/models/${file}`);
  if (!response.ok) throw new Error(`models/${file}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

/**
 * Forward and QAT step timings on this page's main thread.
 * @param {{file: string, bits: number, forwardRuns: number, qat: {label: string, config: object, warmup: number, timed: number}[]}} args
 */
async function timeModel({ file, bits, forwardRuns, qat }) {
  const defaults = await pageDefaults();
  const m = bundled(file);
  const bytes = new Uint8Array(await modelBytes(file));
  const session = Session.load(bytes, m.inputShapes);
  try {
    const shape = session.summary().inputs[0].shape;
    const layout = pre.imageLayout(shape);
    const preprocess = pre.preset(m.preset, layout.width, layout.height, layout.layout);
    const frames = await sampleBitmaps();
    const ptqConfig = { ...defaults.ptq, weightBits: bits };
    let t0 = performance.now();
    session.calibrationBegin(ptqConfig);
    for (const bitmap of frames) {
      const { rgba, width, height } = rgbaOf(bitmap);
      session.calibrateRgba(rgba, width, height, preprocess);
    }
    const report = session.quantize();
    const ptqMs = performance.now() - t0;

    const x = normalizedTensor(frames[SAMPLE_IMAGES.findIndex(([f]) => f === m.image)] ?? frames[0], preprocess);
    const fwd = { fp32: [], int8: [] };
    const runners = { fp32: () => session.runVariant('fp32', [x]), int8: () => session.runVariant('ptq', [x]) };
    for (let i = 0; i < 3; i++) for (const r of Object.values(runners)) r();
    for (let i = 0; i < forwardRuns; i++) {
      for (const [k, r] of Object.entries(runners)) {
        t0 = performance.now();
        r();
        fwd[k].push(performance.now() - t0);
      }
    }

    const trainers = [];
    for (const { label, config, warmup, timed } of qat) {
      t0 = performance.now();
      const begun = session.qatBegin({ ...config, steps: 1_000_000, evalEvery: 2 });
      const beginMs = performance.now() - t0;
      const warm = [];
      // In order: {ms, eval}; `eval` steps also measured the held-out loss.
      const steps = [];
      // One FP32 forward after each timed step: step and forward sampled under the same
      // machine conditions, for a ratio that a slow or fast spell of a shared machine does not skew.
      const fp32 = [];
      for (let i = 0; i < warmup + timed; i++) {
        t0 = performance.now();
        const stats = session.qatStep(1);
        const ms = performance.now() - t0;
        if (!Number.isFinite(stats.loss)) throw new Error(`${label}: QAT loss ${stats.loss} at step ${stats.step}`);
        if (i < warmup) {
          warm.push(ms);
          continue;
        }
        steps.push({ ms, eval: stats.holdoutLoss != null });
        t0 = performance.now();
        runners.fp32();
        fp32.push(performance.now() - t0);
      }
      trainers.push({ label, config, mode: begun.mode, batchSize: begun.batchSize, beginMs, warm, steps, fp32 });
    }
    return {
      inputShape: shape,
      preprocess: m.preset,
      ptqConfig,
      calibrationFrames: frames.length,
      ptqMs,
      floatNodes: report.floatNodes.length,
      forward: fwd,
      forwardMedian: { fp32: median(fwd.fp32), int8: median(fwd.int8) },
      trainers,
    };
  } finally {
    session.free();
  }
}

/**
 * The page's default recipe in the page's engine worker.
 * @param {{file: string, bits: number, override?: object, budgetMs: number, minSteps: number}} args
 */
async function defaultRecipe({ file, bits, override = {}, budgetMs, minSteps }) {
  const defaults = await pageDefaults();
  const m = bundled(file);
  const client = new EngineClient({ url: new URL('/app/worker.js', location.href) });
  try {
    const loaded = await client.loadModel(await modelBytes(file), file, m.inputShapes);
    const layout = pre.imageLayout(loaded.inputs[0].shape);
    const preprocess = pre.preset(m.preset, layout.width, layout.height, layout.layout);
    const frames = await sampleBitmaps();
    const ptqConfig = { ...defaults.ptq, weightBits: bits };
    let t0 = performance.now();
    await client.calibrationBegin(ptqConfig);
    for (const stored of frames) await client.calibrate({ bitmap: await createImageBitmap(stored) }, preprocess);
    const ptq = await client.quantize();
    const ptqWallMs = performance.now() - t0;

    const config = { ...defaults.qat, ...override };
    // Per chunk of steps (the worker's first reply, done 0, is the plan: total steps and mode).
    const progress = [];
    let total = config.steps;
    let mode = config.mode;
    let cancelling = false;
    let run = null;
    t0 = performance.now();
    run = client.qat(config, {
      onProgress: (p) => {
        total = p.total ?? total;
        mode = p.mode ?? mode;
        if (!(p.done > 0)) return;
        progress.push({ done: p.done, elapsedMs: p.elapsedMs, loss: p.loss });
        if (cancelling || progress.length < 2 || p.done < minSteps || !total) return;
        const first = progress[0];
        const rate = (p.elapsedMs - first.elapsedMs) / Math.max(1, p.done - first.done);
        const projected = p.elapsedMs + (total - p.done) * rate;
        if (projected > budgetMs) {
          cancelling = true;
          run.cancel();
        }
      },
    });
    const result = await run.promise;
    const wallMs = performance.now() - t0;
    return {
      config,
      total: result.total ?? total,
      mode: result.mode ?? mode,
      ptqConfig,
      calibrationFrames: frames.length,
      ptqWallMs,
      ptqMs: ptq.ms,
      steps: result.steps,
      cancelled: result.cancelled,
      workerMs: result.ms,
      wallMs,
      loss: result.loss,
      progress,
    };
  } finally {
    client.terminate();
  }
}

window.qpBench = { timeModel, defaultRecipe, pageDefaults };

(async () => {
  try {
    await initOurEngine(glue, '/app/pkg/quant_playground.js');
    window.qpBench.info = { ours: engineInfo(), crossOriginIsolated, defaults: await pageDefaults() };
    document.body.classList.add('ready');
  } catch (err) {
    window.qpBench.error = String(err?.stack ?? err);
    document.body.classList.add('error');
  }
})();
