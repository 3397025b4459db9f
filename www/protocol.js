// The message protocol between the page (engine-client.js) and the engine worker (worker.js).
//
// Every request is `{type, id, ...payload}` with a request type from `Req` and an id unique
// per client. The worker answers each request with exactly one final reply, `result` or
// `error`, carrying the same id, and may send any number of `progress` replies before it.
// Large data (frames, model bytes, outputs, exported models) travels as transferables; the
// page keeps one frame in flight.
//
// An `error` reply with `fatal: true` means the wasm instance is no longer usable (a panic or
// a trap): the client replaces the worker. An error named `NotAvailableError` means the
// engine build lacks the Session method the request needs (see `FEATURES`): the page shows
// "not available in this build" instead of an error.

/** Request types (page -> worker). */
export const Req = Object.freeze({
  /**
   * Engine version and build features. Payload: none. Result: {@link EngineInfo}.
   */
  INFO: 'info',
  /**
   * Import an ONNX model, replacing the loaded one (and any calibration, PTQ and QAT state).
   * A model that fails to load leaves the previous one in place.
   * Payload: `{bytes: ArrayBuffer (transferred), name: string, inputShapes?: Record<string, number[]>}`.
   * Result: {@link ModelSummary}.
   */
  LOAD_MODEL: 'load-model',
  /**
   * Run variants of the loaded model on one frame.
   * Payload: `{frame: FrameData (bitmap transferred), preprocess?: Preprocess, variants: Variant[]}`.
   * Result: `{width, height, results: VariantResult[]}` in the order asked; a variant that fails
   * with a non-fatal error has `error` instead of `outputs`, so the others still show.
   * Output data is transferred.
   */
  RUN: 'run',
  /**
   * Start a calibration (drops the previous one). Needs `ptq`.
   * Payload: `{config: PtqConfig}`. Result: `{}`.
   */
  CALIBRATION_BEGIN: 'calibration-begin',
  /**
   * Observe one calibration frame. Needs `ptq`.
   * Payload: `{frame: FrameData, preprocess?: Preprocess}`. Result: `{frames: number}` (so far).
   */
  CALIBRATE: 'calibrate',
  /**
   * Build the PTQ variant from the calibration. Needs `ptq`.
   * Payload: none. Result: {@link PtqReport} plus `ms`.
   */
  QUANTIZE: 'quantize',
  /**
   * Per-tensor error of a variant against FP32 on the kept calibration frames. Needs `layerErrors`.
   * Payload: `{variant: 'ptq' | 'qat'}`. Result: `LayerError[]`.
   */
  LAYER_ERRORS: 'layer-errors',
  /**
   * Calibration histogram of one quantized tensor (a LayerError's `value`) and its clip range.
   * Needs `histogram`. Payload: `{value: string}`. Result: {@link Histogram}.
   */
  HISTOGRAM: 'histogram',
  /**
   * The quantized model as ONNX with QuantizeLinear/DequantizeLinear pairs. Needs `exportOnnx`.
   * Payload: `{variant: 'ptq' | 'qat'}`. Result: `{bytes: ArrayBuffer (transferred)}`.
   */
  EXPORT_ONNX: 'export-onnx',
  /**
   * Quantization-aware training from the PTQ variant, on the calibration frames. Needs `qat`
   * (and `labels` with labelled images). The worker steps in small chunks and yields between
   * them, so CANCEL gets through. Training examples are random views of the kept frames and of
   * the labelled images ({@link QatAugmentation}); labelled ones add the cross-entropy to their
   * class (weight `config.labelWeight`).
   * Payload: `{config: QatConfig, labelled?: {frame: FrameData, class: number}[]}` (bitmaps
   * transferred; the engine keeps them for this run only). Progress: first `{done: 0, total,
   * mode, batchSize, frozenStem, augmentation}` (the plan, with the engine's defaults filled
   * in; `frozenStem`: `{layers: string[], macsShare, weights, totalWeights, fromStep}`, the first
   * layers frozen from step `fromStep` (0: kept as PTQ made them), their share of the
   * multiply-adds, their weights and the model's),
   * then
   * `{done: step, total: steps, loss, distillLoss, holdoutLoss, labelLoss, labelledFrames,
   * elapsedMs}` per chunk (`labelLoss`: the mean cross-entropy of the chunk's labelled frames,
   * null when it drew none). Result: `{steps, total, mode, loss, labelLoss, labelledFrames,
   * cancelled: boolean, ms, report}` (`labelLoss`: the last one measured; `report`: what
   * qatFinish returns, if anything); a cancelled run keeps what it learned so far.
   */
  QAT: 'qat',
  /**
   * Sensitivity analysis on the kept calibration frames: each quantized layer quantized alone
   * (the rest in float), ranked by its share of the output noise that the layers add one by
   * one (quant/sensitivity.rs). Needs `sensitivity` and a calibration (QUANTIZE done). The
   * worker steps in slices of about 150 ms and yields between them, so CANCEL gets through.
   * Payload: none. Progress: {@link SensitivityProgress} plus `elapsedMs`, first at `done: 0`.
   * Result: `{cancelled: boolean, ms, progress: SensitivityProgress, ranking: Sensitivity | null}`
   * (`ranking` null when cancelled).
   */
  SENSITIVITY: 'sensitivity',
  /**
   * A quantized variant's state, for the page to keep (a restarted worker gets it back through
   * RESTORE_VARIANT). Needs `keepVariant`. Payload: `{variant: 'qat'}`.
   * Result: {@link VariantState} (its arrays transferred).
   */
  VARIANT_STATE: 'variant-state',
  /**
   * Installs a variant from a {@link VariantState}, once the PTQ variant was rebuilt from the same
   * frames and settings. Needs `keepVariant`. Payload: `{variant: 'qat', state: VariantState}`.
   * Result: the variant's report (like qatFinish's).
   */
  RESTORE_VARIANT: 'restore-variant',
  /**
   * Which class each folder of labelled images holds for the loaded model (train/labels.rs
   * `ClassMap`: by class name, ignoring case, `_` as a space, or by class index). Needs
   * `labels`. Payload: `{folders: string[], labels?: string}` (`labels`: the class names, one
   * per line, line i naming output i). Result: {@link LabelMatch}. A model that is not a
   * classifier, or names that are not its classes, fail with the engine's message.
   */
  LABEL_FOLDERS: 'label-folders',
  /**
   * Ask a running request (QAT, SENSITIVITY) to stop. Payload: `{target: number}` (its id).
   * Result: `{found: boolean}`.
   */
  CANCEL: 'cancel',
});

