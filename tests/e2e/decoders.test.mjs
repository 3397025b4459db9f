// The page's pure modules in Node (no browser): output decoders (classification, BlazeFace
// anchors and weighted NMS, YOLO layouts), agreement metrics, preprocessing presets and the
// inverse mapping used to draw boxes, report normalisation and file sniffing.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import {
  agreement,
  blazefaceAnchors,
  boxAgreement,
  classNames,
  cosine,
  decodeBlazeface,
  decodeYolo,
  detectTask,
  genericView,
  interpret,
  iou,
  median,
  nms,
  probabilities,
  topK,
  weightedNms,
} from '../../www/decode.js';
import { BUNDLED, SAMPLE_IMAGES, sniff } from '../../www/models.js';
import { inputToFrame, invalid, mismatch, preset, presetName } from '../../www/preprocess.js';
import { fidelityLine, readHistogram, readLayers, sqnrByNode, worstNodes } from '../../www/reports.js';

const close = (a, b, eps = 1e-5) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);

const BLAZEFACE = {
  inputs: [{ shape: [1, 128, 128, 3] }],
  outputs: [
    { name: 'Identity:0', shape: [1, 512, 1] },
    { name: 'Identity_1:0', shape: [1, 384, 1] },
    { name: 'Identity_2:0', shape: [1, 512, 16] },
    { name: 'Identity_3:0', shape: [1, 384, 16] },
  ],
};

test('BlazeFace front: 896 anchors, 16x16x2 then 8x8x6, at cell centres', () => {
  const a = blazefaceAnchors(128);
  assert.equal(a.length, 896 * 2);
  // The first two anchors share the first 8-pixel cell of the 16x16 grid.
  assert.deepEqual([...a.subarray(0, 4)], [0.5 / 16, 0.5 / 16, 0.5 / 16, 0.5 / 16]);
  // The third is the next cell to the right.
  close(a[4], 1.5 / 16);
  // Anchor 512 starts the 8x8 grid, 6 per cell.
  close(a[1024], 0.5 / 8);
  close(a[1024 + 12], 1.5 / 8);
  close(a[2 * 895], 7.5 / 8);
  close(a[2 * 895 + 1], 7.5 / 8);
});

test('the task is told from the output shapes', () => {
  const bf = detectTask(BLAZEFACE);
  assert.equal(bf.kind, 'blazeface');
  assert.deepEqual(bf.scores, [0, 1]);
  assert.deepEqual(bf.boxes, [2, 3]);
  assert.equal(detectTask({ inputs: [{ shape: [1, 3, 224, 224] }], outputs: [{ name: 'logits', shape: [1, 1000] }] }).kind, 'classification');
  assert.equal(detectTask({ inputs: [], outputs: [{ name: 'p', shape: [1, 2] }] }).classes, 2);
  assert.deepEqual(detectTask({ inputs: [], outputs: [{ name: 'y', shape: [1, 84, 8400] }] }), { kind: 'yolo', output: 0, layout: 'channels-first', classes: 80 });
  assert.deepEqual(detectTask({ inputs: [], outputs: [{ name: 'y', shape: [1, 25200, 85] }] }), { kind: 'yolo', output: 0, layout: 'channels-last', classes: 80 });
  assert.equal(detectTask({ inputs: [], outputs: [{ name: 'mask', shape: [1, 21, 64, 64] }] }).kind, 'generic');
  assert.equal(detectTask({ inputs: [], outputs: [{ name: 's', shape: [1, 512, 1] }] }).kind, 'generic');
});

