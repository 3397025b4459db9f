// The page's own flows against a stand-in for the engine's quantization API
// (tests/support/standin-engine.mjs: FP32 is real, PTQ/QAT are fakes), so that they are
// tested whatever the engine build can do: images without a webcam, the calibration strip
// (keyboard too), PTQ settings and cancel, QAT with its loss curve and cancel, the insight
// charts, the downloads, and a worker that dies and is replaced with the user's state.
// tests/e2e/playground.test.mjs runs the real engine.
// Writes tests/artifacts/standin-*.png.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { REPO_ROOT, SECURITY_HEADERS } from '../../scripts/serve.mjs';
import { serverAndBrowser } from '../support/harness.mjs';
import { ARTIFACTS, openPlayground, topLabels, waitForModel, waitForPaneFrames } from '../support/playground.mjs';
import { installStandinEngine } from '../support/standin-engine.mjs';

const env = serverAndBrowser();

const text = (page, selector) => page.locator(selector).innerText();
const field = (page, name) => page.locator(`[data-field="${name}"]`).innerText();

test('without a webcam: images, calibration, PTQ, QAT, insight, downloads, and a worker crash', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server, {
    noWebcam: true,
    setup: (ctx) => installStandinEngine(ctx, SECURITY_HEADERS),
  });
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    assert.equal(await page.locator('#error-panel').isHidden(), true, await text(page, '#error-panel'));

    // No webcam: the page says so, and works on its sample image.
    await page.locator('#camera-button').click();
    await page.waitForFunction(() => /No webcam: camera access was denied/.test(document.querySelector('[data-field="camera-notice"]').textContent));
    assert.match(await page.locator('#compare-source option[value="webcam"]').innerText(), /unavailable/);
    await page.selectOption('#compare-source', 'sample:coffee.png');
    await page.waitForFunction(() => document.querySelector('.pane[data-variant="fp32"] .top5 .label')?.textContent === 'espresso');

    // Nothing to calibrate with yet.
    assert.equal(await page.locator('#ptq-run').isDisabled(), true);

    // Images from the file picker; a file that is not an image is skipped, by name.
    await page.setInputFiles('#image-files', [
      `${REPO_ROOT}/models/images/chelsea.png`,
      `${REPO_ROOT}/models/images/rocket.jpg`,
      `${REPO_ROOT}/models/images/horse.png`,
      `${REPO_ROOT}/tests/corpus/text.onnx`,
    ]);
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '3 frames');
    await page.waitForFunction(() => /Skipped 1: text\.onnx is not an image/.test(document.querySelector('[data-field="frames-notice"]').textContent));
    assert.equal(await page.locator('#strip li').count(), 3);

    // Keyboard: Enter on a thumbnail shows it in the panes, Delete removes it.
    await page.locator('#strip li button').first().focus();
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#compare-source').value.startsWith('frame:'));
    await page.waitForFunction(() => document.querySelector('.pane[data-variant="fp32"] .top5 .label')?.textContent === 'tiger cat');
    await page.keyboard.press('Delete');
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '2 frames');
    // The removed frame was on show: the panes went back to the model's sample image.
    assert.equal(await page.locator('#compare-source').inputValue(), 'sample:coffee.png');

    await page.locator('#samples-button').click();
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '21 frames', null, { timeout: 60_000 });

    // PTQ: 4-bit, per tensor, percentile, one layer kept in float, bias correction, TFLite's
    // rounding (the other tests run onnxruntime's, the default).
    await page.locator('#ptq-form input[name="weightBits"][value="4"]').check();
    await page.selectOption('#ptq-form select[name="requantization"]', 'fixed-point');
    await page.locator('#ptq-form input[name="granularity"][value="tensor"]').check();
    await page.selectOption('#ptq-form select[name="method"]', 'percentile');
    await page.fill('#ptq-form input[name="percentile"]', '99.9');
    await page.locator('#ptq-form input[name="biasCorrection"]').check();
    await page.locator('.keep-float summary').click();
    const firstLayer = await page.locator('#layer-list input').first().getAttribute('value');
    await page.locator('#layer-list input').first().check();
    assert.equal(await field(page, 'keep-count'), '(1 kept)');

    // Cancel stops calibration: nothing is quantized.
    await page.locator('#ptq-run').click();
    await page.locator('#ptq-cancel').click();
    await page.waitForSelector('#ptq-panel[data-state="cancelled"]');
    assert.equal(await field(page, 'ptq-notice'), 'Cancelled: nothing was quantized.');

    // Run it for real, from the keyboard.
    await page.locator('#ptq-run').focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('#ptq-panel[data-state="done"]', { timeout: 60_000 });
    assert.match(await field(page, 'ptq-notice'), /^Quantized from 21 frames in \d+ s\.$/);
    assert.match(await field(page, 'ptq-layers'), /4-bit weights per tensor, percentile 99\.9, bias corrected, fixed-point rounding/);
    assert.equal(await field(page, 'ptq-float'), `${firstLayer} (Conv: kept in float)`);
    assert.match(await field(page, 'ptq-fidelity'), /^On 21 calibration frames: logits: cosine 0\.9980/);
    await page.waitForSelector('.pane[data-variant="ptq"][data-state="ok"]');
    assert.deepEqual((await topLabels(page, 'ptq'))[0], 'espresso');
    assert.match(await page.locator('.pane[data-variant="ptq"] [data-field="size"]').innerText(), /MiB \(÷\d/);
    assert.match(await page.locator('.pane[data-variant="ptq"] [data-field="agree"]').innerText(), /^100% \(\d+ fr\.\)$/);
    assert.match(await page.locator('.pane[data-variant="ptq"] [data-field="cosine"]').innerText(), /^0\.99\d\d$/);
    // The layer list shows each layer's SQNR now.
    assert.match(await page.locator('#layer-list li').nth(1).innerText(), /dB$/);

    // Insight: the SQNR chart and the histogram of the worst tensor, with its clip range.
    await page.waitForSelector('#sqnr-chart canvas');
    await page.waitForSelector('#histogram-chart canvas');
    await page.waitForFunction(() => /clip range \[-2\.500, 2\.500\] keeps 99\.72% of them/.test(document.querySelector('[data-field="histogram-facts"]').textContent));
    const options = await page.locator('#histogram-layer option').count();
    assert.ok(options > 10, `${options} histogram choices`);
    await page.selectOption('#histogram-layer', { index: 3 });
    const chosen = await page.locator('#histogram-layer').inputValue();
    await page.waitForFunction((v) => document.querySelector('[data-field="histogram-facts"]').textContent.startsWith(`${v}:`), chosen);
    await page.locator('#insight-panel').screenshot({ path: `${ARTIFACTS}/standin-insight.png` });

    // QAT with a stem frozen from the start: progress, loss curve, done; the QAT pane shows
    // the model.
    await page.fill('#qat-form input[name="steps"]', '150');
    await page.fill('#qat-form input[name="freezeStem"]', '20');
    await page.fill('#qat-form input[name="freezeStemAt"]', '0');
    await page.locator('#qat-run').click();
    await page.waitForSelector('#qat-panel[data-state="done"]', { timeout: 60_000 });
    assert.match(await field(page, 'qat-notice'), /^Trained weights, step sizes and biases after the first 2 layers \(18% of the work, 1\.5% of the weights, kept as PTQ made them\) for 150 steps in \d+ s; final loss 0\.06250\.$/);
    // The default stem of full mode, frozen after a third of the steps.
    await page.fill('#qat-form input[name="freezeStem"]', '');
    await page.fill('#qat-form input[name="freezeStemAt"]', '');
    await page.locator('#qat-run').click();
    await page.waitForSelector('#qat-panel[data-state="done"]', { timeout: 60_000 });
    assert.match(await field(page, 'qat-notice'), /^Trained weights, step sizes and biases \(the first 2 layers, 18% of the work, 1\.5% of the weights, frozen after step 50\) for 150 steps in \d+ s; final loss 0\.06250\.$/);
    await page.waitForSelector('#loss-chart canvas');
    await page.waitForSelector('.pane[data-variant="qat"][data-state="ok"]');
    assert.equal((await topLabels(page, 'qat'))[0], 'espresso');

    // A long run, cancelled before its stem's step: it keeps what it learned, and the stem
    // never froze.
    await page.fill('#qat-form input[name="steps"]', '20000');
    await page.locator('#qat-run').click();
    await page.waitForFunction(() => /^Training: step \d+ of 20000, loss .*left$/.test(document.querySelector('[data-field="qat-notice"]').textContent));
    await page.locator('#qat-cancel').click();
    await page.waitForSelector('#qat-panel[data-state="done"]', { timeout: 30_000 });
    assert.match(await field(page, 'qat-notice'), /^Stopped after \d+ of 20000 steps of weights, step sizes and biases \(the first 2 layers, 18% of the work, 1\.5% of the weights, to freeze after step 6667, which the run did not reach\) \(the model keeps what it learned\)/);

    // Downloads: the PTQ model from the engine, and the report.
    const [ptqFile] = await Promise.all([page.waitForEvent('download'), page.locator('#download-ptq').click()]);
    assert.equal(ptqFile.suggestedFilename(), 'efficientnet_lite0.ptq.int4.qdq.onnx');
    assert.equal(readFileSync(await ptqFile.path(), 'utf8'), 'stand-in ptq model');
    const [reportFile] = await Promise.all([page.waitForEvent('download'), page.locator('#download-report').click()]);
    assert.equal(reportFile.suggestedFilename(), 'efficientnet_lite0.quant-report.json');
    const report = JSON.parse(readFileSync(await reportFile.path(), 'utf8'));
    assert.equal(report.model.name, 'efficientnet_lite0.onnx');
    assert.equal(report.model.task, 'classification');
    assert.equal(report.preprocess.mean[0], 127);
    assert.deepEqual(report.ptq.config.calibration, { method: 'percentile', percentile: 99.9 });
    assert.equal(report.ptq.config.weightBits, 4);
    assert.deepEqual(report.ptq.config.keepFloat, [firstLayer]);
    assert.equal(report.calibration.frames, 21);
    assert.deepEqual(report.calibration.sources, { image: 2, sample: 19 });
    assert.equal(report.qat.cancelled, true);
    assert.ok(report.qat.losses.length > 0);
    assert.ok(report.comparison.fp32.medianLatencyMs > 0);
    assert.equal(report.comparison.ptq.top1Agreement, 1);

    await page.screenshot({ path: `${ARTIFACTS}/standin-page.png`, fullPage: true });

    // The worker dies: a new one gets the model, the PTQ variant rebuilt from the frames, and
    // the QAT model from the state the page kept.
    const firstWorker = page.workers()[0];
    await firstWorker.evaluate(() => setTimeout(() => { throw new Error('simulated crash'); }));
    await page.waitForFunction(() => /Re-sent: the model, PTQ \(rebuilt from 21 calibration frames\), the QAT model/.test(document.querySelector('#engine-notice').textContent), null, { timeout: 60_000 });
    assert.match(await text(page, '#engine-notice'), /The engine stopped \(the engine worker crashed: .*simulated crash\)/);
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done');
    assert.equal(await page.locator('#qat-panel').getAttribute('data-state'), 'done');
    assert.match(await field(page, 'qat-notice'), /QAT model was given back to the restarted engine/);
    assert.equal(await field(page, 'model-name'), 'efficientnet_lite0.onnx');
    assert.equal(await field(page, 'frame-count'), '21 frames');
    assert.equal(await page.locator('#ptq-form input[name="weightBits"][value="4"]').isChecked(), true);
    assert.equal(page.workers().length, 1);
    assert.notEqual(page.workers()[0], firstWorker);
    await page.selectOption('#compare-source', 'sample:chelsea.png');
    await waitForPaneFrames(page, 'ptq');
    await page.waitForSelector('.pane[data-variant="qat"][data-state="ok"]');
    assert.equal((await topLabels(page, 'fp32'))[0], 'tiger cat');
    assert.equal((await topLabels(page, 'qat')).length, 5, 'the restored QAT model runs');
    assert.equal(await page.locator('#error-panel').isHidden(), true, await text(page, '#error-panel'));
    await page.screenshot({ path: `${ARTIFACTS}/standin-after-restart.png` });

    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local env.server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('drop anywhere: images join the calibration set, an ONNX file becomes the model; a folder too', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server, { noWebcam: true });
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    const drop = (files) =>
      page.evaluate(async (list) => {
        const dt = new DataTransfer();
        for (const [url, name] of list) dt.items.add(new File([await (await fetch(url)).blob()], name));
        const fire = (type) => document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        fire('dragenter');
        fire('dragover');
        const shown = document.body.classList.contains('dragging');
        fire('drop');
        return shown;
      }, files);
    // The overlay shows while dragging; the drop sorts the files by their bytes.
    assert.equal(await drop([
      ['/models/images/coffee.png', 'coffee.png'],
      ['/models/images/flower.jpg', 'flower.jpg'],
      ['/models/blazeface_front_128.onnx', 'blazeface_front_128.onnx'],
    ]), true);
    assert.equal(await page.evaluate(() => document.body.classList.contains('dragging')), false);
    await waitForModel(page, 'blazeface_front_128.onnx');
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '2 frames');
    // A renamed image dropped as if it were a model is a calibration image: bytes decide.
    await drop([['/models/images/astronaut.png', 'face.onnx']]);
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '3 frames');
    assert.equal(await page.locator('[data-field="model-name"]').innerText(), 'blazeface_front_128.onnx');

    // A folder through the folder picker: its images, the rest skipped.
    await page.setInputFiles('#image-folder', `${REPO_ROOT}/models/images`);
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '22 frames', null, { timeout: 60_000 });
    assert.deepEqual(problems.foreignRequests, []);
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], []);
  } finally {
    await context.close();
  }
});
