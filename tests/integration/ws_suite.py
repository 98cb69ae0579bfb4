#!/usr/bin/python3
"""ws_suite.py - end-to-end tests of the websocket endpoint, GET /ws.

Runs the real taskbus binary ($TASKBUS_BIN) on free 127.0.0.1 ports, with
a throwaway redis-server (a mktemp -d directory, as redis_harness.h does)
for the two-instance cases, and drives it with the websockets client
(python3-websockets), a minimal hand-written websocket client for what
that client will not send (bad UTF-8, raw fragments, unanswered pings, a
reader that stops reading), and http.client for the HTTP side. The
helpers it shares with service_suite.py are in tbharness.py, beside it.

Prints one line per test case, "PASS name" or "FAIL name: reason", and
exits 1 if any failed. Every wait has a timeout (scaled up for sanitizer
builds); a watchdog ends the suite after HARD_CAP_S. Everything started
is stopped: try/finally per case, an atexit handler, SIGKILL on our death
(PR_SET_PDEATHSIG) and a reaper that removes the temp directory. At the
end of each group, each taskbus gets SIGTERM and must exit 0 within 15 s:
a sanitizer report makes that fail, with the log's tail printed.

Usage: ws_suite.py [WORD...]  runs only the cases whose group or name
contains one of the words (all when none are given).
"""

import asyncio
import http.client
import json
import os
import re
import signal
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, SAN_RE, STOP_TIMEOUT_S, RawWS,  # noqa: E402
                       Redis, Refused, Resp, T, TaskbusProc, check,
                       child_env, end_proc, http_req, read_text, spawn, tail)

# ------------------------------------------------------------------ HTTP


async def ahttp(port, method, path, body=None, headers=None, timeout=None):
    return await asyncio.to_thread(http_req, port, method, path, body, headers,
                                   timeout)


class Poster:
    """POSTs events over one keep-alive connection (for bulk)."""

    def __init__(self, port, headers=None):
        self.port = port
        self.headers = dict(headers or {})
        self.c = None

    def post(self, name, body):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(HOST, self.port,
                                                    timeout=T(10))
            try:
                self.c.request("POST", "/events/" + name, body=body,
                               headers=self.headers)
                r = self.c.getresponse()
                data = r.read()
                if r.will_close:
                    self.c.close()
                    self.c = None
                return Resp(r.status, {}, data)
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = None
                if attempt:
                    raise

    def close(self):
        if self.c:
            self.c.close()
            self.c = None


def check_status(r, status, code=None, what=""):
    check(r.status == status and (code is None or r.code() == code),
          f"{what}: want {status}{' ' + code if code else ''}, got {r!r}")
    if code is not None:
        check(isinstance(r.json.get("message"), str) and r.json["message"],
              f"{what}: error without a message: {r!r}")


async def poll_until(fn, timeout, interval=0.05):
    """Calls the async fn until it returns a true value or timeout passes;
    returns the last value."""
    end = time.monotonic() + timeout
    while True:
        v = await fn()
        if v or time.monotonic() >= end:
            return v
        await asyncio.sleep(interval)


# ------------------------------------------------------------------ servers


class Taskbus(TaskbusProc):
    """One taskbus process on a free loopback port, log in H.root."""

    def __init__(self, name, *args):
        super().__init__(name, *args)
        self.log = None
        self.terminated = None
        self.ready = False  # /healthz answered

    def _spawn(self, attempt):
        self.log = os.path.join(H.root, f"taskbus-{self.name}-{attempt}.log")
        argv = [H.bin, "--listen", f"{HOST}:{self.port}", "--workers", "2",
                "--tick", "0", "--quiet", *self.args]
        return (spawn(argv, self.log, env=child_env(keep_taskbus=True)),
                self.log)

    def _listening(self):
        return f"listening on {HOST}:{self.port}" in self.log_text()

    def _started(self, took):
        self.ready = True

    def log_text(self):
        return read_text(self.log)

    def terminate(self):
        """SIGTERM, once: a second one makes taskbus exit at once."""
        if self.proc and self.proc.poll() is None and not self.terminated:
            self.terminated = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self):
        """SIGTERM (unless sent already); (status, seconds), status None
        when it had to be killed STOP_TIMEOUT_S after the SIGTERM."""
        self.terminate()
        t0 = self.terminated or time.monotonic()
        try:
            rc = self.proc.wait(max(0.1, t0 + STOP_TIMEOUT_S -
                                    time.monotonic()))
        except subprocess.TimeoutExpired:
            end_proc(self.proc, signal.SIGKILL)
            rc = None
        return rc, time.monotonic() - t0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


# ------------------------------------------------------------------ clients


def upgrade_refused(port, path, headers=None):
    """Attempts an upgrade that must be refused; returns the Resp."""
    try:
        w = RawWS(port, path, headers)
    except Refused as e:
        return e.resp
    w.close()
    raise AssertionError(f"upgrade to {path} with {headers} was accepted")


class Client:
    """A websockets connection; sorts what arrives into replies (with "ok"
    or "error") and events (with "id" and "name")."""

    def __init__(self, ws, label):
        self.ws = ws
        self.label = label
        self.events = []
        self.replies = []

    async def _pump(self, end):
        left = end - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        try:
            msg = await asyncio.wait_for(self.ws.recv(), left)
        except ConnectionClosed:
            raise AssertionError(
                f"{self.label}: the connection closed ({self.ws.close_code} "
                f"{self.ws.close_reason!r})") from None
        check(isinstance(msg, str),
              f"{self.label}: a binary message: {msg[:80]!r}")
        try:
            o = json.loads(msg)
        except ValueError:
            raise AssertionError(f"{self.label}: not JSON: {msg[:200]!r}")
        check(isinstance(o, dict), f"{self.label}: not an object: {msg[:200]}")
        if "ok" in o or "error" in o:
            self.replies.append(o)
        elif "id" in o and "name" in o:
            self.events.append(o)
        else:
            raise AssertionError(f"{self.label}: neither an answer nor an "
                                 f"event: {msg[:200]}")

    async def reply(self, timeout=None):
        t = timeout or T(10)
        end = time.monotonic() + t
        while not self.replies:
            try:
                await self._pump(end)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.label}: no answer in {t} s")
        return self.replies.pop(0)

    async def event(self, timeout=None):
        t = timeout or T(10)
        end = time.monotonic() + t
        while not self.events:
            try:
                await self._pump(end)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.label}: no event in {t} s")
        return self.events.pop(0)

    async def events_until(self, name, timeout=None):
        """Events up to and including the first named name."""
        got = []
        while True:
            ev = await self.event(timeout)
            got.append(ev)
            if ev["name"] == name:
                return got

    async def request(self, msg, timeout=None):
        """Sends msg (a str/bytes as is, else as JSON) and returns the
        answer."""
        if not isinstance(msg, (str, bytes)):
            msg = json.dumps(msg)
        await self.ws.send(msg)
        return await self.reply(timeout)

    async def sync(self):
        """A round trip: once answered, the patterns of ?events= are in
        place (the handler adds them before it reads messages)."""
        r = await self.request({"subscribe": [], "ref": "sync"})
        check(r.get("ok") == "subscribe" and r.get("ref") == "sync",
              f"{self.label}: sync answered {r}")
        return r["patterns"]

    async def no_events(self, seconds):
        """Fails if an event arrives within seconds."""
        end = time.monotonic() + seconds
        try:
            while not self.events:
                await self._pump(end)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.label}: unexpected event "
                             f"{self.events[0]}")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), T(5))
        except (asyncio.TimeoutError, OSError):
            self.ws.transport.abort()


# ------------------------------------------------------------------ cases


class Ctx:
    """What a test case gets: its servers, and connections that are closed
    when it ends, however it ends."""

    def __init__(self, servers):
        self.s = servers
        self.srv = next(v for v in servers.values() if isinstance(v, Taskbus))
        self._clients = []
        self._raws = []

    async def connect(self, path, srv=None, headers=None, label=None,
                      compression=None, **kw):
        srv = srv or self.srv
        ws = await websockets.connect(
            srv.ws_url(path), extra_headers=headers, open_timeout=T(10),
            ping_interval=None, close_timeout=T(5), compression=compression,
            **kw)
        c = Client(ws, label or path)
        self._clients.append(c)
        return c

    async def refused(self, path, srv=None, headers=None, **kw):
        """Connects with the websockets client, expecting a refusal: the
        status code."""
        srv = srv or self.srv
        try:
            ws = await websockets.connect(
                srv.ws_url(path), extra_headers=headers, open_timeout=T(10),
                ping_interval=None, close_timeout=T(5), compression=None,
                **kw)
        except InvalidStatusCode as e:
            return e.status_code
        self._clients.append(Client(ws, path))
        raise AssertionError(f"upgrade to {path} was accepted")

    def raw(self, path, srv=None, **kw):
        w = RawWS((srv or self.srv).port, path, **kw)
        self._raws.append(w)
        return w

    async def close_all(self):
        for c in self._clients:
            await c.close()
        for w in self._raws:
            w.close()


async def ws_tasks(srv, headers=None):
    """{name: task} of the kinds ws and ws.receiver in GET /tasks."""
    r = await ahttp(srv.port, "GET", "/tasks", headers=headers)
    check_status(r, 200, what="GET /tasks")
    return {t["name"]: t for t in r.json["tasks"]
            if t.get("kind") in ("ws", "ws.receiver")}


async def gone(srv, rid, timeout, headers=None):
    """Waits until neither ws:rid nor receiver:rid is listed; returns the
    seconds it took, fails if they stay."""
    t0 = time.monotonic()
    names = {f"ws:{rid}", f"receiver:{rid}"}

    async def left():
        return not (names & set(await ws_tasks(srv, headers)))

    ok = await poll_until(left, timeout)
    check(ok, f"tasks {sorted(names & set(await ws_tasks(srv, headers)))} "
              f"still listed {timeout} s after the close")
    return time.monotonic() - t0


