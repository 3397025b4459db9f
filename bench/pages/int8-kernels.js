// The int8 kernel benchmark page: the release build in www/pkg exports kernel microbenchmarks
// (crate/src/bench_api.rs) that build a convolution, then time calls of it inside wasm. Driven
// by bench/benchmarks/int8-kernels.mjs through window.qpBench; sets body.ready (or body.error)
// once the module is initialised and warmed up.

import * as glue from '/pkg/quant_playground.js';

import { initOurEngine, median } from './shared.js';

const { benchConv, benchGemm, benchPeak, benchPointwiseTraining, convMacs, engineInfo } = glue;

const pause = () => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Times a pair of measurements `f(kind, iterations) -> ms per call` for kinds `a` and `b`:
 * calibrates the iterations so one batch takes about `batchMs`, then `rounds` rounds, the
 * order of the two kinds alternating (a burst of load on the machine hits both).
 */
async function pair(f, [a, b], { rounds, batchMs }) {
  const probe = (kind) => Math.max(f(kind, 1), 1e-3);
  const iterations = {};
  for (const kind of [a, b]) iterations[kind] = Math.max(1, Math.round(batchMs / probe(kind)));
  const samples = { [a]: [], [b]: [] };
  for (let r = 0; r < rounds; r++) {
    for (const kind of r % 2 ? [b, a] : [a, b]) {
      samples[kind].push(f(kind, iterations[kind]));
      await pause();
    }
  }
  return { samples, iterations, median: { [a]: median(samples[a]), [b]: median(samples[b]) } };
}

/** One convolution shape, both kinds. */
async function conv({ inC, outC, h, w, k, stride, group, rounds, batchMs }) {
  const macs = convMacs(inC, outC, h, w, k, stride, group);
  const f = (kind, it) => benchConv(kind, inC, outC, h, w, k, stride, group, it);
  return { macs, ...(await pair(f, ['f32', 'qs8'], { rounds, batchMs })) };
}

/** One GEMM (m channels x n columns x depth k), both kinds. */
async function gemm({ m, n, k, rounds, batchMs }) {
  const f = (kind, it) => benchGemm(kind, m, n, k, it);
  return { macs: m * n * k, ...(await pair(f, ['f32', 'qs8'], { rounds, batchMs })) };
}

/** GMAC/s of the pure multiply-accumulate loops, `rounds` times each. */
async function peak({ rounds, iterations }) {
  // The relaxed dot's loop where the GEMM uses it (the relaxed-SIMD build, exact here).
  const out = { dot_i16x8: [], f32x4: [], ...(engineInfo().relaxedDot ? { relaxed_dot: [] } : {}) };
  for (let r = 0; r < rounds; r++) {
    for (const kind of Object.keys(out)) {
      out[kind].push(benchPeak(kind, iterations));
      await pause();
    }
  }
  return out;
}

/**
 * The pieces of a pointwise convolution's QAT step on `hw` pixels (`parts`: forward, dx, dw,
 * dw_rows, dw_packed; see crate/src/train/ops/conv.rs), in `rounds` rounds, the order of the
 * parts rotating: the median ms per call of each.
 */
async function pointwiseTraining({ inC, outC, hw, parts, rounds, batchMs }) {
  const iterations = {};
  const samples = {};
  for (const p of parts) {
    iterations[p] = Math.max(1, Math.round(batchMs / Math.max(benchPointwiseTraining(p, inC, outC, hw, 1), 1e-3)));
    samples[p] = [];
  }
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < parts.length; i++) {
      const p = parts[(i + r) % parts.length];
      samples[p].push(benchPointwiseTraining(p, inC, outC, hw, iterations[p]));
      await pause();
    }
  }
  return { samples, iterations, median: Object.fromEntries(parts.map((p) => [p, median(samples[p])])) };
}

window.qpBench = { conv, gemm, peak, pointwiseTraining };

(async () => {
  try {
    await initOurEngine(glue);
    // Warm-up: V8 compiles wasm with its baseline compiler first and swaps in optimised code
    // in the background; run every entry point until that has happened.
    for (let i = 0; i < 30; i++) {
      benchPeak('dot_i16x8', 20000);
      benchPeak('f32x4', 20000);
      if (engineInfo().relaxedDot) benchPeak('relaxed_dot', 20000);
      for (const kind of ['f32', 'qs8']) {
        benchConv(kind, 16, 16, 14, 14, 1, 1, 1, 2);
        for (const [k, stride] of [[3, 1], [3, 2], [5, 1], [5, 2]]) benchConv(kind, 16, 16, 14, 14, k, stride, 16, 2);
        benchConv(kind, 3, 8, 16, 16, 3, 2, 1, 2);
      }
      for (const part of ['forward', 'dx', 'dw', 'dw_rows', 'dw_packed']) benchPointwiseTraining(part, 16, 24, 196, 2);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    window.qpBench.info = { engine: engineInfo(), crossOriginIsolated };
    document.body.classList.add('ready');
  } catch (err) {
    window.qpBench.error = String(err?.stack ?? err);
    document.body.classList.add('error');
  }
})();
