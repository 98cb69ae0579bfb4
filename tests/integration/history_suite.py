#!/usr/bin/python3
"""history_suite.py - resuming from the history over HTTP (docs/HISTORY.md):
GET /ws?since=, GET /events/{pattern}?since=, GET /history, on the
in-process bus and on Redis: every event once and in order across a
websocket that was away for 2 s during a 1000 events/s stream,
recovered false (with the position to continue from) when the history no
longer has what came after since or is of another epoch, and clear 400s
for a malformed since, a bad limit, and history off.

How it runs is tbharness.py's, shared by every ws_*_suite.py. CTest runs
it as integration_history; by hand: TASKBUS_BIN=build/taskbus
/usr/bin/python3 tests/integration/history_suite.py [WORD...].
"""

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (Redis, T, TaskbusServer, ahttp, check,  # noqa: E402
                       check_status, metric, poll_until, post, redis_cli)

RESUMED = 'taskbus_history_resumes_total{recovered="%s"}'

POS = re.compile(r"([0-9a-f]{8,16})-([1-9][0-9]*)")


def seq_of(pos):
    m = POS.fullmatch(pos or "")
    check(m, f"{pos!r} is not a position")
    return int(m.group(2))


def epoch_of(pos):
    return POS.fullmatch(pos).group(1)


async def recovered(c, timeout=None):
    """The {"recovered", "pos", "epoch"} message, after the replayed
    events (which stay in c.events)."""
    r = await c.reply(timeout)
    check("recovered" in r, f"{c.label}: answered {r}, want recovered")
    return r


async def posted(srv, name, n, start=0):
    """POSTs n events name with data start..start+n-1; their ids."""
    return [await post(srv, name, {"n": start + i}) for i in range(n)]


async def get_json(srv, path, status=200, code=None):
    r = await ahttp(srv.port, "GET", path)
    check_status(r, status, code, what=f"GET {path}")
    return r.json if r.body else None


# ------------------------------------------------------------ in-process


async def t_memory_resume(ctx):
    """The in-process bus: a client that reconnects with since gets what it
    missed, then {"recovered": true}, then live events, each once."""
    srv = ctx.srv
    c = await ctx.connect("/ws?events=mem.*", label="first")
    await c.sync()
    ids = await posted(srv, "mem.x", 5)
    got = [await c.event() for _ in range(5)]
    check([e["id"] for e in got] == ids, f"first: {got}")
    check(all("pos" in e for e in got), f"events without pos: {got}")
    seqs = [seq_of(e["pos"]) for e in got]
    check(seqs == list(range(seqs[0], seqs[0] + 5)), f"positions {seqs}")
    since = got[1]["pos"]
    await c.close()
    resumed = await metric(srv, RESUMED % "true")
    ids += await posted(srv, "mem.x", 3, 5)
    await post(srv, "other.x", "not matching")
    c2 = await ctx.connect(f"/ws?events=mem.*&since={since}", label="again")
    r = await recovered(c2)
    replay = c2.events[:]
    c2.events.clear()
    check([e["id"] for e in replay] == ids[2:],
          f"replayed {[e['data'] for e in replay]}, want n 2..7")
    check(r["recovered"] is True, f"{r}")
    top = await get_json(srv, "/history?events=*.x&limit=1000")
    check(r["pos"] == top["next"], f"recovered at {r['pos']}, the history's "
          f"end is {top['next']}")
    check(r["epoch"] == epoch_of(since), f"{r} epoch, since {since}")
    check(await metric(srv, RESUMED % "true") == resumed + 1,
          "taskbus_history_resumes_total{recovered=\"true\"} did not count it")
    live = await post(srv, "mem.x", {"n": 8})
    e = await c2.event()
    check(e["id"] == live, f"live: {e}")
    await c2.no_events(0.2)


