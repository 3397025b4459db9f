// Small DOM helpers shared by the page's modules.

/** @returns {HTMLElement} */
export const $ = (selector, root = document) => root.querySelector(selector);

/** The element marked `data-field="name"`. */
export const field = (name, root = document) => root.querySelector(`[data-field="${name}"]`);

/** Creates an element: h('li', {class: 'x', title: 't'}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  node.append(...children.flat().filter((c) => c != null && c !== false));
  return node;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '–';
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function formatMs(ms) {
  if (!Number.isFinite(ms)) return '–';
  return ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

export function formatDuration(ms) {
  if (!Number.isFinite(ms)) return '–';
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

export const formatShape = (shape) => `[${shape.join(', ')}]`;

export const errorMessage = (err) => (err instanceof Error ? err.message : String(err));

/**
 * Shows a message in a section's notice line: kind 'info' | 'ok' | 'warn' | 'error'.
 * An empty text hides it (its space stays, so nothing below moves).
 */
export function notice(node, text, kind = 'info') {
  node.textContent = text ?? '';
  node.dataset.kind = text ? kind : '';
  node.setAttribute('role', kind === 'error' ? 'alert' : 'status');
}

/** Saves bytes as a file through a temporary link. */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A CSS custom property of the page (colours for canvases and charts). */
export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