async def metric(srv, name, headers=None):
    r = await ahttp(srv.port, "GET", "/metrics", headers=headers)
    check_status(r, 200, what="GET /metrics")
    m = re.search(rf"^{re.escape(name)} (\S+)$", r.body.decode(), re.M)
    check(m, f"/metrics has no {name}")
    return float(m.group(1))


def check_envelope(ev, name, data, post_id=None):
    check(set(ev) == {"id", "name", "data", "ts", "origin"},
          f"envelope members {sorted(ev)}: want id, name, data, ts, origin")
    check(ev["name"] == name, f"event name {ev['name']!r}, want {name!r}")
    check(ev["data"] == data, f"{name}: data {ev['data']!r}, want {data!r}")
    if post_id is not None:
        check(ev["id"] == post_id,
              f"{name}: id {ev['id']!r}, the POST said {post_id!r}")
    check(isinstance(ev["ts"], int)
          and abs(ev["ts"] / 1e6 - time.time()) < 300,
          f"{name}: ts {ev['ts']!r} is not microseconds since the epoch, "
          f"now")
    check(isinstance(ev["origin"], str) and ev["origin"],
          f"{name}: origin {ev['origin']!r}")


async def post(srv, name, body=b"", headers=None):
    r = await ahttp(srv.port, "POST", "/events/" + name, body, headers)
    check_status(r, 202, what=f"POST /events/{name}")
    check(r.json.get("name") == name and r.json.get("id"),
          f"POST /events/{name} answered {r!r}")
    return r.json["id"]


# ------------------------------------------------------------ main server

MAIN_ARGS = ("--ws-max-message", "4096", "--ws-max-patterns", "4",
             "--ws-origins", "http://ok.example, https://app.example:8443",
             "--max-body", "8192")


async def t_http_post(ctx):
    srv = ctx.srv
    r = await ahttp(srv.port, "POST", "/events/wstest.post", {"a": 1})
    check_status(r, 202, what="POST /events/wstest.post")
    check(r.json.get("name") == "wstest.post" and isinstance(
        r.json.get("id"), str) and r.json["id"], f"202 body {r!r}")
    r = await ahttp(srv.port, "POST", "/events/a..b", "x")
    check_status(r, 400, "bad_name", "POST /events/a..b")
    r = await ahttp(srv.port, "POST", "/events/wstest.big", b"x" * 8192)
    check_status(r, 202, what="POST of exactly --max-body (8192) bytes")
    r = await ahttp(srv.port, "POST", "/events/wstest.big", b"x" * 8193)
    check_status(r, 413, "too_large", "POST of --max-body + 1 bytes")


async def t_upgrade_patterns(ctx):
    srv = ctx.srv
    refusals = [
        ("a..b", "bad_pattern", "an empty segment"),
        (".a", "bad_pattern", "an empty first segment"),
        ("a.", "bad_pattern", "an empty last segment"),
        ("a" * 300, "bad_pattern", "a 300-byte pattern"),
        ("a" * 201, "bad_pattern", "a 201-byte pattern"),
        ("a.b%24", "bad_pattern", "a '$' in a segment"),
        ("ok.one,a b", "bad_pattern", "a space, after a valid one"),
        ("<x", "bad_pattern", "an unclosed <param>"),
        ("p1,p2,p3,p4,p5", "too_many_patterns", "5 patterns, the limit 4"),
    ]
    for q, code, why in refusals:
        path = "/ws?events=" + q.replace(" ", "%20")
        st = await ctx.refused(path)
        check(st == 400, f"{why} ({q[:40]}): websockets got {st}, want 400")
        r = await asyncio.to_thread(upgrade_refused, srv.port, path)
        check_status(r, 400, code, f"{why} ({q[:40]})")
    accepted = [
        ["a.*.<id>.b", "c", "d-e_F9", "*"],  # exactly the limit, 4
        ["a" * 200],  # exactly the longest
        ["x.<param>", "y.*.z"],
    ]
    for pats in accepted:
        c = await ctx.connect("/ws?events=" + ",".join(pats))
        got = await c.sync()
        check(sorted(got) == sorted(pats),
              f"connected with {pats}, the server holds {got}")
        await c.close()


async def t_upgrade_refusals(ctx):
    srv = ctx.srv
    r = await ahttp(srv.port, "GET", "/ws?events=a.b")
    check_status(r, 426, "upgrade_required", "GET /ws without Upgrade")
    for path in ("/tasks", "/nope", "/events/a.b"):
        st = await ctx.refused(path)
        check(st == 404, f"an upgrade to {path}: {st}, want 404")
        r = await asyncio.to_thread(upgrade_refused, srv.port, path)
        check(r.status == 404, f"an upgrade to {path}: {r!r}")
    bad = ["http://evil.example", "http://ok.example:80",
           "http://ok.example.evil.example", "https://ok.example", "null"]
    for origin in bad:
        st = await ctx.refused("/ws?events=a", origin=origin)
        check(st == 403, f"Origin {origin}: {st}, want 403")
        r = await asyncio.to_thread(upgrade_refused, srv.port, "/ws?events=a",
                                    {"Origin": origin})
        check_status(r, 403, "origin_not_allowed", f"Origin {origin}")
    # Handshakes as browsers send them, and after a keep-alive request.
    for kw in ({"upgrade": "WebSocket"},
               {"connection": "keep-alive, Upgrade"},
               {"first": "/healthz"}):
        w = ctx.raw("/ws?events=o.k", **kw)
        w.send_text('{"subscribe":[],"ref":"hs"}')
        r = await asyncio.to_thread(w.recv_json, T(5))
        check(r.get("ref") == "hs", f"a handshake with {kw}: answered {r}")
        w.close()
    for origin in ("http://ok.example", "HTTPS://APP.example:8443", None):
        c = await ctx.connect("/ws?events=o.k", origin=origin)
        await c.sync()
        eid = await post(srv, "o.k", "hi")
        ev = await c.event()
        check(ev["id"] == eid, f"Origin {origin}: got {ev}")
        await c.close()


async def t_envelopes(ctx):
    srv = ctx.srv
    c = await ctx.connect("/ws?events=orders.*,users.<uid>.login")
    await c.sync()
    want = []
    i = await post(srv, "orders.created", {"total": 5, "items": [1, 2]})
    want.append((i, "orders.created", {"total": 5, "items": [1, 2]}))
    i = await post(srv, "users.42.login", "plain text")
    want.append((i, "users.42.login", "plain text"))
    await post(srv, "orders.created.late", "{}")  # 3 segments: no match
    await post(srv, "other.thing", "{}")
    await post(srv, "users.42.logout", "{}")
    i = await post(srv, "orders.list", [1, "two", None])
    want.append((i, "orders.list", [1, "two", None]))
    i = await post(srv, "orders.num", "42")  # JSON, but not object/array
    want.append((i, "orders.num", "42"))
    i = await post(srv, "orders.utf8", "caf\u00e9 \u2713")
    want.append((i, "orders.utf8", "caf\u00e9 \u2713"))
    i = await post(srv, "orders.empty", b"")
    want.append((i, "orders.empty", ""))
    for eid, name, data in want:
        ev = await c.event()
        check_envelope(ev, name, data, eid)
    await c.no_events(0.3)


async def t_nul_data(ctx):
    """Event data is any UTF-8, U+0000 included: a POST body a\0b is
    dispatched (202), so is a websocket dispatch of "a\u0000b", and a
    subscriber gets back exactly those bytes."""
    srv = ctx.srv
    c = await ctx.connect("/ws?events=nul.*")
    await c.sync()
    r = await ahttp(srv.port, "POST", "/events/nul.http", b"a\0b")
    check_status(r, 202, what="POST /events/nul.http, body a\\0b")
    check_envelope(await c.event(), "nul.http", "a\0b", r.json["id"])
    r = await c.request({"event": "nul.ws", "data": "a\0b", "ref": "nul"})
    check(r.get("ok") == "dispatch", f"a websocket dispatch of a\\0b: {r}")
    check_envelope(await c.event(), "nul.ws", "a\0b", r["id"])
    # Names and patterns are not data: no NUL there (nor a cut at it).
    r = await c.request({"event": "nul.ws\0x", "data": "x", "ref": "n"})
    check(r.get("error") == "bad_name" and r.get("ref") == "n",
          f"a dispatch to event nul.ws\\0x: {r}")
    r = await c.request({"subscribe": ["nul.\0x"], "ref": "p"})
    check(r.get("error") == "bad_pattern" and r.get("ref") == "p",
          f"a subscribe to nul.\\0x: {r}")
    # Not UTF-8 is still refused.
    r = await ahttp(srv.port, "POST", "/events/nul.bad", b"a\0\xff")
    check_status(r, 400, "bad_data", "POST /events/nul.bad, body a\\0\\xff")
    await c.no_events(0.2)


async def t_messages(ctx):
    srv = ctx.srv
    c1 = await ctx.connect("/ws?events=chat.general", label="c1")
    c2 = await ctx.connect("/ws?events=chat.*", label="c2")
    await c1.sync()
    await c2.sync()
    r = await c1.request({"subscribe": ["chat.random", "news.<topic>"],
                          "ref": 1})
    check(r.get("ok") == "subscribe" and r.get("ref") == 1 and sorted(
        r.get("patterns", [])) == ["chat.general", "chat.random",
                                   "news.<topic>"], f"subscribe: {r}")
    r = await c1.request({"subscribe": ["chat.random"], "ref": "again"})
    check(r.get("ok") == "subscribe" and len(r.get("patterns", [])) == 3,
          f"subscribing to a held pattern again: {r}")
    i = await post(srv, "news.sports", "goal")
    ev = await c1.event()
    check_envelope(ev, "news.sports", "goal", i)
    r = await c1.request({"unsubscribe": ["chat.random", "not.held"],
                          "ref": "u"})
    check(r.get("ok") == "unsubscribe" and r.get("ref") == "u" and sorted(
        r.get("patterns", [])) == ["chat.general", "news.<topic>"],
          f"unsubscribe: {r}")
    i1 = await post(srv, "chat.random", "r")
    i2 = await post(srv, "chat.general", "g")
    ev = await c1.event()
    check(ev["id"] == i2, f"after unsubscribe, c1 got {ev} first, want only "
                          f"chat.general")
    got = [(await c2.event())["id"] for _ in range(2)]
    check(got == [i1, i2], f"c2 (chat.*) got {got}, want {[i1, i2]}")
    # Dispatch from the websocket: answered once, seen by both.
    r = await c1.request({"event": "chat.general", "data": {"from": "c1"},
                          "ref": [1, 2]})
    check(r.get("ok") == "dispatch" and r.get("name") == "chat.general"
          and r.get("ref") == [1, 2] and r.get("id"), f"dispatch: {r}")
    ev = await c1.event()
    check_envelope(ev, "chat.general", {"from": "c1"}, r["id"])
    ev = await c2.event()
    check_envelope(ev, "chat.general", {"from": "c1"}, r["id"])
    for data, want in (("hi", "hi"), (None, ""), (7, "7"), ([1], [1])):
        msg = {"event": "chat.typed"}
        if data is not None:
            msg["data"] = data
        r = await c1.request(msg)
        check(r.get("ok") == "dispatch" and "ref" not in r,
              f"dispatch {msg}: {r}")
        ev = await c2.event()
        check_envelope(ev, "chat.typed", want, r["id"])
    await c1.no_events(0.2)
    await c2.no_events(0.1)


