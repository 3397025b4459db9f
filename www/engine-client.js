// The page's side of the worker protocol (protocol.js): each request becomes a Promise.
//
// - Requests get ids; replies are matched by id. `progress` replies go to onProgress.
// - Each request has a timeout; a timed-out worker is considered hung and is replaced.
// - If the worker crashes (load failure, uncaught error, a fatal error reply), every pending
//   request is rejected and the worker is replaced, lazily, on the next request. A `restart`
//   event is dispatched just before that request is sent, so the page can re-send its state
//   (model, settings) first: messages reach the worker in the order they are posted.

import { NOT_AVAILABLE, Reply, Req } from './protocol.js';

/** An error from the engine or from talking to it. */
export class EngineError extends Error {
  /**
   * @param {string} message
   * @param {{name?: string, fatal?: boolean, kind?: 'engine' | 'timeout' | 'crash'}} [details]
   */
  constructor(message, { name = 'EngineError', fatal = false, kind = 'engine' } = {}) {
    super(message);
    this.name = name;
    /** The worker had to be replaced. */
    this.fatal = fatal;
    /** 'engine': the engine reported it; 'timeout': no reply in time; 'crash': the worker died. */
    this.kind = kind;
  }

  /** The engine build lacks what the request needs (see protocol.js FEATURES). */
  get notAvailable() {
    return this.name === NOT_AVAILABLE;
  }
}

const DEFAULT_TIMEOUT_MS = 60_000;

/** The transferables of a frame payload. */
const frameTransfer = (frame) => (frame?.bitmap ? [frame.bitmap] : frame?.rgba ? [frame.rgba] : []);

export class EngineClient extends EventTarget {
  /** @type {Worker | null} */
  #worker = null;
  #nextId = 1;
  /** Number of workers started so far. */
  #generation = 0;
  /** @type {Map<number, {resolve: Function, reject: Function, timer: number, onProgress?: Function}>} */
  #pending = new Map();
  #url;
  #timeoutMs;

