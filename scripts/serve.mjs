#!/usr/bin/env node
// A small static file server for the playground (no framework, no dependencies).
//
//   node scripts/serve.mjs              serves www/ at /, models/ at /models/ and the page's
//                                       npm modules (VENDOR) at /vendor/
//   node scripts/serve.mjs --root dist  serves a folder made by `make dist`
//
// PORT (default 8080) and HOST (default 127.0.0.1) come from the environment.
// Every response carries the headers the page needs: COOP/COEP (cross-origin isolation,
// so wasm threads can come later), a strict Content-Security-Policy that allows
// 'wasm-unsafe-eval' and nothing from other origins, and correct MIME types
// (application/wasm for streaming compilation).
//
// Also a module: tests and benchmarks import startServer() to serve on a free port.

import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const MIME_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.webp': 'image/webp',
};

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "worker-src 'self'",
  "connect-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob: data:",
  "media-src 'self' blob: mediastream:",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Headers sent with every response (also written to dist/_headers by `make dist`). */
export const SECURITY_HEADERS = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
};

/**
 * Third-party browser modules the page imports, served from node_modules (npm ci installs
 * them from package-lock.json) and copied into dist/ by scripts/dist.sh: URL folder under
 * /vendor/ -> package folder. Nothing is loaded from another host.
 */
export const VENDOR = {
  uplot: 'node_modules/uplot/dist',
};

/** The default mounts: URL prefix -> folder. The first matching prefix wins. */
export function defaultMounts(root = REPO_ROOT) {
  return [
    ['/models/', path.join(root, 'models')],
    ...Object.entries(VENDOR).map(([name, dir]) => [`/vendor/${name}/`, path.join(root, dir)]),
    ['/', path.join(root, 'www')],
  ];
}

function resolvePath(mounts, urlPath) {
  for (const [prefix, dir] of mounts) {
    if (!urlPath.startsWith(prefix)) continue;
    const rel = urlPath.slice(prefix.length);
    const file = path.resolve(dir, '.' + path.posix.sep + rel);
    // Refuse anything that escapes the mounted folder (.., encoded or not).
    if (file !== dir && !file.startsWith(dir + path.sep)) return null;
    return file;
  }
  return null;
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': 'text/plain; charset=utf-8', ...headers });
  res.end(body);
}

async function handle(mounts, req, res) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD' });
  }
  let urlPath;
  try {
    urlPath = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  } catch {
    return send(res, 400, 'bad request\n');
  }
  if (urlPath.includes('\0')) return send(res, 400, 'bad request\n');
  let file = resolvePath(mounts, urlPath);
  if (!file) return send(res, 404, 'not found\n');
  let info = await stat(file).catch(() => null);
  if (info?.isDirectory()) {
    if (!urlPath.endsWith('/')) {
      return send(res, 301, '', { Location: encodeURI(urlPath + '/') });
    }
    file = path.join(file, 'index.html');
    info = await stat(file).catch(() => null);
  }
  if (!info?.isFile()) return send(res, 404, 'not found\n');

  const etag = `"${info.size.toString(16)}-${Math.floor(info.mtimeMs).toString(16)}"`;
  const headers = {
    ...SECURITY_HEADERS,
    'Content-Type': MIME_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
    'Content-Length': info.size,
    'Cache-Control': 'no-cache', // always revalidate: a rebuilt wasm is picked up on reload
    ETag: etag,
    'Last-Modified': info.mtime.toUTCString(),
  };
  if (req.headers['if-none-match'] === etag) {
    delete headers['Content-Length'];
    res.writeHead(304, headers);
    return res.end();
  }
  res.writeHead(200, headers);
  if (req.method === 'HEAD') return res.end();
  const stream = createReadStream(file);
  stream.on('error', () => res.destroy());
  stream.pipe(res);
}

/**
 * Starts the server. Resolves once it listens.
 * @param {{port?: number, host?: string, mounts?: [string, string][], log?: (line: string) => void}} [options]
 *   port 0 picks a free port.
 * @returns {Promise<{server: http.Server, port: number, url: string, close: () => Promise<void>}>}
 */
export function startServer({ port = 8080, host = '127.0.0.1', mounts = defaultMounts(), log = () => {} } = {}) {
  const resolved = mounts.map(([prefix, dir]) => [prefix, path.resolve(dir)]);
  const server = http.createServer((req, res) => {
    handle(resolved, req, res)
      .then(() => log(`${req.method} ${req.url} ${res.statusCode}`))
      .catch((err) => {
        log(`${req.method} ${req.url} failed: ${err.message}`);
        if (!res.headersSent) send(res, 500, 'internal error\n');
        else res.destroy();
      });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      resolve({
        server,
        port: actual,
        url: `http://${host}:${actual}/`,
        close: () => new Promise((done) => server.close(() => done())),
      });
    });
  });
}

async function main(argv) {
  let mounts = defaultMounts();
  const rootIdx = argv.indexOf('--root');
  if (rootIdx >= 0) {
    const dir = argv[rootIdx + 1];
    if (!dir) throw new Error('--root needs a folder');
    mounts = [['/', path.resolve(dir)]];
  }
  const port = Number(process.env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad PORT: ${process.env.PORT}`);
  const host = process.env.HOST ?? '127.0.0.1';
  const verbose = argv.includes('--verbose');
  const { url, port: actual, close } = await startServer({
    port,
    host,
    mounts,
    log: verbose ? (line) => console.log(line) : () => {},
  });
  const shown = host === '127.0.0.1' ? `http://localhost:${actual}/` : url;
  console.log(`Serving ${mounts.map(([p, d]) => `${p} <- ${path.relative(process.cwd(), d) || '.'}`).join(', ')}`);
  console.log(`Open ${shown}  (Ctrl-C to stop)`);
  const stop = () => close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`serve: ${err.code === 'EADDRINUSE' ? `port ${process.env.PORT ?? 8080} is in use (set PORT=...)` : err.message}`);
    process.exit(1);
  });
}