async def t_memory_not_recovered(ctx):
    """since of another epoch, beyond the end, or older than the history
    (history_size 5 here): {"recovered": false} first, with the position
    to continue from; since at the edge of the window: recovered."""
    srv = ctx.s["small"]
    ids = await posted(srv, "win.x", 8)
    h = await get_json(srv, "/history?events=win.x")
    check(len(h["events"]) == 5 and h["events"][0]["id"] == ids[3],
          f"history_size 5 holds the last 5: {h}")
    first = seq_of(h["events"][0]["pos"])
    ep = h["epoch"]
    lost = await metric(srv, RESUMED % "false")
    for since, want in ((f"{ep}-{first - 1}", True),
                        (f"{ep}-{first - 2}", False),
                        ("00000000-1", False),
                        (f"{ep}-{first + 100}", False)):
        c = await ctx.connect(f"/ws?events=win.*&since={since}", srv=srv,
                              label=f"since {since}")
        r = await recovered(c)
        check(r["recovered"] is want and r["pos"] == h["next"]
              and r["epoch"] == ep,
              f"since {since}: {r}, want recovered {want} at {h['next']}")
        check(len(c.events) == (5 if want else 0),
              f"since {since}: {len(c.events)} replayed")
        await c.close()
    check(await metric(srv, RESUMED % "false") == lost + 3,
          "taskbus_history_resumes_total{recovered=\"false\"}: not 3 more")


async def t_replay_paced(ctx):
    """A replay far longer than the connection's send queue (here 64
    messages) and the socket's buffers goes at the client's pace: every
    event, no close as a slow client."""
    srv = ctx.s["narrow"]
    ids = await posted(srv, "pace.x", 1)
    since = (await get_json(srv, "/history?events=pace.x"))["next"]
    c = await ctx.connect("/ws", srv=srv, label="publisher")
    n = 600
    pad = "p" * 32000  # 19 MB in all: more than socket buffers take
    for i in range(n):
        await c.ws.send(json.dumps({"event": "pace.x",
                                    "data": {"i": i, "pad": pad}}))
    for i in range(n):
        r = await c.reply()
        check(r.get("ok") == "dispatch", f"dispatch {i}: {r}")
        ids.append(r["id"])
    # A client that does not read for a second (and buffers little) makes
    # the send queue fill up unless the replay waits for it.
    r = await ctx.connect(f"/ws?events=pace.x&since={since}", srv=srv,
                          label="resumer", max_queue=4, read_limit=2 ** 14)
    await asyncio.sleep(1)
    rec = await recovered(r, T(30))
    check(rec["recovered"] is True, f"{rec}")
    check([e["id"] for e in r.events] == ids[1:],
          f"replayed {len(r.events)} of {len(ids) - 1}")
    check(r.ws.open, f"closed {r.ws.close_code}")
    check("slow client" not in srv.log_text(), "closed as a slow client")
    return f"{len(r.events)} of 32 KB replayed through a 64-message queue"


async def t_longpoll_since(ctx):
    """GET /events/{pattern}?since= answers the next event after since at
    once when the history has one, so a poll loop misses nothing; a since
    the history lost is 410 with the position to continue from."""
    srv = ctx.srv
    ids = await posted(srv, "lp.x", 3)
    h = await get_json(srv, "/history?events=lp.x")
    since = f"{h['epoch']}-{seq_of(h['events'][0]['pos']) - 1}"
    got = []
    for _ in range(3):
        e = await get_json(srv, f"/events/lp.*?since={since}&timeout=5")
        got.append(e["id"])
        since = e["pos"]
    check(got == ids, f"polled {got}, want {ids}")
    r = await ahttp(srv.port, "GET", f"/events/lp.*?since={since}&timeout=0.2")
    check_status(r, 204, what="a poll after the last event")
    r = await ahttp(srv.port, "GET", "/events/lp.*?since=00000000-1&timeout=5")
    check_status(r, 410, "history_gone", what="a since of another epoch")
    check(r.json.get("recovered") is False and r.json.get("pos") == since,
          f"410 body {r.json}: want recovered false, pos {since}")


async def t_history_pages(ctx):
    """GET /history: pages of at most limit matching events, next and more
    to go on, the events as envelopes."""
    srv = ctx.srv
    ids = await posted(srv, "pg.a", 3) + await posted(srv, "pg.b", 2, 3)
    h = await get_json(srv, "/history?events=pg.a,pg.b&limit=2")
    check([e["id"] for e in h["events"]] == ids[:2] and h["more"] is True,
          f"first page {h}")
    since = h["next"]
    rest = []
    while True:
        h = await get_json(srv, f"/history?events=pg.*&limit=2&since={since}")
        rest += [e["id"] for e in h["events"]]
        since = h["next"]
        if not h["more"]:
            break
    check(rest[:3] == ids[2:], f"next pages {rest}, want {ids[2:]}")


