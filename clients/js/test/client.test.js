// client.test.js - taskbus-client against the real taskbus binary and a
// real redis-server on loopback (harness.js): round trips, dispatch errors,
// reconnect with backoff after the server is killed and restarted, resume
// without loss and with recovered false, SSE forced and as the fallback,
// tokens.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it as nodeIt } from "node:test";

import { TaskbusClient } from "../src/index.js";
import {
  HOST, Recorder, Redis, Taskbus, T, jwt, missing, post,
} from "./harness.js";

// Each case is bounded: a hang fails it rather than the whole run.
const it = (name, fn) => nodeIt(name, { timeout: T(60000) }, fn);

let WebSocket = null;
let why = missing();
try {
  WebSocket = (await import("ws")).default;
} catch {
  why ??= "no node_modules/ws: run npm ci in clients/js (bash .ci/dev.sh test does)";
}
if (why && process.env.CI === "true") throw new Error(why);

const SECRET = "a-test-secret-of-at-least-32-bytes-0123456789";
const ADMIN = "admin-token-for-the-js-client-tests";
const FAST = { minDelayMs: 50, maxDelayMs: 400, jitter: 0.5 };

const redis = new Redis();
const A = new Taskbus("a"); // the instance clients connect to
const B = new Taskbus("b"); // dispatches while A is down
const C = new Taskbus("c"); // namespace "small": history of 3 events
const D = new Taskbus("d");
const E = new Taskbus("e"); // with an API token and client tokens
const F = new Taskbus("f"); // the same, no leeway: tokens expire on time
const clients = [];

function client(opts) {
  const c = new TaskbusClient({ WebSocket, reconnect: FAST, ...opts });
  clients.push(c);
  return [c, new Recorder(c)];
}

