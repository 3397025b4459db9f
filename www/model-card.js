// The model card: what a model holds (inputs with their dynamic dims, outputs, the ONNX op
// histogram, parameters, what PTQ will quantize and what stays in float) and how the page
// reads its outputs.

import { $, field, formatBytes, formatShape, h } from './ui.js';

const TASK_LABELS = {
  classification: (t, names) =>
    `Classification: ${t.classes} classes${names[0] && !names[0].startsWith('class ') ? ` (${t.classes >= 1000 ? 'ImageNet names' : names.join(', ')})` : ''}, top-${Math.min(5, t.classes)} shown`,
  blazeface: () => 'Face detection (BlazeFace: 896 SSD anchors, weighted NMS), boxes and 6 keypoints',
  yolo: (t) => `Object detection (YOLO-style, ${t.classes} classes, ${t.layout}), boxes after NMS`,
  generic: () => 'Not recognised: outputs shown as heatmaps (spatial maps) and bars (vectors)',
};

/**
 * Fills the model card.
 * @param {import('./protocol.js').ModelSummary} summary
 * @param {ReturnType<import('./decode.js').detectTask>} task
 * @param {string[]} names  class names, for classifiers
 */
export function renderModelCard(summary, task, names) {
  field('model-name').textContent = summary.name;
  field('model-size').textContent = `${formatBytes(summary.fileBytes)} · opset ${summary.opset}${summary.producer ? ` · ${summary.producer}` : ''}`;
  field('model-params').textContent = summary.parameters.toLocaleString('en');
  field('model-inputs').textContent = summary.inputs
    .map((i) => `${i.name} ${formatShape(i.shape)}${i.choices.length ? ` (${i.choices.join(', ')})` : ''}`)
    .join('; ');
  field('model-outputs').textContent = summary.outputs.map((o) => `${o.name} ${formatShape(o.shape)}`).join('; ');
  field('model-task').textContent = TASK_LABELS[task.kind](task, names);
  field('model-task-badge').textContent = { classification: 'classification', blazeface: 'face detection', yolo: 'object detection', generic: 'generic outputs' }[task.kind];
  const ops = Object.entries(summary.onnxOps).sort((a, b) => b[1] - a[1]);
  const most = ops[0]?.[1] ?? 1;
  field('model-onnx-ops').replaceChildren(
    ...ops.map(([op, n]) => {
      const bar = h('span');
      bar.style.setProperty('--p', String(n / most));
      return h('li', { title: `${op}: ${n}` }, h('span', { class: 'op' }, op), h('span', { class: 'meter', 'aria-hidden': 'true' }, bar), h('span', { class: 'n' }, String(n)));
    }),
  );
  field('model-ops').textContent = summary.ops.map(([op, n]) => `${op} ×${n}`).join(', ');
  const weights = summary.quantizable.reduce((n, l) => n + l.params, 0);
  field('model-quantizable').textContent =
    `${summary.quantizable.length} layers with weights (${weights.toLocaleString('en')} parameters: ` +
    `${formatBytes(weights * 4)} in FP32, about ${formatBytes(weights)} in int8)`;
  const int8Float = summary.int8Float ?? [];
  field('model-float').textContent =
    (summary.floatOps.length ? summary.floatOps.join(', ') : 'nothing') +
    (int8Float.length ? `; the int8 engine also runs ${int8Float.map((f) => `${f.node} (${f.reason})`).join('; ')} in float` : '');
  renderDimsForm(summary);
}

/** Inputs with dynamic dims: one field per dim, the current value filled in. */
function renderDimsForm(summary) {
  const dynamic = summary.inputs.filter((i) => i.declared.some((d) => typeof d === 'string'));
  const form = $('#dims-form');
  form.hidden = !dynamic.length;
  field('dims').replaceChildren(
    ...dynamic.flatMap((input) =>
      input.declared.map((d, axis) =>
        h(
          'label',
          {},
          typeof d === 'string' ? `${input.name} ${d === '?' ? `dim ${axis}` : d}` : `${input.name} dim ${axis}`,
          h('input', {
            type: 'number',
            min: 1,
            step: 1,
            value: input.shape[axis],
            disabled: typeof d !== 'string',
            dataset: { input: input.name, axis: String(axis) },
          }),
        ),
      ),
    ),
  );
}
