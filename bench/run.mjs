#!/usr/bin/env node
// The benchmark harness behind `make bench`.
//
//   node bench/run.mjs               runs every benchmark in bench/benchmarks/
//   node bench/run.mjs NAME [NAME…]  runs only those (file name without .mjs)
//   node bench/run.mjs --list        lists them
//
// A benchmark is a module in bench/benchmarks/ that exports
//   name: string, description: string,
//   run(ctx): Promise<Measurement[]>
// where a Measurement is
//   {metric: string, unit: string, value: number, samples?: number[], note?: string}
// `value` is what the table shows (by convention the median of `samples` for timings).
// ctx gives: root (repo folder), log(line), server() (the static server on a free port,
// started once) and browser() (Debian's Chromium via playwright-core, launched once).
//
// Results are merged into bench/results.json: each benchmark's entry is replaced by its
// latest run, with the date and the machine it ran on; entries of benchmarks not run this
// time are kept as they were. Only measured numbers are written: a benchmark that fails
// is reported and leaves its previous entry alone, and the harness exits non-zero.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BENCH_DIR = path.join(ROOT, 'bench', 'benchmarks');
const RESULTS = path.join(ROOT, 'bench', 'results.json');

function cpuModel() {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    if (line) return line.split(':')[1].trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

function gitCommit() {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim();
  } catch {
    return null; // no commit yet
  }
}

function machineInfo(extra = {}) {
  return {
    cpu: cpuModel(),
    cores: os.availableParallelism?.() ?? os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    ...extra,
  };
}

async function loadBenchmarks() {
  const files = readdirSync(BENCH_DIR).filter((f) => f.endsWith('.mjs')).sort();
  const benchmarks = [];
  for (const file of files) {
    const mod = await import(pathToFileURL(path.join(BENCH_DIR, file)).href);
    const id = file.replace(/\.mjs$/, '');
    if (typeof mod.run !== 'function') throw new Error(`bench/benchmarks/${file} exports no run()`);
    benchmarks.push({ id, name: mod.name ?? id, description: mod.description ?? '', run: mod.run });
  }
  return benchmarks;
}

function formatValue(value) {
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  if (Math.abs(value) < 1) return String(Number(value.toPrecision(3)));
  return value.toFixed(Math.abs(value) >= 100 ? 1 : 2);
}

function printTable(rows) {
  const header = ['benchmark', 'metric', 'value', 'unit', 'n', 'min', 'max'];
  const body = rows.map((r) => [
    r.benchmark,
    r.metric,
    formatValue(r.value),
    r.unit,
    r.samples ? String(r.samples.length) : '',
    r.samples ? formatValue(Math.min(...r.samples)) : '',
    r.samples ? formatValue(Math.max(...r.samples)) : '',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const numeric = new Set([2, 4, 5, 6]);
  const line = (cells) => cells.map((c, i) => (numeric.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of body) console.log(line(row));
}

async function main(argv) {
  const benchmarks = await loadBenchmarks();
  if (argv.includes('--list')) {
    for (const b of benchmarks) console.log(`${b.id.padEnd(24)} ${b.description}`);
    return 0;
  }
  const wanted = argv.filter((a) => !a.startsWith('--'));
  const unknown = wanted.filter((w) => !benchmarks.some((b) => b.id === w));
  if (unknown.length) throw new Error(`unknown benchmark(s): ${unknown.join(', ')} (see --list)`);
  const selected = wanted.length ? benchmarks.filter((b) => wanted.includes(b.id)) : benchmarks;
  if (selected.length === 0) throw new Error('no benchmarks in bench/benchmarks/');

  // Shared, lazily started resources.
  let serverPromise = null;
  let browserPromise = null;
  const ctx = {
    root: ROOT,
    log: (line) => console.log(`  ${line}`),
    server: () => {
      serverPromise ??= import('../scripts/serve.mjs').then((m) => m.startServer({ port: 0 }));
      return serverPromise;
    },
    browser: () => {
      browserPromise ??= import('../tests/support/chromium.mjs').then((m) => m.launchChromium());
      return browserPromise;
    },
  };

  const results = existsSync(RESULTS) ? JSON.parse(readFileSync(RESULTS, 'utf8')) : { benchmarks: {} };
  results.benchmarks ??= {};
  const rows = [];
  let failed = 0;
  try {
    for (const bench of selected) {
      console.log(`[bench] ${bench.id}: ${bench.description}`);
      const started = Date.now();
      try {
        const measurements = await bench.run(ctx);
        const browserVersion = browserPromise ? (await browserPromise).version() : undefined;
        results.benchmarks[bench.id] = {
          description: bench.description,
          date: new Date().toISOString(),
          commit: gitCommit(),
          machine: machineInfo(browserVersion ? { chromium: browserVersion } : {}),
          durationS: Math.round((Date.now() - started) / 100) / 10,
          results: measurements,
        };
        for (const m of measurements) rows.push({ benchmark: bench.id, ...m });
      } catch (err) {
        failed += 1;
        console.error(`[bench] ${bench.id} FAILED: ${err.stack ?? err}`);
      }
    }
  } finally {
    if (browserPromise) await (await browserPromise).close();
    if (serverPromise) await (await serverPromise).close();
  }

  results.updated = new Date().toISOString();
  results.machine = machineInfo();
  const ordered = { updated: results.updated, machine: results.machine, benchmarks: results.benchmarks };
  writeFileSync(RESULTS, JSON.stringify(ordered, null, 2) + '\n');
  console.log(`\n[bench] ${path.relative(process.cwd(), RESULTS)} updated. ${results.machine.cpu}, ${results.machine.cores} cores\n`);
  if (rows.length) printTable(rows);
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`[bench] ${err.message}`);
    process.exit(2);
  },
);
