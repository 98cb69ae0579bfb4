// tasks.js - the tasks table (filters by state, kind and instance; times,
// result, error; a cancel button that shows the confirmed final state) and
// the spawn form, generated from the argument specs of GET /kinds.
import {call} from './api.js';
import {$, brief, fill, h, shortTime} from './dom.js';

const STATES = ['pending', 'running', 'done', 'failed', 'cancelled', 'lost'];
const FINAL = new Set(['done', 'failed', 'cancelled', 'lost']);

export class Tasks {
  // onTotals(byState, more): the cluster's tasks by state, from each
  // unfiltered listing (more: past its first page).
  constructor(root, onError, onTotals) {
    this.root = root;
    this.onError = onError;
    this.onTotals = onTotals;
    this.tasks = [];
    this.kinds = [];
    this.instances = [];
    // By task (taskKey: its instance and id, never its name alone: a new
    // task may take a cancelled one's name). An entry of cancelled goes
    // once a listing shows that task's final state, or no longer lists it.
    this.cancelled = new Map(); // task -> the final state DELETE answered
    this.cancelling = new Set(); // tasks whose DELETE has not answered yet
    this.asked = 0; // listings asked for (each one's number)
    this.applied = 0; // the number of the newest listing shown
    this.shown = ''; // what the table shows, to redraw only on a change
    this.build();
  }

  build() {
    const opt = (v, label) => h('option', {value: v}, label ?? v);
    this.state = h('select', {id: 'f-state', 'aria-label': 'state',
      onchange: () => this.refresh()},
    opt('', 'any state'), STATES.map((s) => opt(s)));
    this.kind = h('select', {id: 'f-kind', 'aria-label': 'kind',
      onchange: () => this.refresh()}, opt('', 'any kind'));
    this.instance = h('select', {id: 'f-instance', 'aria-label': 'instance',
      onchange: () => this.refresh()}, opt('', 'any instance'));
    this.body = h('tbody');
    this.count = h('span', {class: 'muted', id: 'task-count'});
    fill($('#task-filters', this.root), this.state, this.kind, this.instance,
      this.count);
    fill($('#task-table', this.root), h('table', {},
      h('thead', {}, h('tr', {}, ['name', 'kind', 'instance', 'state',
        'created', 'started', 'ended', 'result', 'error', ''].map(
        (t) => h('th', {}, t)))),
      this.body));
    this.spawnKind = h('select', {id: 'spawn-kind', 'aria-label': 'kind',
      onchange: () => this.renderArgs()});
    this.spawnName = h('input', {id: 'spawn-name', placeholder: 'name (optional)',
      autocomplete: 'off', 'aria-label': 'task name'});
    this.spawnArgs = h('div', {class: 'args', id: 'spawn-args'});
    this.spawnOut = h('p', {class: 'out', id: 'spawn-out', role: 'status'});
    const form = h('form', {id: 'spawn-form', onsubmit: (e) => {
      e.preventDefault();
      this.spawn();
    }}, h('div', {class: 'row'}, this.spawnKind, this.spawnName),
    this.spawnArgs, h('button', {type: 'submit'}, 'Spawn'), this.spawnOut);
    fill($('#spawn', this.root), form);
  }

  setInstances(list) {
    this.instances = list;
    this.syncOptions(this.instance, list.map((i) => i.id), 'any instance');
  }

  async loadKinds() {
    const o = await call('GET', '/kinds');
    this.kinds = (o && o.kinds) || [];
    this.syncOptions(this.kind, this.kinds.map((k) => k.name), 'any kind');
    const keep = this.spawnKind.value;
    fill(this.spawnKind, this.kinds.map((k) =>
      h('option', {value: k.name}, k.name)));
    if (keep) this.spawnKind.value = keep;
    this.renderArgs();
  }

  // Keeps a select's choice while its options change.
  syncOptions(sel, values, anyLabel) {
    const keep = sel.value;
    const have = [...sel.options].slice(1).map((o) => o.value);
    if (have.join('\n') === values.join('\n')) return;
    fill(sel, h('option', {value: ''}, anyLabel),
      values.map((v) => h('option', {value: v}, v)));
    sel.value = values.includes(keep) ? keep : '';
  }

  renderArgs() {
    const kind = this.kinds.find((k) => k.name === this.spawnKind.value);
    fill(this.spawnArgs, (kind ? kind.args || [] : []).map((a) => {
      const id = `arg-${a.name}`;
      let input;
      if (a.type === 'bool') {
        input = h('input', {type: 'checkbox', id, name: a.name});
      } else if (a.type === 'number' || a.type === 'int') {
        input = h('input', {type: 'number', id, name: a.name,
          step: a.type === 'int' ? '1' : 'any', min: a.min, max: a.max,
          required: !!a.required, inputmode: 'decimal'});
      } else {
        input = h('input', {type: 'text', id, name: a.name,
          required: !!a.required, autocomplete: 'off',
          placeholder: a.type === 'pattern' ? 'orders.>' :
            a.type === 'event_name' ? 'orders.created' : ''});
      }
      input.dataset.type = a.type;
      const range = a.min !== undefined || a.max !== undefined
        ? ` ${a.min ?? ''}..${a.max ?? ''}` : '';
      return h('label', {for: id}, h('span', {},
        `${a.name}${a.required ? ' *' : ''}`,
        h('small', {}, ` ${a.type}${range}`)), input);
    }));
  }

