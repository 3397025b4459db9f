// Helpers for the end-to-end tests of the playground page: the fake webcam, opening the page
// with or without a camera, waiting on the page's state, reading what a pane drew, and small
// ONNX files made on the fly.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import { openWatchedPage } from './chromium.mjs';

export const ARTIFACTS = `${REPO_ROOT}/tests/artifacts`;
mkdirSync(ARTIFACTS, { recursive: true });

/** The y4m fake webcam (astronaut.png, which has a face), made once by make-webcam.sh. */
export function fakeWebcam() {
  const file = `${ARTIFACTS}/webcam.y4m`;
  if (!existsSync(file)) execFileSync(`${REPO_ROOT}/tests/e2e/make-webcam.sh`, [`${REPO_ROOT}/models/images/astronaut.png`, file, '2'], { stdio: 'inherit' });
  return file;
}

/**
 * Opens the page at `server.url` and waits for the engine and the default model.
 * @param {{noWebcam?: boolean, setup?: (context) => Promise<void>}} [options]
 *   noWebcam: getUserMedia fails as when permission is denied.
 */
export async function openPlayground(browser, server, { noWebcam = false, setup } = {}) {
  const origin = server.url.replace(/\/$/, '');
  const watched = await openWatchedPage(browser, origin);
  const { context, page } = watched;
  if (noWebcam) {
    await context.addInitScript(() => {
      const denied = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
      Object.defineProperty(navigator.mediaDevices, 'getUserMedia', { value: denied });
    });
  }
  await setup?.(context);
  await page.goto(server.url);
  await page.waitForSelector('body.model-loaded, body.error', { timeout: 120_000 });
  return watched;
}

/** The engine's features as the page recorded them (qp:engine-ready). */
export const engineFeatures = (page) => page.evaluate(() => performance.getEntriesByName('qp:engine-ready')[0]?.detail?.features ?? {});

/** Waits until the model card shows `name`. */
export async function waitForModel(page, name, timeout = 120_000) {
  await page.waitForFunction(
    (n) => document.querySelector('[data-field="model-name"]')?.textContent === n && document.querySelector('#model-panel')?.getAttribute('aria-busy') === 'false',
    name,
    { timeout },
  );
}

/** Waits until a pane has rendered at least `frames` frames (counting from now). */
export async function waitForPaneFrames(page, variant, more = 1, timeout = 60_000) {
  const now = Number((await page.locator(`.pane[data-variant="${variant}"]`).getAttribute('data-frames')) ?? 0);
  await page.waitForFunction(
    ([v, n]) => Number(document.querySelector(`.pane[data-variant="${v}"]`)?.dataset.frames ?? 0) >= n,
    [variant, now + more],
    { timeout },
  );
}

/** The labels of a pane's top-5 list. */
export const topLabels = (page, variant) => page.locator(`.pane[data-variant="${variant}"] .top5 .label`).allTextContents();

/**
 * Counts the pixels of the box colour (--box, yellow) a pane's canvas has inside a region given
 * in fractions of the canvas: boxes were drawn there.
 */
export function boxPixels(page, variant, region = [0, 0, 1, 1]) {
  return page.evaluate(
    ([v, [x0, y0, x1, y1]]) => {
      const canvas = document.querySelector(`.pane[data-variant="${v}"] canvas`);
      const { width, height } = canvas;
      const ctx = canvas.getContext('2d');
      const px = ctx.getImageData(Math.floor(x0 * width), Math.floor(y0 * height), Math.ceil((x1 - x0) * width), Math.ceil((y1 - y0) * height)).data;
      let n = 0;
      for (let i = 0; i < px.length; i += 4) if (px[i] > 230 && px[i + 1] > 190 && px[i + 1] < 230 && px[i + 2] < 40) n++;
      return n;
    },
    [variant, region],
  );
}

// --- a tiny protobuf writer, enough for an ONNX ModelProto ------------------------------------

const varint = (n) => {
  const out = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return out;
};
const key = (field, wire) => varint((field << 3) | wire);
const int = (field, n) => [...key(field, 0), ...varint(n)];
const bytes = (field, data) => [...key(field, 2), ...varint(data.length), ...data];
const str = (field, s) => bytes(field, [...new TextEncoder().encode(s)]);
const msg = (field, parts) => bytes(field, parts.flat());

/** A float tensor ValueInfoProto with a fixed shape. */
const valueInfo = (field, name, shape) =>
  msg(field, [str(1, name), msg(2, [msg(1, [int(1, 1), msg(2, shape.map((d) => msg(1, [int(1, d)])))])])]);

/** A model of one node `op` from x [1, 3, 32, 32] to y of `outShape` (opset 13). */
function oneNodeModel(op, outShape, opsets = [['', 13]]) {
  const graph = msg(7, [
    msg(1, [str(1, 'x'), str(2, 'y'), str(3, `${op.toLowerCase()}_1`), str(4, op)]),
    str(2, op),
    valueInfo(11, 'x', [1, 3, 32, 32]),
    valueInfo(12, 'y', outShape),
  ]);
  return Buffer.from([...int(1, 8), ...str(2, 'quant-playground tests'), ...graph, ...opsets.flatMap(([d, v]) => msg(8, [str(1, d), int(2, v)]))]);
}

/** A model whose output is a spatial map (Relu of the image): shown as a heatmap. */
export const onnxSpatialMap = () => oneNodeModel('Relu', [1, 3, 32, 32]);

/**
 * An ONNX model whose nodes the engine does not support: `Foo` (default domain) then
 * `com.example::Bar`. Its load error must name both.
 * @returns {Buffer}
 */
export function onnxWithUnsupportedOps() {
  const node = (input, output, name, op, domain) => msg(1, [str(1, input), str(2, output), str(3, name), str(4, op), ...(domain ? [str(7, domain)] : [])]);
  const graph = msg(7, [
    node('x', 'y1', 'foo_1', 'Foo'),
    node('y1', 'y', 'bar_1', 'Bar', 'com.example'),
    str(2, 'unsupported'),
    valueInfo(11, 'x', [1, 3, 8, 8]),
    valueInfo(12, 'y', [1, 3, 8, 8]),
  ]);
  const model = [...int(1, 8), ...str(2, 'quant-playground tests'), ...graph, ...msg(8, [str(1, ''), int(2, 13)]), ...msg(8, [str(1, 'com.example'), int(2, 1)])];
  return Buffer.from(model);
}
