// Says so in the page when main.js never started (one of the page's modules failed to load or
// parse): without this the page would show "Loading…" forever and the reason only in the
// console. Kept tiny and import-free so that it runs whatever else is broken.

const errors = [];
const onError = (event) => errors.push(event.message || String(event.error ?? 'unknown error'));
window.addEventListener('error', onError);

setTimeout(() => {
  window.removeEventListener('error', onError);
  if (document.documentElement.dataset.started) return;
  const panel = document.getElementById('error-panel');
  const message = panel?.querySelector('[data-field="error-message"]');
  if (!panel || !message) return;
  message.textContent = `The page's scripts could not start${errors.length ? `: ${errors.join('; ')}` : ''}. Reload the page; if it persists, the site is incomplete.`;
  panel.hidden = false;
  document.body.classList.remove('loading');
  document.body.classList.add('error');
}, 10_000);
