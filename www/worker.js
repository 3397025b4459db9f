// The engine worker: owns the wasm instance and answers the requests of protocol.js.
// The page never calls wasm directly, so heavy work never blocks rendering.
//
// Optional engine features (PTQ, QAT, export, ...) are detected from the methods the wasm
// `Session` has (protocol.js FEATURES); a request for a missing one fails with a
// `NotAvailableError`, which the page shows as "not available in this build".

import { initEngine } from './engine-build.js';
import { FEATURES, NOT_AVAILABLE, Reply, Req, serializeError } from './protocol.js';

const started = performance.now();

// Loaded with a dynamic import so that a missing or broken build is reported as an error
// reply with a message, not as an anonymous worker load failure.
const GLUE = new URL('./pkg/quant_playground.js', import.meta.url);
const engine = import(GLUE.href)
  .catch((err) => {
    throw new Error(`the engine's files could not be loaded (${err.message})`);
  })
  .then(async (wasm) => {
    // Fetch, compile and instantiate the wasm build this browser runs (engine-build.js).
    await initEngine(wasm, GLUE);
    return { wasm, initMs: performance.now() - started };
  });
engine.catch(() => {}); // reported to each request that needs the engine

/** The loaded model: a wasm `Session` and its file name. */
let model = null;

/** Ids of running requests that were asked to stop (CANCEL). */
const cancelled = new Set();
/** Ids of requests that can be cancelled, while they run. */
const cancellable = new Set();

class NotAvailableError extends Error {
  constructor(message) {
    super(message);
    this.name = NOT_AVAILABLE;
  }
}

/** A result that moves some of its buffers instead of copying them. */
class Transfer {
  constructor(value, list) {
    this.value = value;
    this.list = list;
  }
}

const FEATURE_LABELS = {
  runVariant: 'running the quantized variants',
  ptq: 'post-training quantization',
  layerErrors: 'per-layer errors',
  histogram: 'activation histograms',
  exportOnnx: 'ONNX export',
  qat: 'quantization-aware training',
  keepVariant: 'keeping the QAT model across restarts',
  sensitivity: 'the sensitivity analysis',
  labels: 'QAT with labelled images',
};

/** @param {object} proto  Session.prototype or a session */
function features(proto) {
  return Object.fromEntries(
    Object.entries(FEATURES).map(([feature, methods]) => [feature, methods.every((m) => typeof proto?.[m] === 'function')]),
  );
}

/** Throws a NotAvailableError unless the session has every method of `feature`. */
function need(session, feature) {
  const missing = FEATURES[feature].filter((m) => typeof session[m] !== 'function');
  if (missing.length) {
    throw new NotAvailableError(
      `${FEATURE_LABELS[feature]} is not available in this build of the engine (Session.${missing.join(', Session.')} missing)`,
    );
  }
}

function requireModel() {
  if (!model) throw new Error('no model is loaded');
  return model.session;
}

/** @param {import('./protocol.js').FrameData} frame */
function frameToRgba(frame) {
  if (frame?.bitmap) {
    const { bitmap } = frame;
    const { width, height } = bitmap;
    if (!width || !height) throw new Error('the frame is empty (0 pixels)');
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const { data } = ctx.getImageData(0, 0, width, height);
    return { rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width, height };
  }
  if (frame?.rgba) {
    return { rgba: new Uint8Array(frame.rgba), width: frame.width, height: frame.height };
  }
  throw new Error('the request carries no frame');
}

/** Lets queued messages (CANCEL) run. */
const yieldToEvents = () => new Promise((resolve) => setTimeout(resolve, 0));

/** An ArrayBuffer holding exactly the bytes of `view`, movable without copying twice. */
function ownBuffer(view) {
  if (view.byteOffset === 0 && view.byteLength === view.buffer.byteLength) return view.buffer;
  return view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
}

/** Outputs as plain objects with their own Float32Arrays (movable), and the buffers to move. */
function ownOutputs(outputs, buffers) {
  return Array.from(outputs, (o) => {
    const data = o.data instanceof Float32Array ? o.data : Float32Array.from(o.data);
    const own = new Float32Array(ownBuffer(data));
    buffers.push(own.buffer);
    return { name: o.name, shape: Array.from(o.shape), data: own };
  });
}