/** Reply types (worker -> page). */
export const Reply = Object.freeze({
  RESULT: 'result',
  PROGRESS: 'progress',
  ERROR: 'error',
});

/**
 * What each optional engine feature needs: the wasm `Session` methods that must exist.
 * The worker reports which are present ({@link EngineInfo}.features), and refuses a request
 * whose methods are missing with a `NotAvailableError`.
 */
export const FEATURES = Object.freeze({
  /** FP32 / PTQ / QAT inference on a frame (FP32 alone works without it through runRgba). */
  runVariant: ['runVariantRgba'],
  /** Calibration and post-training quantization. */
  ptq: ['calibrationBegin', 'calibrateRgba', 'quantize'],
  layerErrors: ['layerErrors'],
  histogram: ['histogram'],
  exportOnnx: ['exportOnnx'],
  /** Quantization-aware training. */
  qat: ['qatBegin', 'qatStep', 'qatFinish'],
  /** Ranking layers by how much their quantization costs the outputs. */
  sensitivity: ['sensitivityBegin', 'sensitivityStep', 'sensitivityResult'],
  /** Keeping the QAT result across an engine restart. */
  keepVariant: ['variantState', 'restoreVariant'],
  /** Labelled images for QAT (a folder per class). */
  labels: ['labelFolders', 'qatAddLabelledRgba', 'qatLabelledClear'],
});

/** The name of the error a request gets when the engine build lacks what it needs. */
export const NOT_AVAILABLE = 'NotAvailableError';

/**
 * @typedef {{type: string, id: number} & Record<string, unknown>} Request
 */

/**
 * @typedef {object} ResultReply
 * @property {'result'} type
 * @property {number} id
 * @property {unknown} result
 */

/**
 * @typedef {object} ProgressReply
 * @property {'progress'} type
 * @property {number} id
 * @property {number} [done]     units of work done so far
 * @property {number} [total]    units of work in all, when known
 * @property {string} [message]  what is being done, for the page
 * @property {number} [loss]     QAT: the training loss of the last step
 * @property {number | null} [holdoutLoss]  QAT: the held-out loss, when measured at that step
 * @property {number} [elapsedMs] QAT, SENSITIVITY: time since the request started
 */

/**
 * @typedef {object} ErrorReply
 * @property {'error'} type
 * @property {number} id
 * @property {SerializedError} error
 */

