#!/usr/bin/python3
"""batch_suite.py - POST /events with a batch of events (a JSON array or
NDJSON), on the memory bus and on the Redis bus with a real redis-server:
a 64-event batch reaches a websocket subscriber in order with the ids the
POST answered; a bad item at index k refuses the whole batch naming k and
nothing is delivered; core.batch_max_events at its edge; a client token may
only dispatch what it may; garbage, half-sent bodies, clients vanishing
mid-body, huge arrays and deep nesting leave the service answering; a Redis
that stops answering mid-batch is reported per event, never as 202; and
taskbus dispatch --batch.

How it runs is tbharness.py's. CTest runs it as integration_batch; by hand:
TASKBUS_BIN=build/taskbus /usr/bin/python3 tests/integration/batch_suite.py [WORD...]
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (HOST, H, Redis, T, TaskbusServer, ahttp,  # noqa: E402
                       check, check_status, hs256_token, post, redis_cli)

MAX_EVENTS = 100  # --batch-max-events of every server here
ADMIN = "admin-t0ken_for-the-batch-suite"
SECRET = "batch-suite-secret-0123456789abcdef"
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
ND = "application/x-ndjson"


def items(prefix, n, start=0):
    return [{"name": f"{prefix}.e", "data": {"k": start + k}}
            for k in range(n)]


def ndjson(objs):
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


async def batch(srv, body, ctype="application/json", headers=None):
    h = dict(headers or {})
    h["Content-Type"] = ctype
    if isinstance(body, (list, dict)):
        body = json.dumps(body).encode()
    return await ahttp(srv.port, "POST", "/events", body, h)


async def subscriber(ctx, srv, prefix, headers=None):
    c = await ctx.connect(f"/ws?events={prefix}.*", srv=srv,
                          label=f"subscriber {prefix}.*", headers=headers)
    await c.sync()
    return c


async def check_delivered(c, ids, datas, end_name):
    got = await c.events_until(end_name, T(10))
    got = got[:-1]
    check([e["id"] for e in got] == ids,
          f"{c.label}: got {len(got)} events, ids "
          f"{[e['id'] for e in got][:4]}..., want the {len(ids)} the POST "
          f"answered ({ids[:4]}...), once each, in order")
    check([e["data"] for e in got] == datas,
          f"{c.label}: data out of order or changed: "
          f"{[e['data'] for e in got][:4]}...")


async def t_order(ctx):
    """64 events in one array, then 64 as NDJSON: 202 with 64 ids each,
    delivered in order with those ids."""
    srv = ctx.srv
    c = await subscriber(ctx, srv, "ord")
    for fmt in ("array", "ndjson"):
        objs = items("ord", 64)
        body, ctype = ((objs, "application/json") if fmt == "array"
                       else (ndjson(objs), ND))
        r = await batch(srv, body, ctype)
        check_status(r, 202, what=f"POST /events ({fmt}, 64 events)")
        ids = r.json.get("ids")
        check(isinstance(ids, list) and len(ids) == 64
              and len(set(ids)) == 64 and all(isinstance(i, str) and i
                                              for i in ids),
              f"{fmt}: ids {ids!r}")
        end = await post(srv, "ord.end")
        await check_delivered(c, ids, [o["data"] for o in objs], "ord.end")
        check(end, "no end id")
    # Data as a websocket dispatch carries it: strings as text, null or
    # nothing as empty, numbers as their JSON.
    r = await batch(srv, [{"name": "ord.s", "data": "text"},
                          {"name": "ord.n"}, {"name": "ord.i", "data": 7}])
    check_status(r, 202, what="POST /events (strings, none, a number)")
    await post(srv, "ord.end")
    got = await c.events_until("ord.end", T(10))
    check([e["data"] for e in got[:3]] == ["text", "", "7"],
          f"data {[e['data'] for e in got[:3]]}")
    # Data other than a string goes as sent, as POST /events/{name}
    # carries its body (a number reaches a subscriber as its text): no
    # re-encoding, and an integer past int64 is JSON like any other.
    r = await batch(srv, b'[{"name":"ord.x","data":1e2},{"name":"ord.x",'
                         b'"data":1.10},{"name":"ord.x","data":'
                         b'18446744073709551615}]')
    check_status(r, 202, what="POST /events (numbers as sent)")
    await post(srv, "ord.end")
    got = await c.events_until("ord.end", T(10))
    check([e["data"] for e in got[:3]] == ["1e2", "1.10",
                                           "18446744073709551615"],
          f"numbers re-encoded: {[e['data'] for e in got[:3]]}")
    # A UTF-8 BOM before the body is skipped (sniffed as an array too).
    for ctype in ("", ND):
        body = (b'\xef\xbb\xbf[{"name":"ord.b"}]' if not ctype
                else b'\xef\xbb\xbf{"name":"ord.b"}\n')
        r = await batch(srv, body, ctype)
        check_status(r, 202, what=f"a body after a BOM ({ctype or 'sniffed'})")
    await post(srv, "ord.end")
    got = await c.events_until("ord.end", T(10))
    check([e["name"] for e in got] == ["ord.b", "ord.b", "ord.end"],
          f"after a BOM: {[e['name'] for e in got]}")
    # An empty batch is a batch of nothing.
    r = await batch(srv, b"[]")
    check_status(r, 202, what="POST /events []")
    check(r.json == {"ids": []}, f"empty batch: {r.json}")
    await c.no_events(0.2)


BAD = [
    ("bad name", {"name": "a..b"}, 400, "bad_name"),
    ("no name", {"data": 1}, 400, "bad_item"),
    ("not an object", [1], 400, "bad_item"),
    ("name not a string", {"name": 5}, 400, "bad_item"),
    ("unknown member", {"name": "bad.e", "event": "x"}, 400, "bad_item"),
    ("data too large", {"name": "bad.e", "data": "x" * 2049}, 413,
     "too_large"),
    # --max-event-size 2048 of the bytes as sent: the spaces count.
    ("data too large as sent", {"name": "bad.e", "data": [1]}, 413,
     "too_large"),
    ("too deep", {"name": "bad.e", "data": json.loads("[" * 40 + "]" * 40)},
     400, "bad_json"),
]


async def t_bad_item(ctx):
    """One bad item at index k (each kind of fault, in an array and as
    NDJSON) refuses the batch with its index, and nothing is delivered."""
    srv = ctx.srv
    c = await subscriber(ctx, srv, "bad")
    for what, item, status, code in BAD:
        for k in (0, 5, 63):
            objs = items("bad", 64)
            objs[k] = item
            for fmt in ("array", "ndjson"):
                body, ctype = ((json.dumps(objs).encode(), "application/json")
                               if fmt == "array" else (ndjson(objs), ND))
                body = body.replace(b"[1]", b"[1" + b" " * 2047 + b"]")
                r = await batch(srv, body, ctype)
                check_status(r, status, code,
                             what=f"{what} at {k} ({fmt})")
                check(r.json.get("index") == k,
                      f"{what} at {k} ({fmt}): index {r.json.get('index')}")
                if fmt == "ndjson":
                    check(r.json.get("line") == k + 1,
                          f"{what}: line {r.json.get('line')}")
    # Not JSON at k, in both forms.
    lines = ndjson(items("bad", 5)).split(b"\n")
    lines[3] = b'{"name": "bad.e", '
    r = await batch(srv, b"\n".join(lines), ND)
    check_status(r, 400, "bad_json", what="NDJSON line 4 cut short")
    check(r.json.get("index") == 3, f"index {r.json}")
    # At the edge: 2048 bytes as sent pass.
    r = await batch(srv, b'[{"name":"bad.e","data":[1' + b" " * 2045 + b"]}]")
    check_status(r, 202, what="data of 2048 bytes as sent")
    r = await batch(srv, b'[{"name":"bad.e"},{"name":"bad.e"},{"name"', )
    check_status(r, 400, "bad_json", what="array cut short")
    check(r.json.get("index") == 2, f"index {r.json}")
    await post(srv, "bad.end")
    got = await c.events_until("bad.end", T(10))
    check(len(got) == 2 and got[0]["data"] == [1],
          f"a refused batch delivered {len(got) - 2} events: {got[:2]}")


async def t_limit(ctx):
    """--batch-max-events 100: 100 pass, 101 are 413 too_many_events
    naming index 100, and none of them is delivered."""
    srv = ctx.srv
    c = await subscriber(ctx, srv, "lim")
    for fmt in ("array", "ndjson"):
        objs = items("lim", MAX_EVENTS)
        body = objs if fmt == "array" else ndjson(objs)
        r = await batch(srv, body, "application/json" if fmt == "array"
                        else ND)
        check_status(r, 202, what=f"{MAX_EVENTS} events ({fmt})")
        check(len(r.json["ids"]) == MAX_EVENTS, f"ids: {len(r.json['ids'])}")
        await post(srv, "lim.end")
        await check_delivered(c, r.json["ids"], [o["data"] for o in objs],
                              "lim.end")
        objs = items("lim", MAX_EVENTS + 1)
        body = objs if fmt == "array" else ndjson(objs)
        r = await batch(srv, body, "application/json" if fmt == "array"
                        else ND)
        check_status(r, 413, "too_many_events",
                     what=f"{MAX_EVENTS + 1} events ({fmt})")
        check(r.json.get("index") == MAX_EVENTS, f"index: {r.json}")
        await post(srv, "lim.end")
        got = await c.events_until("lim.end", T(10))
        check(len(got) == 1, f"{len(got) - 1} events of a refused batch")


def raw_exchange(port, data, shut=False, read=True):
    """Sends data on a new connection; the answer's first line (or None
    when the server closed without one)."""
    with socket.create_connection((HOST, port), T(5)) as s:
        s.settimeout(T(10))
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        if not read:
            return None
        buf = b""
        try:
            while b"\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        except (socket.timeout, ConnectionResetError):
            pass
        return buf.split(b"\r\n")[0] if buf else None


async def t_hostile(ctx):
    """Garbage, wrong types, a half-sent body, a client that vanishes
    mid-body, huge arrays and deep nesting: each refused (or dropped), and
    the service answers afterwards."""
    srv = ctx.srv
    c = await subscriber(ctx, srv, "hos")
    cases = [
        (b"\x00\xff garbage", "application/json", 400, "bad_batch"),
        (b"\x00\xff garbage", ND, 400, "bad_json"),
        (b'{"name":"hos.e"}', "application/json", 400, "bad_batch"),
        (b'[{"name":"hos.e"}] trailing', "application/json", 400, "bad_batch"),
        (b'[{"name":"hos.e"},]', "application/json", 400, "bad_json"),
        (b"[" * 100000, "application/json", 400, "bad_json"),
        (b"[" + b"{" * 100000, "application/json", 400, "bad_json"),
        (b'[{"name":"hos.e","data":"\\ud800"}]', "application/json", 400,
         "bad_json"),
        (b'[{"name":"hos.e"}]', "text/plain", 415, "bad_content_type"),
        (b",".join([b'{"name":"hos.e"}'] * 5000), ND, 400, "bad_json"),
    ]
    for body, ctype, status, code in cases:
        r = await batch(srv, body, ctype)
        check_status(r, status, code,
                     what=f"{body[:30]!r}... ({len(body)} bytes, {ctype})")
    # A huge array: refused at its 101st item, whatever follows.
    huge = b"[" + b",".join([b'{"name":"hos.e"}'] * 15000) + b"]"
    r = await batch(srv, huge)
    check_status(r, 413, "too_many_events", what="15 000 items")
    # Over --max-body: the front refuses it.
    r = await batch(srv, b"[" + b" " * (300 * 1024) + b"]")
    check(r.status == 413, f"over max_body: {r.status}")
    # A body cut short (Content-Length says more), then the client
    # stops sending; and one that closes mid-body.
    head = (f"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: 5000\r\n\r\n").encode()
    await asyncio.to_thread(raw_exchange, srv.port,
                            head + b'[{"name":"hos.e"},', True)
    await asyncio.to_thread(raw_exchange, srv.port,
                            head + b'[{"name":"hos.e"},', False, False)
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the hostile bodies")
    r = await batch(srv, items("hos", 3))
    check_status(r, 202, what="a good batch after the hostile ones")
    ids = r.json["ids"]
    await post(srv, "hos.end")
    got = await c.events_until("hos.end", T(10))
    check([e["id"] for e in got[:-1]] == ids,
          f"only the good batch is delivered: {[e['name'] for e in got]}")


def mint(claims):
    return hs256_token(SECRET, claims)


async def t_client_token(ctx):
    """A client token that may dispatch ok.* only: a batch naming no.x at
    index 2 is 403 forbidden naming index 2, nothing dispatched; one of
    ok.* only passes."""
    srv = ctx.s["jwt"]
    tok = mint({"sub": "batcher", "exp": int(time.time()) + 300,
                "dispatch": ["ok.*"], "subscribe": ["ok.*"]})
    h = {"Authorization": f"Bearer {tok}"}
    c = await subscriber(ctx, srv, "ok", headers=ADMIN_H)
    objs = items("ok", 5)
    objs[2] = {"name": "no.x"}
    r = await batch(srv, objs, headers=h)
    check_status(r, 403, "forbidden", what="a batch with no.x at 2")
    check(r.json.get("index") == 2, f"index: {r.json}")
    r = await batch(srv, b"\n" + ndjson(objs), ND, headers=h)
    check_status(r, 403, "forbidden", what="NDJSON with no.x on line 4")
    check(r.json.get("index") == 2 and r.json.get("line") == 4,
          f"index and line: {r.json}")
    r = await batch(srv, items("ok", 5), headers=h)
    check_status(r, 202, what="a batch of ok.* events")
    ids = r.json["ids"]
    r = await ahttp(srv.port, "POST", "/events/ok.end", b"", h)
    check_status(r, 202, what="POST /events/ok.end")
    got = await c.events_until("ok.end", T(10))
    check([e["id"] for e in got[:-1]] == ids,
          f"got {[e['name'] for e in got]}: want the 5 of the second batch")
    r = await batch(srv, items("ok", 1))
    check_status(r, 401, what="a batch without a token")


async def t_cli(ctx):
    """taskbus dispatch --batch FILE (an array) and - (NDJSON on stdin)."""
    srv = ctx.srv
    c = await subscriber(ctx, srv, "cli")
    path = os.path.join(H.root, "batch.json")
    with open(path, "w") as f:
        json.dump(items("cli", 3), f)
    env = dict(os.environ, TASKBUS_URL=f"http://{HOST}:{srv.port}")
    env.pop("TASKBUS_TOKEN", None)
    p = await asyncio.to_thread(
        subprocess.run, [H.bin, "dispatch", "--batch", path], env=env,
        capture_output=True, timeout=T(20))
    check(p.returncode == 0, f"--batch FILE: exit {p.returncode} "
                             f"{p.stderr!r}")
    ids = json.loads(p.stdout)["ids"]
    p = await asyncio.to_thread(
        subprocess.run, [H.bin, "dispatch", "--batch", "-"], env=env,
        input=ndjson(items("cli", 2, 3)) + b'{"name":"cli.end"}\n',
        capture_output=True, timeout=T(20))
    check(p.returncode == 0, f"--batch -: exit {p.returncode} {p.stderr!r}")
    ids += json.loads(p.stdout)["ids"][:2]
    got = await c.events_until("cli.end", T(10))
    check([e["id"] for e in got[:-1]] == ids,
          f"got {[e['id'] for e in got]}, want {ids} then cli.end")
    check([e["data"]["k"] for e in got[:-1]] == [0, 1, 2, 3, 4],
          f"data {[e['data'] for e in got]}")
    p = await asyncio.to_thread(
        subprocess.run, [H.bin, "dispatch", "--batch", "-"], env=env,
        input=b'{"name":"cli.e"}\n{"name":"cli..bad"}\n',
        capture_output=True, timeout=T(20))
    check(p.returncode == 1 and b'"index":1' in p.stderr,
          f"a bad batch: exit {p.returncode} {p.stderr!r}")


async def t_redis_stalls(ctx):
    """Redis stops answering (CLIENT PAUSE) while a batch waits: the POST
    is not 202 but 504 publish_timeout with every id and published false
    for each; when Redis answers again they are published and delivered
    once each (at least once, deduplicated by id)."""
    srv, redis = ctx.srv, ctx.s["redis"]
    c = await subscriber(ctx, srv, "stall")
    await asyncio.to_thread(redis_cli, redis, "CLIENT", "PAUSE", "2500",
                            "WRITE")
    objs = items("stall", 64)
    r = await batch(srv, objs)
    check_status(r, 504, "publish_timeout", what="a batch while Redis stalls")
    ids = r.json.get("ids")
    check(isinstance(ids, list) and len(ids) == 64 and all(ids),
          f"ids: {ids!r}")
    check(r.json.get("status") == ["unknown"] * 64,
          f"status: {r.json.get('status')}")
    check('64 of the batch\'s 64 events (64 "unknown"' in
          r.json.get("message", ""), f"message: {r.json.get('message')}")
    # The marker goes once Redis answers again (the pause ends).
    end = time.monotonic() + T(10)
    while True:
        r = await ahttp(srv.port, "POST", "/events/stall.end", b"")
        if r.status == 202 or time.monotonic() > end:
            break
    check_status(r, 202, what="POST /events/stall.end after the pause")
    # Every end marker that timed out may arrive too: count the batch's.
    got = []
    while True:
        ev = await c.event(T(10))
        if ev["name"] == "stall.end" and ev["id"] == r.json["id"]:
            break
        if ev["name"] != "stall.end":
            got.append(ev)
    check([e["id"] for e in got] == ids,
          f"after the stall: {len(got)} events, want the 64 ids once each "
          f"in order")
    check([e["data"] for e in got] == [o["data"] for o in objs],
          "data out of order")


async def t_queue_limit(ctx):
    """--publish-queue-max 10: a batch of 11 could never be queued: 413
    too_many_events naming index 10, nothing delivered; 10 pass."""
    srv = ctx.s["rq"]
    c = await subscriber(ctx, srv, "q")
    r = await batch(srv, items("q", 11))
    check_status(r, 413, "too_many_events", what="11 events, queue of 10")
    check(r.json.get("index") == 10, f"index: {r.json}")
    r = await batch(srv, ndjson(items("q", 11)), ND)
    check_status(r, 413, "too_many_events", what="11 events as NDJSON")
    check(r.json.get("index") == 10 and r.json.get("line") == 11,
          f"index and line: {r.json}")
    r = await batch(srv, items("q", 10))
    check_status(r, 202, what="10 events, queue of 10")
    ids = r.json["ids"]
    await post(srv, "q.end")
    await check_delivered(c, ids, [o["data"] for o in items("q", 10)],
                          "q.end")


async def t_order_plain_publish(ctx):
    """The same with the history off: each event its own PUBLISH,
    pipelined in the batch's order."""
    ctx.srv = ctx.s["rn"]
    await t_order(ctx)


