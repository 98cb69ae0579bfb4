// taskbus-client - a taskbus client for browsers and Node: subscribe,
// dispatch, reconnect with backoff and jitter, resume from the last position
// (history on), over a websocket or, where websockets are blocked, SSE.
//
// One file, no dependencies, plain modern JavaScript: the taskbus binary's
// dashboard serves it unbundled as /ui/taskbus.js. The wire protocols are
// the server's (README.md, docs/HISTORY.md): GET /ws, GET /sse,
// POST /events/{name}.

const DEFAULTS = {
  minDelayMs: 250,
  maxDelayMs: 10000,
  jitter: 0.5,
  stableMs: 5000,
  fallbackAfter: 3,
  debounceMs: 50,
  idleTimeoutMs: 60000,
};

// Positions are "<epoch>-<seq>" (docs/HISTORY.md): opaque for the
// application, but the client compares seqs within an epoch to drop the
// events it already delivered at a resume's seam.
const POS_RE = /^([0-9a-f]{8,16})-(0|[1-9][0-9]{0,15})$/;

function parsePos(pos) {
  if (typeof pos !== "string") return null;
  const m = POS_RE.exec(pos);
  return m ? { epoch: m[1], seq: Number(m[2]) } : null;
}

/**
 * Whether an event name matches a taskbus pattern: dot-separated segments,
 * "*" or "<param>" for any one segment, a last ">" for one or more. The
 * server decides what reaches the client; this only routes events to the
 * subscriptions whose pattern they match.
 */
export function matchPattern(pattern, name) {
  const p = pattern.split(".");
  const n = name.split(".");
  for (let i = 0; i < p.length; i++) {
    const s = p[i];
    if (s === ">") return i === p.length - 1 && n.length > i;
    if (i >= n.length) return false;
    if (s === "*" || (s.length > 2 && s[0] === "<" && s.endsWith(">")))
      continue;
    if (s !== n[i]) return false;
  }
  return p.length === n.length;
}

function makeError(code, message, extra) {
  const e = new Error(message || code);
  e.code = code;
  if (extra) Object.assign(e, extra);
  return e;
}

// The JSON error body of a refused request, or a made-up one.
async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON (a proxy's page): the status says enough */
  }
  const code =
    body && typeof body.error === "string" ? body.error : `http_${res.status}`;
  const message =
    body && typeof body.message === "string"
      ? body.message
      : `HTTP ${res.status}`;
  const extra = { status: res.status };
  if (body && typeof body.pattern === "string") extra.pattern = body.pattern;
  return makeError(code, message, extra);
}

// What a refusal of a connection (websocket upgrade or SSE stream) means.
const FATAL = "fatal"; // the credential or the origin: retrying cannot help
const PATTERN = "pattern"; // a pattern was refused: drop it, go on
const SINCE = "since"; // the position was refused: go on from now
const BLOCKED = "blocked"; // answered, but not as taskbus would: websockets are blocked
const RETRY = "retry"; // the server is busy or down: back off

function classify(err) {
  const s = err.status;
  if (s === 401) return FATAL;
  if (s === 403) return err.pattern ? PATTERN : FATAL;
  if (s === 400) {
    if (err.code === "bad_since" || err.code === "history_off") return SINCE;
    if (err.code === "bad_pattern" || err.code === "too_many_patterns")
      return PATTERN;
    return RETRY;
  }
  if (s === 409 || s === 429 || s >= 500) return RETRY;
  return BLOCKED; // 404, 405, 426 (a plain GET reached /ws), a proxy's 200
}

// Reads a text/event-stream body, calling onBlock({id, event, data}) for
// each block ended by a blank line (comments skipped; id and data may be
// absent). Resolves when the stream ends; rejects when it fails.
async function readEventStream(body, onBlock, onChunk) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let block = { id: undefined, event: undefined, data: undefined };
  const line = (l) => {
    if (l === "") {
      if (block.id !== undefined || block.data !== undefined) onBlock(block);
      block = { id: undefined, event: undefined, data: undefined };
      return;
    }
    if (l[0] === ":") return;
    const c = l.indexOf(":");
    const field = c < 0 ? l : l.slice(0, c);
    let value = c < 0 ? "" : l.slice(c + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data")
      block.data = block.data === undefined ? value : block.data + "\n" + value;
    else if (field === "event") block.event = value;
    else if (field === "id") block.id = value;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk();
    buf += dec.decode(value, { stream: true });
    // A line ends at CRLF, LF or CR; a CR at the end may be a CRLF's half.
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const ch = buf[i];
      if (ch !== "\n" && ch !== "\r") continue;
      if (ch === "\r" && i + 1 === buf.length) break;
      line(buf.slice(start, i));
      if (ch === "\r" && buf[i + 1] === "\n") i++;
      start = i + 1;
    }
    buf = buf.slice(start);
  }
}