/**
 * @typedef {object} SerializedError
 * @property {string} name       e.g. 'Error', 'RuntimeError', 'NotAvailableError'
 * @property {string} message    what went wrong, for the page
 * @property {boolean} fatal     the worker must be replaced
 */

/**
 * @typedef {object} EngineInfo
 * @property {string} version          the crate's version
 * @property {boolean} simd128         built with the WebAssembly SIMD128 feature
 * @property {boolean} relaxedSimd     the relaxed-SIMD build (engine-build.js)
 * @property {boolean} relaxedDot      its int8 dot product is exact here, so the int8 GEMM uses it
 * @property {number} initMs           worker start to engine ready: fetch + compile + instantiate
 * @property {boolean} crossOriginIsolated  whether the worker could use shared memory (threads)
 * @property {Record<keyof typeof FEATURES, boolean>} features  what this engine build can do
 */

/**
 * The model card (Session.summary in api.rs, model.rs `ModelSummary`), plus `name`, `loadMs`.
 * @typedef {object} ModelSummary
 * @property {string} name
 * @property {number} loadMs
 * @property {string} producer
 * @property {number} opset
 * @property {number} fileBytes
 * @property {{name: string, declared: (number|string)[], shape: number[], choices: string[]}[]} inputs
 * @property {{name: string, shape: number[]}[]} outputs
 * @property {Record<string, number>} onnxOps   op type -> count, as in the file
 * @property {[string, number][]} ops            what runs, after folding and fusion
 * @property {number} parameters
 * @property {{name: string, op: string, weightShape: number[], params: number}[]} quantizable
 * @property {string[]} floatOps
 * @property {'fp32' | 'fixed-point' | null} requantization   a quantized model's rounding
 * @property {'integer' | 'onnxruntime' | null} fusion   a quantized model's fusion: every node in
 *   integers (ours), or the nodes onnxruntime fuses (a foreign QDQ file; the rest in float)
 * @property {{node: string, op: string, reason: string}[]} int8Float   nodes the int8 engine runs in float
 * @property {string[]} ignoredDomains
 * @property {Preprocess | null} preprocess      a guess for the first input
 */

/**
 * preprocess.rs `Preprocess`: RGBA frame -> input tensor. Values are on the 0..255 scale:
 * value = (pixel - mean) / std.
 * @typedef {object} Preprocess
 * @property {number} width
 * @property {number} height
 * @property {'nchw' | 'nhwc'} layout
 * @property {boolean} bgr
 * @property {[number, number, number]} mean
 * @property {[number, number, number]} std
 * @property {{kind: 'stretch'} | {kind: 'centerCrop', crop: number} | {kind: 'letterbox', pad: number} | {kind: 'padRight', pad: number}} fit
 */

/**
 * A frame: an ImageBitmap (transferred), or raw RGBA bytes.
 * @typedef {{bitmap: ImageBitmap} | {rgba: ArrayBuffer, width: number, height: number}} FrameData
 */

/** @typedef {'fp32' | 'ptq' | 'qat'} Variant */

/**
 * Every value of a quantized graph in order: its name, its quantization annotation and, for a
 * constant (weights, biases), its data.
 * @typedef {{values: {name: string, quant: object | null, data: Float32Array | null}[]}} VariantState
 */

/**
 * @typedef {object} VariantResult
 * @property {Variant} variant
 * @property {number} [ms]       time in the engine (preprocessing + inference)
 * @property {{name: string, shape: number[], data: Float32Array}[]} [outputs]
 * @property {SerializedError} [error]
 */

/**
 * @typedef {object} PtqConfig
 * @property {8 | 4} weightBits     (the engine takes 2..=8; the page offers 8 and 4)
 * @property {boolean} perChannel
 * @property {{method: 'mse' | 'minMax' | 'entropy' | 'percentile', percentile?: number}} calibration
 *   serialised with a `method` tag; `percentile` in [50, 100]
 * @property {string[]} keepFloat        node names kept in float
 * @property {boolean} biasCorrection
 * @property {boolean} equalize
 * @property {'fp32' | 'fixed-point'} requantization   how the int8 engine rounds (onnxruntime's or TFLite's)
 */

