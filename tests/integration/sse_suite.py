#!/usr/bin/python3
"""sse_suite.py - GET /sse, the event stream: events in order with their
fields (raw sockets, curl -N and a real EventSource client), keep-alive
comments at --sse-keepalive, the 400s of bad ?events=, the websocket rules
(Origin, --sse-max-clients 503, the API token and client tokens with their
claims, 403 forbidden naming the pattern, a stream ended when its token
expires, a slow client closed and counted), clients that vanish or send
half a request or garbage, 200 streams that hold no HTTP thread, the
streams ended at once when the service stops, and resuming: each event's
position as its id, ?since= and Last-Event-ID (which wins) replaying the
history up to the taskbus:recovered event, recovered false for a lost
position, 400 bad_since and history_off, a real EventSource that
reconnects by itself and misses nothing, and a subscription overflowed
by a burst (50 relay tasks answering one event): closed and resumed
without loss with history, told how many it dropped without.

How it runs is tbharness.py's (groups of cases, each group on servers of
its own, each server SIGTERMed at the end and checked for exit 0). CTest
runs it as integration_sse; by hand:
TASKBUS_BIN=build/taskbus /usr/bin/python3 tests/integration/sse_suite.py [WORD...].
The EventSource case needs tests/integration/sse_client/node_modules
(.ci/dev.sh runs npm ci there); without it the case is skipped, or fails
under CI=true.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (HOST, MAIN_ARGS, Poster, RawWS, Resp, T,  # noqa: E402
                       TaskbusServer, ahttp, check, check_envelope,
                       check_status, metric, poll_until, post,
                       post_until_metric)

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.join(HERE, "sse_client")

# ------------------------------------------------------------------ client


class Refused(Exception):
    def __init__(self, resp):
        super().__init__(f"HTTP {resp.status}")
        self.resp = resp


class SSE:
    """A raw SSE client: one socket, the request written by hand, the
    answer's head parsed, then the stream cut into blocks (the lines up to
    a blank line). Raises Refused with the Resp when the answer is not a
    200 stream."""

    def __init__(self, port, path, headers=None, rcvbuf=None, connect=True):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(T(10))
        self.s.connect((HOST, port))
        self.buf = b""
        self.eof = False
        self.status = None
        self.headers = {}
        if connect:
            h = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                           f"Accept: text/event-stream\r\n{h}\r\n".encode())
            self._head()

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        self.s.settimeout(left)
        try:
            b = self.s.recv(65536)
        except socket.timeout:
            raise asyncio.TimeoutError() from None
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
        self.buf += b
        return bool(b)

    def _head(self):
        end = time.monotonic() + T(10)
        while b"\r\n\r\n" not in self.buf:
            check(self._fill(end), f"EOF before the head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if self.status != 200:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n:
                if not self._fill(end):
                    break
            body = self.buf[:n]
            self.close()
            raise Refused(Resp(self.status, self.headers, body))

    def block(self, timeout=None):
        """The next block as a dict: "comments" (list), "id", "event",
        "data" (the data lines joined with LF, as EventSource does), and
        "lines" (the raw lines). None at EOF."""
        end = time.monotonic() + (timeout or T(10))
        while b"\n\n" not in self.buf:
            if self.eof or not self._fill(end):
                check(not self.buf.strip(),
                      f"EOF inside a block: {self.buf!r}")
                return None
        raw, self.buf = self.buf.split(b"\n\n", 1)
        b = {"comments": [], "lines": raw.decode().split("\n")}
        data = []
        for line in b["lines"]:
            if line.startswith(":"):
                b["comments"].append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            else:
                check(field not in b, f"{field} twice in a block: {raw!r}")
                b[field] = value
        if data:
            b["data"] = "\n".join(data)
        return b

    def comment(self, timeout=None):
        """The next comment-only block's comment; fails on an event."""
        b = self.block(timeout)
        check(b is not None, "EOF, waiting for a comment")
        check("event" not in b and "data" not in b,
              f"an event, waiting for a comment: {b['lines']}")
        return b["comments"][0]

    def ready(self):
        """The first block: the ready comment (with history on, and no
        position to resume from, carrying the stream's position as its
        id, kept in self.start)."""
        b = self.block()
        check(b is not None and b["comments"] == ["ready"] and
              "event" not in b, f"first block {b}, want ': ready'")
        self.start = b.get("id")
        return self

    def event(self, timeout=None):
        """The next event (comment blocks skipped), its data parsed."""
        while True:
            b = self.block(timeout)
            check(b is not None, "EOF, waiting for an event")
            if "data" in b or "event" in b:
                b["json"] = json.loads(b["data"])
                return b

    def until_eof(self, timeout):
        """Reads until EOF; the blocks read. Fails if none comes."""
        got = []
        end = time.monotonic() + timeout
        while True:
            try:
                b = self.block(max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                raise AssertionError(f"no EOF in {timeout} s") from None
            if b is None:
                return got
            got.append(b)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def reset(self):
        """Closes with a reset (SO_LINGER 0)."""
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        self.close()


async def sse(port, path, headers=None, **kw):
    return await asyncio.to_thread(SSE, port, path, headers, **kw)


async def refused(port, path, headers=None):
    try:
        c = await sse(port, path, headers)
    except Refused as e:
        return e.resp
    c.close()
    raise AssertionError(f"GET {path} was streamed")


def check_event(b, name, data, post_id):
    """An event block: its name, one data line with the envelope, and its
    position as its id (no id line for an event without one)."""
    check(b.get("event") == name, f"event field {b.get('event')!r}, want "
                                  f"{name!r}")
    pos = b["json"].get("pos")
    check(b.get("id") == pos,
          f"id {b.get('id')!r}, the envelope's pos {pos!r}: {b['lines']}")
    check(sum(1 for l in b["lines"] if l.startswith("data:")) == 1,
          f"the envelope is not one data line: {b['lines']}")
    check_envelope(b["json"], name, data, post_id)


async def tasks_named(srv, prefix, headers=None):
    r = await ahttp(srv.port, "GET", "/tasks", headers=headers)
    check_status(r, 200, what="GET /tasks")
    return {t["name"] for t in r.json["tasks"] if t["name"].startswith(prefix)}


async def probe_fast(srv, limit=2.0):
    """GET /readyz (answered on one of civetweb's threads: the front
    answers /healthz itself) answers 200 within limit s."""
    t0 = time.monotonic()
    r = await ahttp(srv.port, "GET", "/readyz", timeout=T(10))
    took = time.monotonic() - t0
    check(r.status == 200, f"/readyz: {r!r}")
    check(took < T(limit), f"/readyz took {took:.2f} s")
    return took


# ------------------------------------------------------------------ cases


async def t_order(ctx):
    """Events in order, each with event:, one data: line (the envelope, as
    websockets get it) and id: its position (none without history); the
    head of a stream; data holding newlines stays on one line."""
    srv = ctx.srv
    c = await sse(srv.port, "/sse?events=ord.*,solo.x")
    try:
        check(c.headers.get("content-type") == "text/event-stream",
              f"content-type {c.headers.get('content-type')!r}")
        check(c.headers.get("cache-control") == "no-cache",
              f"cache-control {c.headers.get('cache-control')!r}")
        check(c.headers.get("x-accel-buffering") == "no",
              f"x-accel-buffering {c.headers.get('x-accel-buffering')!r}")
        check("content-length" not in c.headers and
              "transfer-encoding" not in c.headers,
              f"a stream with a length or a coding: {c.headers}")
        await asyncio.to_thread(c.ready)
        ids = []
        p = Poster(srv.port)
        for i in range(50):
            r = await asyncio.to_thread(p.post, f"ord.n{i % 3}", f"#{i}")
            check_status(r, 202, what="POST")
            ids.append(json.loads(r.body)["id"])
        p.close()
        odd = "two\nlines\r\nand\rthree \u2028 \"quoted\""
        ids.append(await post(srv, "solo.x", odd.encode()))
        ids.append(await post(srv, "other.y", b"not subscribed"))
        ids.append(await post(srv, "ord.last", b"{\"a\": [1, 2]}"))
        for i in range(50):
            b = await asyncio.to_thread(c.event)
            check_event(b, f"ord.n{i % 3}", f"#{i}", ids[i])
        b = await asyncio.to_thread(c.event)
        check_event(b, "solo.x", odd, ids[50])
        b = await asyncio.to_thread(c.event)
        check_event(b, "ord.last", {"a": [1, 2]}, ids[52])
    finally:
        c.close()
    return "52 events in order"


async def t_tail_wildcard(ctx):
    """?events= with a last ">" (sent as %3E, and raw): every event under
    the prefix at any depth, not the prefix itself; a misplaced ">" is a
    400 bad_pattern saying why."""
    srv = ctx.srv
    c1 = await sse(srv.port, "/sse?events=st.%3E")
    c2 = await sse(srv.port, "/sse?events=st.>")
    try:
        for c in (c1, c2):
            await asyncio.to_thread(c.ready)
        await post(srv, "st", b"the prefix alone")
        ids = []
        for name in ("st.a", "st.a.b", "st.a.b.c.d.e.f.g"):
            ids.append((await post(srv, name, name.encode()), name))
        for c in (c1, c2):
            for i, name in ids:
                check_event(await asyncio.to_thread(c.event), name, name, i)
    finally:
        c1.close()
        c2.close()
    for q, says in (("a.%3E.b", "only be the last segment"),
                    ("a.b%3E", "must be a whole segment")):
        r = await refused(srv.port, "/sse?events=" + q)
        check_status(r, 400, "bad_pattern", q)
        check(says in r.json.get("message", ""), f"{q}: {r!r}")
    return "3 events under st.> on each stream"


async def t_curl(ctx):
    """curl -N sees the stream as it comes."""
    srv = ctx.srv
    curl = shutil.which("curl")
    check(curl, "curl is not installed (apt-get install curl)")
    p = await asyncio.create_subprocess_exec(
        curl, "-sSN", f"http://{HOST}:{srv.port}/sse?events=curl.*",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async def line():
            return (await asyncio.wait_for(p.stdout.readline(), T(10))
                    ).decode().rstrip("\n")
        first = await line()
        if first.startswith("id: "):  # with history: where it starts
            first = await line()
        check(first == ": ready", f"curl: {first!r}, want ': ready'")
        check(await line() == "", "curl: no blank line after ': ready'")
        i = await post(srv, "curl.x", b"via curl")
        idl = await line()
        check(await line() == "event: curl.x", "curl: no event line")
        d = await line()
        check(d.startswith("data: "), f"curl: {d!r}")
        ev = json.loads(d[6:])
        check_envelope(ev, "curl.x", "via curl", i)
        check(idl == f"id: {ev['pos']}", f"curl: {idl!r}, pos {ev['pos']}")
        check(await line() == "", "curl: no blank line after the event")
    finally:
        if p.returncode is None:
            p.kill()
        await p.wait()


async def t_keepalive(ctx):
    """--sse-keepalive 200: an idle stream gets ': keep-alive' comments,
    several a second; one carrying events does not need them."""
    srv = ctx.s["ka"]
    c = await sse(srv.port, "/sse?events=ka.*")
    try:
        await asyncio.to_thread(c.ready)
        t0 = time.monotonic()
        n = 0
        while n < 3:
            check(await asyncio.to_thread(c.comment, T(5)) == "keep-alive",
                  "not a keep-alive comment")
            n += 1
        took = time.monotonic() - t0
        check(took < T(3), f"3 keep-alives took {took:.2f} s at 200 ms")
    finally:
        c.close()
    return f"3 keep-alives in {took:.2f} s"


async def t_keepalive_min(ctx):
    """--sse-keepalive 10, the smallest value: comments every ~10 ms."""
    srv = ctx.s["ka10"]
    c = await sse(srv.port, "/sse?events=ka.*")
    try:
        await asyncio.to_thread(c.ready)
        t0 = time.monotonic()
        for _ in range(10):
            check(await asyncio.to_thread(c.comment, T(5)) == "keep-alive",
                  "not a keep-alive comment")
        took = time.monotonic() - t0
    finally:
        c.close()
    return f"10 keep-alives in {took:.2f} s"


async def t_settings_refused(ctx):
    """Below the smallest values (--sse-keepalive 9, --sse-max-clients 0,
    TASKBUS_SSE_KEEPALIVE=5) the service does not start, naming the
    setting and its range."""
    for args, env, want in (
            (["--sse-keepalive", "9"], {}, "ws.sse_keepalive_ms must be 10"),
            (["--sse-max-clients", "0"], {}, "ws.sse_max_clients must be 1"),
            ([], {"TASKBUS_SSE_KEEPALIVE": "5"}, "TASKBUS_SSE_KEEPALIVE")):
        p = await asyncio.to_thread(
            subprocess.run,
            [tbharness.H.bin, "--listen", f"{HOST}:{tbharness.free_port()}",
             *args], capture_output=True, text=True, timeout=T(20),
            env=tbharness.child_env(env))
        check(p.returncode != 0 and want in p.stderr,
              f"{args or env}: exit {p.returncode}, {p.stderr[-300:]!r}")


async def t_bad_requests(ctx):
    """400 with a stable code for what ?events= cannot be; Origin as for
    websockets; other methods 405; an upgrade to /sse is no websocket."""
    srv = ctx.srv
    cases = [
        ("/sse", 400, "missing_events"),
        ("/sse?events=", 400, "missing_events"),
        ("/sse?events=,,", 400, "missing_events"),
        ("/sse?events=a..b", 400, "bad_pattern"),
        ("/sse?events=a.b,bad%20x", 400, "bad_pattern"),
        ("/sse?events=" + "x" * 300, 400, "bad_pattern"),
        ("/sse?events=a,b,c,d,e", 400, "too_many_patterns"),
        ("/sse?events=" + ",".join(["a"] * 2000), 400, "too_many_patterns"),
        ("/sse?events=a%zz", 400, "bad_query"),
    ]
    for path, status, code in cases:
        r = await refused(srv.port, path)
        check_status(r, status, code, path[:60])
    r = await refused(srv.port, "/sse?events=a.*",
                      {"Origin": "http://evil.example"})
    check_status(r, 403, "origin_not_allowed", "a foreign Origin")
    c = await sse(srv.port, "/sse?events=a.*",
                  {"Origin": "http://ok.example"})
    c.close()
    r = await ahttp(srv.port, "POST", "/sse?events=a.*", b"")
    check_status(r, 405, "method_not_allowed", "POST /sse")
    r = await ahttp(srv.port, "HEAD", "/sse?events=a.*")
    check(r.status == 200 and r.body == b"" and
          r.headers.get("content-type") == "text/event-stream",
          f"HEAD /sse: {r!r} {r.headers}")
    r = await asyncio.to_thread(tbharness.upgrade_refused, srv.port,
                                "/sse?events=a.*")
    check_status(r, 404, "not_found", "a websocket upgrade to /sse")
    check("400 bad_pattern" in srv.log_text(), "the 400s are not logged")


async def t_max_clients(ctx):
    """--sse-max-clients 3: the 4th stream is 503 too_many_clients with
    Retry-After, counted; a slot frees when a client goes; websockets are
    counted apart."""
    srv = ctx.s["lim"]
    cs = [(await sse(srv.port, "/sse?events=lim.*")).ready()
          for _ in range(3)]
    try:
        check(await metric(srv, "taskbus_sse_clients") == 3,
              "taskbus_sse_clients is not 3")
        r = await refused(srv.port, "/sse?events=lim.*")
        check_status(r, 503, "too_many_clients", "the 4th stream")
        check(r.headers.get("retry-after", "").isdigit(),
              f"503 without Retry-After: {r.headers}")
        check(await metric(srv, "taskbus_sse_refused_total") == 1,
              "the refusal is not counted")
        ws = await ctx.connect("/ws?events=lim.*", srv=srv)
        await ws.sync()
        i = await post(srv, "lim.x", b"to all")
        for c in cs:
            check_event(await asyncio.to_thread(c.event), "lim.x", "to all", i)
        cs.pop(0).close()
        t0 = time.monotonic()
        while True:
            try:
                cs.append((await sse(srv.port, "/sse?events=lim.*")).ready())
                break
            except Refused as e:
                check(e.resp.status == 503, f"after a close: {e.resp!r}")
                check(time.monotonic() - t0 < T(5),
                      "still 503 5 s after a stream closed")
                await asyncio.sleep(0.05)
    finally:
        for c in cs:
            c.close()
    return f"a slot freed after {time.monotonic() - t0:.2f} s"


async def t_slow_client(ctx):
    """A stream whose client never reads is closed once its send queue
    passes the bounds, counted in taskbus_sse_slow_closes_total and
    logged; a reading client loses nothing (should a slow machine
    overflow its subscription, it resumes from its last id, as an
    EventSource would); /healthz stays quick."""
    srv = ctx.s["slow"]
    before = await metric(srv, "taskbus_sse_slow_closes_total")
    streams = [(await sse(srv.port, "/sse?events=slow.*")).ready()]
    slow = (await sse(srv.port, "/sse?events=slow.*", rcvbuf=4096,
                      headers={"X-Request-ID": "sse-slow-1"})).ready()
    said = "(request sse-slow-1): slow client"
    try:
        pad = "p" * 1000
        got = []

        def reader():
            last = streams[-1].start
            while not got or got[-1]["event"] != "slow.end":
                try:
                    b = streams[-1].event(T(60))
                except AssertionError:  # EOF: resume, as EventSource does
                    streams.append(SSE(srv.port, "/sse?events=slow.*",
                                       {"Last-Event-ID": last}).ready())
                    continue
                if b["event"] == "taskbus:recovered":
                    continue
                last = b.get("id", last)
                got.append(b)

        rt = asyncio.create_task(asyncio.to_thread(reader))

        def flood():
            p = Poster(srv.port)
            n = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < T(30):
                for _ in range(50):
                    check_status(p.post("slow.x", f"{n}{pad}"), 202,
                                 what="flood")
                    n += 1
                if said in srv.log_text():
                    break
                time.sleep(0.02)
            check_status(p.post("slow.end", "end"), 202, what="end")
            p.close()
            return n

        n = await asyncio.to_thread(flood)
        took = await probe_fast(srv)
        await asyncio.wait_for(rt, T(60))
        check(len(got) == n + 1, f"the reading client got {len(got)} of "
                                 f"{n + 1}")
        for i, b in enumerate(got[:-1]):
            check(b["json"]["data"] == f"{i}{pad}", f"event {i} out of order")
        check(said in srv.log_text(), "the slow close is not logged")
        ok = await poll_until(
            lambda: _ge(metric(srv, "taskbus_sse_slow_closes_total"),
                        before + 1), T(10))
        check(ok, "the slow close is not counted in "
                  "taskbus_sse_slow_closes_total")
        gone = await poll_until(
            lambda: _not(tasks_named(srv, "sse:sse-slow-1")), T(10))
        check(gone, "the slow stream's task is still listed")
    finally:
        for c in streams:
            c.close()
        slow.close()
    return (f"closed after {n} events; /healthz in {took * 1000:.0f} ms; "
            f"the reading client resumed {len(streams) - 1} time(s)")


MEM_CAP = 256 * 1024


async def t_memory(ctx):
    """ws_memory_max counts an SSE stream's send queue and sheds a stream
    as it does a websocket: a client that never reads, allowed a 4 MiB
    send queue, under a 256 KiB cap. Events are posted until the cap
    closes it: counted as a memory close (not a slow one), the gauge
    stays within one event of the cap, and what the client then reads is
    whole events in order, the closing comment, then the end; a reading
    stream gets every event."""
    srv = ctx.s["smem"]
    reader = (await sse(srv.port, "/sse?events=mem.*")).ready()
    idle = (await sse(srv.port, "/sse?events=mem.*", rcvbuf=4096,
                      headers={"X-Request-ID": "sse-mem-1"})).ready()
    pad = "p" * 1000
    ids, got, peak = [], [], 0
    try:
        def read():
            while len(got) < len(ids) or not ids:
                got.append(reader.event(T(30)))

        def flood():
            return post_until_metric(srv.port, "mem.e", lambda n: f"{n} {pad}",
                                     ids, "taskbus_ws_memory_closes_total")

        stop = asyncio.Event()

        async def watch():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, int(await metric(
                    srv, "taskbus_ws_memory_bytes")))
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        try:
            posted = await asyncio.to_thread(flood)
        finally:
            stop.set()
            await watcher
        closes = await metric(srv, "taskbus_ws_memory_closes_total")
        check(closes == 1, f"after {posted} events of 1 KiB to a stream "
                           f"that does not read: "
                           f"taskbus_ws_memory_closes_total {closes}, want 1")
        await asyncio.wait_for(asyncio.to_thread(read), T(30))
        check([b["json"]["id"] for b in got] == ids,
              f"the reading stream got {len(got)} of {len(ids)} events (or "
              f"out of order)")
        blocks = await asyncio.to_thread(idle.until_eof, T(10))
        evs = [b for b in blocks if "data" in b]
        for k, b in enumerate(evs):
            check(json.loads(b["data"])["data"] == f"{k} {pad}",
                  f"the closed stream's event {k}: {b['lines'][:2]}")
        check(blocks and blocks[-1].get("comments") ==
              ["closing: memory limit (ws_memory_max)"],
              f"the closed stream ended {blocks[-1:]}: want the closing "
              f"comment")
        check(await metric(srv, "taskbus_sse_slow_closes_total") == 0,
              "a slow-client close: the 4 MiB send queue was not the limit")
        check(peak <= MEM_CAP + 2048, f"taskbus_ws_memory_bytes reached "
                                      f"{peak}, over the cap {MEM_CAP} + "
                                      f"one event")
    finally:
        reader.close()
        idle.close()
    return (f"{posted} events; the idle stream closed after {len(evs)} "
            f"whole events; peak {peak} bytes (cap {MEM_CAP})")


async def _not(aw):
    return not await aw


async def t_vanish(ctx):
    """Clients that reset or close right after the request, half-sent
    requests, garbage, a half-close: their streams end, their tasks leave,
    nothing leaks, the service answers."""
    srv = ctx.srv
    c = (await sse(srv.port, "/sse?events=v.*",
                   {"X-Request-ID": "sse-vanish-1"})).ready()
    check("sse:sse-vanish-1" in await tasks_named(srv, "sse:"),
          "the stream's task is not listed")
    c.close()
    ok = await poll_until(lambda: _not(tasks_named(srv, "sse:sse-vanish")),
                          T(5))
    check(ok, "the task of a closed stream is still listed")
    socks = []
    for k in range(20):
        s = SSE(srv.port, "", connect=False)
        req = (f"GET /sse?events=v.{k} HTTP/1.1\r\nHost: x\r\n\r\n"
               .encode())
        if k % 4 == 0:  # the whole request, then a reset
            s.s.sendall(req)
            s.reset()
        elif k % 4 == 1:  # half a request, then gone
            s.s.sendall(req[:20])
            s.close()
        elif k % 4 == 2:  # garbage
            s.s.sendall(b"\x16\x03\x01\x00\xff" + os.urandom(200) +
                        b"\r\n\r\n")
            socks.append(s)
        else:  # a stream, then stray bytes, then a half-close
            s.s.sendall(req)
            s.s.sendall(b"stray bytes after the request\r\n")
            s.s.shutdown(socket.SHUT_WR)
            socks.append(s)
    for s in socks:
        s.close()
    await probe_fast(srv)
    ok = await poll_until(
        lambda: _eq(metric(srv, "taskbus_sse_clients"), 0), T(10))
    check(ok, "SSE clients still counted after they all left")
    check(not await tasks_named(srv, "sse:"), "sse tasks still listed")
    c = (await sse(srv.port, "/sse?events=v.*")).ready()
    i = await post(srv, "v.after", b"still here")
    check_event(await asyncio.to_thread(c.event), "v.after", "still here", i)
    c.close()


async def _eq(aw, v):
    return await aw == v


async def _ge(aw, v):
    return await aw >= v


async def t_many(ctx):
    """200 streams with 8 HTTP threads: a normal request still answers at
    once (streams hold no thread), and every stream gets the event."""
    srv = ctx.s["many"]
    cs = []
    try:
        for _ in range(200):
            cs.append(await sse(srv.port, "/sse?events=many.*"))
        for c in cs:
            await asyncio.to_thread(c.ready)
        check(await metric(srv, "taskbus_sse_clients") == 200,
              "taskbus_sse_clients is not 200")
        took = await probe_fast(srv, 1.0)
        i = await post(srv, "many.x", b"all")
        for c in cs:
            check_event(await asyncio.to_thread(c.event), "many.x", "all", i)
    finally:
        for c in cs:
            c.close()
    return f"/readyz in {took * 1000:.0f} ms beside 200 streams"


async def t_stop(ctx):
    """SIGTERM ends every stream at once (EOF after a comment saying why),
    and the service exits 0 (checked by the group)."""
    srv = ctx.s["stop"]
    cs = [(await sse(srv.port, "/sse?events=stop.*")).ready()
          for _ in range(5)]
    try:
        t0 = time.monotonic()
        srv.terminate()
        for c in cs:
            got = await asyncio.to_thread(c.until_eof, T(5))
            check(any("server stopping" in " ".join(b["comments"])
                      for b in got),
                  f"no 'closing: server stopping' comment: {got}")
        took = time.monotonic() - t0
    finally:
        for c in cs:
            c.close()
    return f"5 streams ended {took:.2f} s after SIGTERM"


# --- tokens

ADMIN = "admin-t0ken_for-the-sse-suite"
SECRET = "sse-suite-secret-0123456789abcdef"  # 33 bytes


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(sub, ttl=300, **claims):
    c = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    si = (b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." +
          b64(json.dumps(c).encode()))
    sig = hmac.new(SECRET.encode(), si.encode(), hashlib.sha256).digest()
    return si + "." + b64(sig)


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


async def t_auth(ctx):
    """With an API token: none is 401; the API token streams anything; a
    client token (header or ?token=) streams what its claims allow, and
    asking for more is 403 forbidden naming the pattern; its sub is
    logged."""
    srv = ctx.s["auth"]
    r = await refused(srv.port, "/sse?events=a.*")
    check_status(r, 401, "unauthorized", "no token")
    r = await refused(srv.port, "/sse?events=a.*", bearer("wrong"))
    check_status(r, 401, "unauthorized", "a wrong token")
    c = (await sse(srv.port, "/sse?events=a.*,b.*", bearer(ADMIN))).ready()
    c.close()
    tok = mint("carol", subscribe=["a.*", "c.<id>.done"])
    c = (await sse(srv.port, "/sse?events=a.*,c.7.done", bearer(tok))).ready()
    i = await post(srv, "c.7.done", b"ok", bearer(ADMIN))
    check_event(await asyncio.to_thread(c.event), "c.7.done", "ok", i)
    c.close()
    q = urllib.parse.quote(tok, safe="")
    c = (await sse(srv.port, f"/sse?events=a.x&token={q}")).ready()
    c.close()
    r = await refused(srv.port, "/sse?events=a.*,b.*", bearer(tok))
    check_status(r, 403, "forbidden", "a pattern beyond the claims")
    check(r.json.get("pattern") == "b.*", f"403 names {r.json}")
    r = await refused(srv.port, "/sse?events=*", bearer(tok))
    check_status(r, 403, "forbidden", "* beyond the claims")
    check(r.json.get("pattern") == "*", f"403 names {r.json}")
    r = await refused(srv.port, "/sse?events=a.*",
                      bearer(mint("old", ttl=-100, subscribe=["a.*"])))
    check_status(r, 401, "token_expired", "an expired token")
    check('sub "carol"' in srv.log_text(), "the sub is not logged")


async def t_expiry(ctx):
    """A stream opened with a client token ends when the token expires,
    with a comment saying so, and a log line."""
    srv = ctx.s["auth"]
    tok = mint("brief", ttl=2, subscribe=["e.*"])
    c = (await sse(srv.port, "/sse?events=e.*", bearer(tok))).ready()
    try:
        t0 = time.monotonic()
        got = await asyncio.to_thread(c.until_eof, T(15))
        took = time.monotonic() - t0
        check(any("token expired" in " ".join(b["comments"]) for b in got),
              f"no 'token expired' comment: {got}")
    finally:
        c.close()
    check('sub "brief"): the client token expired' in srv.log_text(),
          "the expiry is not logged")
    return f"ended {took:.1f} s after it opened"


# --- a real EventSource client

class EventSourceClient:
    """tests/integration/sse_client/client.mjs (the npm package
    eventsource) on a URL: one JSON line per thing it sees. Use with async
    with; close() kills it if it is still running."""

    def __init__(self, url, names, count):
        self.argv = [os.path.join(CLIENT_DIR, "client.mjs"), url,
                     ",".join(names), str(count)]
        self.p = None

    @staticmethod
    def missing():
        """Why the client cannot run here (fails under CI=true), or
        None."""
        mods = os.path.join(CLIENT_DIR, "node_modules", "eventsource")
        if shutil.which("node") and os.path.isdir(mods):
            return None
        msg = (f"no node or no {mods}: run bash .ci/dev.sh test, or npm ci "
               f"in {CLIENT_DIR}")
        check(os.environ.get("CI") != "true", msg)
        return msg

    async def __aenter__(self):
        self.p = await asyncio.create_subprocess_exec(
            shutil.which("node"), *self.argv, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=CLIENT_DIR)
        check((await self.line()).get("open"), "no open first")
        return self

    async def __aexit__(self, *exc):
        if self.p.returncode is None:
            self.p.kill()
            await self.p.wait()

    async def line(self, timeout=None):
        return json.loads(await asyncio.wait_for(self.p.stdout.readline(),
                                                 timeout or T(15)))

    async def warm(self, srv, name):
        """Posts name until the client sees one: EventSource shows no
        comments, so this says that the subscription is in place."""
        while True:
            await post(srv, name, b"")
            try:
                o = await self.line(0.2)
            except asyncio.TimeoutError:
                continue
            check(o.get("event") == name, f"warming up: {o}")
            return

    async def until(self, name, n, seen, also=None):
        """Reads until seen (a list) holds n events named name; other
        lines go to also(o) (or are dropped)."""
        while len(seen) < n:
            o = await self.line()
            if o.get("event") == name:
                seen.append(o)
            elif also:
                also(o)

    async def finish(self):
        rc = await asyncio.wait_for(self.p.wait(), T(10))
        check(rc == 0, f"client exit {rc}")


async def t_eventsource(ctx):
    """The npm package eventsource (pinned in sse_client/) receives events
    in order with their names, envelopes and positions as lastEventId."""
    srv = ctx.srv
    why = EventSourceClient.missing()
    if why:
        return "SKIPPED: " + why
    n = 20
    url = f"http://{HOST}:{srv.port}/sse?events=es.*"
    seen = []
    async with EventSourceClient(url, ["es.n", "es.warm"], n) as es:
        await es.warm(srv, "es.warm")
        ids = [await post(srv, "es.n", str(i).encode()) for i in range(n)]
        await es.until("es.n", n, seen)
        await es.finish()
    for i, o in enumerate(seen):
        check_envelope(o["data"], "es.n", str(i), ids[i])
        check(o["id"] == o["data"]["pos"],
              f"lastEventId {o['id']!r}, its pos {o['data']['pos']!r}")
    return f"{n} events through EventSource"


# --- resuming: positions, ?since=, Last-Event-ID

async def post_all(srv, names):
    """POSTs an event per name (data: the name); their envelopes' ids."""
    return [await post(srv, n, n.encode()) for n in names]


async def positions(srv, names):
    """{name: position} of the events posted under names, from GET
    /history."""
    r = await ahttp(srv.port, "GET", "/history?events=" + ",".join(names))
    check_status(r, 200, what="GET /history")
    return {e["name"]: e["pos"] for e in r.json["events"]}


async def recovered_block(c, timeout=None):
    b = await asyncio.to_thread(c.event, timeout)
    check(b.get("event") == "taskbus:recovered",
          f"want the taskbus:recovered event, got {b['lines']}")
    return b


async def t_resume_since(ctx):
    """?since= replays what came after it, each event with its id, then
    the taskbus:recovered event (recovered true, its id the seam), then
    live events; a fresh stream's ready block carries the position to
    resume from."""
    srv = ctx.s["res"]
    names = [f"rs.n{i}" for i in range(5)]
    ids = await post_all(srv, names)
    pos = await positions(srv, names)
    c = (await sse(srv.port, f"/sse?events=rs.*&since={pos['rs.n1']}")).ready()
    try:
        for i in (2, 3, 4):
            check_event(await asyncio.to_thread(c.event), names[i], names[i],
                        ids[i])
        b = await recovered_block(c)
        check(b["json"] == {"recovered": True, "pos": pos["rs.n4"],
                            "epoch": pos["rs.n4"].split("-")[0]},
              f"recovered {b['json']}")
        check(b.get("id") == pos["rs.n4"], f"the seam's id {b.get('id')!r}")
        i = await post(srv, "rs.live", b"live")
        check_event(await asyncio.to_thread(c.event), "rs.live", "live", i)
    finally:
        c.close()
    fresh = (await sse(srv.port, "/sse?events=rs.*")).ready()
    fresh.close()
    top = (await positions(srv, ["rs.live"]))["rs.live"]
    check(fresh.start == top, f"a fresh stream starts at {fresh.start!r}, "
                              f"the history's end is {top!r}")


async def t_last_event_id(ctx):
    """Last-Event-ID (what an EventSource sends when it reconnects) wins
    over the URL's ?since= (which it sends again)."""
    srv = ctx.s["res"]
    names = [f"le.n{i}" for i in range(4)]
    ids = await post_all(srv, names)
    pos = await positions(srv, names)
    c = (await sse(srv.port, f"/sse?events=le.*&since={pos['le.n0']}",
                   {"Last-Event-ID": pos["le.n2"]})).ready()
    try:
        check_event(await asyncio.to_thread(c.event), "le.n3", "le.n3",
                    ids[3])
        b = await recovered_block(c)
        check(b["json"]["recovered"] is True, f"recovered {b['json']}")
    finally:
        c.close()


async def t_not_recovered(ctx):
    """A position from another epoch, or past the history's end: nothing
    replayed, taskbus:recovered with recovered false and where to go on
    from."""
    srv = ctx.s["res"]
    await post(srv, "nr.x", b"x")
    top = (await positions(srv, ["nr.x"]))["nr.x"]
    epoch, seq = top.split("-")
    other = ("0" if epoch[0] != "0" else "1") + epoch[1:]
    for since in (f"{other}-1", f"{epoch}-{int(seq) + 1000}"):
        c = (await sse(srv.port, f"/sse?events=nr.*&since={since}")).ready()
        try:
            b = await recovered_block(c)
            check(b["json"] == {"recovered": False, "pos": top,
                                "epoch": epoch},
                  f"since {since}: {b['json']}")
        finally:
            c.close()


async def t_bad_since(ctx):
    """A ?since= or Last-Event-ID that is no position: 400 bad_since, with
    the code /ws uses."""
    srv = ctx.s["res"]
    for path, headers in (
            ("/sse?events=a.*&since=nope", None),
            ("/sse?events=a.*&since=abc-1", None),
            ("/sse?events=a.*&since=0123456789abcdef-01", None),
            ("/sse?events=a.*&since=" + "1" * 100, None),
            ("/sse?events=a.*", {"Last-Event-ID": "nope"}),
            ("/sse?events=a.*", {"Last-Event-ID": "0123456789abcdef-1 x"}),
            ("/sse?events=a.*", {"Last-Event-ID": "1" * 300})):
        r = await refused(srv.port, path, headers)
        check_status(r, 400, "bad_since", f"{path} {headers}")


async def t_history_off(ctx):
    """--history-size 0: events have no id, the ready comment none;
    ?since= is 400 history_off (as on /ws); a Last-Event-ID is ignored (an
    EventSource refused once would never come back)."""
    srv = ctx.s["nohist"]
    r = await refused(srv.port, "/sse?events=a.*&since=0123456789abcdef-1")
    check_status(r, 400, "history_off", "?since= without history")
    c = (await sse(srv.port, "/sse?events=nh.*",
                   {"Last-Event-ID": "0123456789abcdef-1"})).ready()
    try:
        check(c.start is None, f"an id without history: {c.start!r}")
        i = await post(srv, "nh.x", b"x")
        b = await asyncio.to_thread(c.event)
        check_event(b, "nh.x", "x", i)
        check("id" not in b, f"an id line without history: {b['lines']}")
    finally:
        c.close()


async def t_eventsource_reconnect(ctx):
    """A real EventSource whose stream ends (its task cancelled) comes
    back by itself with Last-Event-ID, and gets every event posted while
    it was away, once, in order, then the live ones."""
    srv = ctx.s["res"]
    why = EventSourceClient.missing()
    if why:
        return "SKIPPED: " + why
    n = 30
    url = f"http://{HOST}:{srv.port}/sse?events=rc.*"
    seen, recovered, errors = [], [], []

    def other(o):
        if o.get("event") == "taskbus:recovered":
            recovered.append(o)
        elif "error" in o:
            errors.append(o)

    async with EventSourceClient(url, ["rc.n", "rc.warm", "taskbus:recovered"],
                                 n) as es:
        await es.warm(srv, "rc.warm")
        ids = [await post(srv, "rc.n", str(i).encode()) for i in range(10)]
        await es.until("rc.n", 10, seen, other)
        # End the stream from the server: its handler task is cancelled.
        tasks = await tasks_named(srv, "sse:")
        check(len(tasks) == 1, f"sse tasks {tasks}")
        r = await ahttp(srv.port, "DELETE", "/tasks/" + tasks.pop())
        check_status(r, 200, what="DELETE the stream's task")
        while not errors:  # the client noticed, and waits to reconnect
            other(await es.line())
        # Posted while the client is away: only the history has them.
        ids += [await post(srv, "rc.n", str(i).encode())
                for i in range(10, 20)]
        await es.until("rc.n", 20, seen, other)
        while not recovered:
            other(await es.line())
        ids += [await post(srv, "rc.n", str(i).encode())
                for i in range(20, n)]
        await es.until("rc.n", n, seen, other)
        await es.finish()
    check([o["data"]["id"] for o in seen] == ids,
          f"events out of order, missing or twice: "
          f"{[o['data']['data'] for o in seen]}")
    for i, o in enumerate(seen):
        check_envelope(o["data"], "rc.n", str(i), ids[i])
        check(o["id"] == o["data"]["pos"], f"lastEventId {o['id']!r}")
    check(len(recovered) == 1 and recovered[0]["data"]["recovered"] is True,
          f"recovered events {recovered}")
    return f"{n} events, one reconnect ({len(errors)} error event(s))"


async def t_replay_paced(ctx):
    """A replay longer than the send queue holds (300 events of 16 KB
    through a 16-message, 256 KB queue) to a client that reads nothing for
    a second and buffers little goes at the client's pace: every event
    arrives, in order, and the stream is not closed as a slow client."""
    srv = ctx.s["pace"]
    mark = await post(srv, "pace.mark", b"")
    since = (await positions(srv, ["pace.mark"]))["pace.mark"]
    pad = "q" * 16384
    p = Poster(srv.port)
    ids = []
    for i in range(300):
        r = await asyncio.to_thread(p.post, "pace.n", f"{i}{pad}")
        check_status(r, 202, what="POST")
        ids.append(json.loads(r.body)["id"])
    p.close()
    c = (await sse(srv.port, f"/sse?events=pace.*&since={since}",
                   rcvbuf=8192)).ready()
    try:
        await asyncio.sleep(1)  # reads nothing meanwhile
        for i in range(300):
            b = await asyncio.to_thread(c.event)
            check(b["event"] == "pace.n" and b["json"]["id"] == ids[i],
                  f"replayed event {i}: {b['lines'][:2]}")
        b = await recovered_block(c)
        check(b["json"]["recovered"] is True, f"{b['json']}")
    finally:
        c.close()
    check("slow client" not in srv.log_text(),
          "the replaying stream was closed as a slow client")
    return f"300 events of 16 KB after {mark}"


async def t_replay_stalled(ctx):
    """A client that asks for a replay and then reads nothing (its TCP
    still ACKs, so the socket never fails) is closed as a slow client once
    the queued bytes waited --ws-ping-timeout (1 s here) with the socket
    taking none: counted in taskbus_sse_slow_closes_total, logged, its task
    gone, and the service answers meanwhile."""
    srv = ctx.s["stall"]
    await post(srv, "stall.mark", b"")
    since = (await positions(srv, ["stall.mark"]))["stall.mark"]
    before = await metric(srv, "taskbus_sse_slow_closes_total")
    pad = "s" * 16384
    p = Poster(srv.port)
    for i in range(300):
        r = await asyncio.to_thread(p.post, "stall.n", f"{i}{pad}")
        check_status(r, 202, what="POST")
    p.close()
    c = await sse(srv.port, f"/sse?events=stall.*&since={since}",
                  rcvbuf=4096, headers={"X-Request-ID": "sse-stall-1"})
    try:
        ok = await poll_until(
            lambda: _ge(metric(srv, "taskbus_sse_slow_closes_total"),
                        before + 1), T(20))
        check(ok, "the stalled stream is not closed as a slow client "
                  "(taskbus_sse_slow_closes_total)")
        check("(request sse-stall-1): slow client" in srv.log_text(),
              "the slow close is not logged")
        gone = await poll_until(
            lambda: _not(tasks_named(srv, "sse:sse-stall-1")), T(10))
        check(gone, "the stalled stream's task is still listed")
        await probe_fast(srv)
    finally:
        c.close()
    return "closed and counted"


async def t_too_large(ctx):
    """An event whose envelope outgrows the whole send queue (32 KB of
    '"', each escaped in JSON) ends a stream with history before it: the
    client's last id stays the event before, so a resume meets it again
    instead of skipping it; logged. Without history it is skipped with a
    comment."""
    for name, hist in (("big", True), ("bignh", False)):
        srv = ctx.s[name]
        c = (await sse(srv.port, "/sse?events=big.*")).ready()
        try:
            a = await post(srv, "big.a", b"a")
            big = await post(srv, "big.x", b'"' * 32768)
            z = await post(srv, "big.z", b"z")
            b = await asyncio.to_thread(c.event)
            check(b["json"]["id"] == a, f"first event {b['lines'][:2]}")
            if hist:
                rest = await asyncio.to_thread(c.until_eof, T(10))
                check(not any("event" in x for x in rest),
                      f"events after the one too large: "
                      f"{[x['lines'][:2] for x in rest]}")
                check(any("closing: an event is larger than the send queue"
                          " (ws_send_queue_bytes)" in n
                          for x in rest for n in x["comments"]),
                      f"no closing comment: {rest}")
            else:
                b = await asyncio.to_thread(c.event)
                check(b["json"]["id"] == z, f"after the skip {b['lines'][:2]}")
        finally:
            c.close()
        check(f"event {big} (big.x, " in srv.log_text(),
              "the event too large is not logged")
    srv = ctx.s["big"]  # /ws with history: closed 1009 before it

    def three():
        for name, body in (("big.a", b"a"), ("big.x", b'"' * 32768),
                           ("big.z", b"z")):
            r = tbharness.http_req(srv.port, "POST", "/events/" + name, body)
            check_status(r, 202, what=f"POST /events/{name}")

    w = await asyncio.to_thread(RawWS, srv.port, "/ws?events=big.*")
    try:
        await asyncio.to_thread(w.send_text, json.dumps({"subscribe": [],
                                                         "ref": "s"}))
        check((await asyncio.to_thread(w.recv_json)).get("ref") == "s",
              "no sync answer")
        await asyncio.to_thread(three)
        m = await asyncio.to_thread(w.recv_json)
        check(m.get("name") == "big.a", f"first message {str(m)[:80]}")
        code, why, texts, _ = await asyncio.to_thread(w.close_code)
        check(code == 1009 and texts == 0,
              f"/ws: closed {code} {why!r} after {texts} more message(s)")
    finally:
        w.close()
    return "closed before it with history (/sse, /ws), skipped without"


async def t_stray_input(ctx):
    """A client may send --sse-max-input bytes (1000 here) after its
    request, dropped; one more ends its stream, logged."""
    srv = ctx.s["input"]
    c = (await sse(srv.port, "/sse?events=in.*",
                   headers={"X-Request-ID": "sse-input-1"})).ready()
    try:
        await asyncio.to_thread(c.s.sendall, b"x" * 1000)
        await asyncio.sleep(0.3)  # read and dropped meanwhile
        eid = await post(srv, "in.a", b"a")
        b = await asyncio.to_thread(c.event)
        check(b["json"]["id"] == eid, "the stream ended at the limit")
        await asyncio.to_thread(c.s.sendall, b"y")
        await asyncio.to_thread(c.until_eof, T(10))
    finally:
        c.close()
    check("(request sse-input-1): the client sent 1001 bytes after its "
          "request, over sse_max_input (1000)" in srv.log_text(),
          "the end is not logged")
    return "1000 bytes taken, the 1001st ends it"


# --- a subscription that overflows

FAN = 50  # relay tasks: one event in, FAN events out at once


async def fan_out(srv):
    """FAN relay tasks that each answer fan.go with a burst.x (same data),
    all subscribed: a warm-up fan.go has reached every one. A fan.go then
    queues FAN events at once on every worker: more than a subscription of
    --ws-send-queue-msgs 4 holds. Once per server."""
    if await tasks_named(srv, "fan"):
        return
    for k in range(FAN):
        r = await ahttp(srv.port, "POST", "/tasks",
                        {"kind": "relay", "name": f"fan{k}",
                         "args": {"pattern": "fan.go", "event": "burst.x"}})
        check_status(r, 201, what="POST /tasks (relay)")

    async def all_answer():
        await post(srv, "fan.go", b"warm")
        await asyncio.sleep(0.2)
        r = await ahttp(srv.port, "GET", "/tasks?limit=1000")
        ours = [t for t in r.json["tasks"] if t["name"].startswith("fan")]
        return len(ours) == FAN and all(t["state"] == "running" for t in ours)

    check(await poll_until(all_answer, T(10)), "the relays are not running")


async def t_burst_history(ctx):
    """With history, a stream whose subscription overflows is closed
    ('events dropped: reconnect to resume') instead of going on with a
    gap; resumed from its last id it gets the rest: every event of the
    burst once."""
    srv = ctx.s["bh"]
    await fan_out(srv)
    c = (await sse(srv.port, "/sse?events=burst.*")).ready()
    last, got = c.start, []
    try:
        await post(srv, "fan.go", b"go")
        blocks = await asyncio.to_thread(c.until_eof, T(15))
    finally:
        c.close()
    for b in blocks:
        if "data" in b:
            b["json"] = json.loads(b["data"])
            if b["json"]["data"] == "go":
                got.append(b["json"]["pos"])
        last = b.get("id", last)
    notes = [n for b in blocks for n in b["comments"]]
    check("closing: events dropped: reconnect to resume" in notes,
          f"the stream ended with {notes[-3:]}")
    first = len(got)
    c = (await sse(srv.port, "/sse?events=burst.*",
                   {"Last-Event-ID": last})).ready()
    # The relays may still be answering when the stream is resumed (the
    # close comes mid-burst; on a slow machine the burst outlasts the
    # reconnection): the history's events come before taskbus:recovered,
    # the rest live after it. Read until both the marker and the whole
    # burst have come (a missing event times out).
    recovered = False
    try:
        while not recovered or len(set(got)) < FAN:
            b = await asyncio.to_thread(c.event)
            if b["event"] == "taskbus:recovered":
                check(b["json"]["recovered"] is True and not recovered,
                      f"{b['json']}")
                recovered = True
            elif b["json"]["data"] == "go":
                got.append(b["json"]["pos"])
    finally:
        c.close()
    r = await ahttp(srv.port, "GET", "/history?events=burst.x&limit=1000")
    want = [e["pos"] for e in r.json["events"] if e["data"] == "go"]
    check(len(want) == FAN, f"the history holds {len(want)} of the burst")
    check(sorted(got) == sorted(want) and len(set(got)) == FAN,
          f"got {len(got)} ({len(set(got))} distinct) of {FAN}: {first} "
          f"before the close, resumed after {last}: {got} (want {want})")
    return f"{first} before the close, {len(got) - first} on resuming"


def ws_read_all(w, until_recovered):
    """The "id"s of the wsb.x events on w in order, the "pos" of the last,
    and the close code (None: EOF, or a recovered message ended it)."""
    got, last, code = [], None, None
    while True:
        try:
            fin, op, payload = w.recv_frame(T(10))
        except (EOFError, ConnectionResetError):
            break
        if op == 0x8:
            code = struct.unpack("!H", payload[:2])[0]
            break
        if op != 0x1:
            continue
        m = json.loads(payload)
        if "recovered" in m and until_recovered:
            check(m["recovered"] is True, f"{m}")
            break
        if m.get("name") == "wsb.x":
            got.append(m["id"])
            last = m["pos"]
    return got, last, code


async def t_ws_burst_history(ctx):
    """/ws with history: a client that stops reading while events come is
    closed as a slow client (1008: a /ws subscription writes each event
    through, it never drops one), and resumed with since = the last pos it
    got, it gets every event once."""
    srv = ctx.s["bh"]
    rid = "wsburst-slow"
    w = await asyncio.to_thread(RawWS, srv.port, "/ws?events=wsb.*",
                                headers={"X-Request-ID": rid}, rcvbuf=4096)
    try:
        w.send_text('{"subscribe":[]}')
        await asyncio.to_thread(w.recv_json, T(5))
        # From here the client reads nothing until it has been closed.

        def flood():
            p = Poster(srv.port)
            ids = []
            try:
                for n in range(2000):
                    r = p.post("wsb.x",
                               json.dumps({"n": n, "pad": "p" * 8000}))
                    check_status(r, 202, what=f"POST /events/wsb.x {n}")
                    ids.append(json.loads(r.body)["id"])
                    if n % 20 == 19 and \
                            f"(request {rid}): slow client" in srv.log_text():
                        break
            finally:
                p.close()
            return ids

        ids = await asyncio.to_thread(flood)
        got, last, code = await asyncio.to_thread(ws_read_all, w, False)
    finally:
        w.close()
    check(any(rid in l and "slow client" in l and "1008" in l
              for l in srv.log_text().splitlines()),
          f"no slow-client close (1008) logged for {rid} after {len(ids)} "
          f"events of 8 KB")
    check(code in (1008, None), f"closed with {code}, want 1008")
    check(len(got) < len(ids), f"the slow client got all {len(got)} events")
    check(last is not None, "the slow client got no event before its close")
    first = len(got)
    w = await asyncio.to_thread(RawWS, srv.port,
                                f"/ws?events=wsb.*&since={last}")
    try:
        more, _, code = await asyncio.to_thread(ws_read_all, w, True)
    finally:
        w.close()
    got += more
    check(got == ids,
          f"got {len(got)} ({len(set(got))} distinct) of {len(ids)}: {first} "
          f"before the close (code {code}), {len(more)} resumed after {last}")
    return f"{first} before the 1008, {len(more)} on resuming"


async def t_burst_no_history(ctx):
    """Without history, an overflowing stream goes on and says how many
    events it dropped (': N events dropped'), which a curl user sees."""
    srv = ctx.s["bn"]
    await fan_out(srv)
    c = (await sse(srv.port, "/sse?events=burst.*")).ready()
    got, dropped = 0, 0
    try:
        await post(srv, "fan.go", b"go")
        while got + dropped < FAN:
            b = await asyncio.to_thread(c.block)
            check(b is not None, "the stream ended")
            if "data" in b:
                got += json.loads(b["data"])["data"] == "go"
            for n in b["comments"]:
                if n.endswith("events dropped"):
                    dropped += int(n.split()[0])
    finally:
        c.close()
    check(dropped > 0 and got + dropped == FAN,
          f"{got} events and {dropped} dropped of {FAN}")
    check("events came faster than this stream took them" in
          srv.log_text(), "the drop is not logged")
    return f"{got} events, {dropped} dropped"


# The smallest send queue history allows for 32 KiB events.
BIG = ("--max-event-size", "32768", "--ws-send-queue-bytes", "33792")


def server(name, *args):
    return lambda: {name: TaskbusServer(name, *args)}


GROUPS = [
    ("stream", lambda: {"main": TaskbusServer("main", *MAIN_ARGS)}, [
        ("events in order: id (the position), event, one data line",
         t_order, 30),
        ("a last \">\" in ?events=, raw and %3E", t_tail_wildcard, 30),
        ("curl -N", t_curl, 30),
        ("bad ?events=, Origin, methods: 400/403/405/404 JSON",
         t_bad_requests, 30),
        ("vanishing, half-sent, garbage clients: the service answers",
         t_vanish, 60),
        ("a real EventSource client (npm eventsource)", t_eventsource, 60),
    ]),
    ("keepalive", lambda: {"ka": TaskbusServer("ka", "--sse-keepalive", "200"),
                           "ka10": TaskbusServer("ka10", "--sse-keepalive",
                                                 "10")}, [
        ("--sse-keepalive 200: comments on an idle stream", t_keepalive, 30),
        ("--sse-keepalive 10, the smallest, is taken", t_keepalive_min, 30),
        ("--sse-keepalive 9, --sse-max-clients 0: refused at start",
         t_settings_refused, 60),
    ]),
    ("limits", server("lim", "--sse-max-clients", "3"), [
        ("--sse-max-clients 3: 503 for the 4th, counted, a slot frees",
         t_max_clients, 30),
    ]),
    # The byte bound closes the client that never reads: its subscription
    # (as many events as ws_send_queue_msgs) stays large.
    ("slow", server("slow", "--ws-send-queue-bytes", "65536",
                    "--max-event-size", "32768"), [
        ("a client that never reads is closed and counted", t_slow_client,
         120),
    ]),
    ("memory", server("smem", "--ws-memory-max", str(MEM_CAP),
                      "--ws-send-queue-bytes", str(4 * 1024 * 1024),
                      "--ws-send-queue-msgs", "100000",
                      "--ws-ping-timeout", "60000"), [
        ("--ws-memory-max counts a stream's send queue and sheds it",
         t_memory, 90),
    ]),
    ("many", server("many", "--http-threads", "8"), [
        ("200 streams hold no HTTP thread", t_many, 60),
    ]),
    ("auth", server("auth", "--token", ADMIN, "--jwt-secret", SECRET,
                    "--jwt-leeway", "0"), [
        ("API token, client token claims, 403 forbidden with the pattern",
         t_auth, 30),
        ("a client token's expiry ends the stream", t_expiry, 30),
    ]),
    ("resume", lambda: {"res": TaskbusServer("res"),
                        "nohist": TaskbusServer("nohist", "--history-size",
                                                "0")}, [
        ("?since= replays, then taskbus:recovered, then live", t_resume_since,
         30),
        ("Last-Event-ID wins over ?since=", t_last_event_id, 30),
        ("another epoch, past the end: recovered false", t_not_recovered,
         30),
        ("?since= and Last-Event-ID not positions: 400 bad_since",
         t_bad_since, 30),
        ("--history-size 0: no ids, history_off, Last-Event-ID ignored",
         t_history_off, 30),
        ("EventSource reconnects with Last-Event-ID, misses nothing",
         t_eventsource_reconnect, 90),
    ]),
    ("pace", server("pace", "--ws-send-queue-msgs", "16",
                    "--ws-send-queue-bytes", "262144",
                    "--max-event-size", "131072"), [
        ("a long replay goes at a slow client's pace", t_replay_paced, 60),
    ]),
    ("stall", server("stall", "--ws-send-queue-bytes", "65536",
                     "--max-event-size", "32768", "--ws-ping-timeout",
                     "1000"), [
        ("a client that stops reading during a replay is closed",
         t_replay_stalled, 60),
    ]),
    ("burst", lambda: {"bh": TaskbusServer("bh", "--ws-send-queue-msgs", "4"),
                       "bn": TaskbusServer("bn", "--ws-send-queue-msgs", "4",
                                           "--history-size", "0")}, [
        ("an overflow with history: closed, resumed, nothing lost",
         t_burst_history, 60),
        ("an overflow without history: ': N events dropped'",
         t_burst_no_history, 60),
        ("/ws with history: a client that stops reading: 1008, resumed",
         t_ws_burst_history, 60),
    ]),
    ("big", lambda: {"big": TaskbusServer("big", *BIG),
                     "bignh": TaskbusServer("bignh", *BIG, "--history-size",
                                            "0")}, [
        ("an event larger than the send queue: closed before it",
         t_too_large, 30),
    ]),
    ("input", server("input", "--sse-max-input", "1000"), [
        ("--sse-max-input 1000: 1000 stray bytes dropped, 1001 end it",
         t_stray_input, 30),
    ]),
    ("stop", server("stop"), [
        ("SIGTERM ends the streams at once", t_stop, 30),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("sse_suite", "taskbus-sse.", GROUPS))
