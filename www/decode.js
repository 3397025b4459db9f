// What a model's outputs mean, decided from their shapes, and how to read them:
// classification (top-k), BlazeFace (SSD anchors, weighted NMS), YOLO-style detectors
// ([1, 4+C, N] or [1, N, 5+C]), otherwise generic tensors. Also the agreement of a variant
// with FP32 (top-1, boxes, cosine). Pure functions on Float32Arrays: no DOM, so the Node
// tests import this module directly.

/** @typedef {{name: string, shape: number[], data: Float32Array}} Tensor */
/** @typedef {{x0: number, y0: number, x1: number, y1: number, score: number, label?: string, keypoints?: [number, number][]}} Box */

const numel = (shape) => shape.reduce((a, b) => a * b, 1);

// --- task detection ----------------------------------------------------------------------

/**
 * Decides how to read a model's outputs from its summary (shapes only).
 * @param {{inputs: {shape: number[]}[], outputs: {name: string, shape: number[]}[]}} summary
 * @param {{labels?: string[]}} [hints]
 * @returns {{kind: 'classification', output: number, classes: number}
 *   | {kind: 'blazeface', scores: number[], boxes: number[], anchors: Float32Array}
 *   | {kind: 'yolo', output: number, layout: 'channels-first' | 'channels-last', classes: number}
 *   | {kind: 'generic'}}
 */
export function detectTask(summary) {
  const outs = summary.outputs;
  const blaze = blazefaceOutputs(outs);
  if (blaze) {
    const input = summary.inputs[0]?.shape ?? [];
    const side = input.length === 4 ? (input[1] === 3 ? input[2] : input[1]) : 128;
    return { kind: 'blazeface', ...blaze, anchors: blazefaceAnchors(side) };
  }
  for (let i = 0; i < outs.length; i++) {
    const yolo = yoloLayout(outs[i].shape);
    if (yolo) return { kind: 'yolo', output: i, ...yolo };
  }
  const cls = outs.findIndex((o) => classCount(o.shape) >= 2);
  if (cls >= 0 && outs.length <= 2) return { kind: 'classification', output: cls, classes: classCount(outs[cls].shape) };
  return { kind: 'generic' };
}

/** C for [C], [1, C] or [1, C, 1, 1]; 0 otherwise. */
function classCount(shape) {
  if (shape.length === 1) return shape[0];
  if (shape.length === 2 && shape[0] === 1) return shape[1];
  if (shape.length === 4 && shape[0] === 1 && shape[2] === 1 && shape[3] === 1) return shape[1];
  return 0;
}

/** BlazeFace: score outputs [1, n, 1] and regressor outputs [1, n, 16] covering 896 anchors. */
function blazefaceOutputs(outs) {
  const scores = [];
  const boxes = [];
  outs.forEach((o, i) => {
    if (o.shape.length === 3 && o.shape[0] === 1 && o.shape[2] === 1) scores.push(i);
    if (o.shape.length === 3 && o.shape[0] === 1 && o.shape[2] === 16) boxes.push(i);
  });
  if (!scores.length || scores.length !== boxes.length) return null;
  const count = (list) => list.reduce((n, i) => n + outs[i].shape[1], 0);
  if (count(scores) !== 896 || count(boxes) !== 896) return null;
  // Larger grid first, as the anchors are generated.
  const order = (list) => [...list].sort((a, b) => outs[b].shape[1] - outs[a].shape[1]);
  const s = order(scores);
  const b = order(boxes);
  if (s.some((i, k) => outs[i].shape[1] !== outs[b[k]].shape[1])) return null;
  return { scores: s, boxes: b };
}

/** YOLO-style: [1, 4+C, N] (v8: no objectness) or [1, N, 5+C] (v5: objectness), N large. */
function yoloLayout(shape) {
  if (shape.length !== 3 || shape[0] !== 1) return null;
  const [, a, b] = shape;
  if (a >= 5 && b >= 100 && a < b) return { layout: 'channels-first', classes: a - 4 };
  if (b >= 6 && a >= 100 && b < a) return { layout: 'channels-last', classes: b - 5 };
  return null;
}

// --- classification ----------------------------------------------------------------------

/** Probabilities from logits, or the values themselves when they already are probabilities. */
export function probabilities(values) {
  let sum = 0;
  let inUnit = true;
  for (const v of values) {
    sum += v;
    if (!(v >= 0 && v <= 1)) inUnit = false;
  }
  if (inUnit && Math.abs(sum - 1) < 1e-3) return Float32Array.from(values);
  let max = -Infinity;
  for (const v of values) max = Math.max(max, v);
  const out = new Float32Array(values.length);
  let total = 0;
  for (let i = 0; i < values.length; i++) total += out[i] = Math.exp(values[i] - max);
  for (let i = 0; i < out.length; i++) out[i] /= total;
  return out;
}

