// Where the time goes, per node, in headless Chromium (one thread): our FP32 engine on each
// model and our int8 engine on its PTQ export (calibrated as in the `int8` benchmark), timed
// node by node inside wasm (profileModel in crate/src/bench_api.rs, driven from
// bench/pages/int8.html). Reports the per-op-kind sums of both engines and logs the slowest
// int8 nodes beside their FP32 time. A diagnostic: per-node timing adds a little overhead, so
// the end-to-end numbers are the `int8` benchmark's. QP_PROFILE_OUT=file.json writes the
// per-node profiles of both engines.

import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { startServer } from '../../scripts/serve.mjs';
import { CALIBRATION, MODELS } from './int8.mjs';

export const name = 'int8-profile';
export const description = 'Per-node profile of our FP32 and int8 engines in headless Chromium (1 thread), summed by op kind';

const RUNS = 15;
const r3 = (x) => Math.round(x * 1000) / 1000;

/** The group a node is summed in: its op name. */
const kindOf = (n) => n.op;

export async function run(ctx) {
  const server = await startServer({
    port: 0,
    mounts: [
      ['/bench/', path.join(ctx.root, 'bench', 'pages')],
      ['/ort/', path.join(ctx.root, 'node_modules', 'onnxruntime-web', 'dist')],
      ['/pkg/', path.join(ctx.root, 'www', 'pkg')],
      ['/app/', path.join(ctx.root, 'www')],
      ['/models/', path.join(ctx.root, 'models')],
      ['/fixtures/', path.join(ctx.root, 'tests', 'fixtures', 'ort-qdq')],
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
    for (const m of MODELS) {
      const p = await page.evaluate((args) => window.qpBench.profile(args), { ...m, calibration: CALIBRATION, runs: RUNS });
      raw[m.id] = p;
      const sum = (prof) => {
        const kinds = new Map();
        for (const n of prof.nodes) {
          const k = kindOf(n);
          const e = kinds.get(k) ?? { nodes: 0, ms: 0 };
          e.nodes += 1;
          e.ms += n.ms;
          kinds.set(k, e);
        }
        return kinds;
      };
      const [f, q] = [sum(p.fp32), sum(p.int8)];
      const nodesMs = (prof) => prof.nodes.reduce((a, n) => a + n.ms, 0);
      ctx.log(`${m.id}: run fp32 ${p.fp32.totalMs.toFixed(2)} ms (nodes ${nodesMs(p.fp32).toFixed(2)}), int8 ${p.int8.totalMs.toFixed(2)} ms (nodes ${nodesMs(p.int8).toFixed(2)}; observer dequantize ${p.int8.dequantizeNsPerElem.toFixed(2)} ns/elem subtracted)`);
      const kinds = [...new Set([...f.keys(), ...q.keys()])].sort((a, b) => (q.get(b)?.ms ?? 0) - (q.get(a)?.ms ?? 0));
      for (const k of kinds) {
        const [a, b] = [f.get(k), q.get(k)];
        ctx.log(`  ${k.padEnd(22)} fp32 ${(a?.ms ?? 0).toFixed(3).padStart(7)} ms (${a?.nodes ?? 0})  int8 ${(b?.ms ?? 0).toFixed(3).padStart(7)} ms (${b?.nodes ?? 0})`);
        out.push({ metric: `${m.id}: ${k} (int8 / fp32 ms)`, unit: 'ms', value: r3(b?.ms ?? 0), note: `fp32 ${r3(a?.ms ?? 0)} ms over ${a?.nodes ?? 0} nodes; int8 over ${b?.nodes ?? 0} nodes; medians of ${RUNS} runs` });
      }
      const slow = [...p.int8.nodes].sort((a, b) => b.ms - a.ms).slice(0, 20);
      ctx.log('  slowest int8 nodes:');
      for (const n of slow) ctx.log(`    ${n.ms.toFixed(3).padStart(7)} ms  ${n.op.padEnd(12)} ${JSON.stringify(n.out).padEnd(18)} ${n.name}`);
      out.push(
        { metric: `${m.id}: fp32 run (profiled)`, unit: 'ms', value: r3(p.fp32.totalMs) },
        { metric: `${m.id}: int8 run (profiled)`, unit: 'ms', value: r3(p.int8.totalMs) },
      );
    }
    if (pageErrors.length) throw new Error(`the bench page logged errors: ${pageErrors.join('; ')}`);
    // QP_PROFILE_OUT=file.json keeps the per-node profiles.
    if (process.env.QP_PROFILE_OUT) writeFileSync(process.env.QP_PROFILE_OUT, JSON.stringify(raw, null, 1));
    return out;
  } finally {
    await context.close();
    await server.close();
  }
}
