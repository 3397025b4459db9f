// The FP32 benchmark page: our engine (the release build in www/pkg) and onnxruntime-web
// (wasm backend, 1 thread, SIMD) in one page, on the same input tensor. Driven by
// bench/benchmarks/fp32.mjs through window.qpBench; sets body.ready (or body.error) once
// both engines are initialised.
//
// URLs (the bench's own server): /pkg/ (www/pkg), /ort/ (node_modules/onnxruntime-web/dist),
// /models/ (models/). Everything comes from this origin.

import * as glue from '/pkg/quant_playground.js';
import * as ort from '/ort/ort.wasm.min.mjs';

import { imageTensor, initOurEngine, median } from './shared.js';

const { Session, engineInfo } = glue;

ort.env.wasm.numThreads = 1; // no worker threads
ort.env.wasm.simd = true; // fixed-width SIMD (the default; the only build shipped)
ort.env.wasm.proxy = false; // run on this thread, like our engine here
ort.env.wasm.wasmPaths = new URL('/ort/', location.href).href;
ort.env.logLevel = 'error';

/** max |a - b| / max |b| over the whole tensor (b: the reference). */
function relDiff(a, b) {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    ref = Math.max(ref, Math.abs(b[i]));
  }
  return ref > 0 ? err / ref : err;
}

const argmax = (xs) => xs.reduce((best, v, i) => (v > xs[best] ? i : best), 0);

/**
 * Loads one model in both engines, warms up, then times `rounds` rounds of `runsPerRound`
 * runs per engine, the engine order alternating between rounds (so a burst of load on the
 * machine hits both). Returns the samples (ms), load times and the output comparison.
 */
async function benchModel({ model, inputShape, inputName, image, warmup, rounds, runsPerRound }) {
  const bytes = new Uint8Array(await (await fetch(`/models/${model}`)).arrayBuffer());

  let t0 = performance.now();
  const ours = Session.load(bytes, inputName ? { [inputName]: inputShape } : undefined);
  const oursLoadMs = performance.now() - t0;
  const summary = ours.summary();
  const input = summary.inputs[0];
  if (JSON.stringify(input.shape) !== JSON.stringify(inputShape)) {
    throw new Error(`${model}: our engine took input shape ${JSON.stringify(input.shape)}, expected ${JSON.stringify(inputShape)}`);
  }

  t0 = performance.now();
  const ortSession = await ort.InferenceSession.create(bytes, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3, // errors only: it warns about unused initializers in BlazeFace
  });
  const ortLoadMs = performance.now() - t0;
  if (ortSession.inputNames.length !== 1 || ortSession.inputNames[0] !== input.name) {
    throw new Error(`${model}: onnxruntime-web inputs ${ortSession.inputNames.join(', ')}, ours ${input.name}`);
  }

  const x = await imageTensor({ ...image, width: image.layout === 'nchw' ? inputShape[3] : inputShape[2], height: image.layout === 'nchw' ? inputShape[2] : inputShape[1] });
  const feeds = { [input.name]: new ort.Tensor('float32', x, inputShape) };

  const runOurs = () => ours.run([x]);
  const runOrt = () => ortSession.run(feeds);

  let lastOurs;
  let lastOrt;
  for (let i = 0; i < warmup; i++) {
    lastOurs = runOurs();
    lastOrt = await runOrt();
  }
  const samples = { ours: [], ort: [] };
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? ['ours', 'ort'] : ['ort', 'ours'];
    for (const engine of order) {
      for (let i = 0; i < runsPerRound; i++) {
        if (engine === 'ours') {
          const t = performance.now();
          lastOurs = runOurs();
          samples.ours.push(performance.now() - t);
        } else {
          const t = performance.now();
          lastOrt = await runOrt();
          samples.ort.push(performance.now() - t);
        }
      }
    }
  }

  // Outputs: matched by name (both engines keep the ONNX names).
  const outputs = lastOurs.map((o) => {
    const theirs = lastOrt[o.name];
    if (!theirs) throw new Error(`${model}: onnxruntime-web has no output '${o.name}' (it has ${ortSession.outputNames.join(', ')})`);
    if (JSON.stringify(Array.from(theirs.dims)) !== JSON.stringify(o.shape)) {
      throw new Error(`${model}: output '${o.name}' is ${JSON.stringify(o.shape)} in ours, ${JSON.stringify(theirs.dims)} in onnxruntime-web`);
    }
    return { name: o.name, shape: o.shape, maxRelDiff: relDiff(o.data, theirs.data), argmaxOurs: argmax(o.data), argmaxOrt: argmax(theirs.data) };
  });

  ours.free();
  await ortSession.release();
  return {
    model,
    inputShape,
    samples,
    medianMs: { ours: median(samples.ours), ort: median(samples.ort) },
    loadMs: { ours: oursLoadMs, ort: ortLoadMs },
    outputs,
  };
}

window.qpBench = { benchModel };

(async () => {
  try {
    await initOurEngine(glue);
    window.qpBench.info = {
      ours: engineInfo(),
      ort: { version: ort.env.versions?.web ?? ort.env.versions?.common, numThreads: ort.env.wasm.numThreads, simd: ort.env.wasm.simd },
      crossOriginIsolated,
    };
    document.body.classList.add('ready');
  } catch (err) {
    window.qpBench.error = String(err?.stack ?? err);
    document.body.classList.add('error');
  }
})();
