// The three comparison panes (FP32 | PTQ | QAT): the frame with what the model found drawn
// on it, the top-5 or a summary of the outputs below, and per-pane numbers: median latency
// over recent frames, model size, agreement with FP32 over recent frames.
//
// A pane's state is `data-state` on its element: 'empty' (nothing to show yet, with a
// message), 'unavailable' (the engine build cannot), 'ok', 'error'; `data-frames` counts the
// frames it rendered, `data-detections` the boxes of the last one. Tests wait on these.

import { median } from './decode.js';
import { inputToFrame } from './preprocess.js';
import { cssVar, field, formatBytes, formatMs, h } from './ui.js';

export const VARIANTS = ['fp32', 'ptq', 'qat'];

/** Recent frames kept for the per-pane numbers. */
const WINDOW = 30;

/** 0..1 -> [r, g, b] on a perceptual ramp (viridis-like). */
function colormap(t) {
  const stops = [
    [68, 1, 84],
    [59, 82, 139],
    [33, 145, 140],
    [94, 201, 98],
    [253, 231, 37],
  ];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

export class Pane {
  /** @param {HTMLElement} root  an `.pane` element */
  constructor(root) {
    this.root = root;
    this.variant = root.dataset.variant;
    this.canvas = root.querySelector('canvas');
    this.output = root.querySelector('.pane-output');
    this.message = root.querySelector('.pane-message');
    this.title = root.querySelector('h3')?.firstChild?.textContent.trim() ?? this.variant;
    /** Frames rendered since the page opened (`data-frames`, for tests); never reset. */
    this.rendered = 0;
    this.resetMetrics();
    this.setState('empty', 'Waiting for the model…');
  }

  resetMetrics() {
    this.latencies = [];
    this.agreements = [];
    this.cosines = [];
    this.size = NaN;
    this.sizeNote = '';
    this.frames = 0;
    this.#renderStats();
  }

  /** @param {'empty' | 'unavailable' | 'ok' | 'error' | 'busy'} state @param {string} [message] */
  setState(state, message = '') {
    this.root.dataset.state = state;
    this.message.textContent = message;
    this.message.hidden = !message;
    if (state !== 'ok' && state !== 'busy') {
      this.#clearCanvas();
      this.output.replaceChildren();
    }
  }

  setSize(bytes, note = '') {
    this.size = bytes;
    this.sizeNote = note;
    this.#renderStats();
  }

  /** Summary numbers, for the report. */
  metrics() {
    return {
      frames: this.frames,
      medianLatencyMs: median(this.latencies),
      weightBytes: Number.isFinite(this.size) ? this.size : null,
      top1Agreement: this.agreements.length ? this.agreements.reduce((a, b) => a + b, 0) / this.agreements.length : null,
      cosine: this.cosines.length ? this.cosines.reduce((a, b) => a + b, 0) / this.cosines.length : null,
    };
  }

  /**
   * Shows one frame's result.
   * @param {ImageBitmap} bitmap  the frame that was run
   * @param {ReturnType<import('./decode.js').interpret>} result
   * @param {{ms: number, preprocess: import('./protocol.js').Preprocess, agreement?: {top1: number, cosine: number}, detectionLabel?: string}} info
   */
  render(bitmap, result, info) {
    this.setState('ok');
    this.frames += 1;
    this.rendered += 1;
    this.root.dataset.frames = String(this.rendered);
    push(this.latencies, info.ms);
    if (info.agreement) {
      push(this.agreements, info.agreement.top1);
      push(this.cosines, info.agreement.cosine);
    }
    const view = this.#drawFrame(bitmap);
    const toCanvas = this.#inputToCanvas(view, info.preprocess, bitmap);
    if (result.kind === 'classification') this.#renderTop(result.top);
    else if (result.kind === 'detection') this.#renderBoxes(view.ctx, result.boxes, toCanvas, info.detectionLabel);
    else this.#renderGeneric(view.ctx, result.views, toCanvas);
    this.root.dataset.detections = result.kind === 'detection' ? String(result.boxes.length) : '';
    this.canvas.setAttribute('aria-label', `${this.title}: ${describe(result)}`);
    this.#renderStats();
  }

  #clearCanvas() {
    const ctx = this.canvas.getContext('2d');
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Draws the frame to fit the canvas; returns the placement. */
  #drawFrame(bitmap) {
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const ch = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== cw || this.canvas.height !== ch) {
      this.canvas.width = cw;
      this.canvas.height = ch;
    }
    const ctx = this.canvas.getContext('2d');
    ctx.fillStyle = cssVar('--canvas-bg') || '#000';
    ctx.fillRect(0, 0, cw, ch);
    const scale = Math.min(cw / bitmap.width, ch / bitmap.height);
    const ox = (cw - bitmap.width * scale) / 2;
    const oy = (ch - bitmap.height * scale) / 2;
    ctx.drawImage(bitmap, ox, oy, bitmap.width * scale, bitmap.height * scale);
    return { ctx, scale, ox, oy, dpr };
  }

  /** Model-input coordinates normalised to 0..1 -> canvas pixels. */
  #inputToCanvas(view, preprocess, bitmap) {
    const m = inputToFrame(preprocess, bitmap.width, bitmap.height);
    return (u, v) => [
      view.ox + (m.offsetX + u * preprocess.width * m.scaleX) * view.scale,
      view.oy + (m.offsetY + v * preprocess.height * m.scaleY) * view.scale,
    ];
  }

  #renderTop(top) {
    let list = this.output.querySelector('.top5');
    if (!list) {
      list = h('ol', { class: 'top5' });
      this.output.replaceChildren(list);
    }
    while (list.children.length < top.length) {
      list.append(h('li', {}, h('span', { class: 'label' }), h('span', { class: 'bar', 'aria-hidden': 'true' }, h('span')), h('span', { class: 'pct' })));
    }
    while (list.children.length > top.length) list.lastChild.remove();
    top.forEach((t, i) => {
      const li = list.children[i];
      li.querySelector('.label').textContent = t.label;
      li.querySelector('.label').title = `${t.label} (class ${t.index})`;
      li.querySelector('.bar > span').style.setProperty('--p', String(t.value));
      li.querySelector('.pct').textContent = `${(t.value * 100).toFixed(1)}%`;
    });
  }

  #renderBoxes(ctx, boxes, toCanvas, label = 'detection') {
    const stroke = cssVar('--box') || '#ffcc00';
    ctx.lineWidth = Math.max(2, ctx.canvas.width / 200);
    ctx.strokeStyle = stroke;
    ctx.fillStyle = stroke;
    ctx.font = `${Math.round(ctx.canvas.width / 28)}px system-ui, sans-serif`;
    ctx.textBaseline = 'bottom';
    for (const b of boxes) {
      const [x0, y0] = toCanvas(b.x0, b.y0);
      const [x1, y1] = toCanvas(b.x1, b.y1);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const text = `${b.label ?? label} ${(b.score * 100).toFixed(0)}%`;
      const tw = ctx.measureText(text).width + 8;
      const th = parseInt(ctx.font, 10) + 4;
      // The label sits above the box, or inside it when the box touches the top.
      const ty = y0 - th >= 0 ? y0 - th : y0;
      ctx.fillRect(x0 - ctx.lineWidth / 2, ty, tw, th);
      ctx.fillStyle = '#111';
      ctx.fillText(text, x0 + 4, ty + th - 2);
      ctx.fillStyle = stroke;
      for (const [u, v] of b.keypoints ?? []) {
        const [x, y] = toCanvas(u, v);
        ctx.beginPath();
        ctx.arc(x, y, ctx.lineWidth * 1.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    const n = boxes.length;
    const noun = label === 'face' ? (n === 1 ? 'face' : 'faces') : n === 1 ? 'detection' : 'detections';
    const rows = boxes
      .slice(0, 4)
      .map((b) => h('li', {}, h('span', { class: 'label' }, b.label ?? label), h('span', { class: 'pct' }, `${(b.score * 100).toFixed(1)}%`)));
    this.output.replaceChildren(
      h('p', { class: 'pane-summary' }, `${n} ${noun}`),
      h('ul', { class: 'detections' }, rows),
    );
  }

  #renderGeneric(ctx, views, toCanvas) {
    const spatial = views.find((v) => v.view.kind === 'heatmap');
    if (spatial) {
      const { width, height, values, min, max } = spatial.view;
      const img = new ImageData(width, height);
      const span = max - min || 1;
      for (let i = 0; i < values.length; i++) {
        const [r, g, b] = colormap((values[i] - min) / span);
        img.data.set([r, g, b, 150], i * 4);
      }
      const tmp = new OffscreenCanvas(width, height);
      tmp.getContext('2d').putImageData(img, 0, 0);
      const [x0, y0] = toCanvas(0, 0);
      const [x1, y1] = toCanvas(1, 1);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(tmp, x0, y0, x1 - x0, y1 - y0);
    }
    const items = views.slice(0, 3).map((v) => {
      const head = h('p', { class: 'tensor-name' }, h('code', {}, v.name), ` [${v.shape.join(', ')}]`);
      const s = v.stats;
      const line = h('p', { class: 'tensor-stats' }, `min ${fmt(s.min)} · max ${fmt(s.max)} · mean ${fmt(s.mean)}`);
      if (v.view.kind === 'bars') return h('div', { class: 'tensor' }, head, barsCanvas(v.view.values), line);
      if (v.view.kind === 'heatmap') return h('div', { class: 'tensor' }, head, h('p', { class: 'tensor-stats' }, 'heatmap on the frame (max over channels)'), line);
      return h('div', { class: 'tensor' }, head, line);
    });
    if (views.length > 3) items.push(h('p', { class: 'tensor-stats' }, `and ${views.length - 3} more outputs`));
    this.output.replaceChildren(...items);
  }

  #renderStats() {
    const set = (name, text) => {
      const node = field(name, this.root);
      if (node) node.textContent = text;
    };
    set('latency', formatMs(median(this.latencies)));
    set('size', Number.isFinite(this.size) ? `${formatBytes(this.size)}${this.sizeNote}` : '–');
    if (this.variant === 'fp32') {
      set('agree', 'reference');
      set('cosine', '1');
      return;
    }
    const mean = (list) => list.reduce((a, b) => a + b, 0) / list.length;
    set('agree', this.agreements.length ? `${(mean(this.agreements) * 100).toFixed(0)}% (${this.agreements.length} fr.)` : '–');
    set('cosine', this.cosines.length ? mean(this.cosines).toFixed(4) : '–');
  }
}

