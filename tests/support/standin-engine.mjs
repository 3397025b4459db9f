// A stand-in for the engine's quantization API, to test the page's PTQ, QAT, insight,
// download and restart flows whatever the engine build can do. It is NOT the engine: it
// wraps the real wasm module (FP32 runs for real) and adds the Session methods of
// www/protocol.js FEATURES with fakes: PTQ/QAT outputs are the FP32 outputs with a small
// deterministic perturbation, SQNRs and histograms are made up, the exported "ONNX" is a
// few bytes. It replaces those methods even where the engine has them, so that these tests
// check the page alone; tests/e2e/playground.test.mjs checks the real engine.
//
// Served in place of /pkg/quant_playground.js (which it imports as ?real), so the worker
// and the page run unchanged.

const STANDIN_MODULE = `
export * from './quant_playground.js?real';
import init, { Session } from './quant_playground.js?real';
export default init;

const P = Session.prototype;
const states = new WeakMap();
const st = (s) => {
  if (!states.has(s)) states.set(s, { frames: 0, config: null, ptq: false, qat: false, training: null });
  return states.get(s);
};
const METHODS = ['mse', 'minMax', 'entropy', 'percentile'];

// Perturbs outputs deterministically: what a quantized variant would do, roughly.
function perturb(outputs, amount) {
  for (const o of outputs) {
    let scale = 0;
    for (const v of o.data) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < o.data.length; i++) o.data[i] += amount * scale * Math.sin(i * 12.9898);
  }
  return outputs;
}

P.calibrationBegin = function (config) {
  if (![8, 4].includes(config?.weightBits)) throw new Error('weightBits must be 8 or 4, got ' + config?.weightBits);
  if (typeof config.perChannel !== 'boolean' || typeof config.biasCorrection !== 'boolean') throw new Error('perChannel and biasCorrection must be booleans');
  if (!METHODS.includes(config.calibration?.method)) throw new Error('unknown calibration method ' + config.calibration?.method);
  if (config.calibration.method === 'percentile' && !(config.calibration.percentile >= 50 && config.calibration.percentile <= 100)) throw new Error('percentile out of range');
  if (!Array.isArray(config.keepFloat)) throw new Error('keepFloat must be an array');
  Object.assign(st(this), { frames: 0, config, ptq: false, qat: false });
};
P.calibrateRgba = function (rgba, width, height, preprocess) {
  if (!st(this).config) throw new Error('calibrationBegin was not called');
  this.runRgba(rgba, width, height, preprocess);
  return { frames: ++st(this).frames };
};
// Per-tensor errors as the engine reports them (quant/metrics.rs LayerError).
function layerErrors(summary, keepFloat, shift) {
  return summary.quantizable
    .filter((l) => !keepFloat.includes(l.name))
    .map((l, i) => ({ value: l.name + ':out', node: l.name, op: l.op, sqnrDb: 38 - (i % 7) * 3 + shift }));
}
P.quantize = function () {
  const s = st(this);
  if (!s.frames) throw new Error('no calibration frames');
  s.ptq = true;
  s.qat = false;
  const summary = this.summary();
  const bits = s.config.weightBits;
  const params = summary.quantizable.reduce((n, l) => n + l.params, 0);
  const layers = layerErrors(summary, s.config.keepFloat, bits === 4 ? -14 : 0);
  return {
    config: s.config,
    calibrationFrames: s.frames,
    fidelity: { frames: Math.min(s.frames, 32), outputs: summary.outputs.map((o) => ({ name: o.name, cosine: 0.998, sqnrDb: 24.1, maxAbsDiff: 0.3, classifier: null })), presence: null },
    layers,
    floatNodes: s.config.keepFloat.map((name) => ({ name, op: 'Conv', why: 'kept in float' })),
    quantizedTensors: layers.length,
    quantizedWeights: layers.length,
    weightBytes: Math.round((params * bits) / 8 + (summary.parameters - params) * 4),
    floatWeightBytes: summary.parameters * 4,
  };
};
P.runVariantRgba = function (variant, rgba, width, height, preprocess) {
  const s = st(this);
  if (variant !== 'fp32' && !s[variant]) throw new Error('there is no ' + variant.toUpperCase() + ' model yet');
  const outputs = this.runRgba(rgba, width, height, preprocess);
  return variant === 'fp32' ? outputs : perturb(outputs, variant === 'ptq' ? 0.01 : 0.004);
};
P.layerErrors = function (variant) {
  const s = st(this);
  if (!s[variant]) throw new Error('there is no ' + variant.toUpperCase() + ' model yet');
  return layerErrors(this.summary(), s.config.keepFloat, variant === 'qat' ? 4 : 0);
};
P.histogram = function (tensor) {
  if (!st(this).ptq) throw new Error('calibrate first');
  const counts = Array.from({ length: 80 }, (_, i) => Math.round(5000 * Math.exp(-(((i - 40) / 12) ** 2))));
  return { start: -4, binWidth: 0.1, counts, min: -3.95, max: 3.95, clip: [-2.5, 2.5] };
};
P.exportOnnx = function (variant) {
  if (!st(this)[variant]) throw new Error('there is no ' + variant.toUpperCase() + ' model yet');
  return new TextEncoder().encode('stand-in ' + variant + ' model');
};
P.qatBegin = function (config) {
  const s = st(this);
  if (!s.ptq) throw new Error('QAT starts from PTQ: quantize first');
  const bad =
    ('steps' in config && !(config.steps > 0)) ||
    ('lr' in config && !(config.lr > 0)) ||
    ('mode' in config && !['scales', 'full'].includes(config.mode)) ||
    ('freezeStem' in config && !(config.freezeStem >= 0 && config.freezeStem <= 1)) ||
    ('freezeStemAt' in config && !(config.freezeStemAt >= 0 && config.freezeStemAt < 1));
  if (bad) throw new Error('bad QAT config ' + JSON.stringify(config));
  // The engine's default recipe: the mode by weight width, the steps by mode.
  const mode = config.mode ?? (s.config.weightBits < 8 ? 'full' : 'scales');
  const steps = config.steps ?? (mode === 'full' ? 300 : 100);
  s.training = { steps, step: 0 };
  s.qat = false;
  // The stem as the engine reports it: the first layers within the share of the work asked
  // (by default 0.3 in full mode), frozen after a share of the steps (by default a third).
  const share = config.freezeStem ?? (mode === 'full' ? 0.3 : 0);
  const fromStep = Math.round((config.freezeStemAt ?? 1 / 3) * steps);
  const frozenStem = { layers: share > 0 ? ['stem_conv', 'stem_dw'].slice(0, share < 0.1 ? 1 : 2) : [], macsShare: share > 0 ? Math.min(share, 0.18) : 0, weights: share > 0 ? 1500 : 0, totalWeights: 100000, fromStep };
  return { steps, mode, batchSize: mode === 'full' ? 8 : 4, frozenStem };
};
P.qatStep = function (n) {
  const t = st(this).training;
  const until = performance.now() + 4 * n; // 4 ms a step
  while (performance.now() < until);
  const before = t.step;
  t.step = Math.min(t.steps, t.step + n);
  // A held-out loss every 10 steps, as the engine's eval_every does.
  const holdoutLoss = Math.floor(before / 10) !== Math.floor(t.step / 10) ? 1.1 / (1 + 0.1 * t.step) : null;
  return { step: t.step, loss: 1 / (1 + 0.1 * t.step), holdoutLoss, done: t.step >= t.steps };
};
P.qatFinish = function () {
  const s = st(this);
  s.training = null;
  s.qat = true;
};
// The saved QAT state: the shape of the engine's (one entry per value), with a marker the
// restore checks, so a state that did not travel intact is refused.
P.variantState = function (variant) {
  if (!st(this)[variant]) throw new Error('there is no ' + variant.toUpperCase() + ' model yet');
  return { values: [{ name: 'stand-in weight', quant: { kind: 'weight' }, data: new Float32Array([1, 2, 3, 4]) }] };
};
P.restoreVariant = function (variant, state) {
  const s = st(this);
  if (!s.ptq) throw new Error('QAT is restored on top of PTQ: quantize first');
  const v = state?.values?.[0];
  if (variant !== 'qat' || v?.name !== 'stand-in weight' || !(v.data instanceof Float32Array) || v.data[3] !== 4) throw new Error('the saved QAT state does not match');
  const report = P.quantize.call(this); // (a report of the same form; it resets s.qat)
  s.qat = true;
  return report;
};
`;

/**
 * Serves the stand-in in place of the engine's module for every page of `context`.
 * @param {import('playwright-core').BrowserContext} context
 * @param {Record<string, string>} headers  the server's headers (COEP needs them on workers' imports)
 */
export async function installStandinEngine(context, headers) {
  await context.route(
    (url) => url.pathname === '/pkg/quant_playground.js' && url.search === '',
    (route) => route.fulfill({ status: 200, headers, contentType: 'text/javascript', body: STANDIN_MODULE }),
  );
}
