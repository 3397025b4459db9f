// The int8 benchmark page. Per model, on one input tensor and one thread:
// - ours FP32 and ours int8: the model loaded once, calibrated on bundled images
//   (calibrationBegin / calibrate / quantize: the default PTQ recipe), then the `fp32` and
//   `ptq` variants timed with runVariant (the int8 engine runs `ptq`);
// - onnxruntime-web FP32 on the same file, int8 on onnxruntime's own QDQ model (quantize_static,
//   tests/fixtures/ort-qdq/, uint8 activations) and on our exported QDQ model (exportOnnx).
// Variants are timed in rounds whose order rotates, so a burst of load hits all of them.
// Driven by bench/benchmarks/int8.mjs through window.qpBench; body.ready / body.error as in fp32.js.

import * as glue from '/pkg/quant_playground.js';
import * as ort from '/ort/ort.wasm.min.mjs';

import { imageTensor, initOurEngine, median } from './shared.js';

const { Session, engineInfo, profileModel, profileQat } = glue;

ort.env.wasm.numThreads = 1;
ort.env.wasm.simd = true;
ort.env.wasm.proxy = false;
ort.env.wasm.wasmPaths = new URL('/ort/', location.href).href;
ort.env.logLevel = 'error';

const argmax = (xs) => xs.reduce((best, v, i) => (v > xs[best] ? i : best), 0);

async function ortSession(bytes) {
  return ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
}

async function benchModel({ model, ortInt8, inputShape, inputName, image, calibration, warmup, rounds, runsPerRound, only }) {
  const bytes = new Uint8Array(await (await fetch(`/models/${model}`)).arrayBuffer());
  const [width, height] = image.layout === 'nchw' ? [inputShape[3], inputShape[2]] : [inputShape[2], inputShape[1]];
  const ours = Session.load(bytes, inputName ? { [inputName]: inputShape } : undefined);
  let t0 = performance.now();
  ours.calibrationBegin({});
  for (const name of calibration) ours.calibrate([await imageTensor({ ...image, image: name, width, height })]);
  const report = ours.quantize();
  const quantizeMs = performance.now() - t0;
  const exported = ours.exportOnnx('ptq');
  const input = ours.summary().inputs[0];
  const x = await imageTensor({ ...image, width, height });
  const feeds = { [input.name]: new ort.Tensor('float32', x, inputShape) };
  // `only`: a subset of the runners below (ours alone, to compare our two wasm builds).
  const wanted = (n) => !only || only.includes(n);
  const sessions = {};
  if (wanted('ortFp32')) sessions.ortFp32 = await ortSession(bytes);
  if (wanted('ortInt8')) sessions.ortInt8 = await ortSession(new Uint8Array(await (await fetch(`/fixtures/${ortInt8}`)).arrayBuffer()));
  if (wanted('ortOurQdq')) sessions.ortOurQdq = await ortSession(exported);
  const runners = Object.fromEntries(
    Object.entries({
      oursFp32: () => ours.runVariant('fp32', [x]),
      oursInt8: () => ours.runVariant('ptq', [x]),
      ortFp32: () => sessions.ortFp32.run(feeds),
      ortInt8: () => sessions.ortInt8.run(feeds),
      ortOurQdq: () => sessions.ortOurQdq.run(feeds),
    }).filter(([n]) => wanted(n)),
  );
  const names = Object.keys(runners);
  const last = {};
  for (let i = 0; i < warmup; i++) for (const n of names) last[n] = await runners[n]();
  const samples = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < rounds; r++) {
    const order = names.map((_, i) => names[(i + r) % names.length]);
    for (const n of order) {
      for (let i = 0; i < runsPerRound; i++) {
        const t = performance.now();
        last[n] = await runners[n]();
        samples[n].push(performance.now() - t);
      }
    }
  }
  // First output's argmax per variant (ours: arrays of {name, data}; onnxruntime: a map by name).
  const first = (out) => (Array.isArray(out) ? out[0].data : out[Object.keys(out)[0]].data);
  const argmaxes = Object.fromEntries(names.map((n) => [n, argmax(first(last[n]))]));
  ours.free();
  for (const s of Object.values(sessions)) await s.release();
  return {
    samples,
    medianMs: Object.fromEntries(names.map((n) => [n, median(samples[n])])),
    quantizeMs,
    calibrationFrames: calibration.length,
    floatNodes: report.floatNodes.map((f) => `${f.op} ${f.name}: ${f.why}`),
    argmaxes,
  };
}

/**
 * Per-node profiles of our FP32 engine on the model and of our int8 engine on its PTQ export
 * (calibrated as in benchModel): profileModel (crate/src/bench_api.rs) for each.
 */
async function profile({ model, inputShape, image, calibration, runs }) {
  const bytes = new Uint8Array(await (await fetch(`/models/${model}`)).arrayBuffer());
  const [width, height] = image.layout === 'nchw' ? [inputShape[3], inputShape[2]] : [inputShape[2], inputShape[1]];
  const ours = Session.load(bytes, undefined);
  ours.calibrationBegin({});
  for (const name of calibration) ours.calibrate([await imageTensor({ ...image, image: name, width, height })]);
  ours.quantize();
  const qdq = ours.exportOnnx('ptq');
  ours.free();
  return { fp32: JSON.parse(profileModel(bytes, 'fp32', runs)), int8: JSON.parse(profileModel(qdq, 'int8', runs)) };
}

/**
 * Where a QAT step's time goes in wasm: profileQat (crate/src/bench_api.rs) on the calibration
 * images, preprocessed as in benchModel, with the default PTQ settings and a QAT config.
 */
async function qatProfile({ model, inputShape, image, calibration, steps, config }) {
  const bytes = new Uint8Array(await (await fetch(`/models/${model}`)).arrayBuffer());
  const [width, height] = image.layout === 'nchw' ? [inputShape[3], inputShape[2]] : [inputShape[2], inputShape[1]];
  const tensors = [];
  for (const name of calibration) tensors.push(await imageTensor({ ...image, image: name, width, height }));
  const frames = new Float32Array(tensors.reduce((n, t) => n + t.length, 0));
  tensors.reduce((at, t) => (frames.set(t, at), at + t.length), 0);
  return JSON.parse(profileQat(bytes, frames, steps, JSON.stringify(config)));
}

window.qpBench = { benchModel, profile, qatProfile };

(async () => {
  try {
    await initOurEngine(glue);
    window.qpBench.info = { ours: engineInfo(), ort: { version: ort.env.versions?.web ?? ort.env.versions?.common }, crossOriginIsolated };
    document.body.classList.add('ready');
  } catch (err) {
    window.qpBench.error = String(err?.stack ?? err);
    document.body.classList.add('error');
  }
})();