async def t_bad_messages(ctx):
    srv = ctx.srv
    c = await ctx.connect("/ws?events=e.one")
    await c.sync()
    cases = [
        ("not json", "bad_json"),
        ('{"subscribe": [', "bad_json"),
        ("", "bad_json"),
        ('{"event":"a","event":"b"}', "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"just a string"', "bad_message"),  # JSON, not an object
        ("42", "bad_message"),
        ("null", "bad_message"),
        ("{}", "bad_message"),
        ({"event": "e.x", "subscribe": ["e.y"]}, "bad_message"),
        ({"subscribe": ["e.y"], "unsubscribe": ["e.y"]}, "bad_message"),
        ({"data": 1}, "bad_message"),
        (b'{"subscribe": []}', "bad_message"),  # binary
        ({"subscribe": [], "foo": 1}, "unknown_field"),
        ({"event": 5}, "bad_type"),
        ({"subscribe": "e.y"}, "bad_type"),
        ({"subscribe": [1]}, "bad_type"),
        ({"unsubscribe": {"e": 1}}, "bad_type"),
        ({"subscribe": ["e..y"]}, "bad_pattern"),
        ({"subscribe": ["e." + "x" * 300]}, "bad_pattern"),
        ({"event": "a..b"}, "bad_name"),
        ({"event": "x" * 300}, "bad_name"),
        ({"event": ""}, "bad_name"),
        ({"event": "e.*"}, "bad_name"),
        # 1 held + 4 new > 4; all or nothing
        ({"subscribe": ["p.1", "p.2", "p.3", "p.4"]}, "too_many_patterns"),
    ]
    wrong = []  # every case runs; all mismatches are reported together
    for msg, code in cases:
        r = await c.request(msg)
        if not (r.get("error") == code and isinstance(r.get("message"), str)
                and r["message"] and "ref" not in r):
            wrong.append(f"{str(msg)[:40]!r} answered {r}, want error {code}")
    check(not wrong, "; ".join(wrong))
    for msg, code in (({"bogus": 1, "ref": "r9"}, "unknown_field"),
                      ({"subscribe": ["a..b"], "ref": {"k": 3}}, "bad_pattern"),
                      ({"event": "a..b", "ref": None}, "bad_name")):
        r = await c.request(msg)
        check(r.get("error") == code and "ref" in r
              and r["ref"] == msg["ref"], f"{msg}: answered {r}")
    # Still open, and the refused subscribe added nothing.
    got = await c.sync()
    check(got == ["e.one"], f"after the errors the patterns are {got}")
    r = await c.request({"subscribe": ["p.1", "p.2", "p.3"]})
    check(r.get("ok") == "subscribe" and len(r["patterns"]) == 4,
          f"subscribing up to exactly the limit: {r}")
    i = await post(srv, "e.one", "still here")
    ev = await c.event()
    check_envelope(ev, "e.one", "still here", i)


async def t_request_id(ctx):
    srv = ctx.srv
    rid = "wstest-rid-1"
    c = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID": rid})
    await c.sync()
    tasks = await ws_tasks(srv)
    h, rcv = tasks.get(f"ws:{rid}"), tasks.get(f"receiver:{rid}")
    check(h and h["kind"] == "ws" and h["state"] == "running",
          f"ws:{rid} in GET /tasks: {h}; ws tasks listed: {sorted(tasks)}")
    check(rcv and rcv["kind"] == "ws.receiver" and rcv["state"] == "running",
          f"receiver:{rid} in GET /tasks: {rcv}")
    r = await ahttp(srv.port, "GET", f"/tasks/ws:{rid}")
    check_status(r, 200, what=f"GET /tasks/ws:{rid}")
    check(r.json.get("name") == f"ws:{rid}", f"GET /tasks/ws:{rid}: {r!r}")
    st = await ctx.refused("/ws?events=rid.y", headers={"X-Request-ID": rid})
    check(st == 409, f"a second connection with request id {rid}: {st}")
    r = await asyncio.to_thread(upgrade_refused, srv.port, "/ws?events=rid.y",
                                {"X-Request-ID": rid})
    check_status(r, 409, "request_id_in_use", "a reused request id")
    i = await post(srv, "rid.x", "first still works")
    check((await c.event())["id"] == i, "the first connection lost events")
    await c.close()
    took = await gone(srv, rid, T(2))
    r = await ahttp(srv.port, "GET", f"/tasks/ws:{rid}")
    check_status(r, 404, what=f"GET /tasks/ws:{rid} after the close")
    c = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID": rid})
    await c.sync()
    await c.close()
    await gone(srv, rid, T(2))
    # Without X-Request-ID: a generated id, the handler and its receiver.
    before = set(await ws_tasks(srv))
    c = await ctx.connect("/ws?events=rid.x")
    await c.sync()
    new = {n: t for n, t in (await ws_tasks(srv)).items() if n not in before}
    hs = [n for n in new if n.startswith("ws:") and new[n]["kind"] == "ws"]
    check(len(hs) == 1, f"one new ws: task wanted, new tasks: {sorted(new)}")
    gen = hs[0][3:]
    check(gen and f"receiver:{gen}" in new,
          f"no receiver:{gen} next to {hs[0]}: {sorted(new)}")
    await c.close()
    await gone(srv, gen, T(2))
    # Five at once with one id: one connection holds it, the others are
    # refused (409) or closed (1008) right after the upgrade.
    async def racer(k):
        try:
            c = await ctx.connect("/ws?events=rid.x", label=f"racer {k}",
                                  headers={"X-Request-ID": "wstest-race"})
        except InvalidStatusCode as e:
            return f"status {e.status_code}"
        try:
            await c.sync()
            return "open"
        except (AssertionError, ConnectionClosed):
            return f"closed {c.ws.close_code}"

    outcomes = await asyncio.gather(*(racer(k) for k in range(5)))
    check(outcomes.count("open") == 1 and all(
        o in ("open", "status 409", "closed 1008") for o in outcomes),
          f"5 connections with one request id: {outcomes}")
    await asyncio.sleep(0.1)
    check(outcomes.count("open") == 1 and sum(
        1 for c in ctx._clients if c.ws.open) == 1,
          "more than one racer still open")
    for c in ctx._clients:
        await c.close()
    await gone(srv, "wstest-race", T(2))
    # The longest id taken as is (64), one longer is replaced.
    long_id = "L" * 63 + "z"
    c = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID":
                                                       long_id})
    await c.sync()
    tasks = await ws_tasks(srv)
    check(f"ws:{long_id}" in tasks and f"receiver:{long_id}" in tasks,
          f"a 64-byte request id: listed {sorted(tasks)}")
    c2 = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID":
                                                        long_id + "9"})
    await c2.sync()
    tasks = await ws_tasks(srv)
    check(len(tasks) == 4 and not any(long_id + "9" in n for n in tasks),
          f"a 65-byte request id: listed {sorted(tasks)}")
    await c.close()
    await c2.close()
    return f"tasks gone {took:.2f} s after the close"


async def t_max_message(ctx):
    srv = ctx.srv
    limit = 4096

    def message(size):
        head, foot = '{"event":"size.edge","data":"', '"}'
        return head + "x" * (size - len(head) - len(foot)) + foot

    c = await ctx.connect("/ws?events=size.edge")
    await c.sync()
    m = message(limit)
    check(len(m.encode()) == limit, "test bug: message size")
    r = await c.request(m)
    check(r.get("ok") == "dispatch", f"a message of exactly {limit} bytes: "
                                     f"{r}")
    ev = await c.event()
    check(len(ev["data"]) == limit - 31, f"the event's data has "
                                         f"{len(ev['data'])} bytes")
    await c.ws.send(message(limit + 1))
    try:
        extra = await asyncio.wait_for(c.ws.recv(), T(5))
        raise AssertionError(f"a message of {limit + 1} bytes was answered:"
                             f" {extra[:100]}")
    except ConnectionClosed:
        pass
    check(c.ws.close_code == 1009,
          f"a message of {limit + 1} bytes: closed with {c.ws.close_code}, "
          f"want 1009")
    # The same in fragments: the limit is on the whole message.
    w = ctx.raw("/ws?events=size.edge")
    m = message(limit).encode()
    w.send_frame(0x1, m[:2048], fin=False)
    w.send_frame(0x0, m[2048:], fin=True)
    r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "dispatch", f"{limit} bytes in two fragments: {r}")
    m = message(limit + 1).encode()
    w.send_frame(0x1, m[:2048], fin=False)
    w.send_frame(0x0, m[2048:], fin=True)
    code, why, texts, _ = await asyncio.to_thread(w.close_code, T(5))
    check(code == 1009, f"{limit + 1} bytes in two fragments: close {code} "
                        f"{why!r}, want 1009")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the closes")


