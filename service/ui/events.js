// events.js - the live event stream through the JavaScript client
// (taskbus.js, clients/js/): a pattern filter, pause, and the envelope of
// the event clicked.
import {TaskbusClient} from './taskbus.js';
import {token} from './api.js';
import {$, brief, fill, h} from './dom.js';

const KEEP = 200; // events listed at most, newest first
// Events arrive as fast as the bus sends them (thousands a second): they
// are buffered and drawn at most this often, the newest KEEP of them, so
// a flood costs a few list updates a second and the page stays usable.
const DRAW_MS = 250;

export class Events {
  constructor(root, onState) {
    this.root = root;
    this.onState = onState;
    this.paused = false;
    this.missed = 0; // arrived while paused
    this.lastMissed = ''; // the name of the latest of those
    this.received = 0;
    this.skipped = 0; // arrived too fast to be drawn (beyond KEEP a draw)
    this.buffer = []; // arrived, not drawn yet, oldest first
    this.timer = null; // the next draw
    this.sub = null;
    this.client = null;
    this.build();
  }

  build() {
    this.pattern = h('input', {id: 'ev-pattern', value: '>', autocomplete: 'off',
      spellcheck: 'false', 'aria-label': 'pattern'});
    this.pause = h('button', {type: 'button', id: 'ev-pause',
      onclick: () => this.togglePause()}, 'Pause');
    this.note = h('span', {class: 'muted', id: 'ev-note'});
    const form = h('form', {class: 'row', onsubmit: (e) => {
      e.preventDefault();
      this.subscribe();
    }}, this.pattern, h('button', {type: 'submit'}, 'Filter'), this.pause,
    this.note);
    this.list = h('ol', {id: 'ev-list', class: 'events'});
    this.detail = h('pre', {id: 'ev-detail', class: 'envelope'},
      'click an event to see its envelope');
    fill($('#events-body', this.root), form,
      h('div', {class: 'split'}, this.list, this.detail));
  }

  start() {
    if (this.client) this.client.close();
    // Reconnects with backoff and resumes from the last position by itself.
    this.client = new TaskbusClient({url: location.origin, token: token()});
    this.client.on('state', (s) => this.onState(s));
    this.client.on('error', (e) => this.onState(this.client.state, e));
    this.client.on('recovered', (r) => {
      if (!r.recovered) this.add({name: '(events missed: history gone)',
        id: '', data: r, ts: Date.now() * 1000, gap: true});
    });
    this.client.connect();
    this.subscribe();
  }

  subscribe() {
    if (this.sub) this.sub.unsubscribe();
    const p = this.pattern.value.trim() || '>';
    this.sub = this.client.subscribe(p, (ev) => this.add(ev));
    this.noteText();
  }

  togglePause() {
    this.draw(); // what came before the click is shown
    this.paused = !this.paused;
    fill(this.pause, this.paused ? 'Resume' : 'Pause');
    this.pause.setAttribute('aria-pressed', String(this.paused));
    if (!this.paused) {
      this.missed = 0;
      this.lastMissed = '';
    }
    this.noteText();
  }

  noteText() {
    const skipped = this.skipped ? `, ${this.skipped} not shown (too fast)`
      : '';
    fill(this.note, this.paused
      ? `paused: ${this.missed} not shown` +
        (this.lastMissed ? ` (last: ${brief(this.lastMissed, 60)})` : '')
      : `${this.received} received${skipped}`);
  }

  add(ev) {
    this.received++;
    if (this.paused) {
      this.missed++;
      this.lastMissed = String(ev.name);
    } else {
      this.buffer.push(ev);
      if (this.buffer.length > KEEP) {
        this.buffer.shift();
        this.skipped++;
      }
    }
    if (!this.timer) this.timer = setTimeout(() => this.draw(), DRAW_MS);
  }

  // Lists the buffered events (newest first) in one change of the page.
  draw() {
    clearTimeout(this.timer);
    this.timer = null;
    const evs = this.buffer;
    this.buffer = [];
    if (evs.length) {
      const items = document.createDocumentFragment();
      for (let i = evs.length - 1; i >= 0; i--) items.append(this.item(evs[i]));
      this.list.prepend(items);
      while (this.list.children.length > KEEP) this.list.lastChild.remove();
    }
    this.noteText();
  }

  item(ev) {
    const when = ev.ts ? new Date(ev.ts / 1000).toLocaleTimeString([],
      {hour12: false}) : '';
    const li = h('li', {tabindex: 0, dataset: {event: String(ev.name)},
      onclick: () => this.show(ev, li),
      onkeydown: (e) => { if (e.key === 'Enter') this.show(ev, li); }},
    h('span', {class: 'ts'}, when), h('span', {class: 'ev-name'}, ev.name),
    h('span', {class: 'ev-data'}, brief(ev.data, 120)));
    return li;
  }

  show(ev, li) {
    for (const el of this.list.querySelectorAll('.sel'))
      el.classList.remove('sel');
    li.classList.add('sel');
    fill(this.detail, JSON.stringify(ev, null, 2));
  }
}
