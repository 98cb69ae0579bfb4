// unit.test.js - what the client decides alone, without a server: the
// seam of a resume (each position delivered once, across epochs), the
// patterns it routes events by, and its reading of an SSE stream split at
// awkward places (a scripted WebSocket and fetch stand in for taskbus).
import assert from "node:assert/strict";
import { describe, it as nodeIt } from "node:test";

import { TaskbusClient, matchPattern } from "../src/index.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Each case is bounded: a hang (a promise never settled) fails it.
const it = (name, fn) => nodeIt(name, { timeout: 10000 }, fn);

async function until(fn, what) {
  for (let i = 0; i < 400; i++) {
    if (fn()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// A WebSocket whose server is a script: one entry per connection, the
// messages it sends after opening (delay ms after it was made) and the
// close code it ends with (none: it stays open), or closeAfter ms after
// opening; fail: it closes without opening. It answers (un)subscribe
// messages as taskbus does (with pos when the entry has one), the first
// `answers` of them only if given (then it is a dead peer); dispatches
// are not answered.
function scriptedWebSocket(script) {
  const urls = [];
  const sent = [];
  class FakeWS {
    constructor(url) {
      urls.push(url);
      const s = script.shift() ?? { msgs: [] };
      this.s = s;
      setTimeout(() => {
        if (s.fail) {
          this.onclose?.({ code: 1006, reason: "" });
          return;
        }
        this.onopen?.();
        for (const m of s.msgs) this.onmessage?.({ data: JSON.stringify(m) });
        if (s.close) this.onclose?.({ code: s.close, reason: "" });
        if (s.closeAfter)
          setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), s.closeAfter);
      }, s.delay ?? 1);
    }

    send(d) {
      const m = JSON.parse(d);
      sent.push(m);
      const what = m.subscribe ? "subscribe" : m.unsubscribe ? "unsubscribe" : null;
      if (what && (this.s.answers === undefined || this.s.answers-- > 0)) {
        const a = { ok: what, patterns: [], ref: m.ref };
        if (what === "subscribe" && this.s.pos) a.pos = this.s.pos;
        setTimeout(() => this.onmessage?.({ data: JSON.stringify(a) }), 1);
      }
    }

    close() {}
  }
  return { FakeWS, urls, sent };
}

// A fetch that answers each call with answer(url, init, n): a Response,
// or one made of {status, body} (body: a JSON value), or a stream of the
// text chunks in {sse: [...]} (left open); or throws what it returns as
// {throw}. calls holds {url, init}.
function scriptedFetch(answer) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init });
    const a = await answer(url, init, calls.length);
    if (a instanceof Response) return a;
    if (a.throw) throw a.throw;
    if (a.sse) {
      const enc = new TextEncoder();
      return new Response(new ReadableStream({
        start(ctl) {
          for (const t of a.sse) ctl.enqueue(enc.encode(t));
          init.signal?.addEventListener("abort", () => {
            try {
              ctl.error(new Error("aborted"));
            } catch {
              /* closed */
            }
          });
        },
      }), { status: 200 });
    }
    return new Response(JSON.stringify(a.body ?? {}), { status: a.status });
  };
  return { fetch, calls };
}

const q = (url, k) => new URL(url).searchParams.get(k);

const ev = (pos, name = "a.b") => ({ id: `id-${pos}`, name, data: null, pos });

