// firefox.mjs - opens the dashboard in Debian's firefox-esr (driven over
// WebDriver BiDi by the npm package puppeteer-core, pinned by
// package-lock.json; no browser download) and checks what an operator would
// look at. Run by tests/integration/dashboard_firefox_suite.py, which starts
// the servers:
//
//   node firefox.mjs CONFIG_JSON
//
// CONFIG_JSON: {"url": URL (an instance on Redis), "id": its instance id,
// "locked": URL (an instance with an API token), "token": that token,
// "firefox": the executable, "profile": an empty directory for the
// profile, "shot": PNG path, "timeout_ms": per wait}.
// Prints one JSON line per check ({"check", "ok", "detail"}) and exits 1
// if any failed. Every request goes to the URLs given (loopback).
import {execFileSync} from 'node:child_process';
import puppeteer from 'puppeteer-core';
import {failures, noOverflow, pageWidths, report, step}
  from '../browser_checks.mjs';

const cfg = JSON.parse(process.argv[2]);
const T = cfg.timeout_ms || 15000;

// The API from outside the browser, as a user's script would call it.
async function api(method, path, body) {
  const r = await fetch(cfg.url + path, {method,
    headers: {'Content-Type': 'application/json'},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await r.text();
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// An event dispatched with curl, as the README shows.
function curlEvent(name, data) {
  execFileSync('curl', ['-sS', '--fail', '--max-time', '10', '-X', 'POST',
    '--data-binary', data, `${cfg.url}/events/${name}`]);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// puppeteer-core's own profile preferences already point Firefox's update,
// telemetry and safe-browsing servers nowhere; a proxy on a closed loopback
// port catches anything they miss (loopback itself is never proxied).
const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: cfg.firefox || '/usr/bin/firefox-esr',
  headless: true,
  userDataDir: cfg.profile,
  timeout: T * 2,
  protocolTimeout: T * 2,
  extraPrefsFirefox: {
    'network.proxy.type': 1,
    'network.proxy.http': '127.0.0.1',
    'network.proxy.http_port': 1,
    'network.proxy.ssl': '127.0.0.1',
    'network.proxy.ssl_port': 1,
    'network.proxy.socks_remote_dns': true,
    'network.dns.disabled': true,
    'network.connectivity-service.enabled': false,
    'network.captive-portal-service.enabled': false,
  },
});

async function openPage(viewport, url = cfg.url) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  await page.setViewport(viewport);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  // Firefox 153 reports a CSP block to BiDi's log as a page error; the
  // page's securitypolicyviolation events say it too, whatever a later
  // version logs.
  await page.evaluateOnNewDocument(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(url);
  return {context, page, problems};
}

async function scriptProblems(ph) {
  const csp = await ph.page.evaluate(() => window.__csp);
  return ph.problems.concat(csp.map((v) => `CSP: ${v}`));
}

try {
  const ph = await openPage({width: 1280, height: 900});
  const page = ph.page;

  await step('the page loads; its live stream opens', async () => {
    await page.waitForSelector('#stream-state[data-state=open]');
    return await browser.version();
  });

  await step('the instance appears in the instances table', async () => {
    await page.waitForSelector(`#instances-body tr[data-instance="${cfg.id}"]`);
    const total = await page.$eval('#total-instances', (e) => e.textContent);
    if (total !== '1') throw new Error(`total ${total}`);
    return cfg.id;
  });

  await step('an event dispatched with curl appears in the stream; its ' +
    'envelope shows on a click', async () => {
    const sel = '#ev-list li[data-event="ff.curl.hello"]';
    // Hostile data: shown as text, never as markup.
    const data = '<img src=x onerror="window.pwned=1">{"n":1}';
    // The subscription may still be on its way: repeat until one shows.
    for (let i = 0; i < 50 && !(await page.$(sel)); i++) {
      curlEvent('ff.curl.hello', data);
      await sleep(200);
    }
    const li = await page.waitForSelector(sel);
    if (await page.$('#ev-list img'))
      throw new Error('event data became markup');
    await li.click();
    await page.waitForFunction(() =>
      /ff\.curl\.hello/.test(document.querySelector('#ev-detail').textContent));
    const env = JSON.parse(
      await page.$eval('#ev-detail', (e) => e.textContent));
    if (env.name !== 'ff.curl.hello' || env.data !== data || !env.id)
      throw new Error(`envelope ${JSON.stringify(env)}`);
    if (await page.evaluate(() => window.pwned))
      throw new Error('the data ran');
    return `envelope id ${env.id}`;
  });

  await step('a task spawned through the API appears; Cancel turns it ' +
    'cancelled', async () => {
    const name = 'ff-api-sleep';
    await api('POST', '/tasks', {kind: 'sleep', name, args: {seconds: 600}});
    const cancel = await page.waitForSelector(
      `#task-table tr[data-task="${name}"][data-state="running"] button.cancel`);
    await cancel.click();
    await page.waitForSelector(
      `#task-table tr[data-task="${name}"][data-state="cancelled"]`);
    const t = await api('GET', `/tasks/${name}`);
    if (t.state !== 'cancelled') throw new Error(`the API says ${t.state}`);
    if (cfg.shot) await page.screenshot({path: cfg.shot, fullPage: true});
    return 'running -> cancelled';
  });

  await step('the spawn form (from GET /kinds) creates a task', async () => {
    const name = 'ff-form-sleep';
    await page.select('#spawn-kind', 'sleep');
    await page.waitForSelector('#spawn-args input[name=seconds]');
    await page.type('#spawn-name', name);
    await page.type('#spawn-args input[name=seconds]', '600');
    await page.click('#spawn-form button[type=submit]');
    await page.waitForSelector('#spawn-out.ok');
    await page.waitForSelector(
      `#task-table tr[data-task="${name}"][data-state="running"]`);
    const t = await api('GET', `/tasks/${name}`);
    if (t.kind !== 'sleep' || t.state !== 'running')
      throw new Error(`the API says ${JSON.stringify(t)}`);
    return `${t.instance}/${t.id}`;
  });

  await step('no script errors and no blocked resources (CSP)', async () => {
    const p = await scriptProblems(ph);
    if (p.length) throw new Error(p.join('; '));
    return '';
  });
  await ph.context.close();

  await step('token: the prompt appears, a wrong token is refused, the ' +
    'right one opens the data', async () => {
    const lk = await openPage({width: 1280, height: 900}, cfg.locked);
    const p = lk.page;
    await p.waitForSelector('#login', {visible: true});
    if (await p.$eval('#main', (e) => e.checkVisibility()))
      throw new Error('the data shows behind the prompt');
    await p.type('#token-input', 'wrong-token');
    await p.click('#login button[type=submit]');
    await p.waitForFunction(() => /not accepted/.test(
      document.querySelector('#login-msg').textContent));
    await p.$eval('#token-input', (e) => { e.value = ''; });
    await p.type('#token-input', cfg.token);
    await p.click('#login button[type=submit]');
    await p.waitForSelector('#instances-body tr');
    await p.waitForSelector('#stream-state[data-state=open]');
    // Firefox 153 does not report the refused request (401) as an error.
    const problems = await scriptProblems(lk);
    if (problems.length) throw new Error(problems.join('; '));
    await lk.context.close();
    return 'prompt, wrong token refused, right token shows the instance';
  });

  await step('a 390x844 phone viewport renders without horizontal overflow',
    async () => {
      const phone = await openPage({width: 390, height: 844});
      const p = phone.page;
      await p.waitForSelector('#instances-body tr');
      await p.waitForSelector('#task-table tr[data-task]');
      for (let i = 0; i < 50 && !(await p.$('#ev-list li')); i++) {
        curlEvent('ff.phone', 'x');
        await sleep(200);
      }
      await p.waitForSelector('#ev-list li');
      const widths = noOverflow(await p.evaluate(pageWidths));
      const problems = await scriptProblems(phone);
      if (problems.length) throw new Error(problems.join('; '));
      await phone.context.close();
      return widths;
    });
} catch (e) {
  report('browser', false, (e && e.stack) || e);
} finally {
  await browser.close();
}
process.exit(failures() ? 1 : 0);