  async spawn() {
    const args = {};
    for (const input of this.spawnArgs.querySelectorAll('input')) {
      const t = input.dataset.type;
      if (t === 'bool') {
        if (input.checked) args[input.name] = true;
      } else if (input.value !== '') {
        args[input.name] = t === 'number' || t === 'int'
          ? Number(input.value) : input.value;
      }
    }
    const body = {kind: this.spawnKind.value, args};
    if (this.spawnName.value) body.name = this.spawnName.value;
    this.spawnOut.className = 'out';
    try {
      const t = await call('POST', '/tasks', null, body);
      fill(this.spawnOut, `spawned ${t.name} (${t.state})`);
      this.spawnOut.classList.add('ok');
      this.spawnName.value = '';
      this.refresh();
    } catch (e) {
      fill(this.spawnOut, e.message);
      this.spawnOut.classList.add('bad');
    }
  }

  async refresh() {
    const q = {state: this.state.value, kind: this.kind.value,
      instance: this.instance.value, limit: 200};
    // Listings overlap (the timer, a filter's change, a spawn): an answer
    // older than the one shown would bring back what a filter took out.
    const seq = ++this.asked;
    let o;
    try {
      o = await call('GET', '/tasks', q);
    } catch (e) {
      if (seq > this.applied) this.onError(e);
      return;
    }
    if (seq < this.applied) return;
    this.applied = seq;
    const listed = new Map((o.tasks || []).map((t) => [taskKey(t), t]));
    for (const k of this.cancelled.keys()) {
      const t = listed.get(k);
      if (t ? FINAL.has(t.state) : !q.state && !q.kind && !q.instance &&
          !o.cursor)
        this.cancelled.delete(k);
    }
    if (!q.state && !q.kind && !q.instance) {
      const n = {};
      for (const t of o.tasks || []) n[t.state] = (n[t.state] || 0) + 1;
      this.onTotals(n, !!o.cursor);
    }
    // Filtered here too: an older server ignores kind and instance.
    this.tasks = (o.tasks || []).filter((t) =>
      (!q.state || t.state === q.state) && (!q.kind || t.kind === q.kind) &&
      (!q.instance || t.instance === q.instance));
    const key = JSON.stringify([this.tasks, o.cursor, o.unreachable]);
    if (key !== this.shown) this.render(o);
    this.shown = key;
  }

  render(o) {
    const rows = this.tasks.map((t) => {
      const key = taskKey(t);
      const state = this.cancelled.get(key) && !FINAL.has(t.state)
        ? this.cancelled.get(key) : t.state;
      const busy = this.cancelling.has(key);
      const btn = FINAL.has(state) ? '' : h('button', {class: 'cancel',
        disabled: busy, onclick: (e) => this.cancel(t, e.currentTarget)},
      busy ? 'cancelling\u2026' : 'Cancel');
      // data-label: the column's name, shown beside each value when a
      // narrow screen lays the rows out as cards (style.css).
      const td = (label, attrs, ...c) =>
        h('td', {...attrs, dataset: {label}}, ...c);
      return h('tr', {dataset: {task: t.name, key, state}},
        td('name', {class: 'name', title: t.name}, brief(t.name, 40)),
        td('kind', {}, t.kind),
        td('instance', {class: 'mono', title: t.instance ?? ''},
          brief(t.instance ?? '', 12)),
        td('state', {class: 'state'},
          h('span', {class: `st st-${state}`}, state)),
        td('created', {}, shortTime(t.created)),
        td('started', {}, shortTime(t.started)),
        td('ended', {}, shortTime(t.ended)),
        td('result', {class: 'mono'}, FINAL.has(state) ? String(t.result) : ''),
        td('error', {class: 'err', title: t.error || ''},
          brief(t.error || '', 60)),
        td('', {class: 'act'}, btn));
    });
    fill(this.body, rows.length ? rows
      : h('tr', {}, h('td', {colspan: 10, class: 'muted'}, 'no tasks')));
    const more = o && o.cursor ? ' (first page)' : '';
    const lost = o && o.unreachable && o.unreachable.length
      ? `; unreachable: ${o.unreachable.join(', ')}` : '';
    fill(this.count, `${rows.length} shown${more}${lost}`);
  }

  // DELETE waits until the task's instance confirms it ended: the row
  // shows the state that answer names.
  async cancel(t, btn) {
    const key = taskKey(t);
    btn.disabled = true;
    fill(btn, 'cancelling\u2026');
    this.cancelling.add(key);
    try {
      const a = await call('DELETE', `/tasks/${encodeURIComponent(t.name)}`);
      const state = (a && (a.state || (a.task && a.task.state))) || 'cancelled';
      this.cancelled.set(key, state);
      this.cancelling.delete(key);
      this.shown = '';
      const row = [...this.body.rows].find((r) => r.dataset.key === key);
      if (row) {
        row.dataset.state = state;
        fill(row.querySelector('.state'),
          h('span', {class: `st st-${state}`}, state));
        btn.remove();
      }
    } catch (e) {
      this.cancelling.delete(key);
      this.shown = '';
      btn.disabled = false;
      fill(btn, 'Cancel');
      this.onError(e);
    }
  }
}

// A task's identity in the cluster: its instance and its id there (a name
// is reused once its task has finished).
function taskKey(t) {
  return `${t.instance ?? ''}/${t.id}`;
}