/**
 * session.rs `QuantReport` (the page reads it through reports.js).
 * @typedef {object} PtqReport
 * @property {PtqConfig} config
 * @property {number} calibrationFrames
 * @property {{frames: number, outputs: {name: string, cosine: number, sqnrDb: number | null, classifier: {top1: number, top5: number} | null}[], presence: object | null}} fidelity
 *   fidelity to FP32 on the kept calibration frames
 * @property {LayerError[]} layers   every quantized tensor, in graph order
 * @property {{name: string, op: string, why: string}[]} floatNodes
 * @property {number} quantizedTensors
 * @property {number} quantizedWeights
 * @property {number} weightBytes       as stored: int8 weights, int32 biases, float for the rest
 * @property {number} floatWeightBytes  the same weights in float
 */

/**
 * quant/metrics.rs `LayerError`: the SQNR of one quantized tensor (null: infinite).
 * @typedef {{value: string, node: string, op: string, sqnrDb: number | null}} LayerError
 */

/**
 * @typedef {object} Histogram
 * @property {number} start      left edge of the first bin
 * @property {number} binWidth   0 when every value seen is 0
 * @property {number[]} counts
 * @property {number} min
 * @property {number} max
 * @property {[number, number] | null} clip  the range the quantizer keeps, if it has one
 */

/**
 * Every field is optional: the engine's default recipe fills in what is missing (the mode by
 * weight width: 8-bit → scales, lower → full; steps by mode: 100 / 300; rates by mode).
 * @typedef {object} QatConfig
 * @property {number} [steps]
 * @property {number} [lr]   Adam's rate of the weights (full mode)
 * @property {'scales' | 'full'} [mode]   train step sizes and biases only, or the weights too
 * @property {number} [freezeStem]   the first layers, up to this share (0 to 1) of the
 *   multiply-adds, freeze at `freezeStemAt` (the steps after it are faster; default 0.3 in
 *   full mode, 0 in scales mode)
 * @property {number} [freezeStemAt]   when, as a share of the steps (0 to below 1; 0: from the
 *   start, as PTQ made them; default 1/3)
 * @property {number} [labelWeight]  weight of the cross-entropy to labels, relative to the
 *   distillation (default 1, as the command line's --qat-label-weight)
 */

/**
 * labelFolders' answer: each folder's class, or why it has none.
 * @typedef {object} LabelMatch
 * @property {number} classes     the classifier's classes
 * @property {number} maxImages   labelled images the engine keeps at most
 * @property {number} maxPixels   pixels of one labelled image at most
 * @property {({folder: string, class: number, name: string | null} | {folder: string, error: string})[]} folders
 */

/**
 * session.rs `SensitivityProgress`: where a sensitivity analysis is. A step is one simulated
 * run on one frame or one quantization of the model.
 * @typedef {object} SensitivityProgress
 * @property {number} done
 * @property {number} total
 * @property {number} layersDone   layers measured so far
 * @property {number} layers       layers to measure (Compute nodes whose output is quantized)
 * @property {string | null} layer the layer being measured (null before the first)
 * @property {boolean} finished
 */

/**
 * quant/sensitivity.rs `Sensitivity`: most sensitive layer first.
 * @typedef {object} Sensitivity
 * @property {number} frames             kept calibration frames it ran on
 * @property {number} outputSqnrDb       the outputs' SQNR with every layer quantized
 * @property {number} inputsOnlySqnrDb   with only the inputs quantized (the floor)
 * @property {{node: string, op: string, outputSqnrDb: number, noiseShare: number}[]} layers
 *   `noiseShare`: the output noise the layer adds alone, as a fraction of what all add one by one
 */

/**
 * qatBegin's `augmentation`: QAT trains on random views of the kept frames (augment.rs).
 * @typedef {object} QatAugmentation
 * @property {{minArea: number, aspect: [number, number], flip: boolean, brightness: number, contrast: number}} augment
 * @property {number} frames   training frames (the held-out ones excluded)
 * @property {number} images   of them, those with an image (the others were tensors: only mirrored)
 * @property {number} heldOut  kept frames held out, unaugmented, to keep the best weights
 * @property {number} views    random views drawn for the run; its frames come from them, each view
 *   met about steps × batch / views times (its FP32 targets computed once)
 * @property {{images: number, classes: number}} [labelled]  labelled images trained on too
 */

/** @typedef {ResultReply | ProgressReply | ErrorReply} WorkerReply */

/**
 * Turns a thrown value into what an `error` reply carries.
 * @param {unknown} err
 * @returns {SerializedError}
 */
export function serializeError(err) {
  const name = err instanceof Error ? err.name : 'Error';
  const message = err instanceof Error ? err.message : String(err);
  return {
    name,
    message: message || name,
    fatal: typeof WebAssembly !== 'undefined' && err instanceof WebAssembly.RuntimeError,
  };
}
