// dashboard.mjs - opens the dashboard in Debian's chromium (driven by the
// npm package playwright-core, pinned by package-lock.json; no browser
// download) and checks what an operator would look at. Run by
// tests/integration/dashboard_suite.py, which starts the servers:
//
//   node dashboard.mjs CONFIG_JSON
//
// CONFIG_JSON: {"a": URL, "b": URL (two instances on one Redis),
// "ids": [their instance ids], "locked": URL (an instance with an API
// token), "token": that token, "shots": [PNG paths for the populated
// dashboard], "phone_shot": PNG path, "timeout_ms": per wait}.
// Prints one JSON line per check ({"check", "ok", "detail"}) and exits 1
// if any failed. Every request goes to the URLs given (loopback).
import {execFileSync} from 'node:child_process';
import {chromium} from 'playwright-core';
import {failures, noOverflow, pageWidths, report, step}
  from '../browser_checks.mjs';

const cfg = JSON.parse(process.argv[2]);
const T = cfg.timeout_ms || 15000;

// The API from outside the browser, as a user's script would call it.
async function api(base, method, path, body, token) {
  const headers = {'Content-Type': 'application/json'};
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(base + path, {method, headers,
    body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await r.text();
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// An event dispatched with curl, as the README shows.
function curlEvent(base, name, data) {
  execFileSync('curl', ['-sS', '--fail', '--max-time', '10', '-X', 'POST',
    '--data-binary', data, `${base}/events/${name}`]);
}

// Chromium as root in CI: no sandbox; no background traffic to anywhere.
const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  timeout: T * 2,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    '--disable-default-apps', '--disable-extensions', '--no-pings',
    '--disable-domain-reliability', '--disable-breakpad',
    '--disable-client-side-phishing-detection', '--dns-prefetch-disable'],
});

async function openPage(url, viewport) {
  const context = await browser.newContext({viewport});
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  return {context, page, problems};
}