async def t_bad_utf8(ctx):
    w = ctx.raw("/ws?events=utf.x")
    w.send_text('{"subscribe":[],"ref":"raw"}')
    r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "subscribe" and r.get("ref") == "raw",
          f"the raw client's first message: {r}")
    # "é" split between two fragments is valid UTF-8 as a message.
    m = '{"event":"utf.x","data":"\u00e9"}'.encode()
    cut = m.index(b"\xc3") + 1
    w.send_frame(0x1, m[:cut], fin=False)
    w.send_frame(0x0, m[cut:], fin=True)
    r = await asyncio.to_thread(w.recv_json, T(5))
    if "id" in r and "ok" not in r:  # the event may come first
        r = await asyncio.to_thread(w.recv_json, T(5))
    check(r.get("ok") == "dispatch", f"a character split between fragments:"
                                     f" {r}")
    w.send_frame(0x1, b"\xff\xfe")
    code, why, _, _ = await asyncio.to_thread(w.close_code, T(5))
    check(code == 1007, f"text b'\\xff\\xfe': close {code} {why!r}, want 1007")
    # Then the connection ends.
    try:
        fin, op, p = await asyncio.to_thread(w.recv_frame, T(5))
        raise AssertionError(f"a frame after the close: opcode {op}")
    except (EOFError, ConnectionResetError):
        pass