/** QAT's stepping (Req.QAT), once the labelled images are in the engine. */
async function trainQat(session, id, config, progress, t0) {
  // The engine fills in what the config leaves out (mode and steps by weight width).
  const plan = session.qatBegin(config) ?? {};
  const total = plan.steps ?? config.steps;
  const mode = plan.mode ?? config.mode ?? null;
  progress({ done: 0, total, mode, batchSize: plan.batchSize ?? null, frozenStem: plan.frozenStem ?? null, augmentation: plan.augmentation ?? null, loss: null, holdoutLoss: null, elapsedMs: 0 });
  cancellable.add(id);
  let last = { step: 0, loss: NaN, done: false };
  // The last label loss measured (a chunk that drew no labelled frame has none).
  let labelLoss = null;
  let report = null;
  // Chunks of about TARGET_MS, so that cancel and the page's frames get through.
  const TARGET_MS = 150;
  let chunk = 1;
  try {
    // Stops when cancelled, or when another model replaced this one (its session is freed).
    while (!cancelled.has(id) && model?.session === session) {
      const c0 = performance.now();
      const stats = session.qatStep(chunk);
      last = { ...stats, done: stats.done ?? stats.step >= total };
      labelLoss = stats.labelLoss ?? labelLoss;
      const spent = performance.now() - c0;
      progress({
        done: last.step,
        total,
        loss: last.loss,
        distillLoss: last.distillLoss ?? null,
        holdoutLoss: last.holdoutLoss ?? null,
        labelLoss: stats.labelLoss ?? null,
        labelledFrames: stats.labelledFrames ?? 0,
        elapsedMs: performance.now() - t0,
      });
      if (last.done) break;
      chunk = Math.max(1, Math.min(64, Math.round((chunk * TARGET_MS) / Math.max(spent, 1))));
      await yieldToEvents();
    }
    if (model?.session !== session) throw new Error('the model was replaced during training');
    report = session.qatFinish() ?? null;
  } finally {
    cancellable.delete(id);
    cancelled.delete(id);
  }
  return { steps: last.step, total, mode, loss: last.loss, labelLoss, labelledFrames: last.labelledFrames ?? 0, cancelled: !last.done, ms: performance.now() - t0, report };
}