try {
  // ---------------------------------------------------------- the token
  await step('token: the prompt appears, the token opens the data',
    async () => {
      const {context, page} = await openPage(cfg.locked,
        {width: 1280, height: 900});
      await page.locator('#login').waitFor({state: 'visible'});
      if (await page.locator('#main').isVisible())
        throw new Error('the data shows behind the prompt');
      await page.fill('#token-input', 'wrong-token');
      await page.click('#login button[type=submit]');
      await page.locator('#login').waitFor({state: 'visible'});
      await page.locator('#login-msg', {hasText: 'not accepted'}).waitFor();
      await page.fill('#token-input', cfg.token);
      await page.click('#login button[type=submit]');
      await page.locator('#instances-body tr').first().waitFor();
      await page.locator('#stream-state[data-state=open]').waitFor();
      const kept = await page.evaluate(() => [sessionStorage.length,
        localStorage.length, document.cookie]);
      if (kept[0] !== 1 || kept[1] !== 0 || kept[2] !== '')
        throw new Error(`token kept as ${JSON.stringify(kept)}`);
      // A reload in the same tab keeps it; a new tab does not.
      await page.reload();
      await page.locator('#instances-body tr').first().waitFor();
      const other = await context.newPage();
      await other.goto(cfg.locked);
      await other.locator('#login').waitFor({state: 'visible'});
      await context.close();
      return 'prompt, wrong token refused, right token shows instances';
    });

  // ---------------------------------------------------------- two instances
  const {page, problems} = await openPage(cfg.a, {width: 1280, height: 900});
  await page.locator('#stream-state[data-state=open]').waitFor();

  await step('both instances appear', async () => {
    for (const id of cfg.ids)
      await page.locator(`#instances-body tr[data-instance="${id}"]`).waitFor();
    const n = await page.locator('#instances-body tr').count();
    const total = await page.locator('#total-instances').textContent();
    if (n !== 2 || total !== '2')
      throw new Error(`${n} rows, total ${total}`);
    return cfg.ids.join(', ');
  });

  await step('a task spawned through the API appears; cancel turns it ' +
    'cancelled', async () => {
    // Spawned on b, shown and cancelled through a: the cluster's view.
    await api(cfg.b, 'POST', '/tasks',
      {kind: 'sleep', name: 'dash-api-sleep', args: {seconds: 600}});
    const row = page.locator('#task-table tr[data-task="dash-api-sleep"]');
    await row.waitFor();
    await row.locator('button.cancel').click();
    await page.locator('#task-table tr[data-task="dash-api-sleep"]' +
      '[data-state="cancelled"]').waitFor();
    const t = await api(cfg.a, 'GET', '/tasks/dash-api-sleep');
    if (t.state !== 'cancelled') throw new Error(`the API says ${t.state}`);
    // A hostile task name is text in its row, and its cancel still works
    // (the name goes into the path escaped).
    // (No '/': the router refuses an encoded one, so a task whose name holds
    // one cannot be addressed by /tasks/{name} at all.)
    const evil = '<img src=x onerror="pwned=2"> ?#%&';
    await api(cfg.b, 'POST', '/tasks',
      {kind: 'sleep', name: evil, args: {seconds: 600}});
    const evilRow = page.locator('#task-table tr[data-task]').filter(
      {has: page.locator('td.name', {hasText: evil})});
    await evilRow.waitFor();
    if (await page.locator('#task-table img').count())
      throw new Error('a task name became markup');
    await evilRow.locator('button.cancel').click();
    await page.locator('#task-table tr[data-state="cancelled"]').filter(
      {has: page.locator('td.name', {hasText: evil})}).waitFor();
    if (await page.evaluate(() => window.pwned))
      throw new Error('a task name ran');
    return 'running -> cancelled (also a hostile name)';
  });

  await step('a new task with a cancelled task\'s name shows running, with ' +
    'a Cancel button', async () => {
    const name = 'dash-reuse';
    const sel = (state) => `#task-table tr[data-task="${name}"]` +
      `[data-state="${state}"]`;
    await api(cfg.b, 'POST', '/tasks',
      {kind: 'sleep', name, args: {seconds: 600}});
    await page.locator(sel('running')).locator('button.cancel').click();
    await page.locator(sel('cancelled')).waitFor();
    const again = await api(cfg.b, 'POST', '/tasks',
      {kind: 'sleep', name, args: {seconds: 600}});
    const row = page.locator(sel('running'));
    await row.locator('button.cancel').waitFor();
    if (await row.getAttribute('data-key') !==
      `${again.instance}/${again.id}`)
      throw new Error(`row ${await row.getAttribute('data-key')}`);
    // And its own Cancel works too.
    await row.locator('button.cancel').click();
    await page.locator(sel('cancelled')).waitFor();
    return `the new one: ${again.instance}/${again.id}`;
  });

  await step('an event dispatched with curl appears in the stream; its ' +
    'envelope shows on a click', async () => {
    await page.locator('#stream-state[data-state=open]').waitFor();
    // Hostile data: shown as text, never as markup.
    const data = '<img src=x onerror="window.pwned=1">{"n":1}';
    const li = page.locator('#ev-list li[data-event="dash.curl.hello"]');
    // The subscription may still be on its way: repeat until one shows.
    for (let i = 0; i < 50 && !(await li.count()); i++) {
      curlEvent(cfg.b, 'dash.curl.hello', data);
      await page.waitForTimeout(200);
    }
    await li.first().waitFor();
    if (await page.locator('#ev-list img').count())
      throw new Error('event data became markup');
    await li.first().click();
    const env = JSON.parse(await page.locator('#ev-detail').textContent());
    if (env.name !== 'dash.curl.hello' || env.data !== data || !env.id)
      throw new Error(`envelope ${JSON.stringify(env)}`);
    if (await page.evaluate(() => window.pwned))
      throw new Error('the data ran');
    return `envelope id ${env.id}`;
  });

  await step('pause holds the list; the pattern filter narrows it',
    async () => {
      await page.click('#ev-pause');
      // Events of the steps before may still arrive (and count): wait for
      // this one by its name. Those before it were published before it.
      await page.locator('#ev-note', {hasText: /^paused: \d+ not shown/})
        .waitFor();
      curlEvent(cfg.a, 'dash.paused', 'x');
      await page.locator('#ev-note',
        {hasText: /^paused: [1-9]\d* not shown \(last: dash\.paused\)$/})
        .waitFor();
      if (await page.locator('#ev-list li[data-event="dash.paused"]').count())
        throw new Error('shown while paused');
      await page.click('#ev-pause');
      await page.locator('#ev-note', {hasText: / received/}).waitFor();
      await page.fill('#ev-pattern', 'only.>');
      await page.click('#events form button[type=submit]');
      const only = page.locator('#ev-list li[data-event="only.this"]');
      for (let i = 0; i < 50 && !(await only.count()); i++) {
        curlEvent(cfg.a, 'dash.filtered.out', 'x');
        curlEvent(cfg.a, 'only.this', 'x');
        await page.waitForTimeout(200);
      }
      await only.first().waitFor();
      if (await page.locator('#ev-list li[data-event="dash.filtered.out"]')
        .count() > 0) {
        // Events before the new subscription took hold may be listed;
        // none may come after the first only.this.
        const names = await page.locator('#ev-list li').evaluateAll(
          (els) => els.map((e) => e.dataset.event));
        const first = names.lastIndexOf('only.this');
        if (names.slice(0, first).includes('dash.filtered.out'))
          throw new Error(`filter let through: ${names.slice(0, 8)}`);
      }
      await page.fill('#ev-pattern', '>');
      await page.click('#events form button[type=submit]');
      return 'paused, resumed, filtered';
    });

  await step('a flood of events (5 x 1000/s for 3 s) leaves the page ' +
    'responsive: Pause still takes effect', async () => {
    const names = [0, 1, 2, 3, 4].map((i) => `dash-flood-${i}`);
    for (const name of names)
      await api(cfg.a, 'POST', '/tasks', {kind: 'interval', name,
        args: {seconds: 0.001, event: 'dash.flood', data: 'x', count: 3000}});
    await page.locator('#ev-list li[data-event="dash.flood"]').first()
      .waitFor();
    // In the middle of it: the click is handled within the usual timeout.
    await page.click('#ev-pause');
    await page.locator('#ev-pause[aria-pressed="true"]').waitFor();
    await page.locator('#ev-note', {hasText: /^paused: \d+ not shown/})
      .waitFor();
    const during = await page.locator('#ev-note').textContent();
    for (const name of names) {
      for (let i = 0; ; i++) {
        const t = await api(cfg.a, 'GET', `/tasks/${name}`);
        if (t.state === 'done') break;
        if (i > T / 100) throw new Error(`${name} still ${t.state}`);
        await page.waitForTimeout(100);
      }
    }
    await page.click('#ev-pause');
    await page.locator('#ev-pause[aria-pressed="false"]').waitFor();
    const n = await page.locator('#ev-list li').count();
    if (n > 200) throw new Error(`${n} events listed, over KEEP (200)`);
    const after = await page.locator('#ev-note').textContent();
    return `while flooding: ${during}; after: ${after}; ${n} listed`;
  });

  await step('the spawn form (from GET /kinds) creates a task', async () => {
    await page.selectOption('#spawn-kind', 'sleep');
    await page.locator('#spawn-args input[name=seconds]').waitFor();
    await page.fill('#spawn-name', 'dash-form-sleep');
    await page.fill('#spawn-args input[name=seconds]', '600');
    await page.click('#spawn-form button[type=submit]');
    await page.locator('#spawn-out.ok').waitFor();
    await page.locator('#task-table tr[data-task="dash-form-sleep"]').waitFor();
    const t = await api(cfg.b, 'GET', '/tasks/dash-form-sleep');
    if (t.kind !== 'sleep' || t.state !== 'running')
      throw new Error(`the API says ${JSON.stringify(t)}`);
    // A bad argument is refused with the server's message.
    await page.fill('#spawn-name', 'dash-form-bad');
    await page.fill('#spawn-args input[name=seconds]', '-5');
    await page.evaluate(() =>
      document.querySelector('#spawn-args input[name=seconds]')
        .removeAttribute('min'));
    const before = problems.length;
    await page.click('#spawn-form button[type=submit]');
    await page.locator('#spawn-out.bad').waitFor();
    // The browser logs the refused request: expected here, and only here.
    const added = problems.splice(before);
    problems.push(...added.filter((p) => !/status of 400/.test(p)));
    return (await page.locator('#spawn-out').textContent()).slice(0, 120);
  });

  await step('filters by state, kind and instance', async () => {
    await page.selectOption('#f-state', 'cancelled');
    await page.locator('#task-table tr[data-task="dash-form-sleep"]')
      .waitFor({state: 'detached'});
    await page.locator('#task-table tr[data-task="dash-api-sleep"]').waitFor();
    await page.selectOption('#f-state', '');
    await page.selectOption('#f-kind', 'sleep');
    // Until the filtered listing comes, the table is the cancelled one
    // (only sleep, no dash-form-sleep) or an unfiltered one (the page's own
    // ws tasks too): wait for the table that is neither.
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#task-table tbody tr')];
      return rows.some((r) => r.dataset.task === 'dash-form-sleep') &&
        rows.every((r) => r.cells[1].textContent === 'sleep');
    }).catch(async (e) => {
      const kinds = await page.locator(
        '#task-table tbody tr td:nth-child(2)').allTextContents();
      throw new Error(`kinds ${kinds}: ${e.message}`);
    });
    await page.selectOption('#f-kind', '');
    // dash-api-sleep ran on b, dash-form-sleep on a (the page's instance).
    await page.selectOption('#f-instance', cfg.ids[1]);
    await page.locator('#task-table tr[data-task="dash-form-sleep"]')
      .waitFor({state: 'detached'});
    await page.locator('#task-table tr[data-task="dash-api-sleep"]').waitFor();
    await page.selectOption('#f-instance', '');
    return 'state, kind, instance';
  });

  await step('the chart and the totals show the cluster, the bus this ' +
    'instance', async () => {
    await page.locator('#rates[data-scope="cluster"]').waitFor();
    await page.locator('#rates-scope', {hasText: 'cluster: 2 instances'})
      .waitFor();
    await page.locator('#bus-body dd[data-bus="state"]',
      {hasText: 'connected'}).waitFor();
    await page.locator('#bus-body dd[data-bus="kind"]', {hasText: 'redis'})
      .waitFor();
    // Quiet first (the flood over), then events posted to the other
    // instance (b) for a few seconds: both rates of the cluster rise above
    // zero (this instance's own dispatched count does not move).
    await page.waitForFunction(() => /^0\.00 /.test(
      document.querySelector('#rate-chart').dataset.rates || ''));
    let rates = '';
    for (let i = 0; i < 40; i++) {
      curlEvent(cfg.b, 'chart.tick', String(i));
      rates = await page.locator('#rate-chart').getAttribute('data-rates');
      const [ev, del] = (rates || '0 0').split(' ').map(Number);
      if (ev > 0 && del > 0) break;
      await page.waitForTimeout(150);
    }
    const [ev, del] = (rates || '0 0').split(' ').map(Number);
    if (!(ev > 0 && del > 0)) throw new Error(`rates ${rates}`);
    const bus = (await page.locator('#bus-body').innerText())
      .replace(/\s+/g, ' ');
    return `rates ${rates}; ${bus}`;
  });

  await step('the populated dashboard: screenshot', async () => {
    // The finished tests' tasks out of the picture.
    for (const base of [cfg.a, cfg.b]) await api(base, 'POST', '/tasks/purge');
    await api(cfg.a, 'POST', '/tasks', {kind: 'interval', name: 'orders-feed',
      args: {seconds: 0.5, event: 'orders.created', data: '{"n":1}'}});
    await api(cfg.b, 'POST', '/tasks', {kind: 'sleep', name: 'nightly-report',
      args: {seconds: 3600}});
    await api(cfg.b, 'POST', '/tasks', {kind: 'delay', name: 'reminder',
      args: {seconds: 1, event: 'reminders.due', data: 'ping'}});
    await page.selectOption('#spawn-kind', 'sleep');
    await page.fill('#spawn-name', 'cache-warmup');
    await page.fill('#spawn-args input[name=seconds]', '900');
    await page.click('#spawn-form button[type=submit]');
    await page.locator('#spawn-out.ok').waitFor();
    await page.locator('#ev-list li[data-event="orders.created"]').first()
      .waitFor();
    await page.waitForTimeout(4000); // a few points on the chart
    await page.locator('#ev-list li').first().click();
    for (const path of cfg.shots || [])
      await page.screenshot({path, fullPage: true});
    return (cfg.shots || []).join(', ');
  });

  await step('no script errors and no blocked resources (CSP)', async () => {
    if (problems.length) throw new Error(problems.join('; '));
    return '';
  });

  // ---------------------------------------------------------- a phone
  await step('a 390x844 phone viewport renders without horizontal overflow',
    async () => {
      const ph = await openPage(cfg.a, {width: 390, height: 844});
      await ph.page.locator('#instances-body tr').nth(1).waitFor();
      await ph.page.locator('#task-table tr[data-task]').first().waitFor();
      await ph.page.locator('#ev-list li').first().waitFor();
      const w = await ph.page.evaluate(pageWidths);
      if (cfg.phone_shot)
        await ph.page.screenshot({path: cfg.phone_shot, fullPage: true});
      const widths = noOverflow(w);
      if (ph.problems.length) throw new Error(ph.problems.join('; '));
      await ph.context.close();
      return widths;
    });
} catch (e) {
  report('browser', false, (e && e.stack) || e);
} finally {
  await browser.close();
}
process.exit(failures() ? 1 : 0);