test('BlazeFace decoding: a box around the anchor, keypoints, sigmoid threshold, weighted NMS', () => {
  const task = detectTask(BLAZEFACE);
  const scores0 = new Float32Array(512).fill(-10);
  const scores1 = new Float32Array(384).fill(-10);
  const regs0 = new Float32Array(512 * 16);
  const regs1 = new Float32Array(384 * 16);
  // Anchor 0 (centre 1/32, 1/32) and anchor 1 (same cell): two overlapping detections.
  scores0[0] = 3; // sigmoid 0.953
  scores0[1] = 2; // sigmoid 0.881
  regs0.set([12.8, 12.8, 25.6, 25.6, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], 0);
  regs0.set([12.8, 12.8, 25.6, 25.6], 16);
  // A weak one, under the threshold.
  scores1[100] = 0;
  const outputs = [scores0, scores1, regs0, regs1].map((data, i) => ({ ...BLAZEFACE.outputs[i], data }));
  const boxes = decodeBlazeface(outputs, task);
  assert.equal(boxes.length, 1, 'the two overlapping boxes merge');
  const [b] = boxes;
  close(b.score, 1 / (1 + Math.exp(-3)));
  const cx = 1 / 32 + 0.1;
  close(b.x0, cx - 0.1);
  close(b.x1, cx + 0.1);
  assert.equal(b.keypoints.length, 6);
  // Keypoints are the score-weighted average: only the first box has them off the anchor.
  const w0 = 1 / (1 + Math.exp(-3));
  const w1 = 1 / (1 + Math.exp(-2));
  close(b.keypoints[1][0], 1 / 32 + ((1 / 128) * w0) / (w0 + w1));
});

test('weighted NMS keeps separate boxes apart and merges overlapping ones', () => {
  const a = { x0: 0, y0: 0, x1: 1, y1: 1, score: 0.9 };
  const b = { x0: 0.1, y0: 0, x1: 1.1, y1: 1, score: 0.3 };
  const c = { x0: 5, y0: 5, x1: 6, y1: 6, score: 0.8 };
  const out = weightedNms([b, c, a], 0.3);
  assert.equal(out.length, 2);
  assert.equal(out[0].score, 0.9);
  close(out[0].x0, (0 * 0.9 + 0.1 * 0.3) / 1.2);
  assert.equal(out[1].x0, 5);
  close(iou(a, b), 0.9 / 1.1);
  assert.equal(iou(a, c), 0);
});

test('YOLO decoding in both layouts, pixel or normalised coordinates, per-class NMS', () => {
  // [1, 4+C, N]: C = 2, N = 100; two overlapping boxes of class 1 and one of class 0.
  const n = 100;
  const first = new Float32Array((4 + 2) * n);
  const put = (i, [cx, cy, w, h, c0, c1]) => [cx, cy, w, h, c0, c1].forEach((v, c) => (first[c * n + i] = v));
  put(0, [320, 320, 100, 100, 0.1, 0.9]);
  put(1, [325, 320, 100, 100, 0.1, 0.6]);
  put(2, [100, 100, 50, 50, 0.7, 0.1]);
  const task = detectTask({ inputs: [], outputs: [{ name: 'y', shape: [1, 6, n] }] });
  const boxes = decodeYolo({ shape: [1, 6, n], data: first }, task, { width: 640, height: 640, names: ['cat', 'dog'] });
  assert.equal(boxes.length, 2);
  assert.equal(boxes[0].label, 'dog');
  close(boxes[0].x0, (320 - 50) / 640);
  assert.equal(boxes[1].label, 'cat');

  // [1, N, 5+C] with objectness, normalised coordinates.
  const last = new Float32Array(n * 7);
  last.set([0.5, 0.5, 0.2, 0.2, 0.9, 0.2, 0.8], 0);
  last.set([0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9], 7); // objectness too low
  const t2 = detectTask({ inputs: [], outputs: [{ name: 'y', shape: [1, n, 7] }] });
  const b2 = decodeYolo({ shape: [1, n, 7], data: last }, t2, { width: 640, height: 640 });
  assert.equal(b2.length, 1);
  close(b2[0].score, 0.72);
  assert.equal(b2[0].label, 'class 1');
  close(b2[0].x0, 0.4);
});

test('NMS is per label and bounded', () => {
  const box = (x, label, score) => ({ x0: x, y0: 0, x1: x + 1, y1: 1, label, score });
  assert.equal(nms([box(0, 'a', 0.9), box(0.05, 'a', 0.8), box(0.05, 'b', 0.7)]).length, 2);
  assert.equal(nms(Array.from({ length: 10 }, (_, i) => box(i * 2, 'a', 0.5)), 0.45, 3).length, 3);
});