export class TaskbusClient {
  #opts;
  #base; // the http(s) base URL, without a trailing "/"
  #WebSocket;
  #fetch;
  #listeners = { event: new Set(), state: new Set(), recovered: new Set(), error: new Set(), reconnect: new Set() };
  #state = "idle";
  #transport = null;
  #mode; // what the next connection uses: "websocket" or "sse"
  #wsOpened = false; // a websocket opened once: auto stays on websockets
  #wsBlocked = 0; // websocket failures that look blocked, before any opened
  #lastPos = null;
  #last = null; // parsePos(#lastPos)
  #subs = new Set(); // Subscription objects
  #patterns = new Map(); // pattern -> number of active subscriptions
  #confirmed = new Set(); // patterns the server accepted
  #urlConfirmedOnly = false; // after a pattern refusal: the URL carries confirmed ones only
  #conn = null; // the current connection
  #timer = null; // reconnect or debounce timer
  #stableTimer = null;
  #attempt = 0;
  #waiters = []; // connect() promises: {resolve, reject}
  #pending = new Map(); // websocket ref -> {kind, resolve, reject, patterns}
  #nextRef = 1;
  #token = undefined; // the last token obtained

  constructor(opts = {}) {
    this.#opts = opts;
    const url =
      opts.url ?? (globalThis.location ? globalThis.location.origin : undefined);
    if (!url) throw new TypeError("TaskbusClient: url is required here");
    this.#base = String(url).replace(/\/+$/, "");
    this.#WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this.#fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    const t = opts.transport ?? "auto";
    if (!["auto", "websocket", "sse"].includes(t))
      throw new TypeError(`TaskbusClient: unknown transport ${t}`);
    this.#mode = t === "sse" ? "sse" : "websocket";
    const r = opts.reconnect ?? {};
    this.#opts = {
      ...opts,
      transport: t,
      resume: opts.resume ?? true,
      minDelayMs: r.minDelayMs ?? DEFAULTS.minDelayMs,
      maxDelayMs: r.maxDelayMs ?? DEFAULTS.maxDelayMs,
      jitter: r.jitter ?? DEFAULTS.jitter,
      stableMs: r.stableMs ?? DEFAULTS.stableMs,
      fallbackAfter: opts.fallbackAfter ?? DEFAULTS.fallbackAfter,
      debounceMs: opts.debounceMs ?? DEFAULTS.debounceMs,
      idleTimeoutMs: opts.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
    };
  }

  get state() {
    return this.#state;
  }

  get transport() {
    return this.#transport;
  }

  get lastPos() {
    return this.#lastPos;
  }

  /** Patterns the connection holds or will hold (each once). */
  get patterns() {
    return [...this.#patterns.keys()];
  }

  on(type, fn) {
    const set = this.#listeners[type];
    if (!set) throw new TypeError(`TaskbusClient.on: unknown type ${type}`);
    set.add(fn);
    return () => set.delete(fn);
  }

  connect() {
    if (this.#state === "closed")
      return Promise.reject(makeError("closed", "the client was closed"));
    if (this.#state === "open") return Promise.resolve();
    const p = new Promise((resolve, reject) =>
      this.#waiters.push({ resolve, reject }),
    );
    if (this.#state === "idle") {
      this.#setState("connecting");
      this.#open();
    }
    return p;
  }

  close() {
    if (this.#state === "closed") return;
    this.#setState("closed");
    this.#transport = null;
    clearTimeout(this.#timer);
    clearTimeout(this.#stableTimer);
    this.#drop(this.#conn);
    this.#conn = null;
    this.#failPending(makeError("closed", "the client was closed"));
    this.#settle(makeError("closed", "the client was closed"));
  }

  subscribe(pattern, handler) {
    if (typeof pattern !== "string" || pattern === "")
      throw new TypeError("subscribe: pattern must be a non-empty string");
    const client = this;
    let active = true;
    const sub = {
      get pattern() {
        return pattern;
      },
      unsubscribe() {
        if (!active) return;
        active = false;
        client.#subs.delete(sub);
        client.#release(pattern);
      },
    };
    sub._handler = handler;
    sub._cancel = () => {
      active = false;
      client.#subs.delete(sub);
    };
    this.#subs.add(sub);
    const n = this.#patterns.get(pattern) ?? 0;
    this.#patterns.set(pattern, n + 1);
    if (n === 0) this.#patternsChanged([pattern], []);
    return sub;
  }

  dispatch(name, data) {
    const c = this.#conn;
    if (c && c.kind === "websocket" && c.opened && !c.dead) {
      return new Promise((resolve, reject) => {
        const ref = `d${this.#nextRef++}`;
        this.#pending.set(ref, { kind: "dispatch", resolve, reject });
        const msg = { event: name, ref };
        if (data !== undefined) msg.data = data;
        try {
          c.ws.send(JSON.stringify(msg));
        } catch (e) {
          this.#pending.delete(ref);
          reject(makeError("disconnected", String(e?.message ?? e)));
        }
      });
    }
    return this.#post(name, data);
  }

  // ------------------------------------------------------------ internals

  #emit(type, arg) {
    for (const fn of [...this.#listeners[type]]) {
      try {
        fn(arg);
      } catch (e) {
        if (type !== "error") this.#emit("error", makeError("handler_error", String(e?.message ?? e), { cause: e }));
        else console.error(e);
      }
    }
  }

  #setState(s) {
    if (this.#state === s) return;
    this.#state = s;
    this.#emit("state", s);
  }

  #settle(err) {
    const w = this.#waiters;
    this.#waiters = [];
    for (const { resolve, reject } of w) err ? reject(err) : resolve();
  }

  #failPending(err) {
    const p = this.#pending;
    this.#pending = new Map();
    for (const { kind, reject } of p.values()) if (kind === "dispatch") reject(err);
  }

  async #getToken() {
    const t = this.#opts.token;
    this.#token = typeof t === "function" ? await t() : t;
    return this.#token;
  }

  #headers(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // The query of a connection: ?events=&since=&token=.
  #query(patterns, token, withToken) {
    const q = new URLSearchParams();
    if (patterns.length) q.set("events", patterns.join(","));
    if (this.#opts.resume && this.#lastPos) q.set("since", this.#lastPos);
    if (withToken && token) q.set("token", token);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // Starts a connection attempt with the transport of the moment.
  #open() {
    if (this.#state === "closed") return;
    const conn = { kind: this.#mode, opened: false, dead: false };
    this.#conn = conn;
    (conn.kind === "websocket" ? this.#openWs(conn) : this.#openSse(conn)).catch(
      (e) => this.#failed(conn, makeError("internal", String(e?.message ?? e))),
    );
  }

  #opened(conn) {
    conn.opened = true;
    this.#transport = conn.kind;
    if (conn.kind === "websocket") this.#wsOpened = true;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0;
    }, this.#opts.stableMs);
    this.#setState("open");
    this.#settle(null);
  }

  // Ends a connection (ours to end: no reconnect from its callbacks).
  #drop(conn) {
    if (!conn || conn.dead) return;
    conn.dead = true;
    clearTimeout(conn.idle);
    if (conn.ws) {
      try {
        conn.ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    if (conn.abort) conn.abort.abort();
  }

  // A connection failed or ended. err: what the server said, if it did.
  #failed(conn, err, kindOf) {
    if (conn !== this.#conn || conn.dead || this.#state === "closed") return;
    this.#drop(conn);
    clearTimeout(this.#stableTimer);
    if (conn.kind === "websocket")
      this.#failPending(makeError("disconnected", "the websocket closed before the server answered (the event may have been published)"));
    const what = err ? (kindOf ?? classify(err)) : RETRY;
    if (what === FATAL) {
      err.fatal = true;
      this.#settle(err);
      this.#emit("error", err);
      this.close();
      return;
    }
    if (err && what !== BLOCKED) this.#emit("error", err);
    let now = false;
    if (what === PATTERN) now = this.#refused(err);
    if (what === SINCE) {
      this.#lastPos = null;
      this.#last = null;
      now = true;
    }
    if (what === BLOCKED && conn.kind === "websocket" && !this.#wsOpened &&
        this.#opts.transport === "auto" &&
        ++this.#wsBlocked >= this.#opts.fallbackAfter) {
      this.#mode = "sse";
      now = true;
    }
    if (this.#state === "open") this.#setState("connecting");
    this.#transport = null;
    if (now) {
      this.#open();
      return;
    }
    this.#retry();
  }

  #retry() {
    const o = this.#opts;
    const base = Math.min(o.maxDelayMs, o.minDelayMs * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(base * (1 - o.jitter * Math.random()));
    this.#attempt++;
    this.#emit("reconnect", { attempt: this.#attempt, delayMs: delay });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  // A refused pattern (403 naming it, 400 bad_pattern/too_many_patterns):
  // the one named, else those not confirmed yet, are dropped with their
  // subscriptions. True to reconnect at once.
  #refused(err) {
    let gone = err.pattern ? [err.pattern] : [...this.#patterns.keys()].filter((p) => !this.#confirmed.has(p));
    if (!err.pattern && this.#mode === "websocket" && !this.#urlConfirmedOnly) {
      // The websocket can name the culprit: the URL carries the confirmed
      // patterns, the rest go as messages and are answered one by one.
      this.#urlConfirmedOnly = true;
      return true;
    }
    if (gone.length === 0) gone = [...this.#patterns.keys()];
    this.#forget(gone, err);
    return true;
  }

  // Drops patterns the server refused, and their subscriptions.
  #forget(patterns, err) {
    for (const p of patterns) {
      this.#patterns.delete(p);
      this.#confirmed.delete(p);
      for (const s of [...this.#subs]) if (s.pattern === p) s._cancel();
      if (patterns.length > 1 || !err.pattern)
        this.#emit("error", makeError(err.code, `${err.message} (pattern ${p} dropped)`, { pattern: p, status: err.status }));
    }
  }

  #release(pattern) {
    const n = this.#patterns.get(pattern) ?? 0;
    if (n > 1) {
      this.#patterns.set(pattern, n - 1);
      return;
    }
    this.#patterns.delete(pattern);
    this.#confirmed.delete(pattern);
    this.#patternsChanged([], [pattern]);
  }

  #patternsChanged(added, removed) {
    const c = this.#conn;
    if (!c || c.dead || !c.opened) return; // the next connection takes them
    if (c.kind === "websocket") {
      if (added.length) this.#wsSend(c, "subscribe", added);
      if (removed.length) this.#wsSend(c, "unsubscribe", removed);
      return;
    }
    // SSE: the stream's patterns are its URL's; a new stream after a
    // short quiet time, resuming where this one is.
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (this.#conn !== c || c.dead) return;
      this.#drop(c);
      this.#open();
    }, this.#opts.debounceMs);
  }

  #wsSend(c, what, patterns) {
    const ref = `s${this.#nextRef++}`;
    this.#pending.set(ref, { kind: what, patterns });
    try {
      c.ws.send(JSON.stringify({ [what]: patterns, ref }));
    } catch {
      this.#pending.delete(ref); // closing: the next connection takes them
    }
  }

  // Delivers one event envelope (once: a position at or before the last
  // one delivered is a duplicate of the seam).
  #deliver(ev) {
    if (!ev || typeof ev !== "object" || typeof ev.name !== "string") return;
    const p = parsePos(ev.pos);
    if (p) {
      if (this.#last && this.#last.epoch === p.epoch && p.seq <= this.#last.seq) return;
      this.#last = p;
      this.#lastPos = ev.pos;
    }
    this.#emit("event", ev);
    for (const s of [...this.#subs]) {
      if (s._handler && matchPattern(s.pattern, ev.name)) {
        try {
          s._handler(ev);
        } catch (e) {
          this.#emit("error", makeError("handler_error", String(e?.message ?? e), { cause: e }));
        }
      }
    }
  }

  // Moves the position to pos (the seam of a resume, the start of a fresh
  // SSE stream) unless it is behind what was delivered.
  #seam(pos, force) {
    const p = parsePos(pos);
    if (!p) return;
    if (!force && this.#last && this.#last.epoch === p.epoch && p.seq <= this.#last.seq) return;
    this.#last = p;
    this.#lastPos = pos;
  }

  #recovered(o) {
    const info = {
      recovered: o.recovered === true,
      pos: typeof o.pos === "string" ? o.pos : null,
      epoch: typeof o.epoch === "string" ? o.epoch : null,
    };
    if (info.pos) this.#seam(info.pos, !info.recovered);
    this.#emit("recovered", info);
  }

  // ------------------------------------------------------------ websocket

  async #openWs(conn) {
    const token = await this.#getToken();
    if (conn.dead || conn !== this.#conn) return;
    const WS = this.#WebSocket;
    if (!WS) {
      this.#failed(conn, makeError("no_websocket", "no WebSocket here"), this.#opts.transport === "auto" ? BLOCKED : FATAL);
      return;
    }
    const all = [...this.#patterns.keys()];
    const inUrl = this.#urlConfirmedOnly ? all.filter((p) => this.#confirmed.has(p)) : all;
    const q = this.#query(inUrl, token, true);
    const url = this.#base.replace(/^http/, "ws") + "/ws" + q;
    conn.urlPatterns = new Set(inUrl);
    conn.probe = this.#base + "/ws" + this.#query(inUrl, null, false);
    conn.token = token;
    const ws = new WS(url);
    conn.ws = ws;
    ws.onopen = () => {
      if (conn.dead || conn !== this.#conn) return;
      for (const p of inUrl) this.#confirmed.add(p);
      this.#urlConfirmedOnly = false;
      this.#opened(conn);
      // What changed while it connected: the server holds the URL's.
      const now = [...this.#patterns.keys()];
      const added = now.filter((p) => !conn.urlPatterns.has(p));
      const removed = inUrl.filter((p) => !this.#patterns.has(p));
      if (added.length) this.#wsSend(conn, "subscribe", added);
      if (removed.length) this.#wsSend(conn, "unsubscribe", removed);
    };
    ws.onmessage = (m) => {
      if (conn.dead) return;
      let o;
      try {
        o = JSON.parse(typeof m.data === "string" ? m.data : String(m.data));
      } catch {
        return; // the server sends JSON text only
      }
      this.#wsMessage(conn, o);
    };
    ws.onerror = () => {}; // a close follows
    ws.onclose = (e) => {
      if (conn.dead || conn !== this.#conn) return;
      if (!conn.opened) {
        this.#probe(conn);
        return;
      }
      if (e.code === 4401 || e.code === 4403) {
        this.#failed(conn, makeError("unauthorized", e.reason || `closed ${e.code}`, { status: e.code === 4401 ? 401 : 403 }), FATAL);
        return;
      }
      // 1008 (token expired, slow client, memory limit), 1013 (events
      // dropped: resume), 1001, 1006, 1011: reconnect; a credential no
      // longer good is then refused at the upgrade, which is fatal.
      this.#failed(conn, null);
    };
  }

  // The upgrade failed, and a browser does not tell why: ask with plain
  // GETs. GET /ws checks the credential (426 upgrade_required when it
  // passes); its patterns and since are checked as GET /sse checks them
  // (the same code on the server): that stream, if it opens, is cut at
  // once. Both fine: something between refuses websockets.
  async #probe(conn) {
    let err = null;
    try {
      err = await this.#ask(conn.probe, conn.token);
      if (err && err.status === 426 && conn.urlPatterns.size) {
        const q = this.#query([...conn.urlPatterns], null, false);
        const e2 = await this.#ask(this.#base + "/sse" + q, conn.token);
        if (e2 && classify(e2) !== BLOCKED) err = e2;
      }
    } catch {
      err = null; // unreachable: the server is down (or did not answer)
    }
    this.#failed(conn, err);
  }

  // GET url: null for a 2xx (its body left unread), else the refusal.
  async #ask(url, token) {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), 10000);
    try {
      const res = await this.#fetch(url, {
        headers: this.#headers(token),
        signal: ac.signal,
        cache: "no-store",
      });
      if (res.ok) return null;
      return await errorOf(res);
    } finally {
      clearTimeout(t);
      ac.abort();
    }
  }

  #wsMessage(conn, o) {
    if (!o || typeof o !== "object") return;
    const ref = typeof o.ref === "string" ? o.ref : null;
    const p = ref ? this.#pending.get(ref) : undefined;
    if (typeof o.ok === "string") {
      if (!p) return;
      this.#pending.delete(ref);
      if (p.kind === "dispatch") p.resolve(o.id);
      else if (p.kind === "subscribe")
        for (const x of p.patterns) if (this.#patterns.has(x)) this.#confirmed.add(x);
      return;
    }
    if (typeof o.error === "string") {
      const err = makeError(o.error, o.message, typeof o.pattern === "string" ? { pattern: o.pattern } : undefined);
      if (p) {
        this.#pending.delete(ref);
        if (p.kind === "dispatch") {
          p.reject(err);
          return;
        }
        if (p.kind === "subscribe") {
          const gone = err.pattern ? [err.pattern] : p.patterns;
          this.#emit("error", err);
          this.#forget(gone.filter((x) => this.#patterns.has(x)), err);
          return;
        }
      }
      this.#emit("error", err);
      return;
    }
    if ("recovered" in o && !("name" in o)) {
      this.#recovered(o);
      return;
    }
    this.#deliver(o);
  }

  // ------------------------------------------------------------ SSE

  async #openSse(conn) {
    const patterns = [...this.#patterns.keys()];
    if (patterns.length === 0) {
      // A stream of nothing is refused (missing_events): nothing to
      // receive until a subscription comes; dispatch goes over HTTP.
      this.#opened(conn);
      return;
    }
    const token = await this.#getToken();
    if (conn.dead || conn !== this.#conn) return;
    const ac = new AbortController();
    conn.abort = ac;
    conn.patterns = patterns;
    let res;
    try {
      res = await this.#fetch(this.#base + "/sse" + this.#query(patterns, null, false), {
        headers: { ...this.#headers(token), Accept: "text/event-stream" },
        signal: ac.signal,
        cache: "no-store",
      });
    } catch {
      this.#failed(conn, null);
      return;
    }
    if (conn.dead) return;
    if (!res.ok || !res.body) {
      this.#failed(conn, await errorOf(res), res.ok ? RETRY : undefined);
      return;
    }
    for (const p of patterns) this.#confirmed.add(p);
    this.#opened(conn);
    const idle = () => {
      clearTimeout(conn.idle);
      if (this.#opts.idleTimeoutMs > 0)
        conn.idle = setTimeout(() => this.#failed(conn, null), this.#opts.idleTimeoutMs);
    };
    idle();
    try {
      await readEventStream(res.body, (b) => this.#sseBlock(conn, b), idle);
    } catch {
      /* aborted or cut: reconnect below */
    }
    this.#failed(conn, null);
  }

  #sseBlock(conn, b) {
    if (conn.dead) return;
    if (b.data === undefined) {
      if (b.id) this.#seam(b.id, false); // ": ready" with the stream's start
      return;
    }
    let o;
    try {
      o = JSON.parse(b.data);
    } catch {
      return;
    }
    if (b.event === "taskbus:recovered") this.#recovered(o);
    else this.#deliver(o);
  }

  // ------------------------------------------------------------ HTTP

  async #post(name, data) {
    const f = this.#fetch;
    if (!f) throw makeError("no_fetch", "no fetch here");
    const token = typeof this.#opts.token === "function" && this.#token !== undefined ? this.#token : await this.#getToken();
    const headers = this.#headers(token);
    let body;
    if (typeof data === "string") {
      body = data;
      headers["Content-Type"] = "text/plain; charset=utf-8";
    } else if (data !== undefined && data !== null) {
      body = JSON.stringify(data);
      headers["Content-Type"] = "application/json";
    }
    let res;
    try {
      res = await f(`${this.#base}/events/${encodeURIComponent(name)}`, { method: "POST", headers, body });
    } catch (e) {
      throw makeError("network", String(e?.message ?? e));
    }
    if (res.status !== 202 && res.status !== 200) throw await errorOf(res);
    const o = await res.json();
    return o.id;
  }
}

export default TaskbusClient;
