// QAT with labelled images (a folder per class) on the real engine (www/pkg) and the default
// model, EfficientNet-Lite0: the folder's class folders are matched to ImageNet's classes by
// the engine, a folder that matches none is named in an error while the rest of the page keeps
// its state, a short QAT run trains on the labelled images and reports the label loss (which
// only exists if labelled frames were trained on), and the report lists the classes. A model
// that is not a classifier (BlazeFace) refuses the labels with the engine's message.
// Writes tests/artifacts/qat-labels.png (the QAT section after the run).

import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { REPO_ROOT } from '../../scripts/serve.mjs';
import { classNamesText, sortIntoFolders, takeInTurn } from '../../www/labels.js';
import { serverAndBrowser } from '../support/harness.mjs';
import { ARTIFACTS, engineFeatures, openPlayground, waitForModel } from '../support/playground.mjs';

const SLOW = 300_000;

const env = serverAndBrowser();

const field = (page, name) => page.locator(`[data-field="${name}"]`).innerText();
const labelsNotice = (page) => field(page, 'labels-notice');

/** A folder `name` in a new temporary directory, holding one folder per class with copies of
 * bundled images: {class folder: [image files]}. */
function classFolders(name, classes) {
  const dir = join(mkdtempSync(join(tmpdir(), 'qp-labels-')), name);
  for (const [folder, images] of Object.entries(classes)) {
    mkdirSync(join(dir, folder), { recursive: true });
    for (const image of images) copyFileSync(`${REPO_ROOT}/models/images/${image}`, join(dir, folder, image));
  }
  return dir;
}

// ImageNet classes 285 ("Egyptian cat", named with '_' and another case) and 339 ("sorrel").
const GOOD = { Egyptian_cat: ['chelsea.png', 'astronaut.png'], sorrel: ['horse.png', 'coffee.png'] };
const good = classFolders('pets', GOOD);
const withBad = classFolders('pets-and-more', { ...GOOD, kitten: ['camera.png'] });
after(() => {
  for (const dir of [good, withBad]) rmSync(join(dir, '..'), { recursive: true, force: true });
});

/** Waits until the labelled images are read (or refused). */
async function waitForLabels(page) {
  await page.waitForSelector('#qat-labels[data-state="ready"], #qat-labels[data-state="error"]', { timeout: 60_000 });
}

