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
  pingIntervalMs: 30000,
  pingTimeoutMs: 10000,
  dispatchTimeoutMs: 10000,
  networkFatalAfter: 10,
};

// A probe of a failed websocket upgrade gives up after this long.
const PROBE_TIMEOUT_MS = 10000;

// SSE: after a subscription change switched to the new stream, the old
// one stays this long, its events deduplicated by id, so that what it
// had on its way is not lost (with history off nothing replays it).
const OVERLAP_MS = 1000;

// Event ids remembered to drop the second copy of an event at a seam.
const RECENT_IDS = 4096;

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
    const wild = s === "*" || (s.length > 2 && s[0] === "<" && s.endsWith(">"));
    if (!wild && s !== n[i]) return false;
  }
  return p.length === n.length;
}

function makeError(code, message, extra) {
  const e = new Error(message || code);
  e.code = code;
  if (extra) Object.assign(e, extra);
  return e;
}

const errorText = (e) => String(e?.message ?? e);

// The refusal a response carries: its JSON {error, message, pattern?}, or
// one made of its status (a proxy's page).
async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: the status says enough */
  }
  const ok = body && typeof body === "object";
  const code = ok && typeof body.error === "string" ? body.error : null;
  const message = ok && typeof body.message === "string" ? body.message : "";
  const extra = { status: res.status };
  if (ok && typeof body.pattern === "string") extra.pattern = body.pattern;
  return makeError(code ?? `http_${res.status}`,
    message || `HTTP ${res.status}`, extra);
}

// What a refusal of a connection (websocket upgrade, SSE stream) means.
const FATAL = "fatal"; // the credential or the origin: retrying cannot help
const PATTERN = "pattern"; // a pattern was refused: drop it, go on
const SINCE = "since"; // the position was refused: go on from now
const BLOCKED = "blocked"; // answered, not as taskbus: websockets blocked
const RETRY = "retry"; // down, busy, or cut: back off
const NETWORK = "network"; // no answer at all: back off, fatal after n

