// "Find sensitive layers" and QAT's augmentation, on the real engine (www/pkg) and the default
// model: the analysis runs with progress, a cancel gets through within a step, the ranking
// shows every quantized layer with its share of the output noise, and "keep the N most
// sensitive in float" re-quantizes with them in float through the keep-in-float list, which
// an engine restart keeps. QAT says what it trains on.
// Writes tests/artifacts/sensitivity.png.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import { serverAndBrowser } from '../support/harness.mjs';
import { ARTIFACTS, engineFeatures, openPlayground, waitForModel } from '../support/playground.mjs';

const SLOW = 300_000;

const env = serverAndBrowser();

const field = (page, name) => page.locator(`[data-field="${name}"]`).innerText();
const notice = (page) => field(page, 'sensitivity-notice');

test('sensitive layers on EfficientNet-Lite0: progress, cancel, ranking, keep the top 2 in float, restart; QAT views', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server, { noWebcam: true });
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    const features = await engineFeatures(page);
    assert.ok(features.ptq && features.sensitivity, `this test needs an engine with PTQ and the sensitivity analysis: ${JSON.stringify(features)}`);

    // Nothing to analyse before quantizing.
    assert.equal(await page.locator('#sensitivity-run').isDisabled(), true);
    assert.equal(await page.locator('#sensitivity-run').getAttribute('title'), 'Quantize first: the analysis uses the calibration');

    await page.setInputFiles('#image-files', ['chelsea.png', 'rocket.jpg', 'horse.png'].map((f) => `${REPO_ROOT}/models/images/${f}`));
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '3 frames', null, { timeout: 60_000 });
    await page.locator('#ptq-run').click();
    await page.waitForSelector('#ptq-panel[data-state="done"], #ptq-panel[data-state="error"]', { timeout: SLOW });
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done', await field(page, 'ptq-notice'));
    assert.doesNotMatch(await field(page, 'ptq-float'), /kept in float/);

    // Started, then cancelled while it measures the layers: it stops within a slice.
    await page.locator('#sensitivity-run').click();
    await page.waitForFunction(() => /^Finding sensitive layers: layer \d+ of \d+ \(.+\), about .+ left…$/.test(document.querySelector('[data-field="sensitivity-notice"]').textContent), null, { timeout: SLOW });
    assert.equal(await page.locator('#ptq-run').isDisabled(), true, 'no re-calibration while the analysis runs');
    assert.ok(Number(await page.locator('#sensitivity-progress').getAttribute('value')) > 0);
    const t0 = Date.now();
    await page.locator('#sensitivity-cancel').click();
    await page.waitForSelector('#sensitivity[data-state="cancelled"]', { timeout: 30_000 });
    const cancelMs = Date.now() - t0;
    assert.ok(cancelMs < 5_000, `the cancel took ${cancelMs} ms`);
    assert.match(await notice(page), /^Cancelled after \d+ of \d+ layers: no ranking\.$/);
    assert.equal(await page.locator('#sensitivity-list').isHidden(), true);
    assert.equal(await page.locator('#ptq-run').isDisabled(), false);

    // Run through: every quantized layer ranked, most sensitive first, shares adding up to 100%.
    await page.locator('#sensitivity-run').click();
    await page.waitForSelector('#sensitivity[data-state="done"], #sensitivity[data-state="error"]', { timeout: SLOW });
    assert.equal(await page.locator('#sensitivity').getAttribute('data-state'), 'done', await notice(page));
    const summary = (await notice(page)).match(/^Ranked (\d+) layers on 3 calibration frames in \d+ s: outputs at (\d+\.\d) dB SQNR with every layer quantized; (\S+) \((.+)\) alone adds (\d+\.\d)% of the noise\.$/);
    assert.ok(summary, await notice(page));
    const rows = page.locator('#sensitivity-list li');
    const count = await rows.count();
    assert.equal(count, Number(summary[1]));
    assert.ok(count > 40, `${count} layers ranked`);
    const ranking = await rows.evaluateAll((lis) =>
      lis.map((li) => ({
        node: li.dataset.layer,
        op: li.querySelector('.op').textContent,
        share: Number(li.querySelector('.share').textContent.replace('%', '')),
        bar: Number(li.querySelector('.meter > span').style.getPropertyValue('--p')),
      })),
    );
    assert.equal(ranking[0].node, summary[3]);
    assert.equal(ranking[0].op, summary[4]);
    assert.equal(ranking[0].share, Number(summary[5]));
    assert.ok(ranking.every((r, i) => i === 0 || r.share <= ranking[i - 1].share), 'sorted by share');
    const total = ranking.reduce((a, r) => a + r.share, 0);
    assert.ok(Math.abs(total - 100) < 0.05 * count + 0.1, `shares add up to ${total}%`);
    assert.equal(ranking[0].bar, 1);
    assert.ok(ranking.every((r) => r.bar >= 0 && r.bar <= 1 && r.op.length > 0));
    assert.ok(ranking.some((r) => r.op === 'Conv') && ranking[0].share > 5, JSON.stringify(ranking.slice(0, 3)));
    await page.locator('#ptq-panel').screenshot({ path: `${ARTIFACTS}/sensitivity.png` });

    // Keep the 2 most sensitive in float: ticked in the keep-in-float list, quantized again.
    const top = ranking.slice(0, 2).map((r) => r.node);
    await page.fill('#sensitivity-n', '2');
    await page.locator('#sensitivity-keep').click();
    await page.waitForFunction(() => /^Kept .* in float and quantized again\./.test(document.querySelector('[data-field="sensitivity-notice"]').textContent), null, { timeout: SLOW });
    assert.match(await notice(page), new RegExp(`^Kept ${top.join(', ')} in float and quantized again\\. On 3 calibration frames: logits: cosine 0\\.9\\d+.* \\(before: On 3 calibration frames: logits: cosine 0\\.9`));
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done');
    const floatText = await field(page, 'ptq-float');
    for (const node of top) assert.match(floatText, new RegExp(`(^|; )${node} \\([^:]+: kept in float\\)`), floatText);
    const checked = await page.locator('#layer-list input:checked').evaluateAll((els) => els.map((el) => el.value));
    assert.deepEqual(checked.sort(), [...top].sort());
    assert.equal(await field(page, 'keep-count'), '(2 kept)');
    // The ranking was made with them quantized: kept on show, marked, but not applied again.
    assert.equal(await page.locator('#sensitivity').getAttribute('data-stale'), 'true');
    assert.equal(await page.locator('#sensitivity-list li.kept').count(), 2);
    assert.equal(await page.locator('#sensitivity-keep').isDisabled(), true);

    // The worker dies: the new one gets the PTQ model rebuilt with the same layers in float.
    const firstWorker = page.workers()[0];
    await firstWorker.evaluate(() => setTimeout(() => { throw new Error('simulated crash'); }));
    await page.waitForFunction(() => /Re-sent: the model, PTQ \(rebuilt from 3 calibration frames\)/.test(document.querySelector('#engine-notice').textContent), null, { timeout: SLOW });
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done');
    assert.equal(await field(page, 'ptq-float'), floatText);
    assert.deepEqual((await page.locator('#layer-list input:checked').evaluateAll((els) => els.map((el) => el.value))).sort(), [...top].sort());
    const [reportFile] = await Promise.all([page.waitForEvent('download'), page.locator('#download-report').click()]);
    const report = JSON.parse(readFileSync(await reportFile.path(), 'utf8'));
    assert.deepEqual([...report.ptq.config.keepFloat].sort(), [...top].sort());
    assert.equal(report.sensitivity.layers.length, count);
    assert.equal(report.sensitivity.layers[0].node, top[0]);

    // QAT trains on random views of the frames' images, and says so.
    if (features.qat) {
      await page.fill('#qat-form input[name="steps"]', '2');
      await page.locator('#qat-run').click();
      await page.waitForSelector('#qat-panel[data-state="done"], #qat-panel[data-state="error"]', { timeout: SLOW });
      assert.equal(await page.locator('#qat-panel').getAttribute('data-state'), 'done', await field(page, 'qat-notice'));
      assert.match(
        await field(page, 'qat-augment'),
        /^Trains on 2 random views of the 3 training frames \(drawn once for the run, each trained on about 4 times, so its FP32 targets are computed once\), as the command line trains: a crop of 25%–100% of the image \(width\/height 0\.75–1\.33\) scaled to the input, mirrored half the time, brightness ±32, contrast ±25%; each made from the frame's image and preprocessed as for calibration\. No frame is held out: with so few, all of them train\.$/,
      );
    }

    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').innerText());
    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local env.server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});
