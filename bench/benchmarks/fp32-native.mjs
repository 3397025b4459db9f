// FP32 latency of the shipped models natively: `quant-playground bench` (the CLI's release
// build, one thread) times Model::run on a deterministic pseudo-random input (xorshift32,
// uniform in [-1, 1)). Builds the CLI first (cargo build --release; seconds when up to date).

import { execFileSync } from 'node:child_process';
import path from 'node:path';

export const name = 'fp32-native';
export const description = 'FP32 latency natively (quant-playground bench, release build, 1 thread) on the shipped models';

const WARMUP = 5;
const RUNS = 30;

const MODELS = [
  { id: 'efficientnet_lite0', model: 'efficientnet_lite0.onnx', shapes: [] },
  { id: 'blazeface_front_128', model: 'blazeface_front_128.onnx', shapes: [] },
  { id: 'ppocr_cls_mobile_v2', model: 'ppocr_cls_mobile_v2.onnx', shapes: ['x=1,3,48,192'] },
];

const round = (x) => Math.round(x * 100) / 100;

export async function run(ctx) {
  ctx.log('cargo build --release --bin quant-playground');
  execFileSync('cargo', ['build', '--release', '--quiet', '--bin', 'quant-playground'], { cwd: ctx.root, stdio: ['ignore', 'inherit', 'inherit'] });
  const bin = path.join(ctx.root, 'target', 'release', 'quant-playground');
  const rustc = execFileSync('rustc', ['--version'], { cwd: ctx.root }).toString().trim();

  const out = [];
  for (const m of MODELS) {
    const args = ['bench', path.join(ctx.root, 'models', m.model), '--runs', String(RUNS), '--warmup', String(WARMUP), '--json'];
    for (const s of m.shapes) args.push('--input-shape', s);
    const r = JSON.parse(execFileSync(bin, args, { cwd: ctx.root, maxBuffer: 16 << 20 }).toString());
    const shapes = r.inputs.map((i) => JSON.stringify(i.shape)).join(', ');
    ctx.log(`${m.id} ${shapes}: median ${r.medianMs.toFixed(2)} ms, min ${r.minMs.toFixed(2)}, p90 ${r.p90Ms.toFixed(2)}; load ${r.loadMs.toFixed(0)} ms`);
    out.push({
      metric: `${m.id}: ours native (1 thread)`,
      unit: 'ms',
      value: round(r.medianMs),
      samples: r.samplesMs.map(round),
      note: `${WARMUP} warm-up, ${RUNS} timed; p90 ${round(r.p90Ms)} ms; input ${shapes} ${r.input}; Model::load ${round(r.loadMs)} ms; ${rustc}`,
    });
  }
  return out;
}
