// keepalive.mjs - Node's fetch (undici) against taskbus across the
// keep-alive timeout, as a user's script on a busy event loop meets it.
// Run by tests/integration/dashboard_suite.py:
//
//   node keepalive.mjs CONFIG_JSON
//
// CONFIG_JSON: {"base": URL, "keepalive_ms": the server's
// --http-keepalive-timeout, "rounds": how many}. Each round makes a
// request, waits, then blocks its own event loop past the server's
// keep-alive timeout (so undici has not yet seen the server close the idle
// connection) and makes the next request. Without a Keep-Alive header
// undici keeps an idle connection 4 s, sends on one the server has
// closed, and the request fails (UND_ERR_SOCKET): a POST that cannot be
// retried. Prints one JSON line per check (see browser_checks.mjs).
import {failures, report, step} from '../browser_checks.mjs';

const cfg = JSON.parse(process.argv[2]);

async function call(method, path, body) {
  const r = await fetch(cfg.base + path, {method,
    headers: {'Content-Type': 'application/json'}, body});
  const text = await r.text();
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status}`);
  return r.headers.get('keep-alive');
}

function blockFor(ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) { /* the loop is busy: no I/O is seen */ }
}

for (const [what, method, path, body] of [
  ['POST /events/{name} (answered by the front)', 'POST', '/events/ka.x', '1'],
  ['GET /healthz (answered by civetweb)', 'GET', '/healthz', undefined],
]) {
  await step(`${what}: a second request after an idle gap past the ` +
    'keep-alive timeout succeeds', async () => {
    let header = null;
    for (let i = 0; i < cfg.rounds; i++) {
      header = await call(method, path, body);
      await new Promise((r) => setTimeout(r, cfg.keepalive_ms * 0.6));
      blockFor(cfg.keepalive_ms * 0.6);
      await call(method, path, body);
    }
    return `${cfg.rounds} rounds; Keep-Alive: ${header}`;
  });
}
report('the run', true, `${failures()} failed`);
process.exit(failures() ? 1 : 0);