describe("taskbus-client", { skip: why ?? false, timeout: T(300000) }, () => {
  before(async () => {
    await redis.start();
    const bus = ["--redis-url", redis.url()];
    const small = [...bus, "--namespace", "small", "--history-size", "3"];
    A.args = bus;
    B.args = bus;
    C.args = small;
    D.args = small;
    E.args = [...bus, "--namespace", "auth", "--token", ADMIN, "--jwt-secret", SECRET];
    F.args = [...E.args, "--jwt-leeway", "0"];
    await Promise.all([A, B, C, D, E, F].map((s) => s.start()));
  });

  after(async () => {
    for (const c of clients) c.close();
    const rcs = await Promise.all([A, B, C, D, E, F].map((s) => s.stop()));
    await redis.stop();
    // Exit 0 after SIGTERM: no sanitizer report, a clean stop.
    assert.deepEqual(rcs, [0, 0, 0, 0, 0, 0]);
  });

  it("round trip over a websocket: subscribe, dispatch, event, unsubscribe", async () => {
    const [c, rec] = client({ url: A.url });
    const got = [];
    const sub = c.subscribe("rt.*", (e) => got.push(e));
    c.subscribe("rtmark.*");
    assert.equal(c.state, "idle");
    await c.connect();
    assert.equal(c.state, "open");
    assert.equal(c.transport, "websocket");
    const id = await c.dispatch("rt.one", { x: 1 });
    await rec.until(() => got.length === 1, "rt.one");
    assert.equal(got[0].id, id);
    assert.equal(got[0].name, "rt.one");
    assert.deepEqual(got[0].data, { x: 1 });
    assert.equal(c.lastPos, got[0].pos);
    // From another instance, through Redis.
    const id2 = await post(B.url, "rt.two", "hello");
    await rec.until(() => got.length === 2, "rt.two");
    assert.equal(got[1].id, id2);
    assert.equal(got[1].data, "hello");
    // Unsubscribed, rt.* no longer comes; messages on one websocket keep
    // their order, so rtmark.done comes after what rt.three would have.
    sub.unsubscribe();
    await c.dispatch("rt.three");
    await c.dispatch("rtmark.done");
    await rec.until((r) => r.named("rtmark.").length === 1, "rtmark.done");
    assert.deepEqual(rec.named("rt.").map((e) => e.name), ["rt.one", "rt.two"]);
    assert.deepEqual(rec.states, ["connecting", "open"]);
    assert.deepEqual(rec.errors, []);
    c.close();
    assert.equal(c.state, "closed");
    await assert.rejects(c.connect(), { code: "closed" });
  });

  it("dispatch errors carry the server's code (websocket and HTTP)", async () => {
    const [c] = client({ url: A.url });
    // Before connect: over HTTP.
    await assert.rejects(c.dispatch("bad name"), { code: "bad_name" });
    await c.connect();
    await assert.rejects(c.dispatch("bad name"), { code: "bad_name" });
    await assert.rejects(c.dispatch("a..b", 1), { code: "bad_name" });
    const [s] = client({ url: A.url, transport: "sse" });
    await s.connect();
    await assert.rejects(s.dispatch("bad name"), (e) => e.code === "bad_name" && e.status === 400);
    assert.match(await s.dispatch("ok.name", [1, 2]), /-/);
  });

  for (const transport of ["websocket", "sse"]) {
    it(`${transport}: reconnects with backoff after a kill and restart, resumes without loss`, async () => {
      const p = transport === "sse" ? "rss" : "rsw";
      const [c, rec] = client({ url: A.url, transport });
      c.subscribe(`${p}.*`);
      await c.connect();
      assert.equal(c.transport, transport);
      const first = await c.dispatch(`${p}.first`, "x");
      await rec.until((r) => r.named(p).length === 1, "the first event");
      assert.equal(rec.events[0].id, first);
      await A.kill();
      await rec.until(() => c.state === "connecting", "the drop seen");
      assert.equal(c.transport, null);
      // Meanwhile a dispatch goes over HTTP, to the instance that is down.
      await assert.rejects(c.dispatch(`${p}.lost`, "z"), { code: "network" });
      const n = 50;
      const ids = [];
      for (let i = 0; i < n; i++) ids.push(await post(B.url, `${p}.n`, String(i)));
      // A few retries while it is down: backoff, not a busy loop.
      await rec.until((r) => r.reconnects.length >= 4, "retries");
      await A.start();
      await rec.until((r) => r.recovered.length === 1, "recovered");
      await rec.until((r) => r.named(`${p}.n`).length >= n, "the replay");
      const live = await post(B.url, `${p}.live`, "y");
      // Events on one connection keep their order: a duplicate of any
      // before would come before the last one.
      const end = await c.dispatch(`${p}.end`, "e");
      await rec.until((r) => r.named(`${p}.end`).length === 1, "the last event");
      const names = rec.named(p).map((e) => e.id);
      assert.deepEqual(names, [first, ...ids, live, end], "each once, in order");
      assert.equal(rec.recovered[0].recovered, true);
      assert.equal(c.lastPos, rec.named(`${p}.end`)[0].pos);
      assert.equal(c.state, "open");
      assert.equal(c.transport, transport);
      // Exponential, jittered, capped; attempts count up from 1.
      rec.reconnects.forEach((r, i) => {
        assert.equal(r.attempt, i + 1);
        const cap = Math.min(FAST.maxDelayMs, FAST.minDelayMs * 2 ** i);
        assert.ok(r.delayMs <= cap && r.delayMs >= cap * (1 - FAST.jitter) - 1,
          `attempt ${r.attempt}: ${r.delayMs} ms, cap ${cap}`);
      });
      assert.equal(rec.states[0], "connecting");
      assert.deepEqual(rec.states.slice(-3), ["open", "connecting", "open"]);
      // A reconnect that reaches the restarted instance before its bus
      // is up is told so (and closed, then retried): nothing else.
      assert.deepEqual(rec.errors.filter((e) => e.code !== "bus_unavailable"), []);
      c.close();
    });
  }

  it("recovered false when the position is no longer in the history", async () => {
    const [c, rec] = client({ url: C.url });
    c.subscribe("sm.*");
    await c.connect();
    await c.dispatch("sm.first");
    await rec.until((r) => r.events.length === 1, "the first event");
    const before = c.lastPos;
    await C.kill();
    await rec.until(() => c.state === "connecting", "the drop seen");
    for (let i = 0; i < 10; i++) await post(D.url, "sm.n", String(i));
    await C.start();
    await rec.until((r) => r.recovered.length === 1, "recovered");
    const r = rec.recovered[0];
    assert.equal(r.recovered, false);
    assert.match(r.pos, /^[0-9a-f]{8,16}-[0-9]+$/);
    assert.equal(c.lastPos, r.pos);
    assert.notEqual(c.lastPos, before);
    const live = await post(D.url, "sm.after", "z");
    await rec.until((x) => x.named("sm.after").length === 1, "a live event");
    assert.equal(rec.named("sm.after")[0].id, live);
    assert.equal(rec.named("sm.n").length, 0, "nothing replayed");
  });

  for (const transport of ["websocket", "sse"]) {
    it(`${transport}: a bad pattern is dropped with an error naming it, the rest goes on`, async () => {
      const [c, rec] = client({ url: A.url, transport });
      const bad = c.subscribe("bp..x");
      c.subscribe("bp.*");
      c.subscribe("bp2.*");
      await c.connect();
      const e = rec.errors.find((x) => x.pattern === "bp..x");
      assert.ok(e, JSON.stringify(rec.errors));
      assert.equal(e.code, "bad_pattern");
      assert.deepEqual(c.patterns.sort(), ["bp.*", "bp2.*"]);
      bad.unsubscribe(); // dropped already: nothing happens
      if (transport === "websocket") {
        c.subscribe("bp3..y"); // while open: the answer names it
        await rec.until((r) => r.errors.some((x) => x.pattern === "bp3..y"), "the answer");
        assert.equal(rec.errors.find((x) => x.pattern === "bp3..y").code, "bad_pattern");
      }
      const id = await post(A.url, "bp2.y", "1");
      await rec.until((r) => r.named("bp2.").length === 1, "bp2.y");
      assert.equal(rec.named("bp2.")[0].id, id);
      assert.deepEqual(c.patterns.sort(), ["bp.*", "bp2.*"]);
      assert.equal(c.state, "open");
    });
  }

  it("sse: a subscription change switches streams without loss, duplicate or recovered", async () => {
    const [c, rec] = client({ url: A.url, transport: "sse" });
    const s1 = c.subscribe("s1.*");
    await c.connect();
    assert.equal(c.transport, "sse");
    const s1a = await post(A.url, "s1.a", "1");
    await rec.until((r) => r.named("s1.").length === 1, "s1.a");
    // Posted right after the subscribe, while the new stream opens: the
    // new stream resumes from s1.a, so it has s2.a.
    c.subscribe("s2.*");
    const s2a = await post(A.url, "s2.a", "2");
    const s1b = await post(A.url, "s1.b", "3");
    await rec.until((r) => r.named("s2.").length === 1, "s2.a");
    s1.unsubscribe();
    await post(A.url, "s1.c", "4"); // unsubscribed: never delivered
    const s2b = await post(A.url, "s2.b", "5");
    const mark = await post(A.url, "s2.end", "6");
    await rec.until((r) => r.named("s2.end").length === 1, "s2.end");
    // Whatever stream each came on, each once: the ids say so.
    const ids = rec.events.map((e) => e.id);
    assert.equal(new Set(ids).size, ids.length, `duplicates: ${ids}`);
    assert.deepEqual(rec.named("s1.").map((e) => e.id), [s1a, s1b]);
    assert.deepEqual(rec.named("s2.").map((e) => e.id).sort(), [s2a, s2b, mark].sort());
    // A restart is not a drop: the state stayed open, nothing recovered.
    assert.deepEqual(rec.recovered, []);
    assert.deepEqual(rec.states, ["connecting", "open"]);
    assert.deepEqual(c.patterns, ["s2.*"]);
    assert.deepEqual(rec.errors, []);
  });

  it("sse: a subscription made while the stream opens gets its events", async () => {
    const [c, rec] = client({ url: A.url, transport: "sse" });
    c.subscribe("so1.*");
    const opening = c.connect();
    c.subscribe("so2.*"); // the first stream's URL does not have it
    await opening;
    // Its restart is under way or done: an event posted once the
    // subscription's stream is in place arrives; count them.
    let id = null;
    await rec.until(async (r) => {
      if (r.named("so2.").length) return true;
      id = await post(A.url, "so2.x", "1");
      return false;
    }, "so2.x");
    await rec.until((r) => r.named("so2.").some((e) => e.id === id), "the last so2.x");
    assert.deepEqual(c.patterns, ["so1.*", "so2.*"]);
    assert.deepEqual(rec.states, ["connecting", "open"]);
  });

  it("websocket: dropped before its first event, resumes from the ready position", async () => {
    await post(A.url, "gapw.before", "so that the namespace has a position");
    const [c, rec] = client({ url: A.url, transport: "websocket" });
    c.subscribe("gapw.*");
    await c.connect();
    assert.match(c.lastPos ?? "", /^[0-9a-f]{8,16}-[0-9]+$/, "no position from the ready answer");
    await A.kill();
    await rec.until(() => c.state === "connecting", "the drop seen");
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await post(B.url, "gapw.n", String(i)));
    await A.start();
    await rec.until((r) => r.recovered.length === 1, "recovered");
    const end = await c.dispatch("gapw.end", "e");
    await rec.until((r) => r.named("gapw.end").length === 1, "the last event");
    assert.equal(rec.recovered[0].recovered, true);
    assert.deepEqual(rec.named("gapw.").map((e) => e.id), [...ids, end]);
    assert.deepEqual(rec.errors.filter((e) => e.code !== "bus_unavailable"), []);
  });

  it("close() during connect: node exits at once", async () => {
    // A server that refuses websocket upgrades (the connection cut) and
    // never answers anything else: the client's probe of the failed
    // upgrade hangs when it is closed.
    const hang = net.createServer((sock) => {
      sock.on("data", (d) => {
        if (/^upgrade: websocket/im.test(String(d))) sock.destroy();
      });
      sock.on("error", () => {});
    });
    await new Promise((r) => hang.listen(0, HOST, r));
    const script = `
      import WebSocket from "ws";
      import { TaskbusClient } from ${JSON.stringify(new URL("../src/index.js", import.meta.url).href)};
      const c = new TaskbusClient({ url: "http://${HOST}:${hang.address().port}", WebSocket });
      c.subscribe("x.*");
      c.connect().catch(() => {});
      setTimeout(() => c.close(), 500);
    `;
    try {
      const t0 = Date.now();
      const child = spawn(process.execPath, ["--input-type=module", "-e", script],
        { cwd: path.dirname(fileURLToPath(import.meta.url)), stdio: "inherit" });
      const code = await new Promise((r) => child.on("exit", r));
      assert.equal(code, 0);
      // Not held by a probe's or a reconnect's timer (PROBE_TIMEOUT_MS 10 s).
      assert.ok(Date.now() - t0 < 8000, `exited after ${Date.now() - t0} ms`);
    } finally {
      hang.close();
    }
  });

  it("auto falls back to SSE where websocket upgrades are refused", async () => {
    const px = await proxy(A.port);
    try {
      const [c, rec] = client({ url: `http://${HOST}:${px.port}` });
      c.subscribe("fb.*");
      await c.connect();
      assert.equal(c.transport, "sse");
      assert.ok(px.wsRefused >= 3, `${px.wsRefused} websocket tries`);
      const id = await c.dispatch("fb.x", { via: "http" });
      await rec.until((r) => r.named("fb.").length === 1, "fb.x");
      assert.equal(rec.named("fb.")[0].id, id);
      assert.deepEqual(rec.errors, []);
      // It stays on SSE, and websocket-only settings do not bring it back.
      const tries = px.wsRefused;
      c.subscribe("fb2.*");
      await post(A.url, "fb2.y", "1");
      await rec.until((r) => r.named("fb2.").length === 1, "fb2.y");
      assert.equal(px.wsRefused, tries);
      c.close();
    } finally {
      await px.close();
    }
  });

  it("websocket only: a refused upgrade is retried, never SSE", async () => {
    const px = await proxy(A.port);
    try {
      const [c, rec] = client({ url: `http://${HOST}:${px.port}`, transport: "websocket" });
      c.connect().catch(() => {});
      await rec.until((r) => r.reconnects.length >= 4, "retries");
      assert.equal(c.state, "connecting");
      assert.equal(c.transport, null);
      c.close();
    } finally {
      await px.close();
    }
  });

  for (const transport of ["websocket", "sse", "auto"]) {
    it(`${transport}: a bad token is fatal`, async () => {
      for (const token of [undefined, "wrong", jwt("another-secret-of-at-least-32-bytes-xx", { subscribe: ["t.*"] })]) {
        const [c, rec] = client({ url: E.url, transport, token });
        c.subscribe("t.*");
        const err = await c.connect().then(() => null, (e) => e);
        assert.ok(err, `token ${token}: connected`);
        assert.equal(err.status, 401);
        assert.ok(["unauthorized", "invalid_token"].includes(err.code), err.code);
        assert.equal(err.fatal, true);
        assert.equal(c.state, "closed");
        assert.equal(rec.errors.length, 1);
        assert.equal(rec.reconnects.length, 0);
      }
    });
  }

  for (const transport of ["websocket", "sse"]) {
    it(`${transport}: a token that expires while connected: fatal if fixed, renewed by a function`, async () => {
      const mint = (s = 2) => jwt(SECRET, { exp: Math.floor(Date.now() / 1000) + s, subscribe: ["x.*"], dispatch: ["x.*"] });
      const [fixed, rf] = client({ url: F.url, transport, token: mint() });
      fixed.subscribe("x.*");
      let calls = 0;
      const [renewed, rr] = client({ url: F.url, transport, token: () => mint(calls++ ? 3600 : 2) });
      renewed.subscribe("x.*");
      await Promise.all([fixed.connect(), renewed.connect()]);
      // The server ends both when the token expires; the fixed one is
      // then refused, the other comes back with a fresh token.
      await rf.until(() => fixed.state === "closed", "the fixed token refused");
      const e = rf.errors.find((x) => x.fatal);
      assert.equal(e?.code, "token_expired", JSON.stringify(rf.errors));
      await rr.until(() => rr.states.length >= 4 && renewed.state === "open", "the renewed reconnect");
      assert.ok(calls >= 2, `${calls} token calls`);
      const id = await renewed.dispatch("x.after", 1);
      await rr.until((r) => r.named("x.after").length === 1, "x.after");
      assert.equal(rr.named("x.after")[0].id, id);
      assert.ok(!rr.errors.some((x) => x.fatal));
    });
  }

  it("an expired client token is fatal: token_expired", async () => {
    const token = jwt(SECRET, { exp: Math.floor(Date.now() / 1000) - 3600, subscribe: ["t.*"] });
    const [c] = client({ url: E.url, token });
    await assert.rejects(c.connect(), { code: "token_expired", status: 401 });
  });

  for (const transport of ["websocket", "sse"]) {
    it(`${transport}: the API token, from a function called at each connect`, async () => {
      let calls = 0;
      const [c, rec] = client({ url: E.url, transport, token: async () => (calls++, ADMIN) });
      c.subscribe("adm.*");
      await c.connect();
      assert.ok(calls >= 1);
      const id = await c.dispatch("adm.x", 1);
      await rec.until((r) => r.events.length === 1, "adm.x");
      assert.equal(rec.events[0].id, id);
    });

    it(`${transport}: a client token's forbidden patterns surface as errors, the rest goes on`, async () => {
      const token = jwt(SECRET, { sub: "t", subscribe: ["ok.*"], dispatch: ["ok.*"] });
      const [c, rec] = client({ url: E.url, transport, token });
      const ok = c.subscribe("ok.*");
      c.subscribe("no.*"); // in the first URL: that upgrade is refused
      await c.connect();
      const e1 = rec.errors.find((e) => e.pattern === "no.*");
      assert.ok(e1, JSON.stringify(rec.errors));
      assert.equal(e1.code, "forbidden");
      assert.deepEqual(c.patterns, ["ok.*"]);
      if (transport === "websocket") {
        // Subscribed while open: the answer names it, the socket stays.
        c.subscribe("nope.*");
        await rec.until((r) => r.errors.some((e) => e.pattern === "nope.*"), "forbidden answer");
        assert.deepEqual(c.patterns, ["ok.*"]);
      }
      await assert.rejects(c.dispatch("no.x"), { code: "forbidden" });
      const id = await c.dispatch("ok.x", "fine");
      await rec.until((r) => r.events.length === 1, "ok.x");
      assert.equal(rec.events[0].id, id);
      assert.equal(ok.pattern, "ok.*");
      assert.equal(c.state, "open");
      assert.equal(rec.states.filter((s) => s === "open").length, 1);
    });
  }
});

// A proxy in front of taskbus that answers 404 to /ws (websocket
// upgrades included) and passes everything else on, as a proxy that
// blocks websockets would.
function proxy(port) {
  const st = { wsRefused: 0 };
  const srv = http.createServer((req, res) => {
    if (req.url.startsWith("/ws")) {
      res.writeHead(404, { "content-type": "text/html" });
      res.end("<h1>no websockets here</h1>");
      return;
    }
    const up = http.request(
      { host: HOST, port, path: req.url, method: req.method, headers: req.headers },
      (ur) => {
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  srv.on("upgrade", (req, sock) => {
    st.wsRefused++;
    sock.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  return new Promise((resolve) => {
    srv.listen(0, HOST, () => {
      st.port = srv.address().port;
      st.close = () => {
        srv.closeAllConnections();
        return new Promise((r) => srv.close(r));
      };
      resolve(st);
    });
  });
}
