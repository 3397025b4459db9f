// The page's charts, on uPlot (package.json; served from node_modules by scripts/serve.mjs
// and copied into dist/ by scripts/dist.sh, never from another host): per-layer SQNR of
// PTQ and QAT, the activation histogram of a layer with its clip range, and the QAT loss.
// Each chart follows its container's width (ResizeObserver) at a fixed height.

import uPlot from './vendor/uplot/uPlot.esm.js';
import { cssVar } from './ui.js';

/** SQNR above this is shown at this value (a layer quantized without loss is +Infinity). */
const SQNR_CAP = 60;

function theme() {
  return {
    text: cssVar('--muted') || '#5b6675',
    grid: cssVar('--border') || '#dde1e7',
    ptq: cssVar('--ptq') || '#d9822b',
    qat: cssVar('--qat') || '#2f9e6b',
    accent: cssVar('--accent') || '#2456d6',
    bad: cssVar('--bad') || '#c53030',
  };
}

const axis = (t, extra = {}) => ({
  stroke: t.text,
  grid: { stroke: t.grid, width: 1 },
  ticks: { stroke: t.grid, width: 1 },
  font: '11px system-ui, sans-serif',
  labelFont: '11px system-ui, sans-serif',
  ...extra,
});

/** A uPlot chart that tracks its container's width. */
class Chart {
  /** @param {HTMLElement} container @param {number} height */
  constructor(container, height) {
    this.container = container;
    this.height = height;
    this.plot = null;
    this.observer = new ResizeObserver(() => this.plot?.setSize({ width: this.#width(), height: this.height }));
    this.observer.observe(container);
  }

  #width() {
    return Math.max(200, Math.floor(this.container.clientWidth));
  }

  /** (Re)creates the plot. */
  make(options, data) {
    this.plot?.destroy();
    this.plot = new uPlot({ width: this.#width(), height: this.height, ...options }, data, this.container);
    return this.plot;
  }

  clear() {
    this.plot?.destroy();
    this.plot = null;
  }
}

/**
 * Per-layer SQNR (dB; higher is better) of PTQ and QAT, one bar pair per layer in graph
 * order. Clicking a layer calls onSelect(index).
 */
export class SqnrChart extends Chart {
  constructor(container, { onSelect } = {}) {
    super(container, 240);
    this.onSelect = onSelect;
    this.layers = [];
  }

  /** @param {{name: string, value: string, op: string, ptq: number | null, qat: number | null}[]} layers  name: a label */
  update(layers) {
    this.layers = layers;
    if (!layers.length) return this.clear();
    const t = theme();
    const cap = (v) => (v == null || Number.isNaN(v) ? null : Math.max(-20, Math.min(SQNR_CAP, v)));
    const xs = layers.map((_, i) => i);
    const data = [xs, layers.map((l) => cap(l.ptq)), layers.map((l) => cap(l.qat))];
    const hasQat = layers.some((l) => l.qat != null);
    const name = (i) => (i == null || !layers[i] ? '' : `${i}: ${layers[i].name}`);
    // Legend values: the uncapped SQNR of the layer under the cursor.
    const db = (key) => (u, v, seriesIdx, idx) => {
      const x = idx == null ? null : layers[idx]?.[key];
      if (x == null || Number.isNaN(x)) return '–';
      return x === Infinity || x > SQNR_CAP ? `≥ ${SQNR_CAP} dB` : `${x.toFixed(1)} dB`;
    };
    const plot = this.make(
      {
        padding: [8, 8, 0, 0],
        cursor: { points: { show: false }, drag: { x: false, y: false } },
        legend: { live: true },
        scales: { x: { time: false, range: [-0.5, layers.length - 0.5] }, y: { range: (u, lo, hi) => [Math.min(0, lo), Math.max(40, hi)] } },
        axes: [
          axis(t, { label: 'layer (graph order)', values: (u, ticks) => ticks.map((v) => (Number.isInteger(v) ? v : '')) }),
          axis(t, { label: 'SQNR (dB)', size: 50 }),
        ],
        series: [
          { label: 'layer', value: (u, v, s, idx) => name(idx ?? v) },
          {
            label: 'PTQ',
            stroke: t.ptq,
            fill: t.ptq,
            width: 0,
            paths: uPlot.paths.bars({ size: [hasQat ? 0.4 : 0.7, 24], align: hasQat ? -1 : 0 }),
            points: { show: false },
            value: db('ptq'),
          },
          {
            label: 'QAT',
            show: hasQat,
            stroke: t.qat,
            fill: t.qat,
            width: 0,
            paths: uPlot.paths.bars({ size: [0.4, 24], align: 1 }),
            points: { show: false },
            value: db('qat'),
          },
        ],
      },
      data,
    );
    plot.over.addEventListener('click', () => {
      const i = plot.cursor.idx;
      if (i != null) this.onSelect?.(i);
    });
  }
}

/** An activation histogram (log counts) with the quantizer's clip range marked. */
export class HistogramChart extends Chart {
  constructor(container) {
    super(container, 240);
  }

  /** @param {ReturnType<import('./reports.js').readHistogram>} hist  clip may be null */
  update(hist) {
    const t = theme();
    const n = hist.counts.length;
    const xs = Array.from({ length: n }, (_, i) => hist.start + (i + 0.5) * hist.binWidth);
    const ys = Array.from(hist.counts, (c) => (c > 0 ? c : null));
    const clip = hist.clip ?? [];
    this.make(
      {
        padding: [8, 8, 0, 0],
        cursor: { points: { show: false }, drag: { x: false, y: false } },
        scales: {
          // The clip range in view even where no value falls.
          x: { time: false, range: (u, lo, hi) => [Math.min(lo, ...clip.map((c) => c - hist.binWidth)), Math.max(hi, ...clip.map((c) => c + hist.binWidth))] },
          y: { distr: 3 },
        },
        axes: [axis(t, { label: 'activation value' }), axis(t, { label: 'count (log)', size: 56 })],
        series: [
          { label: 'value', value: (u, v) => (v == null ? '–' : v.toPrecision(4)) },
          {
            label: 'count',
            stroke: t.accent,
            fill: t.accent,
            width: 0,
            paths: uPlot.paths.bars({ size: [1, Infinity, 1], align: 0 }),
            points: { show: false },
          },
        ],
        hooks: {
          draw: [
            (u) => {
              // The clip range: what lies outside saturates to the int8 limits.
              const { ctx, bbox } = u;
              ctx.save();
              ctx.strokeStyle = t.bad;
              ctx.lineWidth = 2 * devicePixelRatio;
              ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
              for (const v of clip) {
                const x = u.valToPos(v, 'x', true);
                if (x < bbox.left - 1 || x > bbox.left + bbox.width + 1) continue;
                ctx.beginPath();
                ctx.moveTo(x, bbox.top);
                ctx.lineTo(x, bbox.top + bbox.height);
                ctx.stroke();
              }
              ctx.restore();
            },
          ],
        },
      },
      [xs, ys],
    );
  }
}

/** The QAT loss per step (and the held-out loss where measured), appended to as training reports. */
export class LossChart extends Chart {
  constructor(container) {
    super(container, 180);
    this.reset();
  }

  /**
   * @param {{labels?: boolean}} [options]  labels: also plot the cross-entropy to the labels,
   *   on an axis of its own (it is tens of times the distillation)
   */
  reset({ labels = false } = {}) {
    this.labels = labels;
    this.steps = [];
    this.losses = [];
    this.holdout = [];
    this.labelLosses = [];
    this.#draw();
  }

  /**
   * @param {number} step @param {number} loss  the training distillation
   * @param {number | null} [holdout] @param {number | null} [label]  when measured at this step
   */
  push(step, loss, holdout = null, label = null) {
    if (!Number.isFinite(loss)) return;
    this.steps.push(step);
    this.losses.push(loss);
    this.holdout.push(Number.isFinite(holdout) ? holdout : null);
    this.labelLosses.push(Number.isFinite(label) ? label : null);
    this.plot.setData(this.#data());
  }

  #data() {
    return this.labels ? [this.steps, this.losses, this.holdout, this.labelLosses] : [this.steps, this.losses, this.holdout];
  }

  #draw() {
    const t = theme();
    const series = [
      { label: 'step' },
      { label: this.labels ? 'training distillation' : 'training loss', stroke: t.qat, width: 2, points: { show: false } },
      { label: 'held-out', stroke: t.accent, width: 2, dash: [6, 4], spanGaps: true, points: { show: true, size: 5 } },
    ];
    const axes = [axis(t, { label: 'step' }), axis(t, { label: 'loss', size: 56 })];
    const scales = { x: { time: false }, y: { auto: true } };
    if (this.labels) {
      series.push({ label: 'label loss', scale: 'ce', stroke: t.ptq, width: 1.5, spanGaps: true, points: { show: true, size: 4 } });
      axes.push(axis(t, { label: 'label loss', scale: 'ce', side: 1, size: 56, grid: { show: false } }));
      scales.ce = { auto: true };
    }
    this.make(
      {
        padding: [8, 8, 0, 0],
        cursor: { drag: { x: false, y: false } },
        scales,
        axes,
        series,
      },
      this.#data(),
    );
  }
}
