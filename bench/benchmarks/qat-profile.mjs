// Where a QAT step's time goes, per node, in headless Chromium (one thread): profileQat
// (crate/src/bench_api.rs) calibrates each model with the default PTQ settings on the
// calibration images of the `int8` benchmark, then times steps of QAT (the default recipe at
// 8 bits, scales mode; full mode, the default below 8 bits; full mode with a frozen stem) with
// the tape's per-node profile (forward, fake-quant backward of the node's outputs, backward).
// Reports the per-op-kind sums per frame beside one FP32 forward. A diagnostic: per-node timing
// adds a little overhead, so the step and forward times of record are the `qat` benchmark's.
// Also the phases of a step (Trainer::step_profile): its frames, the update, and reloading the
// new parameters (into the tape, repacking, export, the simulation's plans), per step.
// QP_PROFILE_OUT=file.json writes the per-node profiles.

import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { startServer } from '../../scripts/serve.mjs';
import { CALIBRATION, MODELS } from './int8.mjs';

export const name = 'qat-profile';
export const description = 'Per-node profile of a QAT step (default recipe) in headless Chromium (1 thread), summed by op kind';

const STEPS = 4;
/** The engine's default recipe at 8-bit weights (scales mode), and full mode (the default at
 * lower widths) before and after its stem (the first 30% of the work) freezes: the profile's
 * trainer runs few steps, so the second is the stem frozen from the start (`freezeStemAt: 0`). */
const RECIPES = [
  ['default (W8)', {}],
  ['full', { mode: 'full' }],
  ['full, frozen stem 0.3', { mode: 'full', freezeStem: 0.3, freezeStemAt: 0 }],
];
const r2 = (x) => Math.round(x * 100) / 100;

export async function run(ctx) {
  const server = await startServer({
    port: 0,
    mounts: [
      ['/bench/', path.join(ctx.root, 'bench', 'pages')],
      ['/ort/', path.join(ctx.root, 'node_modules', 'onnxruntime-web', 'dist')],
      ['/pkg/', path.join(ctx.root, 'www', 'pkg')],
      ['/app/', path.join(ctx.root, 'www')],
      ['/models/', path.join(ctx.root, 'models')],
    ],
  });
  const browser = await ctx.browser();
  const context = await browser.newContext();
  const pageErrors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(`${server.url}bench/int8.html`);
    await page.waitForSelector('body.ready, body.error', { timeout: 60_000 });
    const info = await page.evaluate(() => window.qpBench.info ?? { error: window.qpBench.error });
    if (info.error) throw new Error(`bench page failed: ${info.error}`);
    const out = [];
    const raw = {};
    for (const [m, recipe, config] of MODELS.flatMap((m) => RECIPES.map(([recipe, config]) => [m, recipe, config]))) {
      const p = await page.evaluate((args) => window.qpBench.qatProfile(args), { ...m, calibration: CALIBRATION, steps: STEPS, config });
      const id = `${m.id} ${recipe}`;
      raw[id] = p;
      const kinds = new Map();
      for (const n of p.nodes) {
        const e = kinds.get(n.kind) ?? { nodes: 0, ms: [0, 0, 0], alone: 0 };
        e.nodes += 1;
        e.alone += n.forwardAloneMs;
        n.ms.forEach((t, i) => (e.ms[i] += t));
        kinds.set(n.kind, e);
      }
      const total = [0, 1, 2].map((i) => p.nodes.reduce((a, n) => a + n.ms[i], 0));
      ctx.log(
        `${id} (${p.mode}, batch ${p.batch}): step per frame ${p.stepMs.toFixed(1)} ms = ${(p.stepMs / p.fp32Ms).toFixed(2)}x the FP32 forward (${p.fp32Ms.toFixed(1)} ms); ` +
          `nodes: forward ${total[0].toFixed(1)}, fake-quant backward ${total[1].toFixed(1)}, backward ${total[2].toFixed(1)} ms`,
      );
      const ph = p.phasesMs;
      ctx.log(
        `  per step (batch ${p.batch}): frames ${ph.frames.toFixed(1)}, update ${ph.update.toFixed(1)}, new parameters into the tape ${ph.constants.toFixed(1)}, ` +
          `repacking ${ph.prepare.toFixed(1)}, export ${ph.export.toFixed(1)}, simulation plans ${ph.simulate.toFixed(1)} ms`,
      );
      const fixed = ph.update + ph.constants + ph.prepare + ph.export + ph.simulate;
      out.push({ metric: `${id}: step cost besides its frames (per step)`, unit: 'ms', value: r2(fixed), note: Object.entries(ph).map(([k, v]) => `${k} ${r2(v)}`).join(', ') + ' ms (Trainer::step_profile)' });
      const sorted = [...kinds].sort((a, b) => b[1].ms.reduce((x, y) => x + y) - a[1].ms.reduce((x, y) => x + y));
      for (const [k, e] of sorted) {
        ctx.log(`  ${k.padEnd(18)} (${String(e.nodes).padStart(2)})  forward ${e.ms[0].toFixed(2).padStart(6)} (alone ${e.alone.toFixed(2).padStart(6)})  fq backward ${e.ms[1].toFixed(2).padStart(5)}  backward ${e.ms[2].toFixed(2).padStart(6)} ms`);
        out.push({ metric: `${id}: ${k} (forward / fq backward / backward, ms per frame)`, unit: 'ms', value: r2(e.ms[0] + e.ms[1] + e.ms[2]), note: `${e.ms.map(r2).join(' / ')} over ${e.nodes} nodes` });
      }
      out.push(
        { metric: `${id}: QAT step per frame (profiled)`, unit: 'ms', value: r2(p.stepMs), note: `${p.mode} mode, batch ${p.batch}, median of ${STEPS} steps after 3 warm-up; nodes ${total.map(r2).join(' / ')} ms; the rest is loss, teacher and update` },
        { metric: `${id}: FP32 forward (same page)`, unit: 'ms', value: r2(p.fp32Ms) },
      );
    }
    if (pageErrors.length) throw new Error(`the bench page logged errors: ${pageErrors.join('; ')}`);
    if (process.env.QP_PROFILE_OUT) writeFileSync(process.env.QP_PROFILE_OUT, JSON.stringify(raw, null, 1));
    return out;
  } finally {
    await context.close();
    await server.close();
  }
}
