// engine-client.js in Chromium against stand-in workers (served by page.route at URLs of the
// page's own origin, so the page's CSP applies): replies are matched by id, progress is
// delivered, errors become EngineError, and a crashed or hung worker is replaced.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SECURITY_HEADERS } from '../../scripts/serve.mjs';
import { openWatchedPage } from '../support/chromium.mjs';
import { serverAndBrowser } from '../support/harness.mjs';

// A stand-in worker speaking the protocol: 'echo' answers (after a progress reply), 'fail'
// answers with an error, 'fatal' with a fatal error, 'throw' crashes the worker, 'hang'
// never answers. `generation` tells replacements apart.
const FAKE_WORKER = `
  const generation = Math.random();
  self.onmessage = ({ data }) => {
    const { type, id } = data;
    if (type === 'echo') {
      self.postMessage({ type: 'progress', id, done: 1, total: 2 });
      self.postMessage({ type: 'result', id, result: { echo: data.value, generation } });
    } else if (type === 'fail') {
      self.postMessage({ type: 'error', id, error: { name: 'Error', message: 'no such layer', fatal: false } });
    } else if (type === 'fatal') {
      self.postMessage({ type: 'error', id, error: { name: 'RuntimeError', message: 'unreachable', fatal: true } });
    } else if (type === 'throw') {
      throw new Error('boom');
    }
  };
`;

const env = serverAndBrowser();

test('requests, progress, errors, crashes and timeouts', async () => {
  const origin = env.server.url.replace(/\/$/, '');
  const { context, page, problems } = await openWatchedPage(env.browser, origin);
  try {
    await context.route('**/test-fake-worker.js', (route) =>
      // With the env.server's headers: a COEP page only runs workers that send COEP too.
      route.fulfill({ status: 200, headers: SECURITY_HEADERS, contentType: 'text/javascript', body: FAKE_WORKER }),
    );
    await page.goto(env.server.url);
    await page.waitForSelector('body.ready, body.error');

    const outcome = await page.evaluate(async () => {
      const { EngineClient, EngineError } = await import('./engine-client.js');
      const client = new EngineClient({ url: '/test-fake-worker.js', timeoutMs: 2000 });
      const events = [];
      client.addEventListener('crash', (e) => events.push(`crash: ${e.detail.error.message}`));
      client.addEventListener('restart', (e) => events.push(`restart ${e.detail.generation}`));
      const settle = (p) =>
        p.then(
          (value) => ({ ok: true, value }),
          (err) => ({ ok: false, isEngineError: err instanceof EngineError, name: err.name, message: err.message, kind: err.kind, fatal: err.fatal }),
        );

      const progress = [];
      const [a, b] = await Promise.all([
        client.request('echo', { value: 'a' }, { onProgress: (p) => progress.push(p.done) }),
        client.request('echo', { value: 'b' }),
      ]);
      const unsendable = await settle(client.request('echo', { value: () => 1 }));
      const fail = await settle(client.request('fail'));
      const afterFail = await client.request('echo', { value: 'c' });
      const fatal = await settle(client.request('fatal'));
      const afterFatal = await client.request('echo', { value: 'd' });
      const crash = await settle(client.request('throw'));
      const afterCrash = await client.request('echo', { value: 'e' });
      const hang = await settle(client.request('hang', {}, { timeoutMs: 300 }));
      const afterHang = await client.request('echo', { value: 'f' });
      client.terminate();
      return { a, b, progress, unsendable, fail, afterFail, fatal, afterFatal, crash, afterCrash, hang, afterHang, events, generation: client.generation };
    });

    assert.equal(outcome.a.echo, 'a');
    assert.equal(outcome.b.echo, 'b');
    assert.deepEqual(outcome.progress, [1]);
    // A payload that cannot be cloned is refused without harming the worker.
    assert.equal(outcome.unsendable.ok, false);
    assert.match(outcome.unsendable.message, /could not be sent/);
    // A plain error keeps the worker.
    assert.deepEqual(
      { ok: outcome.fail.ok, isEngineError: outcome.fail.isEngineError, message: outcome.fail.message, fatal: outcome.fail.fatal },
      { ok: false, isEngineError: true, message: 'no such layer', fatal: false },
    );
    assert.equal(outcome.afterFail.generation, outcome.a.generation);
    // A fatal error, a crash and a hang each replace it.
    assert.equal(outcome.fatal.fatal, true);
    assert.notEqual(outcome.afterFatal.generation, outcome.afterFail.generation);
    assert.equal(outcome.crash.kind, 'crash');
    assert.match(outcome.crash.message, /crashed: .*boom/);
    assert.notEqual(outcome.afterCrash.generation, outcome.afterFatal.generation);
    assert.equal(outcome.hang.kind, 'timeout');
    assert.match(outcome.hang.message, /did not answer 'hang' within 0.3 s/);
    assert.notEqual(outcome.afterHang.generation, outcome.afterCrash.generation);
    assert.equal(outcome.generation, 4);
    assert.deepEqual(outcome.events, [
      'crash: the engine failed (unreachable) and was restarted',
      'restart 2',
      `crash: ${outcome.crash.message}`,
      'restart 3',
      'crash: the engine stopped responding and was restarted',
      'restart 4',
    ]);
    assert.deepEqual(problems.foreignRequests, []);
  } finally {
    await context.close();
  }
});
