// unit.test.js - what the client decides alone, without a server: the
// seam of a resume (each position delivered once, across epochs), the
// patterns it routes events by, and its reading of an SSE stream split at
// awkward places (a scripted WebSocket and fetch stand in for taskbus).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { TaskbusClient, matchPattern } from "../src/index.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(fn, what) {
  for (let i = 0; i < 400; i++) {
    if (fn()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// A WebSocket whose server is a script: one entry per connection, the
// messages it sends after opening (delay ms after it was made) and the
// close code it ends with (none: it stays open). It answers (un)subscribe messages as taskbus does.
function scriptedWebSocket(script) {
  const urls = [];
  const sent = [];
  class FakeWS {
    constructor(url) {
      urls.push(url);
      const s = script.shift() ?? { msgs: [] };
      setTimeout(() => {
        this.onopen?.();
        for (const m of s.msgs) this.onmessage?.({ data: JSON.stringify(m) });
        if (s.close) this.onclose?.({ code: s.close, reason: "" });
      }, s.delay ?? 1);
    }

    send(d) {
      const m = JSON.parse(d);
      sent.push(m);
      const what = m.subscribe ? "subscribe" : m.unsubscribe ? "unsubscribe" : null;
      if (what)
        setTimeout(() => this.onmessage?.({
          data: JSON.stringify({ ok: what, patterns: [], ref: m.ref }),
        }), 1);
    }

    close() {}
  }
  return { FakeWS, urls, sent };
}

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