/** The k largest entries: [{index, value}] in decreasing order. */
export function topK(values, k) {
  const best = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (best.length < k || v > best[best.length - 1].value) {
      let j = best.length < k ? best.length : k - 1;
      best[j] = { index: i, value: v };
      while (j > 0 && best[j - 1].value < best[j].value) {
        [best[j - 1], best[j]] = [best[j], best[j - 1]];
        j--;
      }
    }
  }
  return best;
}

export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Class names for C classes: 1000 ImageNet names (1001 with a background class first, as in
 * TF-Slim models), the model's own labels, or "class i".
 */
export function classNames(count, { imagenet, labels } = {}) {
  if (labels?.length === count) return labels;
  if (imagenet?.length === 1000 && count === 1000) return imagenet;
  if (imagenet?.length === 1000 && count === 1001) return ['background', ...imagenet];
  if (count === 80) return COCO;
  return Array.from({ length: count }, (_, i) => `class ${i}`);
}

// --- BlazeFace -----------------------------------------------------------------------------

/**
 * The SSD anchors of MediaPipe's BlazeFace front (short-range) model: input side S (128),
 * strides S/16 and S/8 (8 and 16 for 128), 2 and 6 anchors per cell, centres at cell
 * centres, unit size (fixed_anchor_size). 16x16x2 + 8x8x6 = 896 anchors, [x, y] each,
 * normalised to 0..1.
 */
export function blazefaceAnchors(side = 128) {
  const layers = [
    { stride: side / 16, perCell: 2 },
    { stride: side / 8, perCell: 6 },
  ];
  const anchors = [];
  for (const { stride, perCell } of layers) {
    const grid = Math.ceil(side / stride);
    for (let y = 0; y < grid; y++) {
      for (let x = 0; x < grid; x++) {
        for (let a = 0; a < perCell; a++) anchors.push((x + 0.5) / grid, (y + 0.5) / grid);
      }
    }
  }
  return Float32Array.from(anchors);
}

const sigmoid = (x) => 1 / (1 + Math.exp(-Math.max(-100, Math.min(100, x))));

/**
 * Decodes BlazeFace outputs into boxes with 6 keypoints (right eye, left eye, nose, mouth,
 * right ear, left ear), in model-input coordinates normalised to 0..1, after weighted NMS.
 * @param {Tensor[]} outputs
 * @param {{scores: number[], boxes: number[], anchors: Float32Array}} task
 * @param {{side?: number, threshold?: number, iou?: number}} [options]
 * @returns {Box[]}
 */
export function decodeBlazeface(outputs, task, { side = 128, threshold = 0.75, iou = 0.3 } = {}) {
  const { anchors } = task;
  const candidates = [];
  let anchor = 0;
  task.scores.forEach((si, k) => {
    const scores = outputs[si].data;
    const regs = outputs[task.boxes[k]].data;
    for (let i = 0; i < scores.length; i++, anchor++) {
      const score = sigmoid(scores[i]);
      if (score < threshold) continue;
      const ax = anchors[2 * anchor];
      const ay = anchors[2 * anchor + 1];
      const r = regs.subarray(i * 16, i * 16 + 16);
      const cx = r[0] / side + ax;
      const cy = r[1] / side + ay;
      const w = r[2] / side;
      const h = r[3] / side;
      const keypoints = [];
      for (let p = 0; p < 6; p++) keypoints.push([r[4 + 2 * p] / side + ax, r[5 + 2 * p] / side + ay]);
      candidates.push({ x0: cx - w / 2, y0: cy - h / 2, x1: cx + w / 2, y1: cy + h / 2, score, keypoints });
    }
  });
  return weightedNms(candidates, iou);
}

/** Intersection over union of two boxes. */
export function iou(a, b) {
  const ix = Math.max(0, Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0));
  const iy = Math.max(0, Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0));
  const inter = ix * iy;
  const union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * MediaPipe's weighted NMS: the best remaining box and every box overlapping it by more than
 * `threshold` become one box, their score-weighted average (keypoints too), with the best score.
 * @param {Box[]} boxes
 */
