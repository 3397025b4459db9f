// Int8 (qs8) vs FP32 kernels in headless Chromium, one thread: the convolution layers of
// EfficientNet-Lite0 one by one (pointwise 1x1 at 112..7 px, depthwise 3x3/5x5 at stride 1
// and 2, the 3x3 stride-2 stem), BlazeFace's 5x5 stride-2 first convolution, a few GEMMs, and
// the SIMD128 peak they are measured against.
// The kernels are timed inside wasm by crate/src/bench_api.rs (the release build in www/pkg),
// driven from bench/pages/int8-kernels.html; each number is the median of several rounds, the
// f32 and qs8 runs alternating. Last, the f32 pieces of QAT's step on each pointwise layer
// (forward, input gradient, weight gradient by its two paths), which choose training's path.
//
// The peak is measured, not computed from a datasheet: a loop of nothing but
// `acc = i32x4.add(acc, i32x4.dot_i16x8_s(acc, b))` in 12 independent chains (the instruction
// pair the int8 GEMM issues per 8 MACs), i.e. what this CPU and V8 can do with SIMD128's
// widest integer dot product. The same loop with f32x4.mul + f32x4.add is given for the f32
// kernels (a lower bound: its chains are a multiply then an add).

import path from 'node:path';

import { startServer } from '../../scripts/serve.mjs';
import { benchContext } from '../lib/page.mjs';

export const name = 'int8-kernels';
export const description =
  'Int8 vs FP32 kernels in headless Chromium (1 thread): EfficientNet-Lite0 conv layers, GEMM GMAC/s, SIMD128 peak; QAT pointwise pieces';

// [name, in_c, out_c, h (= w), kernel, stride, depthwise, count in EfficientNet-Lite0]
export const EFFICIENTNET_LITE0 = [
  ['stem 3x3 s2 3->32 @224', 3, 32, 224, 3, 2, false, 1],
  ['dw 3x3 32 @112', 32, 32, 112, 3, 1, true, 1],
  ['pw 32->16 @112', 32, 16, 112, 1, 1, false, 1],
  ['pw 16->96 @112', 16, 96, 112, 1, 1, false, 1],
  ['dw 3x3 s2 96 @112', 96, 96, 112, 3, 2, true, 1],
  ['pw 96->24 @56', 96, 24, 56, 1, 1, false, 1],
  ['pw 24->144 @56', 24, 144, 56, 1, 1, false, 2],
  ['dw 3x3 144 @56', 144, 144, 56, 3, 1, true, 1],
  ['pw 144->24 @56', 144, 24, 56, 1, 1, false, 1],
  ['dw 5x5 s2 144 @56', 144, 144, 56, 5, 2, true, 1],
  ['pw 144->40 @28', 144, 40, 28, 1, 1, false, 1],
  ['pw 40->240 @28', 40, 240, 28, 1, 1, false, 2],
  ['dw 5x5 240 @28', 240, 240, 28, 5, 1, true, 1],
  ['pw 240->40 @28', 240, 40, 28, 1, 1, false, 1],
  ['dw 3x3 s2 240 @28', 240, 240, 28, 3, 2, true, 1],
  ['pw 240->80 @14', 240, 80, 14, 1, 1, false, 1],
  ['pw 80->480 @14', 80, 480, 14, 1, 1, false, 3],
  ['dw 3x3 480 @14', 480, 480, 14, 3, 1, true, 2],
  ['pw 480->80 @14', 480, 80, 14, 1, 1, false, 2],
  ['dw 5x5 480 @14', 480, 480, 14, 5, 1, true, 1],
  ['pw 480->112 @14', 480, 112, 14, 1, 1, false, 1],
  ['pw 112->672 @14', 112, 672, 14, 1, 1, false, 3],
  ['dw 5x5 672 @14', 672, 672, 14, 5, 1, true, 2],
  ['pw 672->112 @14', 672, 112, 14, 1, 1, false, 2],
  ['dw 5x5 s2 672 @14', 672, 672, 14, 5, 2, true, 1],
  ['pw 672->192 @7', 672, 192, 7, 1, 1, false, 1],
  ['pw 192->1152 @7', 192, 1152, 7, 1, 1, false, 4],
  ['dw 5x5 1152 @7', 1152, 1152, 7, 5, 1, true, 3],
  ['pw 1152->192 @7', 1152, 192, 7, 1, 1, false, 3],
  ['dw 3x3 1152 @7', 1152, 1152, 7, 3, 1, true, 1],
  ['pw 1152->320 @7', 1152, 320, 7, 1, 1, false, 1],
  ['pw 320->1280 @7', 320, 1280, 7, 1, 1, false, 1],
];

// [m (output channels), n (columns), k (depth)]: EfficientNet-like and one square-ish GEMM.
const GEMMS = [
  [96, 3136, 16],
  [240, 784, 40],
  [480, 196, 80],
  [672, 196, 112],
  [112, 196, 672],
  [1280, 49, 320],
  [256, 1024, 256],
];