/** One line for screen readers: what the pane shows. */
function describe(result) {
  if (result.kind === 'classification') return result.top.slice(0, 3).map((t) => `${t.label} ${(t.value * 100).toFixed(0)}%`).join(', ');
  if (result.kind === 'detection') return `${result.boxes.length} detection${result.boxes.length === 1 ? '' : 's'}`;
  return `${result.views.length} output tensor${result.views.length === 1 ? '' : 's'}`;
}

function push(list, value) {
  list.push(value);
  if (list.length > WINDOW) list.shift();
}

function fmt(x) {
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(2) : x.toFixed(3);
}

/** A small bar chart of a vector (at most 256 bars: longer vectors are max-pooled). */
function barsCanvas(values) {
  const n = Math.min(values.length, 256);
  const per = values.length / n;
  const bars = Array.from({ length: n }, (_, i) => {
    let m = -Infinity;
    for (let j = Math.floor(i * per); j < Math.max(Math.floor((i + 1) * per), Math.floor(i * per) + 1); j++) m = Math.max(m, values[j]);
    return m;
  });
  const lo = Math.min(0, ...bars);
  const hi = Math.max(0, ...bars);
  const canvas = h('canvas', { class: 'bars', width: 300, height: 48, role: 'img', 'aria-label': `${values.length} values from ${fmt(lo)} to ${fmt(hi)}` });
  const ctx = canvas.getContext('2d');
  const span = hi - lo || 1;
  const zero = 48 * (hi / span);
  ctx.fillStyle = cssVar('--accent') || '#2456d6';
  const w = 300 / n;
  bars.forEach((v, i) => {
    const y = 48 * ((hi - v) / span);
    ctx.fillRect(i * w, Math.min(y, zero), Math.max(1, w - (w > 3 ? 1 : 0)), Math.max(1, Math.abs(zero - y)));
  });
  return canvas;
}