async def t_redis_down(ctx):
    """Redis stopped: a batch is 503, nothing dispatched; once Redis is
    back, none of its events is delivered (only what is sent then)."""
    srv, redis = ctx.s["dsrv"], ctx.s["dredis"]
    c = await subscriber(ctx, srv, "down")
    await asyncio.to_thread(redis.stop)
    end = time.monotonic() + T(10)
    while True:  # until the service has seen Redis go
        r = await ahttp(srv.port, "GET", "/readyz")
        if r.status == 503 or time.monotonic() > end:
            break
        await asyncio.sleep(0.05)
    check_status(r, 503, what="GET /readyz with Redis stopped")
    r = await batch(srv, items("down", 8))
    check_status(r, 503, "bus_down", what="a batch while Redis is stopped")
    check("ids" not in r.json and "status" not in r.json,
          f"a batch not taken has no per-event outcome: {r.json}")
    c.events.clear()
    await asyncio.to_thread(redis.start, redis.port)
    end = time.monotonic() + T(20)
    while True:
        r = await ahttp(srv.port, "POST", "/events/down.end", b"")
        if r.status == 202 or time.monotonic() > end:
            break
        await asyncio.sleep(0.1)
    check_status(r, 202, what="POST /events/down.end once Redis is back")
    got = []
    while True:
        ev = await c.event(T(10))
        if ev["name"] == "down.end" and ev["id"] == r.json["id"]:
            break
        got.append(ev)
    check(not [e for e in got if e["name"] == "down.e"],
          f"events of the refused batch delivered: {got[:3]}")