export function weightedNms(boxes, threshold = 0.3) {
  const rest = [...boxes].sort((a, b) => b.score - a.score);
  const out = [];
  while (rest.length) {
    const best = rest[0];
    const cluster = [];
    const keep = [];
    for (const b of rest) (iou(best, b) > threshold || b === best ? cluster : keep).push(b);
    const total = cluster.reduce((s, b) => s + b.score, 0);
    const avg = (f) => cluster.reduce((s, b) => s + f(b) * b.score, 0) / total;
    const merged = { x0: avg((b) => b.x0), y0: avg((b) => b.y0), x1: avg((b) => b.x1), y1: avg((b) => b.y1), score: best.score };
    if (best.keypoints) {
      merged.keypoints = best.keypoints.map((_, k) => [avg((b) => b.keypoints[k][0]), avg((b) => b.keypoints[k][1])]);
    }
    out.push(merged);
    rest.splice(0, rest.length, ...keep);
  }
  return out;
}

/** Greedy NMS per label: the best box suppresses others of its label overlapping > threshold. */
export function nms(boxes, threshold = 0.45, max = 100) {
  const sorted = [...boxes].sort((a, b) => b.score - a.score);
  const out = [];
  for (const b of sorted) {
    if (out.length >= max) break;
    if (out.every((o) => o.label !== b.label || iou(o, b) <= threshold)) out.push(b);
  }
  return out;
}

// --- YOLO ------------------------------------------------------------------------------------

/**
 * Decodes a YOLO-style output: per candidate a box (cx, cy, w, h, in input pixels or
 * normalised) and class scores, with objectness in the channels-last [1, N, 5+C] layout.
 * Returns boxes normalised to 0..1 of the model input, after per-class NMS.
 * @param {Tensor} out
 * @param {{layout: 'channels-first' | 'channels-last', classes: number}} task
 * @param {{width: number, height: number, names?: string[], threshold?: number, iou?: number}} options
 * @returns {Box[]}
 */
export function decodeYolo(out, task, { width, height, names = [], threshold = 0.25, iou: overlap = 0.45 }) {
  const d = out.data;
  const first = task.layout === 'channels-first';
  const n = first ? out.shape[2] : out.shape[1];
  const stride = first ? 1 : out.shape[2];
  const plane = first ? n : 1;
  const at = (i, c) => d[first ? c * plane + i : i * stride + c];
  const classBase = first ? 4 : 5;
  // Coordinates in pixels or already normalised: look at the largest centre.
  let maxCoord = 0;
  for (let i = 0; i < n; i++) maxCoord = Math.max(maxCoord, Math.abs(at(i, 0)), Math.abs(at(i, 1)));
  const sx = maxCoord <= 1.5 ? 1 : 1 / width;
  const sy = maxCoord <= 1.5 ? 1 : 1 / height;
  const candidates = [];
  for (let i = 0; i < n; i++) {
    const objectness = first ? 1 : at(i, 4);
    if (objectness < threshold) continue;
    let best = 0;
    let bestScore = -Infinity;
    for (let c = 0; c < task.classes; c++) {
      const s = at(i, classBase + c);
      if (s > bestScore) {
        bestScore = s;
        best = c;
      }
    }
    const score = bestScore * objectness;
    if (score < threshold) continue;
    const cx = at(i, 0) * sx;
    const cy = at(i, 1) * sy;
    const w = at(i, 2) * sx;
    const h = at(i, 3) * sy;
    candidates.push({ x0: cx - w / 2, y0: cy - h / 2, x1: cx + w / 2, y1: cy + h / 2, score, label: names[best] ?? `class ${best}` });
  }
  return nms(candidates, overlap);
}

// --- generic tensors -------------------------------------------------------------------------

/**
 * How to show a tensor: a heatmap for spatial maps (max over channels), bars for vectors,
 * statistics otherwise.
 * @param {Tensor} t
 * @returns {{kind: 'heatmap', width: number, height: number, values: Float32Array, min: number, max: number}
 *   | {kind: 'bars', values: Float32Array}
 *   | {kind: 'stats'}}
 */
export function genericView(t) {
  const s = t.shape;
  const spatial = spatialDims(s);
  if (spatial) {
    const { h, w, c, channelsLast } = spatial;
    const values = new Float32Array(h * w).fill(-Infinity);
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < h * w; p++) {
        const v = channelsLast ? t.data[p * c + ch] : t.data[ch * h * w + p];
        if (v > values[p]) values[p] = v;
      }
    }
    let min = Infinity;
    let max = -Infinity;
    for (const v of values) {
      min = Math.min(min, v);
      max = Math.max(max, v);
    }
    return { kind: 'heatmap', width: w, height: h, values, min, max };
  }
  if (numel(s) <= 4096) return { kind: 'bars', values: t.data };
  return { kind: 'stats' };
}