describe("the seam of a resume", () => {
  it("delivers each position once, in order, across a reconnect and a new epoch", async () => {
    const E = "0123456789abcdef";
    const F = "fedcba9876543210";
    const { FakeWS, urls } = scriptedWebSocket([
      { msgs: [ev(`${E}-1`), ev(`${E}-2`), ev(`${E}-3`)], close: 1006 },
      {
        // A replay that overlaps what was delivered, its seam, then live.
        msgs: [ev(`${E}-2`), ev(`${E}-3`), ev(`${E}-4`),
          { recovered: true, pos: `${E}-4`, epoch: E }, ev(`${E}-5`)],
        close: 1013,
      },
      {
        // The history was lost: a new epoch, nothing replayed.
        msgs: [{ recovered: false, pos: `${F}-7`, epoch: F }, ev(`${F}-8`),
          ev(`${F}-8`), { id: "plain", name: "a.b", data: "x" }],
      },
    ]);
    const c = new TaskbusClient({
      url: "http://127.0.0.1:9",
      WebSocket: FakeWS,
      reconnect: { minDelayMs: 1, maxDelayMs: 2 },
    });
    const got = [];
    const rec = [];
    c.subscribe("a.*", (e) => got.push(e.pos ?? e.id));
    c.on("recovered", (r) => rec.push(r));
    await c.connect();
    await until(() => got.length === 7, "7 events");
    await sleep(20);
    c.close();
    assert.deepEqual(got, [`${E}-1`, `${E}-2`, `${E}-3`, `${E}-4`, `${E}-5`,
      `${F}-8`, "plain"]);
    assert.deepEqual(rec, [
      { recovered: true, pos: `${E}-4`, epoch: E },
      { recovered: false, pos: `${F}-7`, epoch: F },
    ]);
    assert.equal(c.lastPos, `${F}-8`);
    assert.equal(new URL(urls[0]).searchParams.get("since"), null);
    assert.equal(new URL(urls[1]).searchParams.get("since"), `${E}-3`);
    assert.equal(new URL(urls[2]).searchParams.get("since"), `${E}-5`);
    assert.equal(new URL(urls[1]).searchParams.get("events"), "a.*");
  });

  it("resume false: reconnects without since", async () => {
    const { FakeWS, urls } = scriptedWebSocket([
      { msgs: [ev("0123456789abcdef-1")], close: 1006 },
      { msgs: [] },
    ]);
    const c = new TaskbusClient({
      url: "http://127.0.0.1:9", WebSocket: FakeWS, resume: false,
      reconnect: { minDelayMs: 1, maxDelayMs: 2 },
    });
    await c.connect();
    await until(() => urls.length === 2 && c.state === "open", "reconnect");
    c.close();
    assert.equal(new URL(urls[1]).searchParams.get("since"), null);
    assert.equal(c.lastPos, "0123456789abcdef-1");
  });

  it("subscribes and unsubscribes what changed while connecting", async () => {
    const { FakeWS, urls, sent } = scriptedWebSocket([{ msgs: [], delay: 100 }]);
    const c = new TaskbusClient({ url: "https://example.invalid/base/", WebSocket: FakeWS });
    const a = c.subscribe("a.*");
    const p = c.connect();
    await until(() => urls.length === 1, "the websocket made");
    c.subscribe("b.>");
    a.unsubscribe();
    await p;
    c.close();
    assert.match(urls[0], /^wss:\/\/example\.invalid\/base\/ws\?events=a\.\*$/);
    assert.deepEqual(sent.map(({ ref, ...m }) => m),
      [{ subscribe: ["b.>"] }, { unsubscribe: ["a.*"] }, { subscribe: [] }]);
  });
});

describe("transports", () => {
  const sseFetch = (calls) => async (url) => {
    calls.push(url);
    const ready = new TextEncoder().encode(": ready\n\n");
    return new Response(new ReadableStream({
      start(ctl) {
        ctl.enqueue(ready);
      },
    }), { status: 200 });
  };

  it("auto without a WebSocket goes to SSE at once", async () => {
    const calls = [];
    const c = new TaskbusClient({
      url: "http://127.0.0.1:9", WebSocket: null, fetch: sseFetch(calls),
    });
    const states = [];
    c.on("state", (s) => states.push(s));
    c.subscribe("a.*");
    await c.connect();
    assert.equal(c.transport, "sse");
    assert.deepEqual(states, ["connecting", "open"]);
    assert.equal(calls.length, 1);
    c.close();
  });

  it("websocket without a WebSocket is a fatal error", async () => {
    const c = new TaskbusClient({
      url: "http://127.0.0.1:9", WebSocket: null, transport: "websocket",
    });
    await assert.rejects(c.connect(), { code: "no_websocket", fatal: true });
    assert.equal(c.state, "closed");
  });
});

describe("patterns", () => {
  const cases = [
    ["a.b", "a.b", true], ["a.b", "a.c", false], ["a.*", "a.b", true],
    ["a.*", "a.b.c", false], ["a.*", "a", false], ["*.b", "a.b", true],
    ["a.<id>", "a.7", true], ["a.<id>.x", "a.7.y", false],
    ["a.>", "a.b", true], ["a.>", "a.b.c.d", true], ["a.>", "a", false],
    [">", "x", true], [">", "x.y.z", true], ["a.>.c", "a.b.c", false],
  ];
  for (const [p, n, want] of cases)
    it(`${p} ${want ? "matches" : "does not match"} ${n}`, () =>
      assert.equal(matchPattern(p, n), want));
});

