// The engine's quantization reports, read into the few shapes the page draws. The engine
// (crate/src/session.rs `QuantReport`, quant/metrics.rs `LayerError`) names a quantized
// tensor `value`, the node computing it `node`, and its error `sqnrDb` (null when infinite:
// JSON has no Infinity); older sketches of the API used `name` and `sqnr`. Both are read.
// No DOM: the Node tests import this module.

/**
 * @typedef {object} Layer
 * @property {string} value   the quantized tensor (what `histogram` takes)
 * @property {string} node    the node computing it (what `keepFloat` takes); may be ''
 * @property {string} op
 * @property {number | null} sqnr  dB; Infinity when lossless, null when unknown
 * @property {string} label   for charts and lists
 */

/** @returns {Layer[]} */
export function readLayers(list) {
  return Array.from(list ?? [], (l) => {
    const value = l.value ?? l.name ?? '';
    const node = l.node ?? l.name ?? '';
    const raw = l.sqnrDb !== undefined ? l.sqnrDb : l.sqnr;
    // null from the engine means +Infinity (no error at all) once serialised to JSON.
    const sqnr = raw === null ? Infinity : typeof raw === 'number' ? raw : null;
    const label = node && node !== value ? `${value} (${node}, ${l.op || 'input'})` : `${value}${l.op ? ` (${l.op})` : ''}`;
    return { value, node, op: l.op ?? '', sqnr, label };
  });
}

/** The lowest-SQNR nodes first (inputs, which no node computes, left out). */
export function worstNodes(layers, n) {
  const byNode = new Map();
  for (const l of layers) {
    if (!l.node || !Number.isFinite(l.sqnr)) continue;
    byNode.set(l.node, Math.min(byNode.get(l.node) ?? Infinity, l.sqnr));
  }
  return [...byNode.entries()].sort((a, b) => a[1] - b[1]).slice(0, n).map(([node, sqnr]) => ({ node, sqnr }));
}

/** SQNR per node name (the worst of its tensors), for the keep-in-float list. */
export function sqnrByNode(layers) {
  const map = new Map();
  for (const l of layers) if (l.node && l.sqnr != null) map.set(l.node, Math.min(map.get(l.node) ?? Infinity, l.sqnr));
  return map;
}

/**
 * Fidelity on the calibration frames, as one line for the page (or '' when the report has none).
 * @param {{outputs?: {name: string, cosine: number, classifier?: {top1: number, top5: number} | null}[], presence?: {agreement: number} | null, frames?: number}} fidelity
 */
export function fidelityLine(fidelity) {
  if (!fidelity?.outputs?.length) return '';
  const parts = fidelity.outputs.map((o) => {
    const c = o.classifier ? `, top-1 ${pct(o.classifier.top1)}, top-5 ${pct(o.classifier.top5)}` : '';
    return `${o.name}: cosine ${Number(o.cosine).toFixed(4)}${c}`;
  });
  if (fidelity.presence) parts.push(`detection agrees on ${pct(fidelity.presence.agreement)} of frames`);
  return `On ${fidelity.frames ?? 'the'} calibration frames: ${parts.join('; ')}`;
}

const pct = (x) => `${(x * 100).toFixed(x === 1 ? 0 : 1)}%`;

/**
 * A histogram with its clip range (null when the tensor has none), and the share of values
 * inside it, computed from the bins (bins straddling a limit count as inside).
 */
export function readHistogram(h) {
  const counts = Array.from(h.counts ?? [], Number);
  const clip = Array.isArray(h.clip) && h.clip.length === 2 ? [Number(h.clip[0]), Number(h.clip[1])] : null;
  const total = counts.reduce((a, b) => a + b, 0);
  let outside = 0;
  if (clip && h.binWidth > 0) {
    counts.forEach((c, i) => {
      const left = h.start + i * h.binWidth;
      if (left + h.binWidth <= clip[0] || left >= clip[1]) outside += c;
    });
  }
  return { start: h.start, binWidth: h.binWidth, counts, min: h.min, max: h.max, clip, total, inside: total ? 1 - outside / total : 1 };
}