async def t_history_tail(ctx):
    """GET /history?events= with a last ">" (raw and %3E): the events under
    the prefix at any depth, in order, not the prefix itself."""
    srv = ctx.srv
    await post(srv, "ht", {"n": -1})
    ids = (await posted(srv, "ht.a", 1) + await posted(srv, "ht.a.b.c", 1, 1)
           + await posted(srv, "ht.x.y.z.w.v.u.t", 1, 2))
    await post(srv, "other.ht.a", {"n": -2})
    for q in ("ht.>", "ht.%3E", "ht.%3e"):
        h = await get_json(srv, f"/history?events={q}&limit=1000")
        got = [e["id"] for e in h["events"]]
        check(got[-3:] == ids and all(e["name"].startswith("ht.")
                                      for e in h["events"]),
              f"events={q}: {[e['name'] for e in h['events']]}")
    h = await get_json(srv, "/history?events=%3E&limit=1000")
    names = [e["name"] for e in h["events"]]
    check(names[-5:] == ["ht", "ht.a", "ht.a.b.c", "ht.x.y.z.w.v.u.t",
                         "other.ht.a"], f"events=>: {names[-5:]}")
    r = await ahttp(srv.port, "GET", "/history?events=ht.%3E.a")
    check_status(r, 400, "bad_pattern", "events=ht.>.a")


async def t_bad_requests(ctx):
    """Malformed since, a bad limit, missing events: 400 with a stable
    code, and the server goes on."""
    srv = ctx.srv
    bad = ["x", "deadbeef", "deadbeef-", "deadbeef-01", "DEADBEEF-1",
           "deadbeef-1-2", "deadbeef-99999999999999999", "%00", "a" * 5000,
           "deadbee-1"]
    for since in bad:
        q = quote(since, safe="%")
        r = await ahttp(srv.port, "GET", f"/history?events=a&since={q}")
        check_status(r, 400, "bad_since", what=f"GET /history since {since!r}")
        r = await ahttp(srv.port, "GET", f"/events/a?since={q}&timeout=1")
        check_status(r, 400, "bad_since", what=f"long poll since {since!r}")
        st = await ctx.refused(f"/ws?events=a&since={q}")
        check(st == 400, f"/ws since {since!r}: {st}")
    for limit in ("0", "1001", "-1", "abc", "1e3", "", "99999999999999999999"):
        r = await ahttp(srv.port, "GET", f"/history?events=a&limit={limit}")
        check_status(r, 400, "bad_limit", what=f"limit {limit!r}")
    r = await ahttp(srv.port, "GET", "/history?events=a&limit=1000")
    check_status(r, 200, what="limit 1000 (history_page_max)")
    r = await ahttp(srv.port, "GET", "/history?events=a&since=")
    check_status(r, 200, what="an empty since: none yet")
    for q in ("", "?events=", "?events=a..b"):
        r = await ahttp(srv.port, "GET", f"/history{q}")
        check(r.status == 400, f"GET /history{q}: {r.status}")
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="healthz after it all")


async def subscribe_pos(ctx, srv, p):
    """A fresh websocket's answer to a subscribe carries "pos", the
    history's end once its patterns are in place: a client that drops
    before its first event resumes from it and misses nothing. A later
    subscribe's answer is past the events since."""
    await post(srv, f"{p}.before", "so that the namespace has a position")
    c = await ctx.connect(f"/ws?events={p}.*", srv=srv, label="fresh")
    r = await c.request({"subscribe": [], "ref": "ready"})
    start = r.get("pos")
    top = await get_json(srv, f"/history?events={p}.*&limit=1000")
    check(start == top["next"], f"answered {r}, the history's end is "
          f"{top['next']}")
    await c.close()  # dropped before any event came
    ids = await posted(srv, f"{p}.gap", 3)
    c2 = await ctx.connect(f"/ws?events={p}.*&since={start}", srv=srv,
                           label="back")
    rec = await recovered(c2)
    check(rec["recovered"] is True, f"{rec}")
    check([e["id"] for e in c2.events] == ids,
          f"replayed {c2.events}, want the 3 published in the gap")
    c2.events.clear()
    r2 = await c2.request({"subscribe": [f"{p}2.*"], "ref": "more"})
    check(r2.get("pos") == rec["pos"],
          f"the later answer {r2}, the seam {rec}")
    live = await post(srv, f"{p}2.x", "after the answer")
    e = await c2.event()
    check(e["id"] == live and seq_of(e["pos"]) > seq_of(r2["pos"]), f"{e}")


