// FP32 latency of the shipped models in headless Chromium, one thread: our engine (the
// release build in www/pkg) beside onnxruntime-web (npm, wasm backend, numThreads 1, SIMD)
// in one page (bench/pages/fp32.html), on the same input tensor (a bundled image,
// preprocessed as the model expects). Both engines' outputs are compared, so the numbers are
// for the same model computing the same thing.
//
// The page is served by the bench's own instance of scripts/serve.mjs (same headers, the
// product's CSP unchanged) with extra mounts: /bench/ (bench/pages), /ort/ (onnxruntime-web's
// dist folder: its .mjs and .wasm), /pkg/ (www/pkg) and /models/. Nothing leaves localhost:
// the page fails the benchmark if it requests anything elsewhere.

import { readFileSync } from 'node:fs';
import path from 'node:path';

import { startServer } from '../../scripts/serve.mjs';
import { benchContext } from '../lib/page.mjs';

export const name = 'fp32';
export const description = 'FP32 latency in headless Chromium (1 thread): ours vs onnxruntime-web on the shipped models, same page, same input';

const WARMUP = 5;
// Timed runs per engine and model: `rounds` x `runsPerRound`, the engine order alternating
// between rounds so that a burst of load on the machine hits both. More runs for the small
// models (a few ms each), whose medians are the noisiest.

const MODELS = [
  {
    id: 'efficientnet_lite0',
    model: 'efficientnet_lite0.onnx',
    inputShape: [1, 3, 224, 224],
    rounds: 6,
    runsPerRound: 6,
    // (x - 127) / 128, the TF-Lite classifiers' normalisation.
    image: { image: 'chelsea.png', layout: 'nchw', mean: 127, std: 128, bgr: false },
  },
  {
    id: 'blazeface_front_128',
    model: 'blazeface_front_128.onnx',
    inputShape: [1, 128, 128, 3],
    rounds: 10,
    runsPerRound: 10,
    image: { image: 'astronaut.png', layout: 'nhwc', mean: 127.5, std: 127.5, bgr: false },
  },
  {
    id: 'ppocr_cls_mobile_v2',
    model: 'ppocr_cls_mobile_v2.onnx',
    inputShape: [1, 3, 48, 192],
    rounds: 10,
    runsPerRound: 10,
    inputName: 'x', // dynamic dims, fixed here (onnxruntime-web takes the tensor's shape)
    image: { image: 'text.png', layout: 'nchw', mean: 127.5, std: 127.5, bgr: true },
  },
];

const round = (x) => Math.round(x * 100) / 100;
const sig = (x) => Number(x.toPrecision(3));

export async function run(ctx) {
  const ortDist = path.join(ctx.root, 'node_modules', 'onnxruntime-web', 'dist');
  const ortVersion = JSON.parse(readFileSync(path.join(ortDist, '..', 'package.json'), 'utf8')).version;
  const server = await startServer({
    port: 0,
    mounts: [
      ['/bench/', path.join(ctx.root, 'bench', 'pages')],
      ['/ort/', ortDist],
      ['/pkg/', path.join(ctx.root, 'www', 'pkg')],
      ['/app/', path.join(ctx.root, 'www')],
      ['/models/', path.join(ctx.root, 'models')],
    ],
  });
  const browser = await ctx.browser();
  const { context, newPage, assertClean } = await benchContext(browser, server);
  try {
    const page = await newPage({ consolePrefix: '' });
    await page.goto(`${server.url}bench/fp32.html`);
    await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
    const info = await page.evaluate(() => window.qpBench.info ?? { error: window.qpBench.error });
    if (info.error) throw new Error(`bench page failed: ${info.error}`);
    if (!info.ours.simd128) throw new Error('www/pkg is not a SIMD128 build');
    ctx.log(`ours ${info.ours.version} (simd128 ${info.ours.simd128}), onnxruntime-web ${info.ort.version ?? ortVersion} (numThreads ${info.ort.numThreads}, simd ${info.ort.simd}), crossOriginIsolated ${info.crossOriginIsolated}`);

    const out = [];
    for (const m of MODELS) {
      const r = await page.evaluate((args) => window.qpBench.benchModel(args), {
        model: m.model,
        inputShape: m.inputShape,
        inputName: m.inputName,
        image: m.image,
        warmup: WARMUP,
        rounds: m.rounds,
        runsPerRound: m.runsPerRound,
      });
      const ratio = r.medianMs.ours / r.medianMs.ort;
      const diff = Math.max(...r.outputs.map((o) => o.maxRelDiff));
      const top = r.outputs.map((o) => `${o.name} argmax ${o.argmaxOurs}/${o.argmaxOrt}`).join(', ');
      ctx.log(
        `${m.id} ${JSON.stringify(m.inputShape)}: ours ${r.medianMs.ours.toFixed(2)} ms, onnxruntime-web ${r.medianMs.ort.toFixed(2)} ms, ratio ${ratio.toFixed(2)}, max rel diff ${diff.toExponential(2)} (${top}); load ${r.loadMs.ours.toFixed(0)} / ${r.loadMs.ort.toFixed(0)} ms`,
      );
      const runs = `${WARMUP} warm-up, ${m.rounds}x${m.runsPerRound} timed, engines alternating by round; input ${m.image.image} ${JSON.stringify(m.inputShape)}`;
      out.push(
        { metric: `${m.id}: ours (wasm SIMD128, 1 thread)`, unit: 'ms', value: round(r.medianMs.ours), samples: r.samples.ours.map(round), note: `${runs}; Session.load ${round(r.loadMs.ours)} ms` },
        {
          metric: `${m.id}: onnxruntime-web ${ortVersion} (wasm, 1 thread)`,
          unit: 'ms',
          value: round(r.medianMs.ort),
          samples: r.samples.ort.map(round),
          note: `${runs}; InferenceSession.create ${round(r.loadMs.ort)} ms${m === MODELS[0] ? ' (includes starting its wasm runtime)' : ''}`,
        },
        { metric: `${m.id}: ratio ours/onnxruntime-web`, unit: 'x', value: round(ratio), note: 'median / median; below 1 means ours is faster' },
        {
          metric: `${m.id}: max relative output difference`,
          unit: 'max|a-b|/max|b|',
          value: sig(diff),
          note: `ours vs onnxruntime-web on the last timed run; ${top}`,
        },
      );
    }
    assertClean();
    return out;
  } finally {
    await context.close();
    await server.close();
  }
}
