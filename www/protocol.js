// The message protocol between the page (engine-client.js) and the engine worker (worker.js).
//
// Every request is `{type, id, ...payload}` with a request type from `Req` and an id unique
// per client. The worker answers each request with exactly one final reply, `result` or
// `error`, carrying the same id, and may send any number of `progress` replies before it.
// Large data (frames, model bytes) travels as transferables, one request in flight per kind.
//
// An `error` reply with `fatal: true` means the wasm instance is no longer usable (a panic or
// a trap): the client replaces the worker.

/** Request types (page -> worker). */
export const Req = Object.freeze({
  /** Engine version and build features. Payload: none. Result: {@link EngineInfo}. */
  INFO: 'info',
  /**
   * Import an ONNX model, replacing the loaded one. Payload: `{bytes: ArrayBuffer (transferred),
   * name: string, inputShapes?: Record<string, number[]>}`. Result: the model summary
   * (inputs, outputs, ops, parameters, what will be quantized, a preprocessing guess).
   */
  LOAD_MODEL: 'load-model',
});

/** Reply types (worker -> page). */
export const Reply = Object.freeze({
  RESULT: 'result',
  PROGRESS: 'progress',
  ERROR: 'error',
});

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
 */

/**
 * @typedef {object} ErrorReply
 * @property {'error'} type
 * @property {number} id
 * @property {SerializedError} error
 */

/**
 * @typedef {object} SerializedError
 * @property {string} name       e.g. 'Error', 'RuntimeError'
 * @property {string} message    what went wrong, for the page
 * @property {boolean} fatal     the worker must be replaced
 */

/**
 * @typedef {object} EngineInfo
 * @property {string} version          the crate's version
 * @property {boolean} simd128         built with the WebAssembly SIMD128 feature
 * @property {number} initMs           worker start to engine ready: fetch + compile + instantiate
 * @property {boolean} crossOriginIsolated  whether the worker could use shared memory (threads)
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