async def t_memory_subscribe_pos(ctx):
    await subscribe_pos(ctx, ctx.srv, "sp")


async def t_redis_subscribe_pos(ctx):
    await subscribe_pos(ctx, ctx.s["a"], "rsp")


async def t_history_off(ctx):
    """--history-size 0: since and GET /history are 400 history_off; events
    carry no pos."""
    srv = ctx.s["off"]
    c = await ctx.connect("/ws?events=off.x", srv=srv)
    r = await c.request({"subscribe": ["off.y"]})
    check(r.get("ok") == "subscribe" and "pos" not in r,
          f"history off, a subscribe answered {r}")
    await c.sync()
    await post(srv, "off.x", "x")
    e = await c.event()
    check("pos" not in e, f"an event with pos: {e}")
    for path in ("/history?events=off.x", "/events/off.x?since=deadbeef-1",
                 "/history?events=off.x&since=deadbeef-1"):
        r = await ahttp(srv.port, "GET", path)
        check_status(r, 400, "history_off", what=f"GET {path}")
    st = await ctx.refused("/ws?events=off.x&since=deadbeef-1", srv=srv)
    check(st == 400, f"/ws since with history off: {st}")


# ------------------------------------------------------------ Redis


async def t_redis_resume_stream(ctx):
    """A client on instance b, away for 2 s while instance a dispatches
    about 1000 events/s (an interval task), resumes with since: every
    event once, in order (positions contiguous), recovered true."""
    a, b = ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        async def ready(srv=srv):
            return (await ahttp(srv.port, "GET", "/readyz")).status == 200
        check(await poll_until(ready, T(10)), f"{srv.name} not ready")
    c = await ctx.connect("/ws?events=st.*", srv=b, label="before")
    await c.sync()
    total = 3000
    r = await ahttp(a.port, "POST", "/tasks", {
        "kind": "interval", "name": "stream",
        "args": {"seconds": 0.001, "event": "st.tick", "data": "t",
                 "count": total}})
    check_status(r, 201, what="POST /tasks interval")
    got = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        got.append(await c.event())
    last = got[-1]["pos"]
    await c.close()
    await asyncio.sleep(2)
    c2 = await ctx.connect(f"/ws?events=st.*&since={last}", srv=b,
                           label="after")
    rec = await recovered(c2, T(20))
    check(rec["recovered"] is True, f"{rec}")
    replayed = len(c2.events)
    check(replayed > 0, "nothing replayed after 2 s away")

    async def finished():
        t = await ahttp(a.port, "GET", "/tasks/stream")
        return t.status == 200 and t.json["state"] in ("done", "failed")
    check(await poll_until(finished, T(30)), "the interval did not end")
    await post(a, "st.end", "end")
    got += await c2.events_until("st.end", T(20))
    ticks = [e for e in got if e["name"] == "st.tick"]
    seqs = [seq_of(e["pos"]) for e in ticks]
    ids = [e["id"] for e in ticks]
    check(len(set(ids)) == len(ids), "an event arrived twice")
    check(seqs == list(range(seqs[0], seqs[0] + len(seqs))),
          f"positions not contiguous: {len(seqs)} events from {seqs[0]}")
    check(len(ticks) == total, f"{len(ticks)} ticks, want {total}")
    return f"{replayed} replayed after 2 s away"


async def t_redis_epoch_change(ctx):
    """Redis flushed: the epoch changes; a since of the old one is
    recovered false with the new epoch and position."""
    a, redis = ctx.s["a"], ctx.s["redis"]
    await post(a, "ep.x", {"n": 1})
    old = (await get_json(a, "/history?events=ep.x"))["next"]
    redis_cli(redis, "FLUSHALL")
    await post(a, "ep.x", {"n": 2})
    h = await get_json(a, "/history?events=ep.x")
    check(h["epoch"] != epoch_of(old) and len(h["events"]) == 1,
          f"after FLUSHALL: {h}, old position {old}")
    c = await ctx.connect(f"/ws?events=ep.*&since={old}", srv=a)
    r = await recovered(c)
    check(r["recovered"] is False and r["epoch"] == h["epoch"]
          and r["pos"] == h["next"] and not c.events,
          f"{r}, events {c.events}: want recovered false at {h['next']}")


