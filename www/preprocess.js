// Preprocessing on the page's side: the presets of crate/src/preprocess.rs (the engine does
// the actual work; the page shows, edits and sends a `Preprocess`), the shape check, and the
// inverse mapping from model-input coordinates back to the frame (to draw boxes).
// No DOM: also imported by the Node tests.

/** @typedef {import('./protocol.js').Preprocess} Preprocess */

export const PRESETS = Object.freeze({
  imagenet: { label: 'ImageNet (torchvision mean/std, resize 256 / crop 224)' },
  lite: { label: 'Lite: (x − 127) / 128, centre crop' },
  signed: { label: 'Signed: x / 127.5 − 1 (MediaPipe)' },
  yolo: { label: 'YOLO: x / 255, letterbox' },
  ppocr: { label: 'PP-OCR: BGR, x / 127.5 − 1, pad right' },
  raw: { label: 'Raw 0..255' },
});

/**
 * A named preset at the given input size, exactly as preprocess.rs `Preprocess::preset`.
 * @returns {Preprocess}
 */
export function preset(name, width, height, layout) {
  const base = { width, height, layout, bgr: false, mean: [0, 0, 0], std: [1, 1, 1], fit: { kind: 'stretch' } };
  switch (name) {
    case 'imagenet':
      return {
        ...base,
        mean: [0.485 * 255, 0.456 * 255, 0.406 * 255].map(f32),
        std: [0.229 * 255, 0.224 * 255, 0.225 * 255].map(f32),
        fit: { kind: 'centerCrop', crop: 0.875 },
      };
    case 'lite':
      return { ...base, mean: [127, 127, 127], std: [128, 128, 128], fit: { kind: 'centerCrop', crop: 0.875 } };
    case 'signed':
      return { ...base, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5] };
    case 'yolo':
      return { ...base, std: [255, 255, 255], fit: { kind: 'letterbox', pad: 114 } };
    case 'ppocr':
      return { ...base, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], bgr: true, fit: { kind: 'padRight', pad: 127.5 } };
    case 'raw':
      return base;
    default:
      throw new Error(`unknown preset '${name}' (${Object.keys(PRESETS).join(', ')})`);
  }
}

/** Rounds like an f32, so that presets compare equal to what the engine sends back. */
function f32(x) {
  return Math.fround(x);
}

const close = (a, b) => Math.abs(a - b) <= 1e-3 * Math.max(1, Math.abs(a), Math.abs(b));

/** The name of the preset `p` is (whatever its size and layout), or null. */
export function presetName(p) {
  for (const name of Object.keys(PRESETS)) {
    const q = preset(name, p.width, p.height, p.layout);
    const same =
      q.bgr === p.bgr &&
      q.mean.every((v, i) => close(v, p.mean[i])) &&
      q.std.every((v, i) => close(v, p.std[i])) &&
      sameFit(q.fit, p.fit);
    if (same) return name;
  }
  return null;
}

function sameFit(a, b) {
  if (a.kind !== b.kind) return false;
  if (a.kind === 'centerCrop') return close(a.crop, b.crop);
  if (a.kind === 'letterbox' || a.kind === 'padRight') return close(a.pad, b.pad);
  return true;
}

/** Where the 3 channels are in a rank-4 shape, or null if it does not look like an image. */
export function imageLayout(shape) {
  if (shape?.length !== 4) return null;
  if (shape[1] === 3) return { layout: 'nchw', height: shape[2], width: shape[3] };
  if (shape[3] === 3) return { layout: 'nhwc', height: shape[1], width: shape[2] };
  return null;
}

/** The tensor shape `p` produces (batch 1). */
export function shapeOf(p) {
  return p.layout === 'nchw' ? [1, 3, p.height, p.width] : [1, p.height, p.width, 3];
}

/**
 * Why `p` cannot feed an input of `shape`, or null when it can.
 * @param {Preprocess} p @param {number[]} shape
 */
export function mismatch(p, shape) {
  const got = shapeOf(p);
  if (got.length === shape.length && got.every((d, i) => d === shape[i])) return null;
  return `this preprocessing gives [${got.join(', ')}], the model takes [${shape.join(', ')}]`;
}

/** Checks the numbers a user typed: sizes, std not zero. Returns a message or null. */
export function invalid(p) {
  if (!(Number.isInteger(p.width) && p.width > 0 && Number.isInteger(p.height) && p.height > 0)) return 'the size must be whole numbers above 0';
  if (![...p.mean, ...p.std].every(Number.isFinite)) return 'mean and std must be numbers';
  if (p.std.some((s) => s === 0)) return 'std cannot be 0';
  if (p.fit.kind === 'centerCrop' && !(p.fit.crop > 0 && p.fit.crop <= 1)) return 'the crop fraction must be in (0, 1]';
  return null;
}

/**
 * The affine map from model-input pixel coordinates (0..width, 0..height) to frame pixels,
 * as preprocess.rs `mapping` samples them: frame = offset + input * scale.
 * @param {Preprocess} p @param {number} w @param {number} h  the frame's size
 */
export function inputToFrame(p, w, h) {
  const tw = p.width;
  const th = p.height;
  switch (p.fit.kind) {
    case 'centerCrop': {
      const crop = Math.min(Math.max(p.fit.crop, 0.05), 1);
      const s = Math.max(tw / w, th / h) / crop;
      return { scaleX: 1 / s, scaleY: 1 / s, offsetX: (w - tw / s) / 2, offsetY: (h - th / s) / 2 };
    }
    case 'letterbox': {
      const s = Math.min(tw / w, th / h);
      const cw = Math.round(w * s);
      const ch = Math.round(h * s);
      const ox = (tw - Math.min(cw, tw)) / 2;
      const oy = (th - Math.min(ch, th)) / 2;
      return { scaleX: 1 / s, scaleY: 1 / s, offsetX: -ox / s, offsetY: -oy / s };
    }
    case 'padRight': {
      const s = th / h;
      return { scaleX: 1 / s, scaleY: 1 / s, offsetX: 0, offsetY: 0 };
    }
    default:
      return { scaleX: w / tw, scaleY: h / th, offsetX: 0, offsetY: 0 };
  }
}