const ROUNDS = 7;
const BATCH_MS = 25;
const PEAK = { rounds: 7, iterations: 2_000_000 };

const r2 = (x) => Math.round(x * 100) / 100;
const r3 = (x) => Math.round(x * 1000) / 1000;
const gmacs = (macs, ms) => macs / ms / 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export async function run(ctx) {
  const server = await startServer({
    port: 0,
    mounts: [
      ['/bench/', path.join(ctx.root, 'bench', 'pages')],
      ['/pkg/', path.join(ctx.root, 'www', 'pkg')],
      ['/app/', path.join(ctx.root, 'www')],
    ],
  });
  const browser = await ctx.browser();
  const { context, newPage, assertClean } = await benchContext(browser, server);
  try {
    const page = await newPage({ consolePrefix: '' });
    await page.goto(`${server.url}bench/int8-kernels.html`);
    await page.waitForSelector('body.ready, body.error', { timeout: 120_000 });
    const info = await page.evaluate(() => window.qpBench.info ?? { error: window.qpBench.error });
    if (info.error) throw new Error(`bench page failed: ${info.error}`);
    if (!info.engine.simd128) throw new Error('www/pkg is not a SIMD128 build');
    ctx.log(`engine ${info.engine.version} (simd128 ${info.engine.simd128}, relaxed SIMD ${info.engine.relaxedSimd}, relaxed dot in use ${info.engine.relaxedDot}), crossOriginIsolated ${info.crossOriginIsolated}`);

    const out = [];
    const peak = await page.evaluate((args) => window.qpBench.peak(args), PEAK);
    const peakF32 = median(peak.f32x4);
    // The int8 GEMM's own peak: the relaxed dot's where its tiles use it.
    const [peakDot, peakName] = peak.relaxed_dot ? [median(peak.relaxed_dot), 'relaxed_dot'] : [median(peak.dot_i16x8), 'dot_i16x8'];
    ctx.log(`peak: dot_i16x8+add ${median(peak.dot_i16x8).toFixed(1)} GMAC/s, f32x4 mul+add ${peakF32.toFixed(1)} GMAC/s${peak.relaxed_dot ? `, relaxed_dot ${peakDot.toFixed(1)} GMAC/s` : ''}`);
    if (peak.relaxed_dot) {
      out.push({
        metric: 'relaxed SIMD peak: i32x4.relaxed_dot_i8x16_i7x16_add_s',
        unit: 'GMAC/s',
        value: r2(peakDot),
        samples: peak.relaxed_dot.map(r2),
        note: `measured: a loop of only acc = relaxed_dot(a, b, acc) in 12 independent chains, 16 MACs per instruction; ${PEAK.iterations} iterations x ${PEAK.rounds} rounds`,
      });
    }
    out.push(
      {
        metric: 'SIMD128 peak: i32x4.dot_i16x8_s + i32x4.add',
        unit: 'GMAC/s',
        value: r2(median(peak.dot_i16x8)),
        samples: peak.dot_i16x8.map(r2),
        note: `measured: a loop of only acc = add(acc, dot_i16x8(acc, b)) in 12 independent chains, 8 MACs per pair; ${PEAK.iterations} iterations x ${PEAK.rounds} rounds`,
      },
      {
        metric: 'SIMD128 f32x4.mul + f32x4.add loop',
        unit: 'GMAC/s',
        value: r2(peakF32),
        samples: peak.f32x4.map(r2),
        note: 'measured like the dot loop, 4 MACs per pair; each chain is a multiply then an add, so a lower bound of the f32 peak',
      },
    );

    for (const [m, n, k] of GEMMS) {
      const r = await page.evaluate((args) => window.qpBench.gemm(args), { m, n, k, rounds: ROUNDS, batchMs: BATCH_MS });
      const q = gmacs(r.macs, r.median.qs8);
      const f = gmacs(r.macs, r.median.f32);
      const label = `gemm m=${m} n=${n} k=${k}`;
      ctx.log(`${label}: qs8 ${q.toFixed(1)} GMAC/s (${((100 * q) / peakDot).toFixed(0)}% of peak), f32 ${f.toFixed(1)} GMAC/s, ${(q / f).toFixed(2)}x`);
      const how = `1x1 conv incl. packing X; median of ${ROUNDS} rounds of ${r.iterations.qs8} (qs8) / ${r.iterations.f32} (f32) calls`;
      out.push(
        { metric: `${label}: qs8`, unit: 'GMAC/s', value: r2(q), samples: r.samples.qs8.map((ms) => r2(gmacs(r.macs, ms))), note: `${r3(r.median.qs8)} ms, ${((100 * q) / peakDot).toFixed(0)}% of the ${peakName} peak; ${how}` },
        { metric: `${label}: f32`, unit: 'GMAC/s', value: r2(f), samples: r.samples.f32.map((ms) => r2(gmacs(r.macs, ms))), note: `${r3(r.median.f32)} ms; ${how}` },
      );
    }

    const total = { all: { f32: 0, qs8: 0 }, pw: { f32: 0, qs8: 0 }, dw: { f32: 0, qs8: 0 }, stem: { f32: 0, qs8: 0 } };
    // One layer, f32 against qs8: its medians, logged and pushed as a speed-up row.
    const layer = async (model, label, inC, outC, h, k, stride, dw, count) => {
      const args = { inC, outC, h, w: h, k, stride, group: dw ? inC : 1, rounds: ROUNDS, batchMs: BATCH_MS };
      const r = await page.evaluate((a) => window.qpBench.conv(a), args);
      const ratio = r.median.f32 / r.median.qs8;
      const detail = `qs8 ${r3(r.median.qs8)} ms (${gmacs(r.macs, r.median.qs8).toFixed(1)} GMAC/s), f32 ${r3(r.median.f32)} ms (${gmacs(r.macs, r.median.f32).toFixed(1)} GMAC/s)`;
      ctx.log(`${model === 'EfficientNet-Lite0' ? '' : `${model} `}${label} x${count}: ${detail}, ${ratio.toFixed(2)}x`);
      out.push({
        metric: `${model} ${label} (x${count}): qs8 speedup`,
        unit: 'x',
        value: r2(ratio),
        note: `f32 median / qs8 median; ${detail}; ${ROUNDS} rounds alternating`,
      });
      return r.median;
    };
    for (const [label, inC, outC, h, k, stride, dw, count] of EFFICIENTNET_LITE0) {
      const median = await layer('EfficientNet-Lite0', label, inC, outC, h, k, stride, dw, count);
      const kind = dw ? 'dw' : k === 1 ? 'pw' : 'stem';
      for (const t of ['f32', 'qs8']) {
        total.all[t] += count * median[t];
        total[kind][t] += count * median[t];
      }
    }
    // BlazeFace's first convolution: 3 input channels at stride 2, as the stem, but 5x5.
    await layer('BlazeFace', 'conv 5x5 s2 3->24 @128', 3, 24, 128, 5, 2, false, 1);
    for (const [kind, label] of [['pw', 'pointwise 1x1'], ['dw', 'depthwise'], ['stem', 'stem'], ['all', 'all conv layers']]) {
      const t = total[kind];
      out.push({
        metric: `EfficientNet-Lite0 ${label}, sum: qs8 speedup`,
        unit: 'x',
        value: r2(t.f32 / t.qs8),
        note: `sum over the layers (x their count) of the medians: f32 ${r2(t.f32)} ms, qs8 ${r2(t.qs8)} ms`,
      });
    }
    out.push(
      { metric: 'EfficientNet-Lite0 all conv layers, sum: f32', unit: 'ms', value: r2(total.all.f32), note: 'kernels only (no other ops, no quantize/dequantize)' },
      { metric: 'EfficientNet-Lite0 all conv layers, sum: qs8', unit: 'ms', value: r2(total.all.qs8), note: 'kernels only (no other ops, no quantize/dequantize)' },
    );
    ctx.log(`sum of conv layers: f32 ${total.all.f32.toFixed(2)} ms, qs8 ${total.all.qs8.toFixed(2)} ms, ${(total.all.f32 / total.all.qs8).toFixed(2)}x`);

    // QAT's pointwise pieces (full mode trains weights: forward, dX and dW per frame), with the
    // two paths of dW that training chooses between by plane size.
    const parts = ['forward', 'dx', 'dw', 'dw_rows', 'dw_packed'];
    const qat = Object.fromEntries(parts.map((p) => [p, 0]));
    for (const [label, inC, outC, h, k, , dw, count] of EFFICIENTNET_LITE0) {
      if (dw || k !== 1) continue;
      const r = await page.evaluate((a) => window.qpBench.pointwiseTraining(a), { inC, outC, hw: h * h, parts, rounds: 5, batchMs: 20 });
      for (const p of parts) qat[p] += count * r.median[p];
      const detail = parts.map((p) => `${p} ${r3(r.median[p])}`).join(', ');
      ctx.log(`QAT ${label} x${count}: ${detail} ms`);
      out.push({ metric: `EfficientNet-Lite0 QAT ${label} (x${count}): dW / forward`, unit: 'x', value: r2(r.median.dw / r.median.forward), note: `ms per call, medians of 5 rotating rounds: ${detail}` });
    }
    for (const p of parts) {
      out.push({ metric: `EfficientNet-Lite0 QAT pointwise layers, sum: ${p}`, unit: 'ms', value: r2(qat[p]), note: 'one frame, f32 (training), sum over the layers x their count; dw is the path training takes, dw_rows and dw_packed its two candidates' });
    }
    ctx.log(`QAT pointwise sums: ${parts.map((p) => `${p} ${qat[p].toFixed(2)}`).join(', ')} ms`);
    assertClean();
    return out;
  } finally {
    await context.close();
    await server.close();
  }
}