describe("an SSE stream read in pieces", () => {
  it("joins lines split across chunks, CRLF and CR line ends, comments", async () => {
    const E = "0123456789abcdef";
    const text = `id: ${E}-3\r\n: ready\r\n\r\n`
      + `id: ${E}-4\revent: a.b\rdata: {"id":"x","name":"a.b",\rdata: "data":1,"pos":"${E}-4"}\r\r`
      + ": keep-alive\n\n"
      + `id: ${E}-5\nevent: a.c\ndata: {"id":"y","name":"a.c","data":"é","pos":"${E}-5"}\n\n`;
    const bytes = new TextEncoder().encode(text);
    let seen = null;
    const fetch = async (url, init) => {
      seen = { url, init };
      // One byte at a time: every split a network could make.
      let i = 0;
      const body = new ReadableStream({
        pull(ctl) {
          if (i < bytes.length) ctl.enqueue(bytes.slice(i, ++i));
          else ctl.close();
        },
      });
      return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
    };
    const c = new TaskbusClient({
      url: "http://127.0.0.1:9", transport: "sse", fetch, token: "tok",
      reconnect: { minDelayMs: 1000 },
    });
    const got = [];
    c.subscribe("a.*", (e) => got.push(e));
    await c.connect();
    await until(() => got.length === 2, "2 events");
    c.close();
    assert.equal(new URL(seen.url).pathname, "/sse");
    assert.equal(new URL(seen.url).searchParams.get("events"), "a.*");
    assert.equal(new URL(seen.url).searchParams.get("token"), null);
    assert.equal(seen.init.headers.Authorization, "Bearer tok");
    assert.deepEqual(got.map((e) => [e.name, e.data]), [["a.b", 1], ["a.c", "é"]]);
    assert.equal(c.lastPos, `${E}-5`);
  });
});