async def t_redis_restart(ctx):
    """redis-server (appendonly yes) restarted under about 2000 events/s
    to 50 websocket clients, half of which reconnect with since during
    the outage: every event acknowledged (answered ok) before and after
    reaches every client once, in the order of its positions."""
    a, b, redis = ctx.s["a"], ctx.s["b"], ctx.s["redis"]
    for srv in (a, b):
        async def ready(srv=srv):
            return (await ahttp(srv.port, "GET", "/readyz")).status == 200
        check(await poll_until(ready, T(10)), f"{srv.name} not ready")
    clients = []
    for i in range(50):
        c = await ctx.connect("/ws?events=ch.*", srv=b, label=f"client {i}")
        await c.sync()
        clients.append(c)

    async def pump(c):
        """Reads c's events as they come (so that it answers pings and
        never pushes back) until the end marker."""
        end = time.monotonic() + T(120)
        while not (c.events and c.events[-1]["name"] == "ch.end"):
            await c._pump(end)
    pumps = [asyncio.create_task(pump(c)) for c in clients[25:]]
    pub = await ctx.connect("/ws", srv=a, label="publisher")
    acked, sent, errors = [], 0, [0]

    async def answers():  # until the answer to the last message, "done"
        while True:
            r = await pub.reply(T(30))
            if r.get("ref") == "done":
                return
            if r.get("ok") == "dispatch":
                acked.append(r["id"])
            else:
                errors[0] += 1
    reader = asyncio.create_task(answers())

    async def publish(seconds):
        nonlocal sent
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(2):
                await pub.ws.send(json.dumps({"event": "ch.x",
                                              "data": {"n": sent}}))
                sent += 1
            await asyncio.sleep(0.001)

    await publish(1.5)
    away = clients[:25]
    last = {}
    # Publishing goes on while Redis stops, is down and starts again; half
    # of the clients leave meanwhile and come back later with since.
    pub_task = asyncio.create_task(publish(2.0))
    t0 = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(redis.stop))
    for c in away:
        while True:  # what has arrived so far
            try:
                await c._pump(time.monotonic() + 0.01)
            except asyncio.TimeoutError:
                break
        last[c.label] = c.events[-1]["pos"]
        await c.close()
    await stopping
    await asyncio.sleep(0.3)
    await asyncio.to_thread(redis.start, redis.port)
    down = time.monotonic() - t0
    await pub_task
    check(await poll_until(lambda: ready(a), T(15)), "a did not reconnect")
    check(await poll_until(lambda: ready(b), T(15)), "b did not reconnect")
    await publish(1.5)
    await pub.ws.send(json.dumps({"subscribe": [], "ref": "done"}))
    await asyncio.wait_for(reader, T(30))
    back = []
    for c in away:
        n = await ctx.connect(f"/ws?events=ch.*&since={last[c.label]}",
                              srv=b, label=c.label + " again")
        n.events = c.events[:]
        back.append(n)
        pumps.append(asyncio.create_task(pump(n)))
    end = await post(a, "ch.end", "end")
    await asyncio.wait_for(asyncio.gather(*pumps), T(120))
    for c in clients[25:] + back:
        got = c.events
        ids = [e["id"] for e in got if e["name"] == "ch.x"]
        check(len(ids) == len(set(ids)), f"{c.label}: duplicates")
        seqs = [seq_of(e["pos"]) for e in got]
        check(seqs == sorted(seqs), f"{c.label}: out of order")
        missing = set(acked) - set(ids)
        check(not missing, f"{c.label}: {len(missing)} of {len(acked)} "
              f"acknowledged events missing")
        check(got[-1]["id"] == end, f"{c.label}: did not end with ch.end")
    check("reconnected to" in a.log_text() and "reconnected to"
          in b.log_text(), "the instances never lost Redis")
    check(await metric(b, "taskbus_history_catchup_reads_total") >= 1,
          "b did not read the history after its reconnection")
    check(await metric(b, "taskbus_history_events_lost_total") == 0,
          "b counted events lost")
    return (f"{len(acked)} acknowledged of {sent} sent, "
            f"{errors[0]} refused while Redis was down ({down:.1f} s)")


