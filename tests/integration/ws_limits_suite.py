#!/usr/bin/python3
"""ws_limits_suite.py - the limits that protect the server and its other
clients: --ws-max-clients (503 with Retry-After, a slot freed on close),
pings answered and unanswered (1011), a client that never reads (closed
1008, the others lose nothing), 1000 connects and disconnects without
descriptor or memory growth, and a ping flood from a client that never reads
(pushed back).

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's, shared by every ws_*_suite.py. CTest runs it
as integration_ws_limits; by hand: TASKBUS_BIN=build/taskbus python3 tests/integration/ws_limits_suite.py [WORD...].
"""

import asyncio
import json
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, InvalidStatusCode, Poster, RawWS, T,  # noqa: E402
                       TaskbusServer, ahttp, check, check_envelope,
                       check_status, gone, metric, poll_until, post,
                       upgrade_refused, websockets, ws_tasks)


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


def pong_answerer(port, seconds, want_events=0):
    """A raw client that answers each ping for seconds, then for as long as
    it has fewer than want_events events (T(10) at most: the event posted
    near the end must not have to arrive in a fixed window on a busy
    machine); returns (pings, events)."""
    w = RawWS(port, "/ws?events=png.*")
    pings = events = 0
    try:
        start = time.monotonic()
        end = start + seconds
        while True:
            if events < want_events:
                end = max(end, start + seconds + T(10))
            elif time.monotonic() >= start + seconds:
                return pings, events
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
    raw = asyncio.create_task(asyncio.to_thread(pong_answerer, srv.port, 2.2,
                                                1))
    await asyncio.sleep(2.0)
    check(c.ws.open, f"the websockets client was closed: {c.ws.close_code}")
    i = await post(srv, "png.alive", "yes")
    check_envelope(await c.event(), "png.alive", "yes", i)
    r = await c.request({"subscribe": []})
    check(r.get("ok") == "subscribe", f"after 2 s: {r}")
    pings, events = await asyncio.wait_for(raw, T(15))
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


SLOW_ARGS = ("--ws-send-queue-bytes", "65536", "--ws-send-queue-msgs", "256",
             "--max-event-size", "32768")


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
        # Paced at FLOOD_RATE (slower on a sanitizer tree, as its server
        # is): the normal client (this process, sharing the GIL with this
        # thread) must be able to keep up, as a client that reads would;
        # the slow one never reads, so only the total counts.
        p = Poster(srv.port)
        t0 = time.monotonic()
        slowest = (0, 0)
        try:
            for n in range(20000):
                ahead = t0 + n * H.scale / FLOOD_RATE - time.monotonic()
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


GROUPS = [
    ("limits", lambda: {"limits": TaskbusServer("limits", "--ws-max-clients",
                                                "3")}, [
        ("--ws-max-clients 3: the 4th gets 503, a slot frees on close",
         t_max_clients, 30),
    ]),
    ("ping", lambda: {"ping": TaskbusServer("ping", "--ws-ping-interval",
                                            "300", "--ws-ping-timeout",
                                            "300")}, [
        ("pings answered: open after 2 s", t_ping_answered, 30),
        ("pings unanswered: closed 1011 after ~0.6 s", t_ping_ignored, 30),
    ]),
    ("slow", lambda: {"slow": TaskbusServer("slow", *SLOW_ARGS)}, [
        ("a client that never reads is closed 1008, others lose nothing",
         t_slow_client, 120),
    ]),
    ("churn", lambda: {"churn": TaskbusServer("churn")}, [
        ("1000 connect/disconnects: no descriptor or memory growth", t_churn,
         120),
        ("a ping flood from a client that never reads is pushed back",
         t_ping_flood, 60),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("ws_limits_suite", "taskbus-wslimit.",
                                  GROUPS))