describe("review fixes", () => {
  const E = "0123456789abcdef";
  const FAST = { minDelayMs: 1, maxDelayMs: 2 };

  it("sse: a subscription made while the stream opens is applied at its ready", async () => {
    let release;
    const gate = new Promise((r) => (release = r));
    const { fetch, calls } = scriptedFetch(async (url, init, n) => {
      if (n === 1) await gate; // the first stream answers late
      return { sse: [": ready\n\n"] };
    });
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", transport: "sse",
      fetch, debounceMs: 1 });
    c.subscribe("a.*");
    const p = c.connect();
    await until(() => calls.length === 1, "the first fetch");
    c.subscribe("b.*"); // while it opens
    release();
    await p;
    await until(() => calls.length === 2, "the restart with b.*");
    assert.equal(q(calls[1].url, "events"), "a.*,b.*");
    c.close();
  });

  it("too_many_patterns drops only the patterns beyond the limit, the newest", async () => {
    const max = 2;
    const { fetch } = scriptedFetch((url) => {
      const n = q(url, "events").split(",").length;
      if (n > max)
        return { status: 400, body: { error: "too_many_patterns", message: "more than 2" } };
      return { sse: [": ready\n\n"] };
    });
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", transport: "sse",
      fetch, reconnect: FAST });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    for (const p of ["a.*", "b.*", "c.*", "d.*"]) c.subscribe(p);
    await c.connect();
    assert.deepEqual(c.patterns, ["a.*", "b.*"]);
    assert.deepEqual(errors.filter((e) => e.pattern).map((e) => [e.code, e.pattern]),
      [["too_many_patterns", "c.*"], ["too_many_patterns", "d.*"]]);
    c.close();
  });

  it("websocket: dropped before its first event, resumes from the ready answer's pos", async () => {
    const { FakeWS, urls } = scriptedWebSocket([
      // Ready with a position, then a drop before any event.
      { msgs: [], pos: `${E}-7`, closeAfter: 20 },
      { msgs: [ev(`${E}-8`), { recovered: true, pos: `${E}-8`, epoch: E }] },
    ]);
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      reconnect: FAST });
    const rec = [];
    const got = [];
    c.on("recovered", (r) => rec.push(r));
    c.subscribe("a.*", (e) => got.push(e.pos));
    await c.connect();
    assert.equal(c.lastPos, `${E}-7`);
    await until(() => got.length === 1, "the event of the gap");
    c.close();
    assert.equal(q(urls[1], "since"), `${E}-7`);
    assert.deepEqual(got, [`${E}-8`]);
    assert.deepEqual(rec, [{ recovered: true, pos: `${E}-8`, epoch: E }]);
  });

  it("websocket: history off, a reconnect with nothing to resume from says recovered false", async () => {
    const { FakeWS, urls } = scriptedWebSocket([
      { msgs: [{ id: "x1", name: "a.b", data: 1 }], closeAfter: 20 },
      { msgs: [] },
    ]);
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      reconnect: FAST });
    const rec = [];
    c.on("recovered", (r) => rec.push(r));
    c.subscribe("a.*");
    await c.connect();
    await until(() => urls.length === 2 && c.state === "open", "the reconnect");
    c.close();
    assert.equal(q(urls[1], "since"), null);
    assert.deepEqual(rec, [{ recovered: false, pos: null, epoch: null }]);
  });

  it("a token function is called for each HTTP dispatch", async () => {
    let n = 0;
    const { fetch, calls } = scriptedFetch(() => ({ status: 202, body: { id: "i" } }));
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", fetch,
      token: () => `t${++n}` });
    await c.dispatch("a.b", 1);
    await c.dispatch("a.b", 2);
    assert.deepEqual(calls.map((x) => x.init.headers.Authorization),
      ["Bearer t1", "Bearer t2"]);
    c.close();
  });

  it("sse: a subscription change opens the new stream first, switches at its ready, no duplicate, no recovered", async () => {
    const streams = [];
    const { fetch, calls } = scriptedFetch((url, init) => {
      let ctl;
      const enc = new TextEncoder();
      const body = new ReadableStream({ start(c) { ctl = c; } });
      init.signal?.addEventListener("abort", () => {
        streams[idx].aborted = true;
        try {
          ctl.error(new Error("aborted"));
        } catch {
          /* closed */
        }
      });
      const idx = streams.length;
      streams.push({ send: (t) => ctl.enqueue(enc.encode(t)), aborted: false });
      return new Response(body, { status: 200 });
    });
    const frame = (pos, name) => `id: ${pos}\nevent: ${name}\ndata: ${JSON.stringify(
      { id: `id-${pos}`, name, data: null, pos })}\n\n`;
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", transport: "sse",
      fetch, debounceMs: 1 });
    const got = [];
    const rec = [];
    const states = [];
    c.on("event", (e) => got.push(e.pos));
    c.on("recovered", (r) => rec.push(r));
    c.on("state", (s) => states.push(s));
    c.subscribe("a.*");
    const p = c.connect();
    await until(() => streams.length === 1, "the first stream");
    streams[0].send(`id: ${E}-1\n: ready\n\n`);
    await p;
    streams[0].send(frame(`${E}-2`, "a.x"));
    await until(() => got.length === 1, "a.x");
    c.subscribe("b.*");
    await until(() => streams.length === 2, "the new stream");
    assert.equal(q(calls[1].url, "since"), `${E}-2`);
    assert.equal(q(calls[1].url, "events"), "a.*,b.*");
    // The old stream goes on until the new one is ready.
    streams[0].send(frame(`${E}-4`, "a.y"));
    await until(() => got.length === 2, "a.y from the old stream");
    assert.equal(streams[0].aborted, false);
    // The new one: ready, its replay (b.z at 3, then a.y again), the seam.
    streams[1].send(": ready\n\n");
    streams[1].send(frame(`${E}-3`, "b.z"));
    streams[1].send(frame(`${E}-4`, "a.y"));
    streams[1].send(`id: ${E}-4\nevent: taskbus:recovered\ndata: ${JSON.stringify(
      { recovered: true, pos: `${E}-4`, epoch: E })}\n\n`);
    // What the old one had on its way still comes, once.
    streams[0].send(frame(`${E}-5`, "a.z"));
    streams[1].send(frame(`${E}-5`, "a.z"));
    await until(() => got.length === 4, "b.z and a.z");
    await until(() => streams[0].aborted, "the old stream ended after the overlap");
    c.close();
    // Each once (two streams: their order between them is the reads').
    assert.deepEqual([...got].sort(), [`${E}-2`, `${E}-3`, `${E}-4`, `${E}-5`]);
    assert.deepEqual(rec, []);
    assert.deepEqual(states, ["connecting", "open", "closed"]);
    assert.equal(c.lastPos, `${E}-5`);
  });

  it("websocket: a peer that stops answering is dropped and reopened", async () => {
    // The first answers its ready, then nothing: dead.
    const { FakeWS, urls, sent } = scriptedWebSocket([{ msgs: [], answers: 1 }, { msgs: [] }]);
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      reconnect: FAST, pingIntervalMs: 10, pingTimeoutMs: 20 });
    const states = [];
    c.on("state", (s) => states.push(s));
    await c.connect();
    await until(() => urls.length === 2 && c.state === "open", "the reconnect");
    // The second answers its pings: it stays.
    const n = sent.length;
    await until(() => sent.length >= n + 3, "pings answered");
    assert.equal(urls.length, 2);
    c.close();
    assert.deepEqual(states, ["connecting", "open", "connecting", "open", "closed"]);
  });

  it("websocket: a dispatch with no answer rejects with code timeout", async () => {
    const { FakeWS } = scriptedWebSocket([{ msgs: [] }]);
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      dispatchTimeoutMs: 20 });
    await c.connect();
    await assert.rejects(c.dispatch("a.b", 1), { code: "timeout" });
    assert.equal(c.state, "open");
    c.close();
  });

  it("no answer at all before any open is fatal after networkFatalAfter tries", async () => {
    const { fetch, calls } = scriptedFetch(() => ({ throw: new TypeError("fetch failed") }));
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", transport: "sse",
      fetch, reconnect: FAST, networkFatalAfter: 3 });
    const retries = [];
    c.on("reconnect", (r) => retries.push(r));
    c.subscribe("a.*");
    await assert.rejects(c.connect(), { code: "network", fatal: true });
    assert.equal(calls.length, 3);
    assert.equal(retries.length, 2);
    assert.equal(c.state, "closed");
  });

  it("sse: a 404 from /sse is a wrong url: fatal not_found, no retry", async () => {
    const { fetch, calls } = scriptedFetch(() => new Response("<h1>nope</h1>", { status: 404 }));
    const c = new TaskbusClient({ url: "http://127.0.0.1:9/wrong", transport: "sse",
      fetch, reconnect: FAST });
    c.subscribe("a.*");
    await assert.rejects(c.connect(), { code: "not_found", status: 404, fatal: true });
    assert.equal(calls.length, 1);
  });

  it("close() aborts a probe under way, and nothing is fetched after it", async () => {
    const { FakeWS } = scriptedWebSocket([{ fail: true }]);
    const { fetch, calls } = scriptedFetch((url, init) => new Promise((_, reject) =>
      init.signal.addEventListener("abort", () => reject(new Error("aborted")))));
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      fetch, reconnect: FAST });
    c.subscribe("a.*");
    c.connect().catch(() => {});
    await until(() => calls.length === 1, "the probe");
    c.close();
    assert.equal(calls[0].init.signal.aborted, true);
    await sleep(20);
    assert.equal(calls.length, 1);
  });

  it("fallbackAfter counts refused upgrades in a row", async () => {
    // Upgrades all fail; the probes say: blocked, down (503), then blocked.
    const { FakeWS, urls } = scriptedWebSocket(Array.from({ length: 8 }, () => ({ fail: true })));
    const answers = [404, 503, 404, 404, 404];
    const { fetch, calls } = scriptedFetch((url) => {
      if (new URL(url).pathname === "/sse") return { sse: [": ready\n\n"] };
      return { status: answers.shift() ?? 404 };
    });
    const c = new TaskbusClient({ url: "http://127.0.0.1:9", WebSocket: FakeWS,
      fetch, reconnect: FAST, fallbackAfter: 3 });
    c.subscribe("a.*");
    await c.connect();
    assert.equal(c.transport, "sse");
    assert.equal(urls.length, 5, "3 refusals in a row after the 503");
    assert.equal(calls.filter((x) => new URL(x.url).pathname === "/sse").length, 1);
    c.close();
  });
});