function classify(err) {
  const s = err.status;
  if (s === undefined) return RETRY;
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
// each block a blank line ends (id and data may be undefined),
// onComment(text) for each comment line and onChunk() for each chunk read.
// Resolves when the stream ends; rejects when it fails (or is aborted).
async function readEventStream(body, { onBlock, onComment, onChunk }) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let block = {};
  const line = (l) => {
    if (l === "") {
      if (block.id !== undefined || block.data !== undefined) onBlock(block);
      block = {};
      return;
    }
    if (l[0] === ":") {
      onComment(l.slice(1).trim());
      return;
    }
    const c = l.indexOf(":");
    const field = c < 0 ? l : l.slice(0, c);
    let value = c < 0 ? "" : l.slice(c + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data")
      block.data = block.data === undefined ? value : `${block.data}\n${value}`;
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

// A subscription's handler and its client-side end (the server refused its
// pattern), out of the public surface.
const HANDLER = Symbol("handler");
const CANCEL = Symbol("cancel");

export class TaskbusClient {
  #opts;
  #base; // the http(s) base URL, without a trailing "/"
  #WebSocket;
  #fetch;
  #listeners = {
    event: new Set(),
    state: new Set(),
    recovered: new Set(),
    error: new Set(),
    reconnect: new Set(),
  };
  #state = "idle";
  #transport = null;
  #mode; // what the next connection uses: "websocket" or "sse"
  #wsOpened = false; // a websocket opened once: auto stays on websockets
  #wsBlocked = 0; // websocket failures in a row that look blocked
  #noAnswer = 0; // failures in a row with no answer, before any opened
  #everOpened = false; // a connection opened once (a later one reconnects)
  #lastPos = null;
  #last = null; // parsePos(#lastPos)
  #subs = new Set(); // the Subscription objects
  #patterns = new Map(); // pattern -> number of subscriptions to it
  #confirmed = new Set(); // patterns the server accepted
  #conn = null; // the current connection
  #next = null; // SSE: the stream that replaces #conn, until its ready
  #retiring = new Set(); // SSE: replaced streams, kept OVERLAP_MS
  #changedAt = undefined; // SSE: lastPos at the first change not applied
  #recent = new Set(); // the ids of the last RECENT_IDS events delivered
  #timer = null; // the reconnect or the SSE restart
  #abort = new AbortController(); // aborted by close(): probes, POSTs
  #stableTimer = null;
  #attempt = 0;
  #waiters = []; // connect() promises: {resolve, reject}
  #pending = new Map(); // websocket ref -> {kind, resolve, reject, pattern, conn}
  #nextRef = 1;
  #token = undefined; // the last token obtained

  constructor(opts = {}) {
    const url = opts.url ?? globalThis.location?.origin;
    if (!url) throw new TypeError("TaskbusClient: no url (and no location)");
    this.#base = String(url).replace(/\/+$/, "");
    // WebSocket: null says there is none (auto then goes to SSE at once).
    this.#WebSocket = "WebSocket" in opts ? opts.WebSocket
      : globalThis.WebSocket;
    this.#fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    const transport = opts.transport ?? "auto";
    if (!["auto", "websocket", "sse"].includes(transport))
      throw new TypeError(`TaskbusClient: unknown transport ${transport}`);
    this.#mode = transport === "sse" ? "sse" : "websocket";
    const r = opts.reconnect ?? {};
    this.#opts = {
      token: opts.token,
      transport,
      resume: opts.resume ?? true,
      minDelayMs: r.minDelayMs ?? DEFAULTS.minDelayMs,
      maxDelayMs: r.maxDelayMs ?? DEFAULTS.maxDelayMs,
      jitter: r.jitter ?? DEFAULTS.jitter,
      stableMs: r.stableMs ?? DEFAULTS.stableMs,
      fallbackAfter: opts.fallbackAfter ?? DEFAULTS.fallbackAfter,
      debounceMs: opts.debounceMs ?? DEFAULTS.debounceMs,
      idleTimeoutMs: opts.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
      pingIntervalMs: opts.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
      pingTimeoutMs: opts.pingTimeoutMs ?? DEFAULTS.pingTimeoutMs,
      dispatchTimeoutMs: opts.dispatchTimeoutMs ?? DEFAULTS.dispatchTimeoutMs,
      networkFatalAfter: opts.networkFatalAfter ?? DEFAULTS.networkFatalAfter,
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

  /** The patterns the connection holds or will hold, each once. */
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
      this.#waiters.push({ resolve, reject }));
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
    this.#abort.abort();
    this.#drop(this.#conn);
    this.#drop(this.#next);
    for (const r of this.#retiring) this.#drop(r);
    this.#retiring.clear();
    this.#conn = null;
    this.#next = null;
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
      [HANDLER]: typeof handler === "function" ? handler : null,
      [CANCEL]() {
        active = false;
        client.#subs.delete(sub);
      },
    };
    this.#subs.add(sub);
    const n = this.#patterns.get(pattern) ?? 0;
    this.#patterns.set(pattern, n + 1);
    if (n === 0) this.#patternsChanged(pattern, true);
    return sub;
  }

  dispatch(name, data) {
    if (this.#state === "closed")
      return Promise.reject(makeError("closed", "the client was closed"));
    const c = this.#conn;
    if (!c || c.kind !== "websocket" || !c.wsOpen || c.dead)
      return this.#post(name, data);
    return new Promise((resolve, reject) => {
      const ref = `d${this.#nextRef++}`;
      const ms = this.#opts.dispatchTimeoutMs;
      const timer = ms > 0 ? setTimeout(() => {
        if (!this.#pending.delete(ref)) return;
        reject(makeError("timeout", `no answer to the dispatch of ${name} `
          + `in ${ms} ms (the event may have been published)`));
      }, ms) : null;
      const done = (f) => (v) => {
        clearTimeout(timer);
        f(v);
      };
      this.#pending.set(ref, { kind: "dispatch", resolve: done(resolve),
        reject: done(reject) });
      const msg = { event: name, ref };
      if (data !== undefined) msg.data = data;
      try {
        c.ws.send(JSON.stringify(msg));
      } catch (e) {
        this.#pending.delete(ref);
        clearTimeout(timer);
        reject(makeError("disconnected", errorText(e)));
      }
    });
  }

  // ------------------------------------------------------------ internals

  #emit(type, arg) {
    for (const fn of [...this.#listeners[type]]) {
      try {
        fn(arg);
      } catch (e) {
        this.#handlerError(e, type === "error");
      }
    }
  }

  // An application's handler threw: its error is reported, not ours to
  // rethrow (it would end the connection's read loop).
  #handlerError(e, inErrorHandler) {
    if (inErrorHandler) console.error(e);
    else
      this.#emit("error",
        makeError("handler_error", errorText(e), { cause: e }));
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
    for (const x of p.values()) if (x.kind === "dispatch") x.reject(err);
  }

  async #getToken() {
    const t = this.#opts.token;
    this.#token = typeof t === "function" ? await t() : t;
    return this.#token;
  }

  #headers(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // ?events=&since=, and &token= for a websocket (a browser cannot set its
  // headers).
  #query(patterns, since, token = null) {
    const q = new URLSearchParams();
    if (patterns.length) q.set("events", patterns.join(","));
    if (since) q.set("since", since);
    if (token) q.set("token", token);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // Whether conn is still ours: the connection, or the SSE stream that
  // is to replace it.
  #current(conn) {
    return !conn.dead && (conn === this.#conn || conn === this.#next);
  }

  // Whether the patterns conn was opened with are the ones wanted now.
  #samePatterns(conn) {
    const p = conn.patterns ?? [];
    return p.length === this.#patterns.size
      && p.every((x) => this.#patterns.has(x));
  }

  // Starts a connection with the transport of the moment. replacing: the
  // open SSE stream it replaces at its ready (a subscription change, not
  // a drop), since: where it resumes (default: lastPos, with resume).
  #open(replacing = null, since = undefined) {
    if (this.#state === "closed") return;
    const conn = { kind: this.#mode, opened: false, dead: false, replacing,
      since: since !== undefined ? since
        : this.#opts.resume ? this.#lastPos : null };
    // A resumed replacement replays what its new patterns had since: its
    // events may be behind those the old stream delivered meanwhile.
    conn.replaying = Boolean(replacing && conn.since);
    if (replacing) this.#next = conn;
    else this.#conn = conn;
    const run = conn.kind === "websocket" ? this.#openWs(conn)
      : this.#openSse(conn);
    run.catch((e) => this.#failed(conn, makeError("client_error",
      `cannot connect: ${errorText(e)}`)));
  }

  // The connection is ready: its patterns are in place on the server.
  #opened(conn) {
    conn.opened = true;
    if (conn.replacing) {
      this.#switchTo(conn);
      return;
    }
    const reconnect = this.#everOpened;
    this.#everOpened = true;
    this.#noAnswer = 0;
    this.#wsBlocked = 0;
    this.#transport = conn.kind;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0;
    }, this.#opts.stableMs);
    this.#setState("open");
    this.#settle(null);
    // Back after a drop with no position to resume from (history off, or
    // none given yet): what came meanwhile is missed, and the application
    // is told so as after a resume that could not recover.
    if (reconnect && !conn.since)
      this.#emit("recovered", { recovered: false, pos: null, epoch: null });
    if (conn.kind === "websocket") this.#startPing(conn);
    else if (!this.#samePatterns(conn)) this.#restartSoon();
  }

  // SSE: the new stream is ready; the old one stays OVERLAP_MS for what it
  // had on its way (deduplicated by id), then goes.
  #switchTo(conn) {
    const old = conn.replacing;
    conn.replacing = null;
    this.#next = null;
    this.#conn = conn;
    this.#transport = conn.kind;
    if (old && !old.dead) {
      this.#retiring.add(old);
      old.retire = setTimeout(() => {
        this.#retiring.delete(old);
        this.#drop(old);
      }, OVERLAP_MS);
    }
    if (!this.#samePatterns(conn)) this.#restartSoon();
  }

  // Ends a connection (ours to end: its callbacks do nothing after this).
  #drop(conn) {
    if (!conn || conn.dead) return;
    conn.dead = true;
    clearTimeout(conn.idle);
    clearTimeout(conn.retire);
    clearInterval(conn.ping);
    clearTimeout(conn.pingDeadline);
    if (conn.ws) {
      try {
        conn.ws.close(1000);
      } catch {
        /* closing already */
      }
    }
    conn.abort?.abort();
  }

  // The position goes back to since (a replacement's, that did not get to
  // replay what its new patterns had): the reconnect replays it, and what
  // was delivered already is known by its id.
  #rewind(since) {
    this.#lastPos = since ?? null;
    this.#last = parsePos(this.#lastPos);
  }

  // A connection failed or ended. err: the server's refusal, if it said
  // one; what: how to take it (default: classify(err)).
  #failed(conn, err, what) {
    if (conn.dead || this.#state === "closed") return;
    const from = conn; // whose patterns a refusal is about
    if (this.#retiring.has(conn)) {
      this.#retiring.delete(conn);
      this.#drop(conn);
      return;
    }
    if (conn === this.#next) {
      // The replacement failed: the stream it was to replace goes too,
      // and the reconnect takes the failure as its own.
      this.#next = null;
      this.#drop(conn);
      this.#rewind(conn.since);
      conn = this.#conn;
      if (!conn || conn.dead) return;
    } else if (conn !== this.#conn) {
      return;
    } else if (this.#next) {
      this.#rewind(this.#next.since);
      this.#drop(this.#next);
      this.#next = null;
    } else if (this.#changedAt !== undefined) {
      this.#rewind(this.#changedAt); // patterns added since: replay them
    }
    this.#changedAt = undefined;
    this.#drop(conn);
    clearTimeout(this.#stableTimer);
    if (conn.kind === "websocket")
      this.#failPending(makeError("disconnected", "the websocket closed "
        + "before the server answered (the event may have been published)"));
    what ??= err ? classify(err) : RETRY;
    if (what === NETWORK) {
      // No answer at all, before any connection opened: the server is
      // down, or the page is not on taskbus's origin (it sends no CORS
      // headers, so a browser hides every answer): said after n tries.
      const n = this.#opts.networkFatalAfter;
      if (!this.#everOpened && n > 0 && ++this.#noAnswer >= n) {
        err = makeError("network", `no answer from ${this.#base} after ${n}`
          + " tries: the server is down, or this page is on another origin "
          + "(taskbus sends no CORS headers: serve the page from taskbus's "
          + "origin, or behind the same reverse proxy)");
        what = FATAL;
      } else {
        what = RETRY;
      }
    } else {
      this.#noAnswer = 0;
    }
    if (what === FATAL) {
      err.fatal = true;
      this.#settle(err);
      this.#emit("error", err);
      this.close();
      return;
    }
    if (err && what !== BLOCKED) this.#emit("error", err);
    if (this.#state === "open") this.#setState("connecting");
    this.#transport = null;
    if (what === PATTERN) {
      // At once when a pattern was dropped (then this ends: each round
      // drops one at least), else after the backoff.
      this.#refused(from, err).then(
        (dropped) => (dropped ? this.#open() : this.#retry()),
        () => this.#retry());
      return;
    }
    if (what === SINCE) {
      this.#lastPos = null;
      this.#last = null;
      this.#open();
      return;
    }
    if (what !== BLOCKED || conn.kind !== "websocket") this.#wsBlocked = 0;
    else if (!this.#wsOpened && this.#opts.transport === "auto"
        && ++this.#wsBlocked >= this.#opts.fallbackAfter) {
      this.#mode = "sse"; // for good
      this.#open();
      return;
    }
    this.#retry();
  }

  #retry() {
    if (this.#state === "closed") return;
    const o = this.#opts;
    const n = Math.min(this.#attempt, 30);
    const cap = Math.min(o.maxDelayMs, o.minDelayMs * 2 ** n);
    const delayMs = Math.round(cap * (1 - o.jitter * Math.random()));
    this.#attempt++;
    this.#emit("reconnect", { attempt: this.#attempt, delayMs });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open(), delayMs);
  }

  // The server refused a pattern of conn's. A 403 names it. A 400
  // too_many_patterns does not: the patterns beyond the limit, the most
  // recently added, go (the limit found by asking with the first k). A 400
  // bad_pattern does not either: each pattern not confirmed yet is asked
  // about alone, and those refused are dropped. Whether any was dropped.
  async #refused(conn, err) {
    if (err.pattern) return this.#forget([err.pattern], err, false);
    const all = conn.patterns;
    if (err.code === "too_many_patterns") {
      const fits = async (k) => {
        const e = await this.#ask(this.#sseUrl(all.slice(0, k), null),
          conn.token).catch(() => null);
        return e?.code !== "too_many_patterns";
      };
      let lo = 0; // fits
      let hi = all.length; // does not
      while (hi - lo > 1 && this.#state !== "closed") {
        const mid = (lo + hi) >> 1;
        if (await fits(mid)) lo = mid;
        else hi = mid;
      }
      return this.#forget(all.slice(Math.max(lo, 1)), err, true);
    }
    const asked = all.filter((p) => !this.#confirmed.has(p));
    const bad = [];
    for (const p of asked) {
      if (this.#state === "closed") return false;
      let e = null;
      try {
        e = await this.#ask(this.#sseUrl([p], null), conn.token);
      } catch {
        /* no answer: decided below */
      }
      if (e && classify(e) === PATTERN) bad.push(p);
    }
    // None refused alone (they were refused together): the ones nobody
    // singled out stay; the backoff retries.
    return this.#forget(bad, err, true);
  }

  // Drops patterns the server refused, and their subscriptions; tell:
  // an error for each (a refusal that named one was told already).
  // Whether any was still there.
  #forget(patterns, err, tell) {
    let dropped = false;
    for (const p of patterns) {
      if (!this.#patterns.has(p)) continue;
      dropped = true;
      this.#patterns.delete(p);
      this.#confirmed.delete(p);
      for (const s of [...this.#subs]) if (s.pattern === p) s[CANCEL]();
      if (tell)
        this.#emit("error", makeError(err.code,
          `pattern ${p} refused and dropped: ${err.message}`,
          { pattern: p, status: err.status }));
    }
    return dropped;
  }

  #release(pattern) {
    const n = this.#patterns.get(pattern) ?? 0;
    if (n > 1) {
      this.#patterns.set(pattern, n - 1);
      return;
    }
    this.#patterns.delete(pattern);
    this.#confirmed.delete(pattern);
    this.#patternsChanged(pattern, false);
  }

  #patternsChanged(pattern, added) {
    const c = this.#conn;
    if (!c || c.dead) return;
    if (c.kind === "websocket") {
      if (!c.wsOpen) return; // its URL, or the next connection's, has it
      this.#wsSend(c, added ? "subscribe" : "unsubscribe", pattern);
      return;
    }
    // SSE: the new stream resumes from where the change was made, so
    // that a new pattern gets what came after it. A stream not ready yet
    // compares its patterns at its ready.
    if (this.#changedAt === undefined)
      this.#changedAt = this.#opts.resume ? this.#lastPos : null;
    if (c.opened) this.#restartSoon();
  }

  // SSE: a stream's patterns are its URL's. After a short quiet time a new
  // stream opens beside the old one, resuming where the one it replaces
  // stood, and takes over at its ready (the state stays open).
  #restartSoon() {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const c = this.#conn;
      if (!c || c.dead || !c.opened || this.#state === "closed") return;
      const prev = this.#next;
      if (!prev && this.#samePatterns(c)) {
        this.#changedAt = undefined; // changed back
        return;
      }
      // A replacement superseded before its ready: the new one resumes
      // where that one did, so the patterns it added lose nothing.
      const since = prev ? prev.since
        : this.#changedAt !== undefined ? this.#changedAt
          : this.#opts.resume ? this.#lastPos : null;
      this.#changedAt = undefined;
      if (prev) {
        this.#next = null;
        this.#drop(prev);
      }
      this.#open(c, since);
    }, this.#opts.debounceMs);
  }

  // Delivers an event envelope, once: an id delivered lately, or a
  // position at or before the last one delivered (in its epoch), is a
  // duplicate from a seam. A replacement stream's replay is behind what
  // the old stream delivered: its ids decide.
  #deliver(ev, conn) {
    if (!ev || typeof ev !== "object" || typeof ev.name !== "string") return;
    const id = typeof ev.id === "string" ? ev.id : null;
    if (id && this.#recent.has(id)) return;
    const p = parsePos(ev.pos);
    if (p) {
      const l = this.#last;
      const behind = l && l.epoch === p.epoch && p.seq <= l.seq;
      if (behind && !conn?.replaying) return;
      if (!behind) {
        this.#last = p;
        this.#lastPos = ev.pos;
      }
    }
    if (id) {
      this.#recent.add(id);
      if (this.#recent.size > RECENT_IDS)
        this.#recent.delete(this.#recent.values().next().value);
    }
    // Unsubscribed meanwhile (a stream being replaced still has it, a
    // websocket had it on its way): not the application's any more.
    let wanted = false;
    for (const pat of this.#patterns.keys())
      if (matchPattern(pat, ev.name)) wanted = true;
    if (!wanted) return;
    this.#emit("event", ev);
    for (const s of [...this.#subs]) {
      if (!s[HANDLER] || !matchPattern(s.pattern, ev.name)) continue;
      try {
        s[HANDLER](ev);
      } catch (e) {
        this.#handlerError(e, false);
      }
    }
  }

  // Moves the position to pos (a resume's seam, a fresh stream's start)
  // unless it is behind what was delivered, or force (recovered false:
  // the position the server goes on from, whatever came before).
  #seam(pos, force) {
    const p = parsePos(pos);
    if (!p) return;
    const l = this.#last;
    if (!force && l && l.epoch === p.epoch && p.seq <= l.seq) return;
    this.#last = p;
    this.#lastPos = pos;
  }

  #recovered(o, conn) {
    const info = {
      recovered: o.recovered === true,
      pos: typeof o.pos === "string" ? o.pos : null,
      epoch: typeof o.epoch === "string" ? o.epoch : null,
    };
    const restart = conn.replaying;
    conn.replaying = false;
    if (info.pos) this.#seam(info.pos, !info.recovered);
    // A subscription change's new stream is no drop: nothing to tell,
    // unless the history could not give what it asked for.
    if (!restart || !info.recovered) this.#emit("recovered", info);
  }

  // GET url: null for a 2xx (its body left unread, the request cut), else
  // the refusal. Throws when there is no answer (or close() came).
  async #ask(url, token) {
    const ac = new AbortController();
    const stop = () => ac.abort();
    const closing = this.#abort.signal;
    if (closing.aborted) throw makeError("closed", "the client was closed");
    closing.addEventListener("abort", stop, { once: true });
    const t = setTimeout(stop, PROBE_TIMEOUT_MS);
    try {
      const res = await this.#fetch(url, {
        headers: this.#headers(token),
        signal: ac.signal,
        cache: "no-store",
      });
      return res.ok ? null : await errorOf(res);
    } finally {
      clearTimeout(t);
      closing.removeEventListener("abort", stop);
      ac.abort();
    }
  }

  #sseUrl(patterns, since) {
    return `${this.#base}/sse${this.#query(patterns, since)}`;
  }

  // ------------------------------------------------------------ websocket

  async #openWs(conn) {
    const token = await this.#getToken();
    if (!this.#current(conn)) return;
    const WS = this.#WebSocket;
    if (!WS && this.#opts.transport === "auto") {
      this.#mode = "sse"; // nothing to try (Node 20 without the option)
      this.#open();
      return;
    }
    if (!WS) {
      this.#failed(conn, makeError("no_websocket", "no WebSocket here: pass "
        + "one as the WebSocket option"), FATAL);
      return;
    }
    const patterns = [...this.#patterns.keys()];
    conn.patterns = patterns;
    conn.token = token;
    const ws = new WS(`${this.#base.replace(/^http/, "ws")}/ws${
      this.#query(patterns, conn.since, token)}`);
    conn.ws = ws;
    ws.onopen = () => {
      if (!this.#current(conn)) return;
      conn.wsOpen = true;
      this.#wsOpened = true;
      for (const p of patterns) this.#confirmed.add(p);
      // The server holds the URL's patterns: what changed meanwhile.
      for (const p of this.#patterns.keys())
        if (!patterns.includes(p)) this.#wsSend(conn, "subscribe", p);
      for (const p of patterns)
        if (!this.#patterns.has(p)) this.#wsSend(conn, "unsubscribe", p);
      // The server reads messages once it has added the URL's patterns:
      // the answer to an empty subscribe says they are in place (the 101
      // comes before), so that what is dispatched from now on arrives.
      // With history on it carries the position to resume from.
      this.#wsSend(conn, "subscribe", null, "ready");
    };
    ws.onmessage = (m) => {
      if (conn.dead) return;
      let o;
      try {
        o = JSON.parse(typeof m.data === "string" ? m.data : String(m.data));
      } catch {
        return; // the server sends JSON text only
      }
      this.#wsMessage(o, conn);
    };
    ws.onerror = () => {}; // a close follows
    ws.onclose = (e) => {
      if (!this.#current(conn)) return;
      if (!conn.wsOpen) {
        this.#probe(conn);
        return;
      }
      if (e.code === 4401 || e.code === 4403) {
        this.#failed(conn, makeError("unauthorized",
          e.reason || `closed with ${e.code}`,
          { status: e.code === 4401 ? 401 : 403 }), FATAL);
        return;
      }
      // 1008 (token expired, slow client, memory limit), 1013 (events
      // dropped: resume), 1001, 1006, 1011: reconnect. A credential that
      // is no longer good is then refused at the upgrade: fatal.
      this.#failed(conn, null);
    };
  }

  // A websocket can die without a close (a peer gone, a NAT that forgot
  // it): an empty unsubscribe every pingIntervalMs must be answered within
  // pingTimeoutMs, else the connection is dropped and reopened (not an
  // empty subscribe: with history on, its answer reads the history).
  #startPing(conn) {
    const { pingIntervalMs: every, pingTimeoutMs: within } = this.#opts;
    if (!(every > 0) || !(within > 0)) return;
    conn.ping = setInterval(() => {
      if (conn.dead || conn.pingDeadline) return;
      conn.pingDeadline = setTimeout(() => this.#failed(conn, null), within);
      this.#wsSend(conn, "unsubscribe", null, "ping");
    }, every);
  }

  // The upgrade failed, and a browser does not tell why: ask with plain
  // GETs. GET /ws checks the credential (426 upgrade_required when it
  // passes); GET /sse checks the patterns and since as the upgrade does
  // (the same code on the server), its stream cut at once if it opens.
  // Both fine: something between refuses websockets.
  async #probe(conn) {
    let err = null;
    try {
      err = await this.#ask(
        `${this.#base}/ws${this.#query(conn.patterns, conn.since)}`,
        conn.token);
      if (err?.status === 426 && conn.patterns.length && !conn.dead
          && this.#state !== "closed") {
        const e2 = await this.#ask(this.#sseUrl(conn.patterns, conn.since),
          conn.token);
        if (e2 && classify(e2) !== BLOCKED) err = e2;
      }
    } catch {
      this.#failed(conn, null, NETWORK); // no answer: down, or cross-origin
      return;
    }
    this.#failed(conn, err);
  }

  // Sends {"subscribe"|"unsubscribe": [pattern]} (pattern null: [], the
  // readiness check or a ping: kind says which).
  #wsSend(c, what, pattern, kind = what) {
    const ref = `s${this.#nextRef++}`;
    this.#pending.set(ref, { kind, pattern, conn: c });
    try {
      c.ws.send(JSON.stringify({ [what]: pattern === null ? [] : [pattern],
        ref }));
    } catch {
      this.#pending.delete(ref); // closing: the next connection takes it
    }
  }

  #wsMessage(o, conn) {
    if (!o || typeof o !== "object") return;
    const ref = typeof o.ref === "string" ? o.ref : null;
    const p = ref ? this.#pending.get(ref) : undefined;
    if (p) this.#pending.delete(ref);
    if (p?.kind === "ping") {
      clearTimeout(p.conn.pingDeadline);
      p.conn.pingDeadline = null;
      return;
    }
    if (p?.kind === "ready") {
      if (!this.#current(p.conn)) return;
      // Opened without a position: the server's, read once the patterns
      // were in place, is where a reconnect resumes from.
      if (!p.conn.since && typeof o.pos === "string") this.#seam(o.pos, false);
      this.#opened(p.conn);
      return;
    }
    if (typeof o.ok === "string") {
      if (p?.kind === "dispatch") p.resolve(o.id);
      else if (p?.kind === "subscribe" && this.#patterns.has(p.pattern))
        this.#confirmed.add(p.pattern);
      return;
    }
    if (typeof o.error === "string") {
      const err = makeError(o.error, o.message,
        typeof o.pattern === "string" ? { pattern: o.pattern } : undefined);
      if (p?.kind === "dispatch") {
        p.reject(err);
        return;
      }
      if (p?.kind === "subscribe") {
        err.pattern ??= p.pattern;
        this.#emit("error", err);
        this.#forget([p.pattern], err, false);
        return;
      }
      this.#emit("error", err); // events_dropped, resume_failed, ...
      return;
    }
    if ("recovered" in o && !("name" in o)) {
      this.#recovered(o, conn);
      return;
    }
    this.#deliver(o, conn);
  }

  // ------------------------------------------------------------ SSE

  // Read with fetch, not EventSource: an SSE event is named after the
  // taskbus event, and an EventSource cannot listen to every name.
  async #openSse(conn) {
    const token = this.#patterns.size ? await this.#getToken() : undefined;
    if (!this.#current(conn)) return;
    // Taken now (after the token): what changes later is compared at the
    // ready.
    const patterns = [...this.#patterns.keys()];
    conn.patterns = patterns;
    if (patterns.length === 0) {
      // A stream of nothing is refused (missing_events): there is nothing
      // to receive until a subscription comes; dispatch goes over HTTP.
      this.#opened(conn);
      return;
    }
    conn.token = token;
    conn.abort = new AbortController();
    const url = this.#sseUrl(patterns, conn.since);
    let res;
    try {
      res = await this.#fetch(url, {
        headers: { ...this.#headers(token), Accept: "text/event-stream" },
        signal: conn.abort.signal,
        cache: "no-store",
      });
    } catch {
      this.#failed(conn, null, NETWORK);
      return;
    }
    if (conn.dead) return;
    if (res.status === 404 || res.status === 405) {
      // No taskbus here: a wrong url, which no retry mends.
      this.#failed(conn, makeError("not_found", `${res.status} from `
        + `${this.#base}/sse: no taskbus here (check the url option)`,
      { status: res.status }), FATAL);
      return;
    }
    if (!res.ok || !res.body) {
      this.#failed(conn, await errorOf(res), res.ok ? RETRY : undefined);
      return;
    }
    // The server sends a keep-alive comment when idle: silence is a dead
    // peer that TCP may take long to notice.
    const alive = () => {
      clearTimeout(conn.idle);
      if (this.#opts.idleTimeoutMs > 0 && !conn.dead)
        conn.idle = setTimeout(() => this.#failed(conn, null),
          this.#opts.idleTimeoutMs);
    };
    alive();
    try {
      await readEventStream(res.body, {
        onBlock: (b) => this.#sseBlock(conn, b),
        // ": ready": the subscription is in place (the headers come
        // before it), so that what is dispatched from now on arrives.
        onComment: (text) => {
          if (text !== "ready" || conn.opened || !this.#current(conn)) return;
          for (const p of patterns) this.#confirmed.add(p);
          this.#opened(conn);
        },
        onChunk: alive,
      });
    } catch {
      /* aborted or cut: reconnect */
    }
    this.#failed(conn, null);
  }

  #sseBlock(conn, b) {
    if (conn.dead) return;
    if (b.data === undefined) {
      if (b.id) this.#seam(b.id, false); // ": ready" at a fresh stream's start
      return;
    }
    let o;
    try {
      o = JSON.parse(b.data);
    } catch {
      return;
    }
    if (b.event === "taskbus:recovered") this.#recovered(o, conn);
    else this.#deliver(o, conn);
  }

  // ------------------------------------------------------------ HTTP

  // The token is asked for at each POST (a function may renew it).
  async #post(name, data) {
    if (!this.#fetch) throw makeError("no_fetch", "no fetch here");
    const token = await this.#getToken();
    const headers = this.#headers(token);
    let body;
    if (typeof data === "string") {
      body = data;
      headers["Content-Type"] = "text/plain; charset=utf-8";
    } else if (data !== undefined && data !== null) {
      body = JSON.stringify(data);
      headers["Content-Type"] = "application/json";
    }
    const ac = new AbortController();
    const ms = this.#opts.dispatchTimeoutMs;
    let timedOut = false;
    const t = ms > 0 ? setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, ms) : null;
    const stop = () => ac.abort();
    this.#abort.signal.addEventListener("abort", stop, { once: true });
    try {
      let res;
      try {
        res = await this.#fetch(
          `${this.#base}/events/${encodeURIComponent(name)}`,
          { method: "POST", headers, body, signal: ac.signal });
      } catch (e) {
        if (timedOut)
          throw makeError("timeout", `no answer to the dispatch of ${name} `
            + `in ${ms} ms (the event may have been published)`);
        if (this.#abort.signal.aborted)
          throw makeError("closed", "the client was closed");
        throw makeError("network", errorText(e));
      }
      if (res.status !== 202) throw await errorOf(res);
      return (await res.json()).id;
    } finally {
      clearTimeout(t);
      this.#abort.signal.removeEventListener("abort", stop);
    }
  }
}

export default TaskbusClient;