  /**
   * @param {{url?: string | URL, timeoutMs?: number}} [options]
   *   url: the worker module (default ./worker.js next to this file);
   *   timeoutMs: default per-request timeout.
   */
  constructor({ url = new URL('./worker.js', import.meta.url), timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    super();
    this.#url = url;
    this.#timeoutMs = timeoutMs;
  }

  /** How many workers were started (1 after the first request; more after crashes). */
  get generation() {
    return this.#generation;
  }

  /**
   * Sends a request; resolves with the worker's result, rejects with an EngineError.
   * @param {string} type  one of Req
   * @param {object} [payload]
   * @param {{timeoutMs?: number, transfer?: Transferable[], onProgress?: (p: import('./protocol.js').ProgressReply) => void}} [options]
   * @returns {Promise<any>}
   */
  request(type, payload = {}, options = {}) {
    return this.#send(type, payload, options).promise;
  }

  /** request(), also giving the request's id (for CANCEL). */
  #send(type, payload = {}, { timeoutMs = this.#timeoutMs, transfer = [], onProgress } = {}) {
    let worker;
    try {
      worker = this.#ensureWorker();
    } catch (err) {
      const error = new EngineError(`the engine worker could not be started: ${err.message}`, { kind: 'crash', fatal: true });
      return { id: 0, promise: Promise.reject(error) };
    }
    const id = this.#nextId++;
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        const seconds = Math.round(timeoutMs / 100) / 10;
        reject(new EngineError(`the engine did not answer '${type}' within ${seconds} s and was restarted`, { kind: 'timeout', fatal: true }));
        this.#crash(worker, new EngineError('the engine stopped responding and was restarted', { kind: 'timeout', fatal: true }));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer, onProgress });
      try {
        worker.postMessage({ ...payload, type, id }, transfer);
      } catch (err) {
        // e.g. a DataCloneError: nothing was sent, the worker is fine.
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new EngineError(`the request '${type}' could not be sent: ${err.message}`));
      }
    });
    return { id, promise };
  }

  /** @returns {Promise<import('./protocol.js').EngineInfo>} */
  info(options) {
    return this.request(Req.INFO, {}, options);
  }

  /**
   * @param {ArrayBuffer} bytes  the ONNX file (transferred to the worker)
   * @param {string} name
   * @param {Record<string, number[]>} [inputShapes]
   */
  loadModel(bytes, name, inputShapes, options = {}) {
    return this.request(Req.LOAD_MODEL, { bytes, name, inputShapes }, { timeoutMs: 120_000, ...options, transfer: [bytes] });
  }

  /**
   * Runs variants of the model on one frame (its bitmap is transferred).
   * @param {import('./protocol.js').FrameData} frame
   * @param {import('./protocol.js').Preprocess | undefined} preprocess
   * @param {import('./protocol.js').Variant[]} variants
   * @returns {Promise<{width: number, height: number, results: import('./protocol.js').VariantResult[]}>}
   */
  run(frame, preprocess, variants, options = {}) {
    return this.request(Req.RUN, { frame, preprocess, variants }, { ...options, transfer: frameTransfer(frame) });
  }

  /** @param {import('./protocol.js').PtqConfig} config */
  calibrationBegin(config, options) {
    return this.request(Req.CALIBRATION_BEGIN, { config }, options);
  }

  /**
   * @param {import('./protocol.js').FrameData} frame  (its bitmap is transferred)
   * @param {import('./protocol.js').Preprocess | undefined} preprocess
   * @returns {Promise<{frames: number | null}>}
   */
  calibrate(frame, preprocess, options = {}) {
    return this.request(Req.CALIBRATE, { frame, preprocess }, { ...options, transfer: frameTransfer(frame) });
  }

  /** @returns {Promise<import('./protocol.js').PtqReport & {ms: number}>} */
  quantize(options = {}) {
    return this.request(Req.QUANTIZE, {}, { timeoutMs: 300_000, ...options });
  }

  /** @param {'ptq' | 'qat'} variant @returns {Promise<import('./protocol.js').LayerError[]>} */
  layerErrors(variant, options = {}) {
    return this.request(Req.LAYER_ERRORS, { variant }, { timeoutMs: 300_000, ...options });
  }

  /** @param {string} value @returns {Promise<import('./protocol.js').Histogram>} */
  histogram(value, options) {
    return this.request(Req.HISTOGRAM, { value }, options);
  }

  /** @param {'ptq' | 'qat'} variant @returns {Promise<{bytes: ArrayBuffer}>} */
  exportOnnx(variant, options = {}) {
    return this.request(Req.EXPORT_ONNX, { variant }, { timeoutMs: 120_000, ...options });
  }

  /** @param {'qat'} variant @returns {Promise<import('./protocol.js').VariantState>} */
  variantState(variant, options = {}) {
    return this.request(Req.VARIANT_STATE, { variant }, { timeoutMs: 120_000, ...options });
  }

  /**
   * @param {'qat'} variant
   * @param {import('./protocol.js').VariantState} state  (copied, not transferred: the page keeps it)
   */
  restoreVariant(variant, state, options = {}) {
    return this.request(Req.RESTORE_VARIANT, { variant, state }, { timeoutMs: 300_000, ...options });
  }

  /**
   * Which class each folder of labelled images holds for the loaded model.
   * @param {string[]} folders
   * @param {string | undefined} labels  class names, one per line (line i: output i)
   * @returns {Promise<import('./protocol.js').LabelMatch>}
   */
  labelFolders(folders, labels, options) {
    return this.request(Req.LABEL_FOLDERS, { folders, labels }, options);
  }

  /**
   * Starts quantization-aware training. Returns the request's promise and a `cancel()` that
   * asks the worker to stop after the current chunk of steps (the promise then resolves with
   * `cancelled: true`). The timeout applies to the whole run.
   * @param {import('./protocol.js').QatConfig} config
   * @param {{timeoutMs?: number, onProgress?: (p: import('./protocol.js').ProgressReply) => void,
   *   labelled?: {frame: import('./protocol.js').FrameData, class: number}[]}} [options]
   *   labelled: images with their class, trained on too (their bitmaps are transferred)
   */
  qat(config, { timeoutMs = 3_600_000, onProgress, labelled = [] } = {}) {
    const transfer = labelled.flatMap((l) => frameTransfer(l.frame));
    const { id, promise } = this.#send(Req.QAT, { config, labelled }, { timeoutMs, onProgress, transfer });
    const cancel = () => this.request(Req.CANCEL, { target: id }).catch(() => ({ found: false }));
    return { promise, cancel };
  }

  /**
   * Starts the sensitivity analysis on the kept calibration frames. Returns the request's
   * promise and a `cancel()` that asks the worker to stop after the current slice (the promise
   * then resolves with `cancelled: true` and no ranking). The timeout applies to the whole run.
   * @param {{timeoutMs?: number, onProgress?: (p: import('./protocol.js').ProgressReply & import('./protocol.js').SensitivityProgress) => void}} [options]
   */
  sensitivity({ timeoutMs = 3_600_000, onProgress } = {}) {
    const { id, promise } = this.#send(Req.SENSITIVITY, {}, { timeoutMs, onProgress });
    const cancel = () => this.request(Req.CANCEL, { target: id }).catch(() => ({ found: false }));
    return { promise, cancel };
  }

  /** Stops the worker now; pending requests are rejected, the next request starts a new one. */
  restart(reason = 'restarted') {
    this.#replace(new EngineError(reason, { kind: 'crash', fatal: true }));
  }

  /** Stops the worker for good (until the next request). */
  terminate() {
    this.#replace(new EngineError('the engine was stopped', { kind: 'crash', fatal: true }));
  }

  #ensureWorker() {
    if (this.#worker) return this.#worker;
    const worker = new Worker(this.#url, { type: 'module', name: 'engine' });
    worker.onmessage = (event) => this.#onReply(worker, event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      const detail = event.message ? `: ${event.message}` : ' (the worker script could not be loaded)';
      this.#crash(worker, new EngineError(`the engine worker crashed${detail}`, { kind: 'crash', fatal: true }));
    };
    worker.onmessageerror = () => {
      this.#crash(worker, new EngineError('a message from the engine could not be read', { kind: 'crash', fatal: true }));
    };
    this.#worker = worker;
    this.#generation += 1;
    if (this.#generation > 1) this.dispatchEvent(new CustomEvent('restart', { detail: { generation: this.#generation } }));
    return worker;
  }

  /** @param {Worker} worker @param {import('./protocol.js').WorkerReply} msg */
  #onReply(worker, msg) {
    if (worker !== this.#worker) return; // a late reply from a replaced worker
    const entry = this.#pending.get(msg?.id);
    if (!entry) return;
    if (msg.type === Reply.PROGRESS) {
      entry.onProgress?.(msg);
      return;
    }
    this.#pending.delete(msg.id);
    clearTimeout(entry.timer);
    if (msg.type === Reply.RESULT) {
      entry.resolve(msg.result);
    } else if (msg.type === Reply.ERROR) {
      const { name, message, fatal } = msg.error ?? {};
      entry.reject(new EngineError(message ?? 'unknown engine error', { name, fatal: !!fatal }));
      if (fatal) this.#crash(worker, new EngineError(`the engine failed (${message}) and was restarted`, { kind: 'crash', fatal: true }));
    } else {
      entry.reject(new EngineError(`unexpected reply type: ${String(msg.type)}`));
    }
  }

  #crash(worker, error) {
    if (worker !== this.#worker) return;
    this.#replace(error);
    this.dispatchEvent(new CustomEvent('crash', { detail: { error } }));
  }

  /** Terminates the current worker and rejects everything pending with `error`. */
  #replace(error) {
    this.#worker?.terminate();
    this.#worker = null;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const { reject, timer } of pending) {
      clearTimeout(timer);
      reject(error);
    }
  }
}
