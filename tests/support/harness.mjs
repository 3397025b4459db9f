// Per-file setup of the browser tests: the static server and Chromium, started before the
// file's tests and closed after them.

import { after, before } from 'node:test';

import { startServer } from '../../scripts/serve.mjs';
import { launchChromium } from './chromium.mjs';

/** Registers the hooks; the returned object's `server` and `browser` are set once the file's
 * `before` hook has run. `launch` is passed to `launchChromium`. */
export function serverAndBrowser(launch = {}) {
  const env = { server: null, browser: null };
  before(async () => {
    env.server = await startServer({ port: 0 });
    env.browser = await launchChromium(launch);
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.close();
  });
  return env;
}