async def t_protocol(ctx):
    """Framing as RFC 6455 has it, with a hand-written client."""

    def run():
        w = ctx.raw("/ws?events=proto.x")
        w.send_frame(0x9, b"hello-ping")
        fin, op, p = w.recv_frame(T(5))
        check(op == 0xA and p == b"hello-ping",
              f"a ping with a payload: answered opcode {op} {p!r}, want a "
              f"pong with the same payload")
        # One frame, a byte per TCP segment.
        w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in w.frame(0x1, b'{"subscribe":["proto.y"],"ref":"bytes"}'):
            w.sock.sendall(bytes([b]))
            time.sleep(0.001)
        r = w.recv_json(T(5))
        check(r.get("ok") == "subscribe" and r.get("ref") == "bytes",
              f"a frame sent a byte at a time: {r}")
        # A control frame between the fragments of a message.
        m = b'{"subscribe":[],"ref":"frag"}'
        w.send_frame(0x1, m[:10], fin=False)
        w.send_frame(0x9, b"mid")
        w.send_frame(0x0, m[10:20], fin=False)
        w.send_frame(0x0, m[20:], fin=True)
        fin, op, p = w.recv_frame(T(5))
        check(op == 0xA and p == b"mid", f"a ping between fragments: "
                                         f"opcode {op} {p!r}")
        r = w.recv_json(T(5))
        check(r.get("ref") == "frag", f"a message in 3 fragments: {r}")
        # Our close: answered with a close, then the connection ends.
        w.send_frame(0x8, struct.pack("!H", 4001) + b"bye")
        fin, op, p = w.recv_frame(T(5))
        check(op == 0x8, f"our close answered with opcode {op} {p!r}")
        echoed = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else None
        try:
            extra = w.recv_frame(T(5))
            raise AssertionError(f"a frame after the close: {extra}")
        except (EOFError, ConnectionResetError):
            pass
        # Bad close frames: close 1002 (the frame headers: t_frame_errors).
        bad = [
            ("a 1-byte close payload", RawWS.frame(0x8, b"x")),
            ("close code 1005 (reserved)",
             RawWS.frame(0x8, struct.pack("!H", 1005))),
            ("close code 999", RawWS.frame(0x8, struct.pack("!H", 999))),
        ]
        wrong = []
        for why, data in bad:
            w = ctx.raw("/ws?events=proto.x")
            w.sock.sendall(data)
            try:
                code, reason, _, _ = w.close_code(T(3))
            except socket.timeout:
                wrong.append(f"{why}: still open after {T(3)} s")
                continue
            if code != 1002:
                wrong.append(f"{why}: closed with {code} {reason!r}, want "
                             f"1002")
        # A close reason that is not UTF-8: 1007 (or 1002).
        w = ctx.raw("/ws?events=proto.x")
        w.send_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe")
        try:
            code, reason, _, _ = w.close_code(T(3))
            if code not in (1007, 1002, None):
                wrong.append(f"a close reason that is not UTF-8: closed with "
                             f"{code} {reason!r}, want 1007")
        except socket.timeout:
            wrong.append("a close reason that is not UTF-8: still open")
        check(not wrong, "; ".join(wrong))
        return echoed

    echoed = await asyncio.to_thread(run)
    r = await ahttp(ctx.srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz")
    return f"our close 4001 answered with {echoed}"


async def t_frame_errors(ctx):
    """A frame whose header breaks RFC 6455 (5.2, 5.4, 5.5) fails the
    connection with a close frame, 1002 and a reason (7.1.7, 7.4.1), not a
    dropped connection; the server goes on serving."""
    texts = [(op, f"opcode {op:#x}") for op in (0x1, 0x2)]
    unknown = list(range(0x3, 0x8)) + list(range(0xB, 0x10))
    top_bit = (struct.pack("!BBQ", 0x81, 0xFF, 1 << 63 | 5) + b"mask" +
               b"hello")
    bad = [
        ("a fragmented ping", [RawWS.frame(0x9, b"p", fin=False)]),
        ("a fragmented pong", [RawWS.frame(0xA, b"p", fin=False)]),
        ("a fragmented close", [RawWS.frame(0x8, struct.pack("!H", 1000),
                                            fin=False)]),
        ("an empty fragmented ping", [RawWS.frame(0x9, b"", fin=False)]),
        ("5 bytes in the 16-bit length form",
         [RawWS.frame(0x1, b"hello", form=126)]),
        ("125 bytes in the 16-bit length form",
         [RawWS.frame(0x1, b"x" * 125, form=126)]),
        ("5 bytes in the 64-bit length form",
         [RawWS.frame(0x1, b"hello", form=127)]),
        ("200 bytes in the 64-bit length form",
         [RawWS.frame(0x2, b"x" * 200, form=127)]),
        ("a 64-bit length with its top bit set", [top_bit]),
        ("a continuation in the 16-bit form",
         [RawWS.frame(0x1, b"{", fin=False),
          RawWS.frame(0x0, b"}", form=126)]),
        ("a ping in the 16-bit length form",
         [RawWS.frame(0x9, b"p", form=126)]),
        ("a 126-byte ping", [RawWS.frame(0x9, b"p" * 126)]),
        ("a 126-byte close", [RawWS.frame(0x8, struct.pack("!H", 1000) +
                                          b"r" * 124)]),
        ("an unmasked frame", [RawWS.frame(0x1, b"{}", masked=False)]),
        ("an unmasked ping", [RawWS.frame(0x9, b"", masked=False)]),
        ("a continuation with no message", [RawWS.frame(0x0, b"{}")]),
        ("a continuation after a whole message",
         [RawWS.frame(0x1, b'{"subscribe":[]}'), RawWS.frame(0x0, b"{}")]),
    ]
    bad += [(f"RSV bits {rsv:03b}", [RawWS.frame(0x1, b"{}", rsv=rsv)])
            for rsv in (4, 2, 1, 7)]
    bad += [(f"RSV bits {rsv:03b} on a ping", [RawWS.frame(0x9, b"", rsv=rsv)])
            for rsv in (4, 1)]
    bad += [(f"unknown opcode {op:#x}", [RawWS.frame(op, b"x")])
            for op in unknown]
    bad += [(f"unknown opcode {op:#x} inside a message",
             [RawWS.frame(0x1, b"{", fin=False), RawWS.frame(op, b"x")])
            for op in (0x3, 0xB)]
    bad += [(f"{what} inside a fragmented message",
             [RawWS.frame(0x1, b"{", fin=False), RawWS.frame(op, b"{}")])
            for op, what in texts]

    def run():
        wrong = []
        for why, frames in bad:
            w = ctx.raw("/ws?events=proto.x")
            try:
                w.sock.sendall(b"".join(frames))
                code, reason, _, _ = w.close_code(T(3))
            except socket.timeout:
                wrong.append(f"{why}: still open after {T(3)} s")
                continue
            finally:
                w.close()
            if code is None:
                wrong.append(f"{why}: the connection dropped without a "
                             f"close frame")
            elif code != 1002 or not reason:
                wrong.append(f"{why}: closed with {code} {reason!r}, want "
                             f"1002 and a reason")
        return wrong

    wrong = await asyncio.to_thread(run)
    r = await ahttp(ctx.srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the bad frames")
    check(not wrong, f"{len(wrong)} of {len(bad)}: " + "; ".join(wrong))
    return f"{len(bad)} bad frame headers, each closed with 1002"


async def t_protocol_log(ctx):
    """The log says what was wrong with a connection it closed: protocol
    errors are not logged as messages over ws_max_message (1009)."""
    srv = ctx.srv
    start = len(srv.log_text())
    cases = {
        "wstest-proto-unmasked": RawWS.frame(0x1, b'{"subscribe":[]}',
                                             masked=False),
        "wstest-proto-op3": RawWS.frame(0x3, b"x"),
        "wstest-proto-close999": RawWS.frame(0x8, struct.pack("!H", 999)),
    }
    codes = {}
    for rid, data in cases.items():
        w = ctx.raw("/ws?events=proto.x", headers={"X-Request-ID": rid})
        w.sock.sendall(data)
        codes[rid] = (await asyncio.to_thread(w.close_code, T(3)))[0]
    for rid in cases:
        await gone(srv, rid, T(2))
    lines = [l for l in srv.log_text()[start:].splitlines()
             if any(rid in l for rid in cases)]
    wrong = [l for l in lines if "ws_max_message" in l or "1009" in l]
    check(not wrong, f"closed with {codes}, but logged: {wrong}")
    return f"closed with {codes}"


async def t_cancel_ws_handler(ctx):
    """DELETE /tasks/ws:<id>: an operator disconnects a client."""
    srv = ctx.srv
    c = await ctx.connect("/ws?events=kick.*",
                          headers={"X-Request-ID": "wstest-kick"})
    await c.sync()
    r = await ahttp(srv.port, "DELETE", "/tasks/ws:wstest-kick?timeout=5")
    check_status(r, 200, what="DELETE /tasks/ws:wstest-kick")
    try:
        m = await asyncio.wait_for(c.ws.recv(), T(5))
        raise AssertionError(f"still open after the DELETE: got {m[:100]}")
    except ConnectionClosed:
        pass
    check(c.ws.close_code in (1000, 1001, 1011),
          f"closed with {c.ws.close_code} {c.ws.close_reason!r}")
    await gone(srv, "wstest-kick", T(2))
    return f"closed with {c.ws.close_code}"


async def t_cancel_ws_receiver(ctx):
    """DELETE /tasks/receiver:<id>: the connection may end, or go on
    receiving; it must not stay open, deaf, with its receiver gone."""
    srv = ctx.srv
    rid = "wstest-deaf"
    c = await ctx.connect("/ws?events=deaf.*", headers={"X-Request-ID": rid})
    await c.sync()
    r = await ahttp(srv.port, "DELETE", f"/tasks/receiver:{rid}?timeout=5")
    check_status(r, 200, what=f"DELETE /tasks/receiver:{rid}")
    await asyncio.sleep(0.2)
    i = await post(srv, "deaf.x", "hello?")
    try:
        ev = await c.event(3)  # delivery takes milliseconds, even so
        check(ev["id"] == i, f"got {ev}")
        outcome = "still receiving"
    except AssertionError as e:
        if c.ws.open:
            tasks = sorted(await ws_tasks(srv))
            r = await c.request({"subscribe": ["deaf.y"]})
            raise AssertionError(
                f"the connection stays open but gets no events ({e}); "
                f"listed: {tasks}; a subscribe is answered {r}")
        outcome = f"closed {c.ws.close_code}"
    tasks = set(await ws_tasks(srv))
    both = {f"ws:{rid}", f"receiver:{rid}"}
    check((both <= tasks) if c.ws.open else not (both & tasks),
          f"{outcome}, and listed: {sorted(tasks & both)}")
    return outcome


async def t_pipelined(ctx):
    """Messages sent without waiting (past ws_recv_queue_msgs, 64): each
    answered once, in order."""
    c = await ctx.connect("/ws?events=pipe.*")
    await c.sync()
    n = 300
    for i in range(n):
        if i % 3 == 0:
            msg = {"event": "pipe.ev", "data": {"i": i}, "ref": i}
        elif i % 3 == 1:
            msg = {("subscribe" if i % 2 else "unsubscribe"): ["pipe.extra"],
                   "ref": i}
        else:
            msg = {"bogus": True, "ref": i}
        await c.ws.send(json.dumps(msg))
    replies = [await c.reply(T(10)) for _ in range(n)]
    refs = [r.get("ref") for r in replies]
    check(refs == list(range(n)),
          f"answers out of order or missing: first refs {refs[:8]}")
    want = [r["id"] for r in replies[0::3]]
    check(all(r.get("ok") == "dispatch" for r in replies[0::3])
          and all(r.get("error") == "unknown_field" for r in replies[2::3]),
          "wrong answers")
    got = []
    while len(got) < len(want):
        got.append((await c.event())["id"])
    check(got == want, "the dispatched events came back out of order")
    await c.no_events(0.2)


async def t_fanout(ctx):
    srv = ctx.srv
    cs = await asyncio.gather(*(ctx.connect("/ws?events=fan.*",
                                            label=f"client {k}")
                                for k in range(50)))
    await asyncio.gather(*(c.sync() for c in cs))
    ids = [await post(srv, "fan.e", {"n": n}) for n in range(20)]

    async def check_one(c):
        got = [(await c.event())["id"] for _ in range(20)]
        check(got == ids, f"{c.label} got {len(got)} events, not the 20 in "
                          f"order")
        await c.no_events(0.2)

    await asyncio.gather(*(check_one(c) for c in cs))


async def t_default_client(ctx):
    """The websockets client as a user runs it: it offers permessage-deflate
    and pings every 20 s."""
    srv = ctx.srv
    ws = await websockets.connect(srv.ws_url("/ws?events=dflt.*"),
                                  open_timeout=T(10))
    c = Client(ws, "default client")
    ctx._clients.append(c)
    ext = ws.response_headers.get("Sec-WebSocket-Extensions")
    await c.sync()
    i = await post(srv, "dflt.one", {"k": "v" * 200})
    check_envelope(await c.event(), "dflt.one", {"k": "v" * 200}, i)
    r = await c.request({"event": "dflt.two", "data": "z" * 500})
    check(r.get("ok") == "dispatch", f"dispatch: {r}")
    check_envelope(await c.event(), "dflt.two", "z" * 500, r["id"])
    return f"extensions negotiated: {ext}"


def poster_thread(port, name, stop, ids, limit, pad=""):
    """Posts name events ({"seq": n}) until stop is set or limit, then one
    stream.end. Appends each id to ids."""
    p = Poster(port)
    try:
        for n in range(limit):
            if stop.is_set():
                break
            r = p.post(name, json.dumps({"seq": n, "pad": pad}))
            if r.status != 202:
                ids.append(("error", r.status, r.body[:200]))
                return
            ids.append(json.loads(r.body)["id"])
        r = p.post("stream.end", "end")
        ids.append(json.loads(r.body)["id"] if r.status == 202 else
                   ("error", r.status, r.body[:200]))
    finally:
        p.close()


async def t_close_midstream(ctx):
    srv = ctx.srv
    watcher = await ctx.connect("/ws?events=stream.*", label="watcher")
    a = await ctx.connect("/ws?events=stream.*", label="closing client",
                          headers={"X-Request-ID": "wstest-mid-clean"})
    b = ctx.raw("/ws?events=stream.*",
                headers={"X-Request-ID": "wstest-mid-abort"})
    await watcher.sync()
    await a.sync()
    b.send_text('{"subscribe":[]}')
    await asyncio.to_thread(b.recv_json, T(5))
    stop, ids = threading.Event(), []
    th = threading.Thread(target=poster_thread,
                          args=(srv.port, "stream.tick", stop, ids, 20000))
    th.start()
    try:
        for _ in range(20):
            await a.event()
        t_clean = time.monotonic()
        await a.close()  # a clean close while events flow
        check(a.ws.close_code == 1000, f"clean close: {a.ws.close_code}")
        for _ in range(20):
            await asyncio.to_thread(b.recv_frame, T(5))
        t_abort = time.monotonic()
        b.abort()  # a reset, unread events in its buffer
        n_at_close = len(ids)
        await asyncio.sleep(0.2)  # events keep flowing past the closes
    finally:
        stop.set()
        await asyncio.to_thread(th.join, T(20))
    # Each connection's tasks leave within 2 s of its close.
    await gone(srv, "wstest-mid-clean",
               max(0.1, t_clean + T(2) - time.monotonic()))
    d1 = time.monotonic() - t_clean
    await gone(srv, "wstest-mid-abort",
               max(0.1, t_abort + T(2) - time.monotonic()))
    d2 = time.monotonic() - t_abort
    check(not th.is_alive(), "the poster did not stop")
    errors = [i for i in ids if isinstance(i, tuple)]
    check(not errors, f"POST failed: {errors[:1]}")
    check(len(ids) > n_at_close, "no events were posted after the closes")
    got = await watcher.events_until("stream.end", T(20))
    check([e["id"] for e in got] == ids,
          f"the watcher got {len(got)} events, {len(ids)} were posted "
          f"(or out of order)")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz")
    return (f"{len(ids)} events; tasks gone within {d1:.2f} s / {d2:.2f} s "
            f"of the closes")


async def t_cancel_task(ctx):
    srv = ctx.srv
    r = await ahttp(srv.port, "POST", "/tasks",
                    {"kind": "sleep", "name": "wstest-s1",
                     "args": {"seconds": 60}})
    check_status(r, 201, what="POST /tasks sleep 60")
    check(r.json.get("name") == "wstest-s1" and r.json.get("kind") == "sleep",
          f"POST /tasks: {r!r}")

    async def running():
        r = await ahttp(srv.port, "GET", "/tasks/wstest-s1")
        return r.status == 200 and r.json.get("state") == "running"

    check(await poll_until(running, T(5)), "wstest-s1 never ran")
    t0 = time.monotonic()
    r = await ahttp(srv.port, "DELETE", "/tasks/wstest-s1?timeout=5")
    took = time.monotonic() - t0
    check_status(r, 200, what="DELETE /tasks/wstest-s1?timeout=5")
    check(r.json.get("name") == "wstest-s1"
          and r.json.get("state") == "cancelled", f"DELETE answered {r!r}")
    check(took < 5, f"the cancel took {took:.1f} s")
    r = await ahttp(srv.port, "GET", "/tasks/wstest-s1")
    check(r.status == 404 or r.json.get("state") == "cancelled",
          f"GET after the cancel: {r!r}")
    r = await ahttp(srv.port, "DELETE", "/tasks/wstest-nope?timeout=1")
    check_status(r, 404, "not_found", "DELETE of an unknown task")
    r = await ahttp(srv.port, "GET", "/tasks/wstest-nope")
    check_status(r, 404, what="GET of an unknown task")
    return f"cancelled in {took * 1000:.0f} ms"


async def t_stop_with_client(ctx):
    """SIGTERM with clients connected: each is closed with 1001, a raw one
    that does not read too (or its socket closed)."""
    srv = ctx.srv
    cs = [await ctx.connect("/ws?events=bye.*", label=f"client {k}")
          for k in range(10)]
    for c in cs:
        await c.sync()
    idle = ctx.raw("/ws?events=bye.*")
    srv.terminate()

    async def closed(c):
        try:
            m = await asyncio.wait_for(c.ws.recv(), T(10))
            raise AssertionError(f"{c.label}: a message instead of the "
                                 f"close: {m[:100]}")
        except ConnectionClosed:
            pass
        check(c.ws.close_code == 1001, f"{c.label}: closed with "
                                       f"{c.ws.close_code} "
                                       f"{c.ws.close_reason!r}, want 1001")

    await asyncio.gather(*(closed(c) for c in cs))
    code, why, _, _ = await asyncio.to_thread(idle.close_code, T(10))
    check(code in (1001, None), f"the raw client: closed with {code} {why!r}")


# ------------------------------------------------------------ auth server

TOKEN = "tb-t0ken_Z9/+x"


async def t_token(ctx):
    srv = ctx.srv
    q = urllib.parse.quote(TOKEN, safe="")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path, hdrs, why in (
            ("/ws?events=auth.*", None, "no token"),
            ("/ws?events=auth.*&token=wrong", None, "a wrong ?token="),
            ("/ws?events=auth.*", {"Authorization": "Bearer wrong"},
             "a wrong bearer token"),
            ("/ws?events=auth.*&token=" + q[:-1], None, "a token cut short")):
        st = await ctx.refused(path, headers=hdrs)
        check(st == 401, f"{why}: {st}, want 401")
        r = await asyncio.to_thread(upgrade_refused, srv.port, path, hdrs)
        check_status(r, 401, "unauthorized", why)
    c1 = await ctx.connect(f"/ws?events=auth.*&token={q}", label="?token=")
    c2 = await ctx.connect("/ws?events=auth.*", headers=bearer,
                           label="bearer")
    await c1.sync()
    await c2.sync()
    r = await ahttp(srv.port, "POST", "/events/auth.x", "no")
    check_status(r, 401, "unauthorized", "POST /events without the token")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="/healthz without the token")
    i = await post(srv, "auth.x", "yes", bearer)
    for c in (c1, c2):
        check_envelope(await c.event(), "auth.x", "yes", i)
    await c1.no_events(0.2)


# ------------------------------------------------------------ limits server


async def t_max_clients(ctx):
    srv = ctx.srv
    cs = []
    for k in range(3):
        c = await ctx.connect("/ws?events=lim.*", label=f"client {k}")
        await c.sync()
        cs.append(c)
    check(await metric(srv, "taskbus_ws_clients") == 3,
          "taskbus_ws_clients is not 3")
    st = await ctx.refused("/ws?events=lim.*")
    check(st == 503, f"the 4th client: {st}, want 503")
    r = await asyncio.to_thread(upgrade_refused, srv.port, "/ws?events=lim.*")
    check_status(r, 503, "too_many_clients", "the 4th client")
    check(r.headers.get("retry-after", "").isdigit(),
          f"503 without Retry-After: {r.headers}")
    i = await post(srv, "lim.x", "all three")
    for c in cs:
        check_envelope(await c.event(), "lim.x", "all three", i)
    await cs[0].close()
    t0 = time.monotonic()
    fresh, tries = None, 0
    while fresh is None:
        tries += 1
        try:
            fresh = await ctx.connect("/ws?events=lim.*", label="after close")
        except InvalidStatusCode as e:
            check(e.status_code == 503, f"reconnect: {e.status_code}")
            check(time.monotonic() - t0 < T(3),
                  f"still 503 {T(3)} s after a client closed")
            await asyncio.sleep(0.05)
    await fresh.sync()
    st = await ctx.refused("/ws?events=lim.*")
    check(st == 503, f"a 4th client again: {st}, want 503")
    i = await post(srv, "lim.y", "again")
    for c in (cs[1], cs[2], fresh):
        check_envelope(await c.event(), "lim.y", "again", i)
    return f"accepted again after {time.monotonic() - t0:.2f} s ({tries} tries)"


# ------------------------------------------------------------ ping server


def pong_answerer(port, seconds):
    """A raw client that answers each ping; returns (pings, events)."""
    w = RawWS(port, "/ws?events=png.*")
    pings = events = 0
    try:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return pings, events
            try:
                fin, op, p = w.recv_frame(left)
            except socket.timeout:
                return pings, events
            if op == 0x9:
                pings += 1
                w.send_frame(0xA, p)
            elif op == 0x1:
                events += 1
            else:
                raise AssertionError(f"pong answerer: opcode {op} "
                                     f"{p[:60]!r} after {pings} pings")
    finally:
        w.close()


def ping_ignorer(port):
    """A raw client that reads but never answers pings: (code, reason,
    pings, seconds from the handshake to the close)."""
    w = RawWS(port, "/ws?events=png.*")
    t0 = time.monotonic()
    first = None
    try:
        while True:
            try:
                fin, op, p = w.recv_frame(T(5))
            except (EOFError, ConnectionResetError):
                return None, "", first, time.monotonic() - t0
            if op == 0x9 and first is None:
                first = time.monotonic() - t0
            if op == 0x8:
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                return code, p[2:].decode(errors="replace"), first, \
                    time.monotonic() - t0
    finally:
        w.close()


async def t_ping_answered(ctx):
    srv = ctx.srv
    c = await ctx.connect("/ws?events=png.*")
    await c.sync()
    raw = asyncio.create_task(asyncio.to_thread(pong_answerer, srv.port, 2.2))
    await asyncio.sleep(2.0)
    check(c.ws.open, f"the websockets client was closed: {c.ws.close_code}")
    i = await post(srv, "png.alive", "yes")
    check_envelope(await c.event(), "png.alive", "yes", i)
    r = await c.request({"subscribe": []})
    check(r.get("ok") == "subscribe", f"after 2 s: {r}")
    pings, events = await asyncio.wait_for(raw, T(10))
    check(pings >= 3, f"the raw client saw {pings} pings in 2 s (every "
                      f"300 ms wanted)")
    check(events == 1, f"the raw client got {events} events, want 1")
    return f"{pings} pings answered in 2 s"


async def t_ping_ignored(ctx):
    code, why, first, took = await asyncio.to_thread(ping_ignorer,
                                                     ctx.srv.port)
    check(first is not None and 0.2 <= first <= 0.3 + T(1),
          f"first ping after {first} s, want ~0.3")
    check(code in (1011, None),
          f"closed with {code} {why!r}, want 1011 (or the socket closed)")
    check(0.5 <= took <= 0.6 + T(1.5),
          f"closed {took:.2f} s after the handshake, want ~0.6")
    return f"closed with {code} after {took:.2f} s"


# ------------------------------------------------------------ slow server

SLOW_ARGS = ("--ws-send-queue-bytes", "65536", "--ws-send-queue-msgs", "256")
FLOOD_RATE = 2500  # events per second


async def t_slow_client(ctx):
    srv = ctx.srv
    normal = await ctx.connect("/ws?events=slow.*", label="normal client")
    await normal.sync()
    slow = ctx.raw("/ws?events=slow.*", rcvbuf=4096,
                   headers={"X-Request-ID": "wstest-slow"})
    slow.send_text('{"subscribe":[]}')
    await asyncio.to_thread(slow.recv_json, T(5))
    # From here the slow client never reads, until it has been closed.
    before = await metric(srv, "taskbus_ws_slow_closes_total")
    pad = "p" * 1000
    ids = []
    collected = []

    async def drain():  # the normal client reads all the while
        while not collected or collected[-1]["name"] != "slow.end":
            try:
                collected.append(await normal.event(T(60)))
            except AssertionError as e:
                raise AssertionError(
                    f"{e}, with {len(collected)} events read and "
                    f"{len(ids)} posted: "
                    f"{len(ids) - len(collected)} behind") from None

    reader = asyncio.create_task(drain())

    def flood():
        # Paced at FLOOD_RATE: the normal client (this process, sharing the
        # GIL with this thread) must be able to keep up, as a client that
        # reads would; the slow one never reads, so only the total counts.
        p = Poster(srv.port)
        t0 = time.monotonic()
        slowest = (0, 0)
        try:
            for n in range(20000):
                ahead = t0 + n / FLOOD_RATE - time.monotonic()
                if ahead > 0.005:
                    time.sleep(ahead)
                if time.monotonic() - t0 > T(40):
                    return (f"{n} events posted in {T(40)} s; the slowest "
                            f"POST took {slowest[0]:.2f} s (number "
                            f"{slowest[1]})")
                t1 = time.monotonic()
                r = p.post("slow.ev", json.dumps({"seq": n, "pad": pad}))
                slowest = max(slowest, (time.monotonic() - t1, n))
                if r.status != 202:
                    return f"POST {n}: {r!r}"
                ids.append(json.loads(r.body)["id"])
                if n % 250 == 249:
                    if reader.done():
                        break  # the normal client failed: reported below
                    if "(request wstest-slow): slow client" in \
                            srv.log_text():
                        break
            r = p.post("slow.end", "end")
            ids.append(json.loads(r.body)["id"])
        finally:
            p.close()
        return None

    try:
        return await slow_checks(ctx, normal, slow, reader, flood, before,
                                 ids, collected)
    finally:
        if not reader.done():
            reader.cancel()
        elif not reader.cancelled() and reader.exception():
            pass  # retrieved: reported through the checks


async def slow_checks(ctx, normal, slow, reader, flood, before, ids,
                      collected):
    srv = ctx.srv
    err = await asyncio.to_thread(flood)  # bounded inside
    if reader.done():
        await reader  # the normal client's failure, if it failed
    check(err is None, err or "")
    closes = await metric(srv, "taskbus_ws_slow_closes_total")
    check(closes >= before + 1,
          f"taskbus_ws_slow_closes_total {closes} after {len(ids)} events of "
          f"1 KB to a client that never reads")
    try:
        code, why, texts, _ = await asyncio.to_thread(slow.close_code, T(10))
    except socket.timeout:
        raise AssertionError(f"the slow client still open {T(10)} s after "
                             f"{len(ids)} events") from None
    check(code in (1008, None),
          f"the slow client was closed with {code} {why!r}, want 1008")
    check(texts < len(ids), f"the slow client got all {texts} events")
    log = srv.log_text()
    lines = [l for l in log.splitlines() if "slow client" in l]
    check(any("wstest-slow" in l and "1008" in l for l in lines),
          f"no log line with \"slow client\" naming request wstest-slow: "
          f"{lines[:3]}")
    check(not any("wstest-slow" not in l for l in lines),
          f"another connection was closed as slow: {lines}")
    await asyncio.wait_for(reader, T(30))
    got = [e["id"] for e in collected]
    check(got == ids, f"the normal client got {len(got)} of {len(ids)} "
                      f"events (or out of order)")
    check(normal.ws.open and not normal.replies,
          f"the normal client was closed or told {normal.replies[:1]}")
    await gone(srv, "wstest-slow", T(3))
    return (f"slow client closed ({code}) after {len(ids)} events; it had "
            f"read {texts}; the normal client got all")


# ------------------------------------------------------------ redis pair


async def t_two_instances(ctx):
    a, b = ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        async def ready(srv=srv):
            r = await ahttp(srv.port, "GET", "/readyz")
            return r.status == 200
        check(await poll_until(ready, T(10)),
              f"taskbus {srv.name}: /readyz not 200 (bus not connected)")
    ca = await ctx.connect("/ws?events=cluster.*", srv=a, label="client on A")
    cb = await ctx.connect("/ws?events=cluster.*", srv=b, label="client on B")
    await ca.sync()
    await cb.sync()
    i = await post(a, "cluster.one", {"n": 1})
    i_end = await post(a, "cluster.end", "end")
    for c in (ca, cb):
        got = await c.events_until("cluster.end", T(10))
        check([e["id"] for e in got] == [i, i_end],
              f"{c.label}: got {[(e['name'], e['id']) for e in got]}, want "
              f"cluster.one {i} once, then cluster.end")
        check_envelope(got[0], "cluster.one", {"n": 1}, i)
    check(ca.events == [] and cb.events == [], "extra events")
    origin_a = got[0]["origin"]
    # A websocket dispatch on B reaches the client on A.
    r = await cb.request({"event": "cluster.two", "data": [1, 2], "ref": 7})
    check(r.get("ok") == "dispatch" and r.get("ref") == 7, f"dispatch: {r}")
    r2 = await cb.request({"event": "cluster.end", "data": "end2"})
    check(r2.get("ok") == "dispatch", f"dispatch: {r2}")
    for c in (ca, cb):
        got = await c.events_until("cluster.end", T(10))
        check([e["id"] for e in got] == [r["id"], r2["id"]],
              f"{c.label}: got {[(e['name'], e['id']) for e in got]}, want "
              f"cluster.two {r['id']} once, then cluster.end")
        check_envelope(got[0], "cluster.two", [1, 2], r["id"])
        check(got[0]["origin"] != origin_a,
              f"the origin of B's event is A's ({origin_a})")
    await ca.no_events(0.3)
    await cb.no_events(0.05)


async def t_nul_data_redis(ctx):
    """Data holding U+0000 crosses Redis intact: in our envelope (POST on
    A, a client on B), and from a foreign publisher, raw or in an envelope
    of its own."""
    a, b, redis = ctx.s["a"], ctx.s["b"], ctx.s["redis"]
    c = await ctx.connect("/ws?events=nul.*", srv=b, label="client on B")
    await c.sync()
    r = await ahttp(a.port, "POST", "/events/nul.a", b"a\0b")
    check_status(r, 202, what="POST /events/nul.a on A, body a\\0b")
    check_envelope(await c.event(), "nul.a", "a\0b", r.json["id"])
    env = {"id": "wstest-nul-env", "name": "nul.env", "data": "a\0b"}
    counts = await asyncio.to_thread(redis_publish, redis.port, [
        ("taskbus:event:nul.raw", "a\0b"),
        ("taskbus:event:nul.env", json.dumps(env))])
    check(all(n >= 1 for n in counts), f"PUBLISH receivers: {counts}")
    got = {}
    for _ in range(2):
        ev = await c.event()
        got[ev["name"]] = ev
    check(set(got) == {"nul.raw", "nul.env"}, f"got {sorted(got)}")
    check(got["nul.raw"]["data"] == "a\0b",
          f"raw PUBLISH of a\\0b: data {got['nul.raw']['data']!r}")
    check_envelope(got["nul.env"], "nul.env", "a\0b", "wstest-nul-env")
    await c.no_events(0.2)


def redis_publish(port, msgs):
    """PUBLISHes (channel, payload) pairs in one pipelined write, as a
    plain Redis client would; returns the receiver counts."""
    out = b""
    for ch, payload in msgs:
        parts = [b"PUBLISH", ch.encode(), payload.encode()]
        out += b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(x), x)
                                     for x in parts)
    with socket.create_connection((HOST, port), T(5)) as s:
        s.sendall(out)
        buf = b""
        while buf.count(b"\r\n") < len(msgs):
            d = s.recv(65536)
            check(d, "redis closed the connection")
            buf += d
    return [int(l[1:]) for l in buf.split(b"\r\n")[:len(msgs)]]