async def t_redis_rollback(ctx):
    """redis-server restarted from an older RDB comes back with a smaller
    seq in the same epoch: the instances start a new epoch, and a client
    resuming from the rolled-back range is told recovered false."""
    a, redis = ctx.s["a"], ctx.s["redis"]
    await posted(a, "rb.x", 3)
    redis_cli(redis, "SAVE")
    d = redis_cli(redis, "CONFIG", "GET", "dir").splitlines()[1]
    shutil.copy(os.path.join(d, "dump.rdb"), os.path.join(d, "old.rdb"))
    await posted(a, "rb.x", 3, 3)
    old = (await get_json(a, "/history?events=rb.x"))["next"]
    await asyncio.to_thread(redis.stop)
    shutil.copy(os.path.join(d, "old.rdb"), os.path.join(d, "dump.rdb"))
    await asyncio.to_thread(redis.start, redis.port)

    async def new_epoch():
        r = await ahttp(a.port, "GET", "/history?events=rb.x")
        return r.status == 200 and r.json["epoch"] != epoch_of(old)
    check(await poll_until(new_epoch, T(15)),
          f"still in the epoch of {old} after the rollback")
    await posted(a, "rb.x", 2, 6)
    since = f"{epoch_of(old)}-{seq_of(old) - 1}"
    c = await ctx.connect(f"/ws?events=rb.*&since={since}", srv=a)
    r = await recovered(c)
    check(r["recovered"] is False and r["epoch"] != epoch_of(old)
          and not c.events, f"resumed from {since}: {r}, {c.events}")
    check("older snapshot" in a.log_text(), "no warning in a's log")


def rdb_group():
    """A redis-server whose RDB file stays across its restarts."""
    d = tempfile.mkdtemp(prefix="rdb.", dir=tbharness.H.root)
    r = Redis("redis", "--dir", d).start()
    yield "redis", r
    yield "a", TaskbusServer("a", "--redis-url", r.url())


def memory_group():
    yield "main", TaskbusServer("main")
    yield "small", TaskbusServer("small", "--history-size", "5")
    yield "off", TaskbusServer("off", "--history-size", "0")
    yield "narrow", TaskbusServer("narrow", "--ws-send-queue-msgs", "64")


def redis_group():
    r = Redis("redis").start()
    yield "redis", r
    yield "a", TaskbusServer("a", "--redis-url", r.url())
    yield "b", TaskbusServer("b", "--redis-url", r.url())


def aof_group():
    """A redis-server with an append-only file in a directory that stays
    across its restarts."""
    d = tempfile.mkdtemp(prefix="aof.", dir=tbharness.H.root)
    r = Redis("redis", "--appendonly", "yes", "--dir", d).start()
    yield "redis", r
    yield "a", TaskbusServer("a", "--redis-url", r.url())
    yield "b", TaskbusServer("b", "--redis-url", r.url(),
                             "--ws-max-clients", "100")


GROUPS = [
    ("memory", memory_group, [
        ("a websocket resumes with since on the in-process bus",
         t_memory_resume, 30),
        ("since outside the window or of another epoch: recovered false",
         t_memory_not_recovered, 30),
        ("a subscribe's answer carries the position to resume from",
         t_memory_subscribe_pos, 30),
        ("a replay longer than the send queue goes at the client's pace",
         t_replay_paced, 60),
        ("long polls with since miss nothing", t_longpoll_since, 30),
        ("GET /history pages", t_history_pages, 30),
        ("GET /history with a last \">\"", t_history_tail, 30),
        ("malformed since, bad limits: 400", t_bad_requests, 60),
        ("history off: 400 history_off", t_history_off, 30),
    ]),
    ("redis", redis_group, [
        ("a websocket away 2 s from a 1000 events/s stream resumes",
         t_redis_resume_stream, 90),
        ("Redis flushed: recovered false, the new epoch",
         t_redis_epoch_change, 30),
        ("GET /history with a last \">\" over Redis", t_history_tail, 30),
        ("a subscribe's answer carries the position, read from Redis",
         t_redis_subscribe_pos, 30),
    ]),
    ("rollback", rdb_group, [
        ("Redis back from an older RDB: a new epoch, recovered false",
         t_redis_rollback, 60),
    ]),
    ("restart", aof_group, [
        ("redis-server restarted under 2000 events/s to 50 clients",
         t_redis_restart, 120),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("history_suite", "taskbus-history.",
                                  GROUPS))
