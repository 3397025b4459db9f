// End-to-end int8 latency in headless Chromium, one thread (bench/pages/int8.html): our int8
// engine against our FP32 engine on the same page and input, and onnxruntime-web running the
// FP32 model, onnxruntime's own int8 QDQ model (quantize_static, tests/fixtures/ort-qdq/,
// uint8 activations, per-channel int8 weights) and our exported QDQ model. Targets (issue #4):
// ours int8 >= 2x ours FP32 and >= 2x onnxruntime-web int8 on EfficientNet-Lite0.
// The page runs the engine build the playground would choose (www/engine-build.js); where that
// is the relaxed-SIMD build with its dot product in use, a second page runs ours again on the
// SIMD128 build, to show what the relaxed dot brings.

import { readFileSync } from 'node:fs';
import path from 'node:path';

import { startServer } from '../../scripts/serve.mjs';
import { benchContext } from '../lib/page.mjs';

export const name = 'int8';
export const description = 'int8 vs FP32 latency in headless Chromium (1 thread): our engines and onnxruntime-web (FP32, its QDQ int8, our QDQ export)';

const WARMUP = 3;
export const CALIBRATION = ['astronaut.png', 'coffee.png', 'chelsea.png', 'rocket.jpg', 'flower.jpg', 'horse.png', 'china.jpg', 'camera.png'];

export const MODELS = [
  {
    id: 'efficientnet_lite0',
    model: 'efficientnet_lite0.onnx',
    ortInt8: 'efficientnet_lite0.u8.onnx',
    inputShape: [1, 3, 224, 224],
    rounds: 4,
    runsPerRound: 5,
    image: { image: 'chelsea.png', layout: 'nchw', mean: 127, std: 128, bgr: false },
  },
  {
    id: 'blazeface_front_128',
    model: 'blazeface_front_128.onnx',
    ortInt8: 'blazeface_front_128.u8.onnx',
    inputShape: [1, 128, 128, 3],
    rounds: 6,
    runsPerRound: 10,
    image: { image: 'astronaut.png', layout: 'nhwc', mean: 127.5, std: 127.5, bgr: false },
  },
];

const round = (x) => Math.round(x * 100) / 100;

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
      ['/fixtures/', path.join(ctx.root, 'tests', 'fixtures', 'ort-qdq')],
    ],
  });
  const browser = await ctx.browser();
  const { context, newPage, assertClean } = await benchContext(browser, server);
  try {
    const page = await newPage();
    await page.goto(`${server.url}bench/int8.html`);
    await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
    const info = await page.evaluate(() => window.qpBench.info ?? { error: window.qpBench.error });
    if (info.error) throw new Error(`bench page failed: ${info.error}`);
    if (!info.ours.simd128) throw new Error('www/pkg is not a SIMD128 build');
    const build = info.ours.relaxedDot ? 'relaxed SIMD build, its int8 dot product in use' : info.ours.relaxedSimd ? 'relaxed SIMD build, its dot product not exact here (unused)' : 'SIMD128 build';
    ctx.log(`ours: ${build}`);
    const out = [];
    for (const m of MODELS) {
      const r = await page.evaluate((args) => window.qpBench.benchModel(args), { ...m, calibration: CALIBRATION, warmup: WARMUP });
      const t = r.medianMs;
      ctx.log(
        `${m.id}: ours fp32 ${t.oursFp32.toFixed(2)} ms, ours int8 ${t.oursInt8.toFixed(2)} ms (x${(t.oursFp32 / t.oursInt8).toFixed(2)}); ` +
          `onnxruntime-web fp32 ${t.ortFp32.toFixed(2)}, its int8 ${t.ortInt8.toFixed(2)}, our QDQ ${t.ortOurQdq.toFixed(2)} ms; argmax ${JSON.stringify(r.argmaxes)}`,
      );
      if (r.floatNodes.length) ctx.log(`  in float: ${r.floatNodes.join('; ')}`);
      const runs = `${WARMUP} warm-up, ${m.rounds}x${m.runsPerRound} timed, variants rotating by round; input ${m.image.image}; ours: ${build}`;
      const row = (key, label) => ({ metric: `${m.id}: ${label}`, unit: 'ms', value: round(t[key]), samples: r.samples[key].map(round), note: runs });
      out.push(
        row('oursFp32', 'ours FP32'),
        row('oursInt8', 'ours int8 (PTQ W8A8)'),
        { metric: `${m.id}: speed-up ours int8 vs ours FP32`, unit: 'x', value: round(t.oursFp32 / t.oursInt8), note: `target >= 2 on EfficientNet-Lite0; PTQ on ${r.calibrationFrames} images took ${round(r.quantizeMs)} ms` },
        row('ortFp32', `onnxruntime-web ${ortVersion} FP32`),
        row('ortInt8', `onnxruntime-web ${ortVersion} int8 (its quantize_static QDQ, u8 activations)`),
        row('ortOurQdq', `onnxruntime-web ${ortVersion} on our QDQ export`),
        { metric: `${m.id}: speed-up ours int8 vs onnxruntime-web int8`, unit: 'x', value: round(t.ortInt8 / t.oursInt8), note: 'target >= 2 on EfficientNet-Lite0' },
      );
    }
    if (info.ours.relaxedDot) {
      const simd = await newPage();
      await simd.goto(`${server.url}bench/int8.html?build=simd128`);
      await simd.waitForSelector('body.ready, body.error', { timeout: 60_000 });
      const simdInfo = await simd.evaluate(() => window.qpBench.info ?? { error: window.qpBench.error });
      if (simdInfo.error || simdInfo.ours.relaxedSimd) throw new Error(`the SIMD128 build did not load: ${simdInfo.error ?? 'relaxed build instead'}`);
      for (const m of MODELS) {
        const r = await simd.evaluate((args) => window.qpBench.benchModel(args), { ...m, calibration: CALIBRATION, warmup: WARMUP, only: ['oursFp32', 'oursInt8'] });
        const t = r.medianMs;
        ctx.log(`${m.id} on the SIMD128 build: ours fp32 ${t.oursFp32.toFixed(2)} ms, ours int8 ${t.oursInt8.toFixed(2)} ms (x${(t.oursFp32 / t.oursInt8).toFixed(2)})`);
        const note = `${WARMUP} warm-up, ${m.rounds}x${m.runsPerRound} timed, alternating; the SIMD128 build (no relaxed dot), after the runs above`;
        out.push(
          { metric: `${m.id}: ours int8 on the SIMD128 build`, unit: 'ms', value: round(t.oursInt8), samples: r.samples.oursInt8.map(round), note },
          { metric: `${m.id}: speed-up ours int8 vs ours FP32, SIMD128 build`, unit: 'x', value: round(t.oursFp32 / t.oursInt8), note },
        );
      }
    }
    assertClean();
    return out;
  } finally {
    await context.close();
    await server.close();
  }
}