async def t_burst(ctx):
    """Events that arrive together (here 30 envelopes of ~200 bytes in one
    Redis pipeline, 6 KB in all) to a client that reads at once: with
    --ws-send-queue-bytes 4096 it must get them all, not a close 1008 -
    nothing waits for its socket, the socket takes 6 KB at once."""
    srv, redis = ctx.s["c"], ctx.s["redis"]
    c = await ctx.connect("/ws?events=burst.*", srv=srv, label="client on C")
    await c.sync()
    msgs, ids = [], []
    for k in range(30):
        eid = f"wstest-burst-{k}"
        ids.append(eid)
        env = {"id": eid, "name": "burst.x", "data": {"k": k, "pad": "q" * 100},
               "ts": int(time.time() * 1e6), "origin": "external"}
        msgs.append(("taskbus:event:burst.x", json.dumps(env)))
    counts = await asyncio.to_thread(redis_publish, redis.port, msgs)
    check(all(n >= 1 for n in counts), f"PUBLISH receivers: {counts}")
    got = []
    try:
        while len(got) < len(ids):
            got.append((await c.event(T(5)))["id"])
    except AssertionError as e:
        slow = [l for l in srv.log_text().splitlines() if "slow client" in l]
        raise AssertionError(f"got {len(got)} of 30 events, then: {e}; "
                             f"log: {slow[:1]}")
    check(got == ids, f"events out of order: {got[:5]}...")
    check(not c.replies, f"told {c.replies[:1]}")
    await c.no_events(0.2)
    check(c.ws.open, f"closed {c.ws.close_code}")