test('classification: softmax unless already probabilities, top-k, class names', () => {
  const p = probabilities(new Float32Array([1, 2, 3]));
  close(p.reduce((a, b) => a + b, 0), 1);
  assert.ok(p[2] > p[1]);
  assert.deepEqual([...probabilities(new Float32Array([0.25, 0.75]))], [0.25, 0.75]);
  assert.deepEqual(
    topK(new Float32Array([0.1, 0.5, 0.2, 0.9, 0.3]), 3).map((t) => t.index),
    [3, 1, 4],
  );
  const imagenet = readFileSync(`${REPO_ROOT}/models/imagenet_classes.txt`, 'utf8').trim().split('\n');
  assert.equal(classNames(1000, { imagenet })[967], 'espresso');
  assert.equal(classNames(1001, { imagenet })[968], 'espresso');
  assert.deepEqual(classNames(2, { imagenet, labels: ['0°', '180°'] }), ['0°', '180°']);
  assert.equal(classNames(3)[2], 'class 2');
  const task = { kind: 'classification', output: 0, classes: 3 };
  const r = interpret(task, [{ name: 'l', shape: [1, 3], data: new Float32Array([0, 5, 1]) }], { names: ['a', 'b', 'c'], inputWidth: 1, inputHeight: 1 });
  assert.equal(r.best, 1);
  assert.equal(r.top[0].label, 'b');
});

test('generic outputs: heatmaps for spatial maps, bars for vectors', () => {
  const map = genericView({ shape: [1, 2, 4, 4], data: Float32Array.from({ length: 32 }, (_, i) => (i < 16 ? i : 100 - i)) });
  assert.equal(map.kind, 'heatmap');
  assert.equal(map.values.length, 16);
  assert.equal(map.values[0], 100 - 16); // max over the 2 channels
  assert.equal(genericView({ shape: [1, 8, 8, 2], data: new Float32Array(128) }).kind, 'heatmap');
  assert.equal(genericView({ shape: [1, 10], data: new Float32Array(10) }).kind, 'bars');
});

test('agreement: top-1, boxes, cosine; median', () => {
  const a = [{ data: new Float32Array([1, 0, 0]) }];
  const b = [{ data: new Float32Array([1, 0.1, 0]) }];
  close(cosine(a, b), 1 / Math.sqrt(1.01));
  assert.equal(cosine(a, a), 1);
  assert.deepEqual(agreement({ kind: 'classification', best: 0 }, { kind: 'classification', best: 0 }, a, a), { top1: 1, cosine: 1 });
  const box = (x, label = 'face') => ({ x0: x, y0: 0, x1: x + 1, y1: 1, score: 0.9, label });
  assert.equal(boxAgreement([box(0)], [box(0.05)]), 1);
  assert.equal(boxAgreement([box(0)], [box(3)]), 0);
  assert.equal(boxAgreement([box(0), box(5)], [box(0)]), 0.5);
  assert.equal(boxAgreement([], []), 1);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  assert.ok(Number.isNaN(median([])));
});

test('presets are those of crate/src/preprocess.rs', () => {
  const lite = preset('lite', 224, 224, 'nchw');
  assert.deepEqual(lite.mean, [127, 127, 127]);
  assert.deepEqual(lite.fit, { kind: 'centerCrop', crop: 0.875 });
  const ppocr = preset('ppocr', 192, 48, 'nchw');
  assert.equal(ppocr.bgr, true);
  assert.deepEqual(ppocr.fit, { kind: 'padRight', pad: 127.5 });
  assert.deepEqual(preset('yolo', 640, 640, 'nchw').fit, { kind: 'letterbox', pad: 114 });
  // The engine's guess (imagenet, mean as f32 from Rust) is recognised.
  const guess = { ...preset('imagenet', 224, 224, 'nchw'), mean: [123.67500305175781, 116.27999877929688, 103.52999877929688] };
  assert.equal(presetName(guess), 'imagenet');
  assert.equal(presetName({ ...lite, bgr: true }), null);
  assert.throws(() => preset('nope', 1, 1, 'nchw'), /unknown preset 'nope'/);
  // Every bundled model names a real preset and a shipped sample image.
  const samples = SAMPLE_IMAGES.map(([f]) => f);
  for (const m of BUNDLED) {
    assert.ok(preset(m.preset, 8, 8, 'nchw'), m.id);
    assert.ok(samples.includes(m.image), m.image);
  }
  assert.equal(SAMPLE_IMAGES.length, 19);
});

