// The playground with the real engine and a fake webcam (a y4m of astronaut.png, which has a
// face): the default model's card and top-5; calibration frames from the webcam; PTQ and QAT
// where this engine build has them, and "not available in this build" where it does not (so
// the test cannot pass silently either way); BlazeFace picked with the file input draws a box
// on a face; broken files give errors and the page keeps working.
// Writes tests/artifacts/playground-*.png.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import { serverAndBrowser } from '../support/harness.mjs';
import {
  ARTIFACTS,
  boxPixels,
  engineFeatures,
  fakeWebcam,
  onnxSpatialMap,
  onnxWithUnsupportedOps,
  openPlayground,
  topLabels,
  waitForModel,
  waitForPaneFrames,
} from '../support/playground.mjs';

// A dev build of the engine is several times slower than a release build.
const SLOW = 300_000;

const env = serverAndBrowser({ extraArgs: [`--use-file-for-fake-video-capture=${fakeWebcam()}`] });

const field = (page, name) => page.locator(`[data-field="${name}"]`).innerText();
const NOT_AVAILABLE = /not available in this build/;

async function startWebcam(page) {
  if ((await page.locator('#camera-button').getAttribute('aria-pressed')) !== 'true') await page.locator('#camera-button').click();
  await page.waitForSelector('#camera-button[aria-pressed="true"]', { timeout: 30_000 });
  await page.selectOption('#compare-source', 'webcam');
}