/** [N, C, H, W] / [N, H, W, C] / [N, H, W] with H, W >= 4. */
function spatialDims(s) {
  if (s.length === 4 && s[0] === 1) {
    // Channels last when the last dim is small and the middle ones are not.
    if (s[3] <= 4 && s[1] >= 4 && s[2] >= 4 && s[1] > s[3]) return { h: s[1], w: s[2], c: s[3], channelsLast: true };
    if (s[2] >= 4 && s[3] >= 4) return { h: s[2], w: s[3], c: s[1], channelsLast: false };
  }
  if (s.length === 3 && s[0] === 1 && s[1] >= 4 && s[2] >= 4) return { h: s[1], w: s[2], c: 1, channelsLast: false };
  return null;
}

/** min, max, mean, standard deviation of a tensor. */
export function stats(data) {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let sq = 0;
  for (const v of data) {
    min = Math.min(min, v);
    max = Math.max(max, v);
    sum += v;
    sq += v * v;
  }
  const mean = sum / data.length;
  return { min, max, mean, std: Math.sqrt(Math.max(0, sq / data.length - mean * mean)) };
}

// --- agreement with FP32 ---------------------------------------------------------------------

/** Cosine similarity of two variants' outputs, all outputs taken as one vector. */
export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let t = 0; t < Math.min(a.length, b.length); t++) {
    const x = a[t].data;
    const y = b[t].data;
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      dot += x[i] * y[i];
      na += x[i] * x[i];
      nb += y[i] * y[i];
    }
  }
  if (na === 0 && nb === 0) return 1;
  return na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 0;
}

/**
 * How far two sets of boxes agree: matched pairs (same label, IoU >= 0.5, greedy by score)
 * over the larger count; 1 when both are empty.
 */
export function boxAgreement(reference, other, threshold = 0.5) {
  if (!reference.length && !other.length) return 1;
  const used = new Set();
  let matched = 0;
  for (const r of [...reference].sort((a, b) => b.score - a.score)) {
    let best = -1;
    let bestIou = threshold;
    other.forEach((o, j) => {
      if (used.has(j) || o.label !== r.label) return;
      const v = iou(r, o);
      if (v >= bestIou) {
        bestIou = v;
        best = j;
      }
    });
    if (best >= 0) {
      used.add(best);
      matched++;
    }
  }
  return matched / Math.max(reference.length, other.length);
}

/** The median of a list of numbers (NaN for an empty one). */
export function median(values) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The 80 COCO classes, in the order YOLO models use. */
export const COCO = [
  'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
  'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
  'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
  'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
  'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
  'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
  'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
  'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
];

// --- one call for the page -------------------------------------------------------------------

/**
 * Reads a variant's outputs for the task: what a pane shows and what agreement compares.
 * Boxes are in model-input coordinates normalised to 0..1.
 * @param {ReturnType<typeof detectTask>} task
 * @param {Tensor[]} outputs
 * @param {{names?: string[], inputWidth: number, inputHeight: number}} context
 * @returns {{kind: 'classification', top: {index: number, value: number, label: string}[], best: number}
 *   | {kind: 'detection', boxes: Box[]}
 *   | {kind: 'generic', views: {name: string, shape: number[], view: ReturnType<typeof genericView>, stats: ReturnType<typeof stats>}[], best: number}}
 */
export function interpret(task, outputs, { names = [], inputWidth, inputHeight }) {
  if (task.kind === 'classification') {
    const probs = probabilities(outputs[task.output].data);
    const top = topK(probs, Math.min(5, probs.length)).map(({ index, value }) => ({ index, value, label: names[index] ?? `class ${index}` }));
    return { kind: 'classification', top, best: top[0]?.index ?? -1 };
  }
  if (task.kind === 'blazeface') {
    return { kind: 'detection', boxes: decodeBlazeface(outputs, task, { side: inputWidth }).map((b) => ({ ...b, label: 'face' })) };
  }
  if (task.kind === 'yolo') {
    return { kind: 'detection', boxes: decodeYolo(outputs[task.output], task, { width: inputWidth, height: inputHeight, names }) };
  }
  const views = outputs.map((o) => ({ name: o.name, shape: o.shape, view: genericView(o), stats: stats(o.data) }));
  return { kind: 'generic', views, best: outputs.length ? argmax(outputs[0].data) : -1 };
}

/**
 * Agreement of a variant with FP32 on one frame: `top1` is 1 or 0 for classification and
 * generic outputs (same argmax), the box agreement for detection; `cosine` over all outputs.
 */
export function agreement(reference, other, referenceOutputs, otherOutputs) {
  const top1 = reference.kind === 'detection' ? boxAgreement(reference.boxes, other.boxes) : reference.best === other.best ? 1 : 0;
  return { top1, cosine: cosine(referenceOutputs, otherOutputs) };
}