test('shape checks and the map from model input back to the frame', () => {
  const p = preset('signed', 128, 128, 'nhwc');
  assert.equal(mismatch(p, [1, 128, 128, 3]), null);
  assert.match(mismatch(p, [1, 3, 128, 128]), /gives \[1, 128, 128, 3\], the model takes \[1, 3, 128, 128\]/);
  assert.match(invalid({ ...p, std: [1, 0, 1] }), /std cannot be 0/);
  // Stretch: input corners are frame corners.
  const s = inputToFrame(p, 640, 480);
  assert.deepEqual([s.offsetX + 128 * s.scaleX, s.offsetY + 128 * s.scaleY], [640, 480]);
  // Centre crop of a 600x400 frame to 224 at 0.875: a 350x350 square in the middle.
  const c = inputToFrame(preset('lite', 224, 224, 'nchw'), 600, 400);
  close(224 * c.scaleX, 400 * 0.875, 1e-3);
  close(c.offsetX, (600 - 350) / 2, 1e-3);
  // Letterbox of 640x480 into 640x640: the image sits 80 px down.
  const l = inputToFrame(preset('yolo', 640, 640, 'nchw'), 640, 480);
  close(l.offsetY + 80 * l.scaleY, 0, 1e-6);
});

test('engine reports: layers by tensor and node, infinite SQNR, histograms, fidelity', () => {
  const layers = readLayers([
    { value: 'input', node: '', op: '', sqnrDb: 45 },
    { value: 'a:0', node: 'conv_a', op: 'Conv', sqnrDb: 30 },
    { value: 'b:0', node: 'conv_b', op: 'Conv', sqnrDb: null },
    { value: 'c:0', node: 'conv_c', op: 'Conv', sqnrDb: 12.5 },
  ]);
  assert.equal(layers[2].sqnr, Infinity);
  assert.equal(layers[1].label, 'a:0 (conv_a, Conv)');
  assert.deepEqual(worstNodes(layers, 2), [{ node: 'conv_c', sqnr: 12.5 }, { node: 'conv_a', sqnr: 30 }]);
  assert.equal(sqnrByNode(layers).get('conv_b'), Infinity);
  // The older sketch of the API: name + sqnr.
  assert.deepEqual(readLayers([{ name: 'x', op: 'Conv', sqnr: 20 }])[0], { value: 'x', node: 'x', op: 'Conv', sqnr: 20, label: 'x (Conv)' });
  const h = readHistogram({ start: 0, binWidth: 1, counts: [10, 80, 10], min: 0, max: 3, clip: [1, 2] });
  close(h.inside, 0.8);
  assert.equal(readHistogram({ start: 0, binWidth: 0, counts: [5], min: 0, max: 0, clip: null }).clip, null);
  assert.match(
    fidelityLine({ frames: 8, outputs: [{ name: 'logits', cosine: 0.99912, classifier: { top1: 1, top5: 0.975 } }], presence: null }),
    /^On 8 calibration frames: logits: cosine 0\.9991, top-1 100%, top-5 97\.5%$/,
  );
});

test('dropped files are told apart by their first bytes', () => {
  const bytes = (path) => new Uint8Array(readFileSync(`${REPO_ROOT}/${path}`).subarray(0, 16));
  assert.equal(sniff(bytes('models/images/astronaut.png')), 'png');
  assert.equal(sniff(bytes('models/images/rocket.jpg')), 'jpeg');
  assert.equal(sniff(bytes('tests/corpus/image-renamed.onnx')), 'png');
  assert.equal(sniff(bytes('models/blazeface_front_128.onnx')), 'other');
  assert.equal(sniff(new Uint8Array()), 'empty');
  assert.equal(sniff(new TextEncoder().encode('RIFF\0\0\0\0WEBPVP8 ')), 'webp');
});