# ------------------------------------------------------------ churn server


def ping_flooder(port, seconds):
    """A raw client that sends pings as fast as the server takes them and
    never reads: (bytes sent, seconds since the server last took any)."""
    w = RawWS(port, "/ws?events=flood.*", rcvbuf=4096)
    sent = 0
    frame = bytes([0x89, 0x80 | 125]) + os.urandom(4) + b"p" * 125
    chunk = frame * 64
    w.sock.setblocking(False)
    t0 = time.monotonic()
    last = t0
    try:
        while time.monotonic() - t0 < seconds:
            select.select([], [w.sock], [], 0.05)
            try:
                n = w.sock.send(chunk)
                if n > 0:
                    sent += n
                    last = time.monotonic()
            except BlockingIOError:
                pass
            except OSError:
                break
        return sent, time.monotonic() - last
    finally:
        w.close()


async def t_ping_flood(ctx):
    """Each ping is answered with a pong the client never reads: the
    server must push back (stop reading once ws_send_queue_bytes of
    answers wait) instead of queueing pongs without bound."""
    srv = ctx.srv
    before = srv.rss_kb()
    sent, idle = await asyncio.to_thread(ping_flooder, srv.port, 4)
    after = srv.rss_kb()
    # What it may take: its send queue's worth of answers (1 MiB) plus
    # what the kernel buffers on both sides hold (a few MiB); without
    # push-back it takes hundreds of MiB in these seconds.
    check(sent < 64 * 1024 * 1024,
          f"the server took {sent // (1024 * 1024)} MiB of pings whose "
          f"answers nobody reads: no push-back")
    # (ASan and TSan keep freed memory in quarantine: RSS says nothing.)
    check(after - before < 32 * 1024 or H.sanitizer in ("asan", "tsan"),
          f"server RSS grew {after - before} kB for {sent} bytes of pings")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="/healthz after the ping flood")
    return (f"{sent // 1024} KiB of pings taken (the last {idle:.1f} s "
            f"ago); RSS {before}->{after} kB")


async def t_upgrade_header_alone(ctx):
    """An Upgrade header on a request that is no websocket handshake
    (not GET, or no Connection: upgrade or key) is an ordinary request."""
    srv = ctx.srv
    r = await ahttp(srv.port, "GET", "/healthz",
                    headers={"Upgrade": "websocket"})
    check_status(r, 200, what="GET /healthz with Upgrade: websocket")
    r = await ahttp(srv.port, "POST", "/events/up.x", b"x",
                    headers={"Upgrade": "websocket",
                             "Connection": "Upgrade"})
    check_status(r, 202, what="POST /events with Upgrade: websocket")


async def t_churn(ctx):
    srv = ctx.srv
    sem = asyncio.Semaphore(20)
    errors = []

    async def one(k):
        async with sem:
            try:
                ws = await websockets.connect(
                    srv.ws_url("/ws?events=churn.*"), open_timeout=T(10),
                    ping_interval=None, close_timeout=T(5), compression=None)
            except Exception as e:  # counted and reported below
                errors.append(f"connect {k}: {type(e).__name__}: {e}")
                return
            try:
                if k % 3 == 0:
                    await ws.send('{"subscribe":["churn.more"]}')
                    r = json.loads(await asyncio.wait_for(ws.recv(), T(10)))
                    if r.get("ok") != "subscribe":
                        errors.append(f"answer {k}: {r}")
                if k % 5 == 0:
                    ws.transport.abort()  # no close handshake
                    await asyncio.wait_for(ws.wait_closed(), T(5))
                else:
                    await asyncio.wait_for(ws.close(), T(10))
            except Exception as e:  # counted and reported below
                errors.append(f"client {k}: {type(e).__name__}: {e}")
                ws.transport.abort()

    async def settled():
        if await metric(srv, "taskbus_ws_clients") != 0:
            return False
        return not await ws_tasks(srv)

    async def run(n):
        await asyncio.gather(*(one(k) for k in range(n)))
        check(not errors, f"{len(errors)} failures, first: {errors[:3]}")
        check(await poll_until(settled, T(10), 0.1),
              f"connections still open after {n} closes: "
              f"{len(await ws_tasks(srv))} ws tasks listed")
        await asyncio.sleep(0.3)

    await run(100)  # warm up: allocator caches, thread stacks
    fd0, rss0 = srv.fds(), srv.rss_kb()
    t0 = time.monotonic()
    await run(1000)
    took = time.monotonic() - t0
    fd1, rss1 = srv.fds(), srv.rss_kb()
    check(fd1 <= fd0 + 5, f"open descriptors {fd0} -> {fd1} after 1000 "
                          f"connections")
    growth = (rss1 - rss0) / 1024
    note = ""
    if H.sanitizer in ("asan", "tsan"):
        note = " (RSS not checked: the sanitizer keeps freed memory)"
    else:
        check(growth < 8, f"RSS grew {growth:.1f} MB ({rss0} -> {rss1} kB) "
                          f"over 1000 connections")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz")
    c = await ctx.connect("/ws?events=churn.*")
    await c.sync()
    i = await post(srv, "churn.last", "ok")
    check_envelope(await c.event(), "churn.last", "ok", i)
    return (f"1000 in {took:.1f} s; fds {fd0}->{fd1}, RSS "
            f"{rss0 // 1024}->{rss1 // 1024} MB{note}")