test('labelled folders on EfficientNet-Lite0: a bad folder named, QAT trains with the labels and reports the label loss', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server, { noWebcam: true });
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    const features = await engineFeatures(page);
    assert.ok(features.ptq && features.qat && features.labels, `this test needs an engine with PTQ, QAT and labels: ${JSON.stringify(features)}`);

    // Calibrate and quantize on two images.
    await page.setInputFiles('#image-files', ['rocket.jpg', 'china.jpg'].map((f) => `${REPO_ROOT}/models/images/${f}`));
    await page.waitForFunction(() => document.querySelector('[data-field="frame-count"]').textContent === '2 frames', null, { timeout: 60_000 });
    await page.locator('#ptq-run').click();
    await page.waitForSelector('#ptq-panel[data-state="done"], #ptq-panel[data-state="error"]', { timeout: SLOW });
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done', await field(page, 'ptq-notice'));

    // A folder with a class folder that is no ImageNet class: named in an error, not used; the
    // two good folders are; the calibration frames and the PTQ model stay.
    await page.setInputFiles('#label-folder', withBad);
    await waitForLabels(page);
    const bad = await labelsNotice(page);
    assert.match(bad, /^4 labelled images in 2 classes from 'pets-and-more'\. 1 folder matched no class and is not used: 'kitten' \(below\)\.$/, bad);
    assert.equal(await page.locator('[data-field="labels-notice"]').getAttribute('data-kind'), 'error');
    const badRow = await page.locator('#label-folders li.bad').innerText();
    assert.match(badRow, /^class folder 'kitten': no class of the labels file has this name .*Not used\.$/, badRow);
    assert.equal(await page.locator('#label-folders li:not(.bad)').count(), 2);
    assert.equal(await field(page, 'frame-count'), '2 frames');
    assert.equal(await page.locator('#ptq-panel').getAttribute('data-state'), 'done');
    assert.equal(await page.locator('#qat-run').isDisabled(), false);

    // The good folder: every image used, each folder's class shown.
    await page.setInputFiles('#label-folder', good);
    await waitForLabels(page);
    assert.equal(await labelsNotice(page), "4 labelled images in 2 classes from 'pets'.");
    assert.equal(await page.locator('[data-field="labels-notice"]').getAttribute('data-kind'), 'ok');
    const rows = await page.locator('#label-folders li').allInnerTexts();
    assert.deepEqual(rows.map((r) => r.replace(/\s+/g, ' ').trim()), ['Egyptian_cat → Egyptian cat (class 285) 2 images', 'sorrel → sorrel (class 339) 2 images']);

    // A short run with labels: 3 steps of 4 frames drawn from 2 frames and 4 labelled images.
    await page.fill('#qat-form input[name="steps"]', '3');
    await page.fill('#qat-form input[name="labelWeight"]', '2');
    await page.locator('#qat-run').click();
    await page.waitForSelector('#qat-panel[data-state="done"], #qat-panel[data-state="error"]', { timeout: SLOW });
    const done = await field(page, 'qat-notice');
    assert.equal(await page.locator('#qat-panel').getAttribute('data-state'), 'done', done);
    const m = done.match(/; label loss (\S+) \(cross-entropy to the labels, (\d+) labelled frames trained on\)\.$/);
    assert.ok(m, done);
    const [labelLoss, labelled] = [Number(m[1]), Number(m[2])];
    assert.ok(Number.isFinite(labelLoss) && labelLoss > 0, `label loss ${m[1]}`);
    assert.ok(labelled >= 1 && labelled <= 12, `${labelled} labelled frames in 3 steps of 4`);
    await page.locator('#qat-panel').screenshot({ path: `${ARTIFACTS}/qat-labels.png` });
    assert.match(await field(page, 'qat-augment'), / Also 4 labelled images in 2 classes, viewed the same way and preprocessed as the calibration frames; .* \(weight 2\)\.$/);

    const [reportFile] = await Promise.all([page.waitForEvent('download'), page.locator('#download-report').click()]);
    const report = JSON.parse(readFileSync(await reportFile.path(), 'utf8'));
    assert.equal(report.qat.config.labelWeight, 2);
    assert.deepEqual(report.qat.labels, {
      folder: 'pets',
      weight: 2,
      images: 4,
      found: 4,
      classes: [
        { folder: 'Egyptian_cat', class: 285, name: 'Egyptian cat', images: 2 },
        { folder: 'sorrel', class: 339, name: 'sorrel', images: 2 },
      ],
    });
    assert.equal(report.qat.labelledFrames, labelled);
    assert.ok(report.qat.labelLosses.length >= 1 && report.qat.labelLosses.every(([step, l]) => step >= 1 && step <= 3 && Number.isFinite(l) && l > 0), JSON.stringify(report.qat.labelLosses));
    assert.equal(Number(report.qat.labelLoss.toPrecision(4)), labelLoss, 'the report has the label loss the page showed');

    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').innerText());
    assert.deepEqual(problems.foreignRequests, [], 'requests that left the local server');
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('a model that is not a classifier refuses labelled images with the engine\'s reason', async () => {
  const { context, page, problems } = await openPlayground(env.browser, env.server, { noWebcam: true });
  try {
    await waitForModel(page, 'efficientnet_lite0.onnx');
    await page.setInputFiles('#label-folder', good);
    await waitForLabels(page);
    assert.equal(await labelsNotice(page), "4 labelled images in 2 classes from 'pets'.");

    // BlazeFace: box and score outputs per anchor, no class scores. The pick is matched again,
    // and refused.
    await page.locator('#bundled-models button[data-model="blazeface"]').click();
    await waitForModel(page, 'blazeface_front_128.onnx');
    await page.waitForSelector('#qat-labels[data-state="error"]', { timeout: 60_000 });
    const refused = await labelsNotice(page);
    assert.match(
      refused,
      /^The labelled images cannot be used with blazeface_front_128\.onnx: labels need a classifier output \(a single output of class scores, shape \[1, C\]\); the model's outputs are ('[^']+' \[1, (512|384), (1|16)\](, |\.$)){4}/,
      refused,
    );
    assert.equal(await page.locator('[data-field="labels-notice"]').getAttribute('data-kind'), 'error');
    assert.equal(await page.locator('#label-folders li').count(), 0);

    // Back to a classifier: the same pick is usable again.
    await page.locator('#bundled-models button[data-model="efficientnet"]').click();
    await waitForModel(page, 'efficientnet_lite0.onnx');
    await page.waitForSelector('#qat-labels[data-state="ready"]', { timeout: 60_000 });
    assert.equal(await labelsNotice(page), "4 labelled images in 2 classes from 'pets'.");

    assert.equal(await page.locator('#error-panel').isHidden(), true, await page.locator('#error-panel').innerText());
    assert.deepEqual([...problems.consoleErrors, ...problems.pageErrors], [], 'console errors');
  } finally {
    await context.close();
  }
});

test('picked and dropped files sort into class folders; the cap takes from each class in turn', () => {
  const files = (...paths) => paths.map((path) => ({ file: { name: path.split('/').pop() }, path }));
  const names = (pick) => Object.fromEntries([...pick.folders].map(([folder, list]) => [folder, list.map((e) => e.path)]));

  // A picked (or dropped) folder: its sub-folders are the classes, deeper images included;
  // hidden files and folders left out; files beside the class folders are loose.
  const picked = sortIntoFolders(files('pets/sorrel/b.png', 'pets/tabby/x/deep.png', 'pets/tabby/a.png', 'pets/readme.txt', 'pets/.git/c.png', 'pets/tabby/.DS_Store'));
  assert.equal(picked.root, 'pets');
  assert.deepEqual(names(picked), { sorrel: ['pets/sorrel/b.png'], tabby: ['pets/tabby/a.png', 'pets/tabby/x/deep.png'] });
  assert.deepEqual(picked.loose.map((e) => e.path), ['pets/readme.txt']);

  // Several class folders dropped at once: each is a class.
  const dropped = sortIntoFolders(files('tabby/a.png', 'sorrel/b.png', 'c.png'));
  assert.equal(dropped.root, '');
  assert.deepEqual(names(dropped), { sorrel: ['sorrel/b.png'], tabby: ['tabby/a.png'] });
  assert.deepEqual(dropped.loose.map((e) => e.path), ['c.png']);

  // One class folder alone holds no class folders.
  const one = sortIntoFolders(files('tabby/a.png', 'tabby/b.png'));
  assert.equal(one.folders.size, 0);
  assert.equal(one.loose.length, 2);

  assert.deepEqual(takeInTurn([[1, 2, 3, 4], [5], [6, 7]], 5), [[1, 2], [5], [6, 7]]);
  assert.deepEqual(takeInTurn([[1, 2], [3]], 10), [[1, 2], [3]]);
  assert.deepEqual(takeInTurn([[1, 2], [3, 4]], 0), [[], []]);

  // The page's "class i" names for a classifier it has no names for are not class names.
  assert.equal(classNamesText(['class 0', 'class 1']), undefined);
  assert.equal(classNamesText(['0°', '180°']), '0°\n180°');
});
