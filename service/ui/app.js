// app.js - the dashboard's start: asks for the token when the API wants
// one, then polls the instances, tasks and stats and runs the live event
// stream. Loaded by index.html as an ES module.
import {call, setToken, token, whenUnauthorized} from './api.js';
import {RateChart} from './chart.js';
import {$, duration, fill, h} from './dom.js';
import {Events} from './events.js';
import {Tasks} from './tasks.js';

const POLL_MS = {instances: 3000, tasks: 2000, stats: 1000};

let needLogin = false;
let started = false;
const timers = [];

const tasks = new Tasks($('#tasks'), showError, (byState, more) =>
  setTotal('tasks', Object.entries(byState).map(([k, v]) => `${v} ${k}`)
    .join(', ') + (more ? ' (first page)' : '') || '0'));
const events = new Events($('#events'), showStream);
const chart = new RateChart($('#rate-chart'), [
  {label: 'events', color: '#2f6fdb'},
  {label: 'deliveries', color: '#d9822b'},
]);

function showError(e) {
  if (e && e.status === 401) return;
  fill($('#error'), e ? String(e.message || e) : '');
  $('#error').hidden = !e;
}

function showStream(state, err) {
  const el = $('#stream-state');
  const via = events.client && events.client.transport;
  fill(el, `stream: ${state}${via && state === 'open' ? ` (${via})` : ''}`);
  el.dataset.state = state;
  if (err) el.title = String(err.message || err);
}

// ------------------------------------------------------------ the token

whenUnauthorized(() => {
  if (needLogin) return;
  needLogin = true;
  stop();
  const hadToken = !!token();
  setToken('');
  fill($('#login-msg'), hadToken ? 'That token was not accepted.'
    : 'This taskbus needs its API token.');
  $('#login').hidden = false;
  $('#main').hidden = true;
  $('#token-input').focus();
});

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  setToken($('#token-input').value.trim());
  $('#token-input').value = '';
  needLogin = false;
  $('#login').hidden = true;
  $('#main').hidden = false;
  boot();
});

$('#logout').addEventListener('click', () => {
  setToken('');
  location.reload();
});

// ------------------------------------------------------------ polling

function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}

function stop() {
  while (timers.length) clearInterval(timers.pop());
  if (events.client) events.client.close();
  started = false;
}

async function boot() {
  try {
    await refreshInstances();
  } catch (e) {
    if (e.status !== 401) showError(e);
    if (needLogin) return;
  }
  if (needLogin || started) return;
  started = true;
  $('#logout').hidden = !token();
  tasks.loadKinds().catch(showError);
  events.start();
  every(POLL_MS.instances, () => refreshInstances().catch(showError));
  every(POLL_MS.tasks, () => tasks.refresh());
  every(POLL_MS.stats, () => refreshStats().catch(() => {}));
}

// ------------------------------------------------------------ instances

let lastStats = null;

async function refreshInstances() {
  const o = await call('GET', '/instances');
  const list = (o && o.instances) || [];
  tasks.setInstances(list);
  const now = Date.now();
  const busState = lastStats && lastStats.bus
    ? (lastStats.bus.connected ? 'connected' : 'disconnected') : '';
  fill($('#instances-body'), list.map((i) => h('tr', {dataset: {instance: i.id}},
    h('td', {class: 'mono'}, i.id, i.self ? h('span', {class: 'tag'}, 'this')
      : ''),
    h('td', {}, i.host), h('td', {}, String(i.workers)),
    h('td', {}, i.started ? duration((now - Date.parse(i.started)) / 1000) : ''),
    h('td', {}, i.bus, i.self && busState
      ? h('span', {class: `tag bus-${busState}`}, busState) : ''),
    h('td', {class: 'muted'}, i.version || ''))));
  const workers = list.reduce((n, i) => n + (Number(i.workers) || 0), 0);
  setTotal('instances', list.length);
  setTotal('workers', workers);
  showError(null);
}

function setTotal(name, value) {
  fill($(`#total-${name}`), String(value));
}

// ------------------------------------------------------------ stats

// What the bus panel shows of GET /stats's "bus", in this order.
const BUS_FIELDS = [['kind', 'bus'], ['state', 'state'],
  ['reconnects', 'reconnects'], ['queue_depth', 'queue depth'],
  ['published', 'published'], ['received', 'received'],
  ['dropped', 'dropped'], ['last_error', 'last error']];

// The cluster's numbers (GET /stats?scope=cluster: the sums over every
// live instance) for the totals and the chart; this instance's (GET
// /stats) for the bus panel and its uptime, labelled as such. An older
// server without the cluster scope (400): this instance's numbers for
// all, and the labels say so.
let clusterScope = true;

async function refreshStats() {
  const [s, all] = await Promise.all([call('GET', '/stats'),
    clusterScope ? call('GET', '/stats', {scope: 'cluster'}).catch((e) => {
      if (e.status !== 400) throw e;
      clusterScope = false;
      return null;
    }) : null]);
  lastStats = s;
  const sums = all || s;
  const ev = sums.events || {};
  // The sums jump when an instance joins, leaves or does not answer: a rate
  // is only taken between two answers from the same instances. Over wall
  // time (the sums have no clock of their own; this instance's numbers
  // use its monotonic uptime_ms).
  const from = all ? JSON.stringify([all.instances, all.unreachable]) : 'self';
  chart.sample(Date.now(), [Number(ev.dispatched) || 0,
    Number(ev.delivered) || 0], all ? undefined : Number(s.uptime_ms), from);
  const who = all ? `cluster: ${all.instances} instance` +
    (all.instances === 1 ? '' : 's') +
    (all.unreachable && all.unreachable.length
      ? `, ${all.unreachable.length} not answering` : '') : 'this instance';
  fill($('#rates-scope'), who);
  $('#rates').dataset.scope = all ? 'cluster' : 'self';
  fill($('#totals-scope'), all ? 'cluster' : 'this instance');
  const bus = s.bus || {};
  const rows = BUS_FIELDS.filter(([k]) => bus[k] !== undefined &&
    bus[k] !== '').map(([k, label]) => [label, bus[k], k]);
  rows.push(['worker queue', (s.events || {}).worker_queue_depth ?? '-',
    'worker_queue']);
  const drops = Object.entries(bus.drops || {}).filter(([, v]) => v);
  if (drops.length)
    rows.push(['drops', drops.map(([k, v]) => `${k} ${v}`).join(', '),
      'drops']);
  fill($('#bus-body'), rows.map(([label, v, k]) => h('div', {},
    h('dt', {}, label),
    h('dd', {dataset: {bus: k}, class: k === 'state' ? `bus-${v}` : null},
      String(v)))));
  const clients = [];
  if (sums.ws) clients.push(`${sums.ws.clients} ws`);
  if (sums.sse) clients.push(`${sums.sse.clients} sse`);
  fill($('#total-clients'), clients.join(', ') || '-');
  if (s.uptime_s !== undefined)
    fill($('#self-uptime'), duration(Number(s.uptime_s)));
}

boot();