/** @type {Record<string, (msg: import('./protocol.js').Request, progress: (p: object) => void) => Promise<unknown>>} */
const handlers = {
  async [Req.INFO]() {
    const { wasm, initMs } = await engine;
    return {
      ...wasm.engineInfo(),
      initMs,
      crossOriginIsolated: self.crossOriginIsolated,
      features: features(wasm.Session.prototype),
    };
  },

  async [Req.LOAD_MODEL]({ bytes, name, inputShapes }) {
    const { wasm } = await engine;
    const t0 = performance.now();
    const session = wasm.Session.load(new Uint8Array(bytes), inputShapes ?? undefined);
    model?.session.free();
    model = { session, name };
    return { name, loadMs: performance.now() - t0, ...session.summary() };
  },

  async [Req.RUN]({ frame, preprocess, variants = ['fp32'] }) {
    await engine;
    const session = requireModel();
    const { rgba, width, height } = frameToRgba(frame);
    const buffers = [];
    const results = [];
    for (const variant of variants) {
      const t0 = performance.now();
      try {
        let outputs;
        if (typeof session.runVariantRgba === 'function') {
          outputs = session.runVariantRgba(variant, rgba, width, height, preprocess ?? undefined);
        } else if (variant === 'fp32') {
          outputs = session.runRgba(rgba, width, height, preprocess ?? undefined);
        } else {
          need(session, 'runVariant');
        }
        const ms = performance.now() - t0;
        results.push({ variant, ms, outputs: ownOutputs(outputs, buffers) });
      } catch (err) {
        const error = serializeError(err);
        if (error.fatal) throw err;
        results.push({ variant, error });
      }
    }
    return new Transfer({ width, height, results }, buffers);
  },

  async [Req.CALIBRATION_BEGIN]({ config }) {
    await engine;
    const session = requireModel();
    need(session, 'ptq');
    session.calibrationBegin(config);
    return {};
  },

  async [Req.CALIBRATE]({ frame, preprocess }) {
    await engine;
    const session = requireModel();
    need(session, 'ptq');
    const { rgba, width, height } = frameToRgba(frame);
    const result = session.calibrateRgba(rgba, width, height, preprocess ?? undefined);
    return { frames: result?.frames ?? null };
  },

  async [Req.QUANTIZE]() {
    await engine;
    const session = requireModel();
    need(session, 'ptq');
    const t0 = performance.now();
    const report = session.quantize();
    return { ...report, ms: performance.now() - t0 };
  },

  async [Req.LAYER_ERRORS]({ variant }) {
    await engine;
    const session = requireModel();
    need(session, 'layerErrors');
    return Array.from(session.layerErrors(variant));
  },

  async [Req.HISTOGRAM]({ value }) {
    await engine;
    const session = requireModel();
    need(session, 'histogram');
    const h = session.histogram(value);
    return { ...h, counts: Array.from(h.counts ?? [], Number), clip: h.clip ? Array.from(h.clip) : null };
  },

  async [Req.EXPORT_ONNX]({ variant }) {
    await engine;
    const session = requireModel();
    need(session, 'exportOnnx');
    const bytes = ownBuffer(session.exportOnnx(variant));
    return new Transfer({ bytes }, [bytes]);
  },

  async [Req.QAT]({ id, config, labelled = [] }, progress) {
    await engine;
    const session = requireModel();
    need(session, 'qat');
    if (labelled.length) need(session, 'labels');
    const t0 = performance.now();
    // The labelled images of this run only (none: a run without labels), turned into RGBA as
    // calibration frames are, so the engine preprocesses them the same way.
    if (typeof session.qatLabelledClear === 'function') session.qatLabelledClear();
    try {
      for (const item of labelled) {
        const { rgba, width, height } = frameToRgba(item.frame);
        session.qatAddLabelledRgba(rgba, width, height, item.class);
      }
      return await trainQat(session, id, config, progress, t0);
    } finally {
      // Up to 59 MB of images: not kept past the run that needs them.
      if (model?.session === session && typeof session.qatLabelledClear === 'function') session.qatLabelledClear();
    }
  },

  async [Req.SENSITIVITY]({ id }, progress) {
    await engine;
    const session = requireModel();
    need(session, 'sensitivity');
    const t0 = performance.now();
    let p = session.sensitivityBegin();
    progress({ ...p, elapsedMs: 0 });
    cancellable.add(id);
    // Slices of about TARGET_MS (a step is one simulated run or one quantization), so that
    // cancel gets through.
    const TARGET_MS = 150;
    let chunk = 1;
    try {
      // Stops when cancelled, or when another model replaced this one (its session is freed).
      while (!p.finished && !cancelled.has(id) && model?.session === session) {
        const c0 = performance.now();
        p = session.sensitivityStep(chunk);
        const spent = performance.now() - c0;
        progress({ ...p, elapsedMs: performance.now() - t0 });
        chunk = Math.max(1, Math.min(256, Math.round((chunk * TARGET_MS) / Math.max(spent, 1))));
        await yieldToEvents();
      }
      if (model?.session !== session) throw new Error('the model was replaced during the sensitivity analysis');
    } finally {
      cancellable.delete(id);
      cancelled.delete(id);
    }
    const ranking = p.finished ? session.sensitivityResult() : null;
    return { cancelled: !p.finished, ms: performance.now() - t0, progress: p, ranking };
  },

  async [Req.VARIANT_STATE]({ variant }) {
    await engine;
    const session = requireModel();
    need(session, 'keepVariant');
    const state = session.variantState(variant);
    return new Transfer(state, state.values.flatMap((v) => (v.data ? [v.data.buffer] : [])));
  },

  async [Req.RESTORE_VARIANT]({ variant, state }) {
    await engine;
    const session = requireModel();
    need(session, 'keepVariant');
    return session.restoreVariant(variant, state) ?? null;
  },

  async [Req.LABEL_FOLDERS]({ folders, labels }) {
    await engine;
    const session = requireModel();
    need(session, 'labels');
    return session.labelFolders(folders, labels ?? undefined);
  },

  async [Req.CANCEL]({ target }) {
    const found = cancellable.has(target);
    if (found) cancelled.add(target);
    return { found };
  },
};

self.onmessage = async (event) => {
  const msg = event.data ?? {};
  const { id, type } = msg;
  try {
    const handler = Object.hasOwn(handlers, type) ? handlers[type] : null;
    if (!handler) throw new Error(`unknown request type: ${String(type)}`);
    const progress = (p) => self.postMessage({ ...p, type: Reply.PROGRESS, id });
    const result = await handler(msg, progress);
    if (result instanceof Transfer) {
      self.postMessage({ type: Reply.RESULT, id, result: result.value }, result.list);
    } else {
      self.postMessage({ type: Reply.RESULT, id, result });
    }
  } catch (err) {
    self.postMessage({ type: Reply.ERROR, id, error: serializeError(err) });
  }
};