def down_group():
    r = Redis("dredis").start()
    yield "dredis", r
    yield "dsrv", TaskbusServer("dsrv", "--redis-url", r.url(),
                                "--redis-command-timeout", "1000")


def memory_group():
    yield "mem", TaskbusServer("mem", "--batch-max-events", str(MAX_EVENTS),
                               "--max-event-size", "2048", "--max-body",
                               str(256 * 1024), "--json-max-depth", "32")


def redis_group():
    r = Redis("redis").start()
    yield "redis", r
    yield "rb", TaskbusServer("rb", "--redis-url", r.url(),
                              "--batch-max-events", str(MAX_EVENTS),
                              "--max-event-size", "2048", "--max-body",
                              str(256 * 1024), "--json-max-depth", "32",
                              "--redis-command-timeout", "1000")
    yield "rq", TaskbusServer("rq", "--redis-url", r.url(),
                              "--publish-queue-max", "10")
    yield "rn", TaskbusServer("rn", "--redis-url", r.url(),
                              "--history-size", "0")


def jwt_group():
    yield "jwt", TaskbusServer("jwt", "--token", ADMIN, "--jwt-secret",
                               SECRET)


COMMON = [
    ("64 events in order with their ids", t_order, 60),
    ("a bad item at k refuses the batch naming k", t_bad_item, 120),
    ("batch_max_events at its edge", t_limit, 60),
    ("hostile bodies; the service still answers", t_hostile, 120),
]

GROUPS = [
    ("memory", memory_group, COMMON + [
        ("taskbus dispatch --batch", t_cli, 60),
    ]),
    ("redis", redis_group, COMMON + [
        ("Redis stalls mid-batch: 504, per-event outcome, no loss",
         t_redis_stalls, 60),
        ("a batch over publish_queue_max: 413, naming its index",
         t_queue_limit, 30),
        ("history off (plain PUBLISH): 64 events in order with their ids",
         t_order_plain_publish, 60),
    ]),
    ("redis-down", down_group, [
        ("Redis stopped: a batch is 503, nothing delivered after",
         t_redis_down, 60),
    ]),
    ("jwt", jwt_group, [
        ("a client token's dispatch rights, per item", t_client_token, 30),
    ]),
]


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("batch_suite", "taskbus-batch.", GROUPS))
