// "Where quantization hurts": the per-tensor SQNR of PTQ (and QAT) against FP32 as a bar
// chart, and the calibration histogram of a chosen tensor with its clip range. The chart
// library loads on first use, so a page without it still works (and says why).

import { readHistogram, worstNodes } from './reports.js';
import { $, errorMessage, field, h, notice } from './ui.js';

const NOT_IN_BUILD = 'not available in this build';

let chartsModule = null;

/** charts.js (and uPlot), loaded once. */
export function loadCharts() {
  chartsModule ??= import('./charts.js').catch((err) => {
    chartsModule = null;
    throw new Error(`the chart library could not be loaded (${err.message}); run npm ci`);
  });
  return chartsModule;
}

export class Insight {
  /** @param {{histogram: (value: string) => Promise<import('./protocol.js').Histogram>}} engine */
  constructor({ histogram }) {
    this.fetchHistogram = histogram;
    this.select = $('#histogram-layer');
    this.sqnrChart = null;
    this.histogramChart = null;
    /** The PTQ layers drawn last (a newer update makes older async work moot). */
    this.current = null;
    this.features = {};
    this.select.addEventListener('change', () => this.#showHistogram(this.select.value));
  }

  /**
   * @param {{ptq: import('./reports.js').Layer[] | null, qat: import('./reports.js').Layer[] | null, features: Record<string, boolean>}} data
   */
  async update({ ptq, qat, features }) {
    this.current = ptq;
    this.features = features;
    const select = this.select;
    if (!ptq) {
      this.sqnrChart?.clear();
      this.histogramChart?.clear();
      field('sqnr-empty').textContent = features.ptq ? 'Quantize to see which layers lose the most.' : `Per-layer errors: ${NOT_IN_BUILD}.`;
      field('sqnr-empty').hidden = false;
      field('histogram-empty').hidden = false;
      select.replaceChildren(h('option', { value: '' }, features.ptq ? '(quantize first)' : `(${NOT_IN_BUILD})`));
      select.disabled = true;
      field('histogram-facts').textContent = '';
      notice(field('insight-notice'), '');
      return;
    }
    let charts;
    try {
      charts = await loadCharts();
    } catch (err) {
      notice(field('insight-notice'), errorMessage(err), 'error');
      return;
    }
    if (this.current !== ptq) return; // superseded while the charts loaded
    const qatSqnr = new Map((qat ?? []).map((l) => [l.value, l.sqnr]));
    const layers = ptq.map((l) => ({ name: l.label, value: l.value, op: l.op, ptq: l.sqnr, qat: qatSqnr.get(l.value) ?? null }));
    this.sqnrChart ??= new charts.SqnrChart($('#sqnr-chart'), { onSelect: (i) => this.#select(this.sqnrChart.layers[i]?.value) });
    this.sqnrChart.update(layers);
    field('sqnr-empty').hidden = true;
    const worst = worstNodes(ptq, 3);
    notice(field('insight-notice'), worst.length ? `Lowest SQNR after PTQ: ${worst.map((w) => `${w.node} (${w.sqnr.toFixed(1)} dB)`).join(', ')}.` : '');

    const previous = select.value;
    if (!features.histogram) {
      select.replaceChildren(h('option', { value: '' }, `(${NOT_IN_BUILD})`));
      select.disabled = true;
      field('histogram-facts').textContent = `Activation histograms: ${NOT_IN_BUILD}.`;
      return;
    }
    const values = ptq.map((l) => l.value).filter(Boolean);
    select.replaceChildren(...ptq.filter((l) => l.value).map((l) => h('option', { value: l.value }, l.label)));
    select.disabled = !values.length;
    select.value = values.includes(previous) ? previous : (worstValue(ptq) ?? values[0] ?? '');
    if (select.value) this.#showHistogram(select.value);
  }

  #select(value) {
    if (!value || this.select.disabled || ![...this.select.options].some((o) => o.value === value)) return;
    this.select.value = value;
    this.#showHistogram(value);
  }

  async #showHistogram(value) {
    if (!value) return;
    try {
      const [charts, raw] = await Promise.all([loadCharts(), this.fetchHistogram(value)]);
      if (this.select.value !== value) return;
      const hist = readHistogram(raw);
      this.histogramChart ??= new charts.HistogramChart($('#histogram-chart'));
      this.histogramChart.update(hist);
      field('histogram-empty').hidden = true;
      const range = `values from ${hist.min.toPrecision(4)} to ${hist.max.toPrecision(4)}`;
      field('histogram-facts').textContent = hist.clip
        ? `${value}: ${range}; the clip range [${hist.clip[0].toPrecision(4)}, ${hist.clip[1].toPrecision(4)}] keeps ${(hist.inside * 100).toFixed(2)}% of them.`
        : `${value}: ${range}; no clip range (not quantized as an activation).`;
    } catch (err) {
      field('histogram-facts').textContent = err.notAvailable ? `Activation histograms: ${NOT_IN_BUILD}.` : `Could not get the histogram of ${value}: ${errorMessage(err)}`;
    }
  }
}

/** The tensor with the lowest SQNR: the first histogram worth a look. */
function worstValue(layers) {
  return [...layers].filter((l) => Number.isFinite(l.sqnr)).sort((a, b) => a.sqnr - b.sqnr)[0]?.value;
}
