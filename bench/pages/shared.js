// Helpers shared by the bench pages (bench/pages/*.js; an ES module, served beside them).

import { initEngine } from '/app/engine-build.js';

/** Our engine (`glue`, the module at `glueUrl`) with the wasm build the page asks for in
 * `?build=` (relaxed or simd128), else the one the playground's worker would choose; returns
 * the build's name. */
export function initOurEngine(glue, glueUrl = '/pkg/quant_playground.js') {
  const build = new URLSearchParams(location.search).get('build') ?? undefined;
  return initEngine(glue, new URL(glueUrl, location.href), build);
}

/** The median of `xs` (NaN if empty). */
export const median = (xs) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * `bitmap` stretched to `width` x `height` and normalised: (v - mean) / std per channel, `mean`
 * and `std` a number (every channel) or one per channel, RGB or (`bgr`) BGR, `layout` 'nchw'
 * or 'nhwc'.
 */
export function normalizedTensor(bitmap, { width, height, layout, mean, std, bgr }) {
  const canvas = new OffscreenCanvas(width, height);
  const g = canvas.getContext('2d');
  g.imageSmoothingQuality = 'high';
  g.drawImage(bitmap, 0, 0, width, height);
  const rgba = g.getImageData(0, 0, width, height).data;
  const out = new Float32Array(3 * width * height);
  const plane = width * height;
  const means = typeof mean === 'number' ? [mean, mean, mean] : mean;
  const stds = typeof std === 'number' ? [std, std, std] : std;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      out[layout === 'nchw' ? c * plane + p : 3 * p + c] = (rgba[4 * p + (bgr ? 2 - c : c)] - means[c]) / stds[c];
    }
  }
  return out;
}

/** An image from /models/images (`image`, its file name) through `normalizedTensor`. */
export async function imageTensor({ image, ...p }) {
  const blob = await (await fetch(`/models/images/${image}`)).blob();
  return normalizedTensor(await createImageBitmap(blob), p);
}
