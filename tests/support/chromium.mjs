// Launching Debian's Chromium through playwright-core, for the end-to-end tests and the
// benchmarks. Never `npx playwright install`: it downloads a browser build, which these
// machines cannot do. CHROMIUM overrides the executable.

import { chromium } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox', // needed as root
  '--headless=new',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
];

/**
 * @param {{extraArgs?: string[]}} [options]  e.g. `--use-file-for-fake-video-capture=FILE.y4m`
 * @returns {Promise<import('playwright-core').Browser>}
 */
export function launchChromium({ extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
  });
}

/**
 * Opens a page that records what must not happen: console errors, uncaught exceptions
 * (page and workers) and requests that leave `origin`.
 * @param {import('playwright-core').Browser} browser
 * @param {string} origin  e.g. 'http://127.0.0.1:8123'
 */
export async function openWatchedPage(browser, origin) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = { consoleErrors: [], pageErrors: [], foreignRequests: [], requests: [] };
  const isLocal = (url) => url.startsWith(origin) || url.startsWith('data:') || url.startsWith('blob:');
  context.on('request', (req) => {
    problems.requests.push(req.url());
    if (!isLocal(req.url())) problems.foreignRequests.push(req.url());
  });
  const onConsole = (where) => (msg) => {
    if (msg.type() === 'error') problems.consoleErrors.push(`${where}: ${msg.text()}`);
  };
  page.on('console', onConsole('page'));
  page.on('pageerror', (err) => problems.pageErrors.push(`page: ${err.message}`));
  page.on('worker', (worker) => {
    // Worker console events exist in recent playwright-core; the page's own listener may
    // also see them, which only duplicates a failure message.
    if (typeof worker.on === 'function') worker.on('console', onConsole(`worker ${worker.url()}`));
  });
  return { context, page, problems };
}