async def t_large(ctx):
    """Near-1 MB messages both ways (the defaults: 1 MiB limits)."""
    srv = ctx.srv
    c = await ctx.connect("/ws?events=big.*", max_size=None)
    await c.sync()
    body = "".join(chr(0x61 + k % 26) for k in range(900 * 1024))
    i = await post(srv, "big.http", body)
    check_envelope(await c.event(T(20)), "big.http", body, i)
    data = {"blob": body[:400 * 1024], "list": list(range(20000))}
    r = await c.request({"event": "big.ws", "data": data}, T(20))
    check(r.get("ok") == "dispatch", f"a 500 KB dispatch: {r}")
    check_envelope(await c.event(T(20)), "big.ws", data, r["id"])
    return "900 KB out, 500 KB in"


# ------------------------------------------------------------ the runner

GROUPS = [
    ("main", lambda: {"main": Taskbus("main", *MAIN_ARGS)}, [
        ("POST /events: 202, bad_name, --max-body edge", t_http_post, 20),
        ("GET /ws: pattern checks before the upgrade", t_upgrade_patterns, 30),
        ("GET /ws: 426 without Upgrade, 404 elsewhere, Origin list",
         t_upgrade_refusals, 30),
        ("events arrive as envelopes, only when matching", t_envelopes, 20),
        ("event data may hold U+0000 (NUL)", t_nul_data, 20),
        ("subscribe, unsubscribe, dispatch, ref", t_messages, 20),
        ("bad messages are answered, the connection stays open",
         t_bad_messages, 20),
        ("request id: tasks listed while open, 409 on reuse, gone after",
         t_request_id, 30),
        ("ws_max_message: exactly the limit passes, one more closes 1009",
         t_max_message, 20),
        ("text that is not UTF-8 closes with 1007", t_bad_utf8, 20),
        ("framing: ping/pong, fragments, close, protocol errors 1002",
         t_protocol, 60),
        ("bad frame headers close with 1002 and a reason", t_frame_errors,
         60),
        ("protocol errors are logged as what they are", t_protocol_log,
         30),
        ("DELETE /tasks/ws:<id> disconnects the client", t_cancel_ws_handler,
         30),
        ("DELETE /tasks/receiver:<id> does not leave a deaf connection",
         t_cancel_ws_receiver, 30),
        ("300 pipelined messages are answered once each, in order",
         t_pipelined, 30),
        ("fan-out: 50 clients get every event once, in order", t_fanout, 30),
        ("the default websockets client (deflate offered)", t_default_client,
         20),
        ("a client closing mid-stream leaves no tasks", t_close_midstream,
         60),
        ("cancel an HTTP-spawned task over HTTP", t_cancel_task, 30),
        ("SIGTERM closes open websockets with 1001", t_stop_with_client, 30),
    ]),
    ("auth", lambda: {"auth": Taskbus("auth", "--token", TOKEN)}, [
        ("--token: 401 without it, ?token= and Bearer work", t_token, 30),
    ]),
    ("limits", lambda: {"limits": Taskbus("limits", "--ws-max-clients", "3")},
     [
         ("--ws-max-clients 3: the 4th gets 503, a slot frees on close",
          t_max_clients, 30),
     ]),
    ("ping", lambda: {"ping": Taskbus("ping", "--ws-ping-interval", "300",
                                      "--ws-ping-timeout", "300")}, [
        ("pings answered: open after 2 s", t_ping_answered, 30),
        ("pings unanswered: closed 1011 after ~0.6 s", t_ping_ignored, 30),
    ]),
    ("slow", lambda: {"slow": Taskbus("slow", *SLOW_ARGS)}, [
        ("a client that never reads is closed 1008, others lose nothing",
         t_slow_client, 120),
    ]),
    ("redis", None, [
        ("two instances on one Redis: both ways, exactly once",
         t_two_instances, 60),
        ("data holding U+0000 (NUL) crosses Redis intact",
         t_nul_data_redis, 30),
        ("a burst of events to a reading client is not a slow client",
         t_burst, 30),
    ]),
    ("churn", lambda: {"churn": Taskbus("churn")}, [
        ("near-1 MB messages both ways", t_large, 60),
        ("1000 connect/disconnects: no descriptor or memory growth", t_churn,
         120),
        ("a ping flood from a client that never reads is pushed back",
         t_ping_flood, 60),
        ("an Upgrade header alone does not make a websocket request",
         t_upgrade_header_alone, 20),
    ]),
]


def redis_group():
    r = Redis("redis").start()
    yield "redis", r
    yield "a", Taskbus("a", "--redis-url", r.url())
    yield "b", Taskbus("b", "--redis-url", r.url())
    yield "c", Taskbus("c", "--redis-url", r.url(), "--ws-send-queue-bytes",
                       "4096")


def where(e):
    """(at function:line, "source") of the innermost frame of this file in
    e's traceback."""
    me = os.path.abspath(__file__)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == me]
    if not frames:
        return ""
    f = frames[-1]
    return f"(at {f.name}:{f.lineno}, {f.line!r})"


class Runner(tbharness.Runner):
    def report(self, ok, name, detail, servers=(), marks=None):
        """One PASS/FAIL line; on failure, the log lines each taskbus wrote
        since marks (its log sizes when the case began), the last 25."""
        super().report(ok, name, detail)
        if ok:
            return
        for s in servers:
            if not isinstance(s, Taskbus) or not s.log:
                continue
            text = s.log_text()[(marks or {}).get(s.name, 0):]
            lines = text.splitlines()[-25:]
            if lines:
                print(f"  taskbus {s.name} logged:\n" + "\n".join(
                    "    | " + l for l in lines), flush=True)

    async def case(self, group, name, fn, timeout, servers):
        full = f"{group}: {name}"
        ctx = Ctx(servers)
        marks = {s.name: len(s.log_text()) for s in servers.values()
                 if isinstance(s, Taskbus)}
        t0 = time.monotonic()
        ok, detail = False, ""
        try:
            detail = await asyncio.wait_for(fn(ctx), T(timeout)) or ""
            ok = True
        except AssertionError as e:
            detail = str(e)
        except asyncio.TimeoutError as e:  # also socket.timeout
            detail = (f"timed out after {T(timeout)} s"
                      if time.monotonic() - t0 >= T(timeout) - 0.5 else
                      f"a wait timed out after {time.monotonic() - t0:.1f} s"
                      f" {where(e)}")
        except Exception as e:  # any failure is this case's FAIL line
            detail = f"{type(e).__name__}: {e} {where(e)}"
        finally:
            try:
                await asyncio.wait_for(ctx.close_all(), T(10))
            except Exception as e:  # reported, never hides the result
                detail += f" (closing its clients: {type(e).__name__} {e})"
        took = time.monotonic() - t0
        self.report(ok, full, (f"{detail}; " if ok and detail else detail)
                    + (f"{took:.2f} s" if ok else ""),
                    servers.values(), marks)

    async def group(self, gname, make, tests):
        tests = [t for t in tests if self.wanted(gname, t[0])]
        if not tests:
            return
        servers = {}
        try:
            try:
                items = (redis_group() if make is None else
                         make().items())
                for key, s in items:
                    servers[key] = s
                    if s.proc is None:
                        s.start()  # the main thread: PR_SET_PDEATHSIG
            except Exception as e:  # a server did not start
                first, _, rest = str(e).partition("\n")
                self.report(False, f"{gname}: start the servers",
                            f"{first} (not run: "
                            f"{', '.join(t[0] for t in tests)})"
                            + (f"\n{rest}" if rest else ""))
                return
            for name, fn, timeout in tests:
                await self.case(gname, name, fn, timeout, servers)
        finally:
            for key, s in reversed(list(servers.items())):
                if s.proc is None:
                    continue
                if not getattr(s, "ready", True):
                    end_proc(s.proc, signal.SIGKILL)  # failed at start
                    continue
                rc, took = await asyncio.to_thread(s.stop)
                if not isinstance(s, Taskbus):
                    continue
                name = f"{gname}: taskbus {s.name} exits 0 on SIGTERM"
                text = s.log_text()
                bad = [l for l in text.splitlines()
                       if SAN_RE.search(l)]
                if rc == 0 and not bad:
                    self.report(True, name, f"{took:.2f} s")
                else:
                    why = (f"still running {STOP_TIMEOUT_S} s after SIGTERM "
                           f"(killed)" if rc is None else f"exit status {rc}")
                    self.report(False, name, why + (f"; {bad[0]}" if bad
                                                    else ""))
                    print(f"  stderr tail:\n{tail(s.log, 60)}", flush=True)

    async def run(self):
        for gname, make, tests in GROUPS:
            await self.group(gname, make, tests)


def main():
    runner = Runner(sys.argv[1:])
    return tbharness.run_suite("ws_suite", "taskbus-wstest.", runner,
                               lambda: asyncio.run(runner.run()))


if __name__ == "__main__":
    sys.exit(main())
