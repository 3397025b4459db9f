// The engine worker: owns the wasm instance and answers the requests of protocol.js.
// The page never calls wasm directly, so heavy work never blocks rendering.

import { Reply, Req, serializeError } from './protocol.js';

const started = performance.now();

// Loaded with a dynamic import so that a missing or broken build is reported as an error
// reply with a message, not as an anonymous worker load failure.
const engine = import('./pkg/quant_playground.js')
  .catch((err) => {
    throw new Error(`the engine's files could not be loaded (${err.message})`);
  })
  .then(async (wasm) => {
    await wasm.default(); // fetch, compile and instantiate quant_playground_bg.wasm
    return { wasm, initMs: performance.now() - started };
  });
engine.catch(() => {}); // reported to each request that needs the engine

/** The loaded model: a wasm `Session` and its file name. */
let model = null;

/** @type {Record<string, (msg: import('./protocol.js').Request, progress: (p: object) => void) => Promise<unknown>>} */
const handlers = {
  async [Req.INFO]() {
    const { wasm, initMs } = await engine;
    return { ...wasm.engineInfo(), initMs, crossOriginIsolated: self.crossOriginIsolated };
  },
  async [Req.LOAD_MODEL]({ bytes, name, inputShapes }) {
    const { wasm } = await engine;
    const started = performance.now();
    const session = wasm.Session.load(new Uint8Array(bytes), inputShapes);
    model?.session.free();
    model = { session, name };
    return { name, loadMs: performance.now() - started, ...session.summary() };
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
    self.postMessage({ type: Reply.RESULT, id, result });
  } catch (err) {
    self.postMessage({ type: Reply.ERROR, id, error: serializeError(err) });
  }
};
