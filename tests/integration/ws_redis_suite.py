#!/usr/bin/python3
"""ws_redis_suite.py - websockets on two and three instances sharing one
throwaway redis-server: events both ways exactly once, data holding U+0000
across Redis (our envelopes and a foreign publisher's), and a burst of
events to a client that reads at once, which must not be taken for a slow
client.

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's, shared by every ws_*_suite.py. CTest runs it
as integration_ws_redis; by hand: TASKBUS_BIN=build/taskbus python3 tests/integration/ws_redis_suite.py [WORD...].
"""

import asyncio
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (HOST, Redis, T, TaskbusServer, ahttp,  # noqa: E402
                       check, check_envelope, check_status, poll_until, post)


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


def redis_group():
    """The servers: a redis-server, then taskbus a, b and c on it (c with
    a 4 KiB send queue)."""
    r = Redis("redis").start()
    yield "redis", r
    yield "a", TaskbusServer("a", "--redis-url", r.url())
    yield "b", TaskbusServer("b", "--redis-url", r.url())
    yield "c", TaskbusServer("c", "--redis-url", r.url(),
                             "--ws-send-queue-bytes", "4096",
                             "--max-event-size", "3072")


GROUPS = [
    ("redis", redis_group, [
        ("two instances on one Redis: both ways, exactly once",
         t_two_instances, 60),
        ("data holding U+0000 (NUL) crosses Redis intact",
         t_nul_data_redis, 30),
        ("a burst of events to a reading client is not a slow client",
         t_burst, 30),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("ws_redis_suite", "taskbus-wsredis.",
                                  GROUPS))
