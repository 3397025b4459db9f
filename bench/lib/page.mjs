// The browser side shared by the benchmarks that drive a bench page in headless Chromium
// (bench/benchmarks/*.mjs). Not a benchmark itself: bench/run.mjs loads only bench/benchmarks/.

/**
 * A fresh browser context for pages served by `server` (from scripts/serve.mjs), watched for
 * what fails a benchmark: requests to other origins (`foreign`; data: and blob: URLs are
 * allowed) and, on pages opened with `newPage`, uncaught errors, HTTP responses of 400 and up
 * and, with `consolePrefix`, console errors (`pageErrors`). The caller closes `context`.
 */
export async function benchContext(browser, server) {
  const context = await browser.newContext();
  const origin = server.url.replace(/\/$/, '');
  const foreign = [];
  const pageErrors = [];
  context.on('request', (req) => {
    if (!req.url().startsWith(origin) && !req.url().startsWith('data:') && !req.url().startsWith('blob:')) foreign.push(req.url());
  });
  return {
    context,
    foreign,
    pageErrors,
    /**
     * A new page of the context, its errors collected in `pageErrors`. `consolePrefix`
     * (a string, possibly empty) also collects console errors, each text after the prefix;
     * without it console errors are not collected.
     */
    async newPage({ consolePrefix } = {}) {
      const page = await context.newPage();
      page.on('pageerror', (err) => pageErrors.push(err.message));
      page.on('response', (res) => {
        if (res.status() >= 400) pageErrors.push(`HTTP ${res.status()} ${res.url()}`);
      });
      if (consolePrefix !== undefined) {
        page.on('console', (msg) => {
          if (msg.type() === 'error') pageErrors.push(`${consolePrefix}${msg.text()}`);
        });
      }
      return page;
    },
    /** Throws if a page of the context requested another origin or collected an error. */
    assertClean() {
      if (foreign.length) throw new Error(`the bench page requested other origins: ${foreign.join(', ')}`);
      if (pageErrors.length) throw new Error(`the bench page logged errors: ${pageErrors.join('; ')}`);
    },
  };
}