test('EfficientNet-Lite0: card, top-5, webcam calibration, PTQ and QAT (or "not available")', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server);
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').innerText());

    // The model card.
    assert.equal(await field(page, 'model-params'), '4,631,000');
    assert.equal(await field(page, 'model-inputs'), 'input [1, 3, 224, 224] (batch = 1 (default))');
    assert.equal(await field(page, 'model-outputs'), 'logits [1, 1000]');
    assert.match(await field(page, 'model-task'), /^Classification: 1000 classes \(ImageNet names\)/);
    assert.deepEqual(await page.locator('[data-field="model-onnx-ops"] li .op').allTextContents(), ['Conv', 'Clip', 'Add', 'Gemm', 'ReduceMean', 'Reshape']);
    assert.match(await field(page, 'model-quantizable'), /^50 layers with weights \(4,608,992 parameters/);
    // The dynamic batch dimension is asked for, with its default.
    assert.equal(await page.locator('#dims-form input[data-axis="0"]').inputValue(), '1');
    // The preprocessing: the bundled model's preset, editable.
    assert.equal(await page.locator('#preprocess-form select[name="preset"]').inputValue(), 'lite');
    assert.equal(await field(page, 'preprocess-origin'), "the bundled model's preset");
    assert.equal(await page.locator('#preprocess-form input[name="width"]').isDisabled(), true, 'the model fixes 224');

    // Top-5 with class names on a sample image.
    await page.selectOption('#compare-source', 'sample:coffee.png');
    await page.waitForFunction(() => document.querySelector('.pane[data-variant="fp32"] .top5 .label')?.textContent === 'espresso', null, { timeout: SLOW });
    assert.equal((await topLabels(page, 'fp32')).length, 5);
    assert.match(await page.locator('.pane[data-variant="fp32"] [data-field="latency"]').innerText(), /ms$/);

    // A preprocessing that cannot feed the model is refused in the page; back to the preset.
    await page.selectOption('#preprocess-form select[name="layout"]', 'nhwc');
    await page.waitForSelector('.pane[data-variant="fp32"][data-state="error"]');
    assert.match(await field(page, 'preprocess-notice'), /^Cannot run: this preprocessing gives \[1, 224, 224, 3\], the model takes \[1, 3, 224, 224\]\.$/);
    assert.equal(await field(page, 'preprocess-origin'), 'edited');
    await page.locator('#preprocess-reset').click();
    await page.waitForSelector('.pane[data-variant="fp32"][data-state="ok"]', { timeout: SLOW });
    assert.equal(await page.locator('#preprocess-form select[name="preset"]').inputValue(), 'lite');

    // The webcam, live, and 8 frames captured from it for calibration.
    await startWebcam(page);
    await waitForPaneFrames(page, 'fp32', 2, SLOW);
    await page.fill('#capture-count', '8');
    await page.locator('#capture-button').click();
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '8 frames', null, { timeout: 60_000 });
    assert.equal(await page.locator('#strip li').count(), 8);
    // Keep sampling while the user moves: a frame every half second until stopped.
    await page.locator('#sample-button').click();
    await page.waitForFunction(() => document.querySelectorAll('#strip li').length >= 10, null, { timeout: 30_000 });
    await page.locator('#sample-button').click();
    assert.equal(await page.locator('#sample-button').getAttribute('aria-pressed'), 'false');
    assert.match(await field(page, 'frames-notice'), /^Stopped sampling: \d+ webcam frames added\.$/);
    const frames = await page.locator('#strip li').count();

    const features = await engineFeatures(page);
    if (features.ptq && features.runVariant) {
      await page.locator('#ptq-run').click();
      await page.waitForSelector('#ptq-panel[data-state="done"], #ptq-panel[data-state="error"]', { timeout: SLOW });
      assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done', await field(page, 'ptq-notice'));
      assert.equal((await field(page, 'ptq-notice')).split(' in ')[0], `Quantized from ${frames} frames`);
      assert.match(await field(page, 'ptq-fidelity'), /^On \d+ calibration frames: logits: cosine 0\.9/);
      assert.match(await field(page, 'ptq-weights'), /MiB \(÷[34]\.\d\)/);
      await page.waitForSelector('.pane[data-variant="ptq"][data-state="ok"]', { timeout: SLOW });
      assert.equal((await topLabels(page, 'ptq')).length, 5);
      assert.match(await page.locator('.pane[data-variant="ptq"] [data-field="cosine"]').innerText(), /^0\.9\d+$/);
      await page.waitForSelector('#sqnr-chart canvas');
      if (features.histogram) await page.waitForFunction(() => /clip range|no clip range/.test(document.querySelector('[data-field="histogram-facts"]').textContent), null, { timeout: 60_000 });
    } else {
      assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'unavailable');
      assert.match(await field(page, 'ptq-notice'), NOT_AVAILABLE);
      assert.equal(await page.locator('#ptq-run').isDisabled(), true);
      assert.match(await page.locator('.pane[data-variant="ptq"] .pane-message').innerText(), NOT_AVAILABLE);
      console.log('# PTQ: not available in this build of the engine (asserted so)');
    }

    if (features.qat && features.ptq && features.runVariant) {
      await page.fill('#qat-form input[name="steps"]', '3');
      await page.locator('#qat-run').click();
      await page.waitForSelector('#qat-panel[data-state="done"], #qat-panel[data-state="error"]', { timeout: SLOW });
      assert.equal(await page.locator('#qat-panel').getAttribute('data-state'), 'done', await field(page, 'qat-notice'));
      await page.waitForSelector('.pane[data-variant="qat"][data-state="ok"]', { timeout: SLOW });
      assert.equal((await topLabels(page, 'qat')).length, 5);
    } else {
      assert.equal(await page.locator('#qat-panel').getAttribute('data-state'), 'unavailable');
      assert.match(await field(page, 'qat-notice'), NOT_AVAILABLE);
      assert.equal(await page.locator('#qat-run').isDisabled(), true);
      assert.match(await page.locator('.pane[data-variant="qat"] .pane-message').innerText(), NOT_AVAILABLE);
      console.log('# QAT: not available in this build of the engine (asserted so)');
    }

    if (features.exportOnnx && features.ptq) {
      const [file] = await Promise.all([page.waitForEvent('download'), page.locator('#download-ptq').click()]);
      const bytes = readFileSync(await file.path());
      assert.equal(bytes[0], 0x08, 'an ONNX ModelProto starts with its ir_version field');
      assert.ok(bytes.length > 1_000_000, `${bytes.length} bytes`);
    } else {
      assert.equal(await page.locator('#download-ptq').isDisabled(), true);
      assert.match(await field(page, 'downloads-notice'), NOT_AVAILABLE);
    }
    const [reportFile] = await Promise.all([page.waitForEvent('download'), page.locator('#download-report').click()]);
    const report = JSON.parse(readFileSync(await reportFile.path(), 'utf8'));
    assert.equal(report.model.name, 'efficientnet_lite0.onnx');
    assert.ok(report.comparison.fp32.frames > 0);

    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: `${ARTIFACTS}/playground-efficientnet.png` });
    await page.screenshot({ path: `${ARTIFACTS}/playground-efficientnet-full.png`, fullPage: true });
    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local env.server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('BlazeFace from the file input draws a face box; broken files give errors and the page goes on', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server);
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    await page.setInputFiles('#model-file', `${REPO_ROOT}/models/blazeface_front_128.onnx`);
    await waitForModel(page, 'blazeface_front_128.onnx');
    assert.match(await field(page, 'model-task'), /^Face detection \(BlazeFace: 896 SSD anchors, weighted NMS\)/);
    assert.equal(await page.locator('#preprocess-form select[name="preset"]').inputValue(), 'signed');
    assert.equal(await page.locator('#preprocess-form select[name="layout"]').inputValue(), 'nhwc');

    // The astronaut's face: one box, around the upper middle of the 512x512 image.
    await page.selectOption('#compare-source', 'sample:astronaut.png');
    await page.waitForSelector('.pane[data-variant="fp32"][data-detections="1"]', { timeout: SLOW });
    // One face above MediaPipe's 0.75 threshold (0.92 on the still image; a webcam frame of the
    // same photo, which may still be on screen when the sample is selected, gives about 0.90).
    const faceText = await page.locator('.pane[data-variant="fp32"] .pane-output').innerText();
    const faceScore = faceText.match(/^1 face\s+face\s+(\d+\.\d)%$/);
    assert.ok(faceScore && Number(faceScore[1]) >= 75, `one confident face expected, got ${JSON.stringify(faceText)}`);
    // The square image sits in the middle of the 4:3 canvas: x from 1/8 to 7/8. The face is at
    // x 0.35..0.53, y 0.16..0.34 of the image.
    const toCanvasX = (x) => 0.125 + 0.75 * x;
    assert.ok((await boxPixels(page, 'fp32', [toCanvasX(0.3), 0.1, toCanvasX(0.6), 0.4])) > 100, 'box pixels around the face');
    assert.equal(await boxPixels(page, 'fp32', [toCanvasX(0.05), 0.6, toCanvasX(0.3), 0.95]), 0, 'no box pixels far from it');
    await page.locator('.pane[data-variant="fp32"]').screenshot({ path: `${ARTIFACTS}/playground-blazeface-image.png` });

    // The webcam (the same face, zoomed): boxes on the live frames too.
    await startWebcam(page);
    await waitForPaneFrames(page, 'fp32', 2, SLOW);
    await page.waitForFunction(() => Number(document.querySelector('.pane[data-variant="fp32"]').dataset.detections) >= 1, null, { timeout: SLOW });
    await page.screenshot({ path: `${ARTIFACTS}/playground-blazeface-webcam.png` });
    await page.selectOption('#compare-source', 'sample:astronaut.png');

    // A truncated model: the engine's message, the previous model still loaded and running.
    await page.setInputFiles('#model-file', `${REPO_ROOT}/tests/corpus/truncated-efficientnet.onnx`);
    await page.waitForSelector('#load-error:not([hidden])');
    assert.match(await field(page, 'load-error-title'), /^truncated-efficientnet\.onnx: not an ONNX model: protobuf decoding failed/);
    assert.equal(await field(page, 'model-status'), 'truncated-efficientnet.onnx could not be loaded. Still using blazeface_front_128.onnx.');
    assert.equal(await field(page, 'model-name'), 'blazeface_front_128.onnx');
    await page.selectOption('#compare-source', 'sample:chelsea.png');
    await waitForPaneFrames(page, 'fp32', 1, SLOW);

    // An image renamed .onnx: said so, by its bytes.
    await page.setInputFiles('#model-file', `${REPO_ROOT}/tests/corpus/image-renamed.onnx`);
    await page.waitForFunction(() => /image-renamed\.onnx: this is a PNG image, not an ONNX model/.test(document.querySelector('[data-field="load-error-title"]').textContent));
    // An empty file.
    await page.setInputFiles('#model-file', `${REPO_ROOT}/tests/corpus/empty.onnx`);
    await page.waitForFunction(() => /^empty\.onnx: not an ONNX model: the file is empty/.test(document.querySelector('[data-field="load-error-title"]').textContent));

    // Unsupported operators: each named with its node, from the engine's message.
    await page.setInputFiles('#model-file', { name: 'unsupported.onnx', mimeType: 'application/octet-stream', buffer: onnxWithUnsupportedOps() });
    await page.waitForFunction(() => document.querySelectorAll('[data-field="unsupported"] li').length === 2);
    assert.deepEqual(await page.locator('[data-field="unsupported"] li').allTextContents(), ["Foo (node 'foo_1')", "com.example::Bar (node 'bar_1')"]);
    assert.match(await field(page, 'load-error-title'), /^unsupported\.onnx uses 2 operators the engine does not support yet:$/);
    await page.screenshot({ path: `${ARTIFACTS}/playground-load-error.png` });
    // It floats over the page (nothing moved) and closes.
    assert.equal(await page.locator('#load-error').evaluate((e) => getComputedStyle(e).position), 'absolute');
    await page.locator('#load-error-close').click();
    assert.equal(await page.locator('#load-error').isHidden(), true);

    // A model the page does not know: its output is a spatial map, shown as a heatmap.
    await page.setInputFiles('#model-file', { name: 'relu.onnx', mimeType: 'application/octet-stream', buffer: onnxSpatialMap() });
    await waitForModel(page, 'relu.onnx');
    assert.match(await field(page, 'model-task'), /^Not recognised: outputs shown as heatmaps/);
    assert.equal(await field(page, 'preprocess-origin'), 'guessed from the input shape');
    assert.equal(await page.locator('#preprocess-form select[name="preset"]').inputValue(), 'imagenet');
    await waitForPaneFrames(page, 'fp32', 1, SLOW);
    assert.match(await page.locator('.pane[data-variant="fp32"] .pane-output').innerText(), /^y \[1, 3, 32, 32\]\s+heatmap on the frame \(max over channels\)\s+min 0\.000 · max /);

    // Still working: a bundled model one click away, with its dynamic dims fixed.
    await page.locator('#bundled-models button[data-model="ppocr"]').click();
    await waitForModel(page, 'ppocr_cls_mobile_v2.onnx');
    assert.equal(await page.locator('#load-error').isHidden(), true);
    assert.equal(await field(page, 'model-inputs'), 'x [1, 3, 48, 192] (dim 0 = 1, dim 2 = 48, dim 3 = 192)');
    await page.waitForFunction(() => document.querySelectorAll('.pane[data-variant="fp32"] .top5 li').length === 2, null, { timeout: SLOW });
    assert.deepEqual((await topLabels(page, 'fp32')).sort(), ['0°', '180°']);
    // Its width is dynamic: the size in the preprocessing loads it again with that shape.
    assert.equal(await page.locator('#preprocess-form input[name="width"]').isDisabled(), false);
    await page.fill('#preprocess-form input[name="width"]', '320');
    await page.locator('#preprocess-form input[name="width"]').press('Enter');
    await page.waitForFunction(() => /^x \[1, 3, 48, 320\]/.test(document.querySelector('[data-field="model-inputs"]').textContent), null, { timeout: SLOW });
    assert.equal(await page.locator('#preprocess-form input[name="width"]').inputValue(), '320');
    await waitForPaneFrames(page, 'fp32', 1, SLOW);
    assert.equal(await page.locator('.pane[data-variant="fp32"]').getAttribute('data-state'), 'ok');
    assert.equal(await page.locator('#error-panel').isHidden(), true);

    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local env.server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});
