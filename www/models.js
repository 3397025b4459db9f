// What the page ships with (the bundled models and sample images, see models/README.md) and
// what a dropped file is, told from its first bytes rather than its name.

/**
 * @typedef {object} BundledModel
 * @property {string} id
 * @property {string} file          under models/
 * @property {string} title
 * @property {string} task          for the button's second line
 * @property {string} preset        preprocessing preset (preprocess.js PRESETS)
 * @property {Record<string, number[]>} [inputShapes]  fixes dynamic dims
 * @property {string[]} [labels]    class names, when not ImageNet's
 * @property {string} image         the sample image shown first
 */

/** @type {BundledModel[]} */
export const BUNDLED = [
  {
    id: 'efficientnet',
    file: 'efficientnet_lite0.onnx',
    title: 'EfficientNet-Lite0',
    task: 'ImageNet classes · 18.6 MB',
    preset: 'lite',
    image: 'coffee.png',
  },
  {
    id: 'blazeface',
    file: 'blazeface_front_128.onnx',
    title: 'BlazeFace',
    task: 'face detection · 0.4 MB',
    preset: 'signed',
    image: 'astronaut.png',
  },
  {
    id: 'ppocr',
    file: 'ppocr_cls_mobile_v2.onnx',
    title: 'PP-OCR direction',
    task: 'text 0° / 180° · 0.6 MB',
    preset: 'ppocr',
    inputShapes: { x: [1, 3, 48, 192] },
    labels: ['0°', '180°'],
    image: 'text.png',
  },
];

export const DEFAULT_MODEL = BUNDLED[0];

/** The shipped images (models/images/), as [file, description]. */
export const SAMPLE_IMAGES = [
  ['coffee.png', 'coffee'],
  ['astronaut.png', 'astronaut'],
  ['chelsea.png', 'cat'],
  ['camera.png', 'cameraman'],
  ['horse.png', 'horse'],
  ['rocket.jpg', 'rocket'],
  ['china.jpg', 'palace'],
  ['flower.jpg', 'flower'],
  ['text.png', 'text'],
  ['coins.png', 'coins'],
  ['clock_motion.png', 'clock'],
  ['brick.png', 'brick'],
  ['grass.png', 'grass'],
  ['gravel.png', 'gravel'],
  ['hubble_deep_field.jpg', 'Hubble deep field'],
  ['cell.png', 'cell'],
  ['ihc.png', 'stained tissue'],
  ['retina.jpg', 'retina'],
  ['microaneurysms.png', 'retina detail'],
];

/** The bundled model that has this file name, if any. */
export const bundledByFile = (name) => BUNDLED.find((m) => m.file === name) ?? null;

const MAGIC = [
  ['png', [0x89, 0x50, 0x4e, 0x47]],
  ['jpeg', [0xff, 0xd8, 0xff]],
  ['gif', [0x47, 0x49, 0x46, 0x38]],
  ['bmp', [0x42, 0x4d]],
];

/**
 * What a file is, from its first bytes: an image format name, 'empty', or 'other' (which
 * may be an ONNX model: the engine decides, with a message when it is not).
 * @param {Uint8Array} head  the first 16 bytes or more
 * @returns {'png' | 'jpeg' | 'gif' | 'bmp' | 'webp' | 'empty' | 'other'}
 */
export function sniff(head) {
  if (!head.length) return 'empty';
  for (const [name, magic] of MAGIC) {
    if (magic.every((b, i) => head[i] === b)) return name;
  }
  const ascii = (from, to) => String.fromCharCode(...head.subarray(from, to));
  if (head.length >= 12 && ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  return 'other';
}

export const isImageKind = (kind) => ['png', 'jpeg', 'gif', 'bmp', 'webp'].includes(kind);

/** Reads the first bytes of a File/Blob. */
export async function head(blob, n = 16) {
  return new Uint8Array(await blob.slice(0, n).arrayBuffer());
}
