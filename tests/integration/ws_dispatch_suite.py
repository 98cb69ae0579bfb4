#!/usr/bin/python3
"""ws_dispatch_suite.py - subscriptions and dispatch over GET /ws and POST
/events: the pattern checks before the upgrade, envelopes and matching, data
holding U+0000, subscribe/unsubscribe/dispatch with refs, bad messages
answered on an open connection, the request id (tasks listed, 409 on reuse,
gone after), disconnecting a client by cancelling its tasks, pipelined
messages, fan-out to 50 clients, a client closing mid-stream, HTTP-spawned
tasks, and SIGTERM closing open websockets with 1001.

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's, shared by every ws_*_suite.py. CTest runs it
as integration_ws_dispatch; by hand: TASKBUS_BIN=build/taskbus python3 tests/integration/ws_dispatch_suite.py [WORD...].
"""

import asyncio
import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (ConnectionClosed, InvalidStatusCode,  # noqa: E402
                       Poster, T, ahttp, check, check_envelope, check_status,
                       TaskbusServer, gone, main_server, poll_until, post,
                       upgrade_refused, ws_tasks)


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


async def t_tail_wildcard(ctx):
    """A last ">" takes one or more segments: over ?events= (raw or %3E)
    and over a subscribe message; ">" elsewhere or inside a segment is a
    bad_pattern that says why."""
    srv = ctx.srv
    c1 = await ctx.connect("/ws?events=tw.%3E", label="c1")
    c2 = await ctx.connect("/ws?events=tw.>", label="c2")
    c3 = await ctx.connect("/ws?events=nothing.x", label="c3")
    check(await c1.sync() == ["tw.>"] and await c2.sync() == ["tw.>"],
          "the decoded pattern is not \"tw.>\"")
    await c3.sync()
    r = await c3.request({"subscribe": [">"], "ref": "all"})
    check(r.get("ok") == "subscribe" and ">" in r.get("patterns", []),
          f"subscribe to \">\": {r}")
    await post(srv, "tw", "one segment: tw.> wants more")
    want = []
    for name in ("tw.a", "tw.a.b.c", "tw.a.b.c.d.e.f.g"):
        want.append((await post(srv, name, name), name))
    for c in (c1, c2):
        for eid, name in want:
            check_envelope(await c.event(), name, name, eid)
        await c.no_events(0.2)
    # c3 (">") got everything, "tw" included, in order.
    ev = await c3.event()
    check(ev["name"] == "tw", f"\">\" got {ev['name']} first, want tw")
    for eid, name in want:
        check_envelope(await c3.event(), name, name, eid)
    for bad, says in (("a.>.b", "only be the last segment"),
                      ("a.b>", "must be a whole segment")):
        r = await c3.request({"subscribe": [bad], "ref": bad})
        check(r.get("error") == "bad_pattern" and says in r.get("message", ""),
              f"subscribe to {bad}: {r}")
        r = await asyncio.to_thread(upgrade_refused, srv.port,
                                    "/ws?events=" + bad.replace(">", "%3E"))
        check_status(r, 400, "bad_pattern", f"?events={bad}")
        check(says in r.json.get("message", ""), f"?events={bad}: {r!r}")
    await c3.no_events(0.1)


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


async def recovered(c):
    """Reads a resumed connection's {"recovered": ...} (nothing was missed)."""
    r = await c.reply()
    check(r.get("recovered") is True, f"{c.label}: {r} before the sync")


async def a_pos(ctx, pattern):
    """A position to resume from (a subscribe's "pos"), after one event."""
    await post(ctx.srv, "pos.one", "so that the history has an end")
    c = await ctx.connect(f"/ws?events={pattern}", label="pos")
    since = (await c.request({"subscribe": []})).get("pos")
    check(since, "a subscribe's answer has no pos (history is on)")
    await c.close()
    return since


# A replay that waits for its client: events far more than the socket's
# buffers and the send queue take (--max-body 8192 on the main server).
STALL_N, STALL_PAD = 2500, "p" * 7900
_stall_since = {}


async def stalled_replay(ctx, rid):
    """A RawWS that resumes the history's STALL_N large events and reads
    nothing, once ws:rid and receiver:rid are both listed: its replay
    waits for the client. The events are posted once per server."""
    srv = ctx.srv
    if srv.port not in _stall_since:
        since = await a_pos(ctx, "stall.*")

        def flood():
            p = Poster(srv.port)
            try:
                for n in range(STALL_N):
                    r = p.post("stall.x",
                               json.dumps({"n": n, "pad": STALL_PAD}))
                    check_status(r, 202, what=f"POST /events/stall.x {n}")
            finally:
                p.close()

        await asyncio.to_thread(flood)
        _stall_since[srv.port] = since
    w = await asyncio.to_thread(
        ctx.raw, f"/ws?events=stall.*&since={_stall_since[srv.port]}",
        rcvbuf=4096, headers={"X-Request-ID": rid})
    names = {f"ws:{rid}", f"receiver:{rid}"}

    async def listed():
        return names <= set(await ws_tasks(srv))

    check(await poll_until(listed, T(5)),
          f"{sorted(names)} not both listed during the replay: "
          f"{sorted(await ws_tasks(srv))}")
    await asyncio.sleep(0.2)  # the replay is waiting for the client
    check(names <= set(await ws_tasks(srv)), "the replay did not wait")
    return w


async def t_cancel_replaying(ctx):
    """DELETE /tasks/receiver:<id> during a replay (the receiver waits for
    a client that does not read): the connection is closed with 1011 and
    both tasks leave."""
    srv = ctx.srv
    rid = "wstest-replay-cancel"
    w = await stalled_replay(ctx, rid)
    r = await ahttp(srv.port, "DELETE", f"/tasks/receiver:{rid}?timeout=5")
    check_status(r, 200, what=f"DELETE /tasks/receiver:{rid} mid-replay")
    try:
        code, why, texts, _ = await asyncio.to_thread(w.close_code, T(20))
    finally:
        w.close()
    check(code == 1011, f"closed with {code} {why!r} after {texts} messages, "
          f"want 1011")
    check(texts < STALL_N, f"all {texts} replayed despite the cancel")
    took = await gone(srv, rid, T(5))
    return f"1011 after {texts} of {STALL_N}; tasks gone in {took:.2f} s"


async def t_close_replaying(ctx):
    """A client that goes away during its replay: both tasks leave."""
    srv = ctx.srv
    rid = "wstest-replay-close"
    w = await stalled_replay(ctx, rid)
    w.abort()
    took = await gone(srv, rid, T(5))
    r = await ahttp(srv.port, "GET", "/healthz")
    check_status(r, 200, what="GET /healthz after the close")
    return f"tasks gone {took:.2f} s after the reset"


async def t_request_id(ctx):
    srv = ctx.srv
    rid = "wstest-rid-1"
    c = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID": rid})
    await c.sync()
    tasks = await ws_tasks(srv)
    h, rcv = tasks.get(f"ws:{rid}"), tasks.get(f"receiver:{rid}")
    check(h and h["kind"] == "ws" and h["state"] == "running",
          f"ws:{rid} in GET /tasks: {h}; ws tasks listed: {sorted(tasks)}")
    # Without ?since= the handler's subscription delivers from the worker's
    # loop: one task per connection, no receiver.
    check(rcv is None, f"receiver:{rid} in GET /tasks: {rcv}")
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
    # Without X-Request-ID: a generated id. With ?since=, a receiver task
    # replays the history; once live, the handler alone is left.
    since = await a_pos(ctx, "rid.x")
    before = set(await ws_tasks(srv))
    c = await ctx.connect(f"/ws?events=rid.x&since={since}")
    await recovered(c)
    await c.sync()
    new = {n: t for n, t in (await ws_tasks(srv)).items() if n not in before}
    hs = [n for n in new if n.startswith("ws:") and new[n]["kind"] == "ws"]
    check(len(hs) == 1, f"one new ws: task wanted, new tasks: {sorted(new)}")
    gen = hs[0][3:]

    async def one_task():
        return set(await ws_tasks(srv)) - before == {f"ws:{gen}"}

    check(await poll_until(one_task, T(5)),
          f"live, and still listed: {sorted(set(await ws_tasks(srv)) - before)}")
    i = await post(srv, "rid.x", "resumed, live")
    check((await c.event())["id"] == i, "the resumed connection lost events")
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
    # The longest id taken as is (64), by both tasks of a resumed
    # connection (receiver:<id> is 73 bytes); one longer is replaced.
    long_id = "L" * 63 + "z"
    w = await stalled_replay(ctx, long_id)  # ws:<id> and receiver:<id>
    c2 = await ctx.connect("/ws?events=rid.x", headers={"X-Request-ID":
                                                        long_id + "9"})
    await c2.sync()
    tasks = await ws_tasks(srv)
    check(len(tasks) == 3 and not any(long_id + "9" in n for n in tasks),
          f"a 65-byte request id: listed {sorted(tasks)}")
    w.abort()
    await c2.close()
    await gone(srv, long_id, T(5))
    return f"tasks gone {took:.2f} s after the close"


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
    """A resumed connection's receiver replays, then hands its subscription
    to the handler and ends: DELETE /tasks/receiver:<id> finds no task,
    and the connection goes on receiving (not deaf)."""
    srv = ctx.srv
    rid = "wstest-deaf"
    since = await a_pos(ctx, "deaf.*")
    i = await post(srv, "deaf.x", "missed")
    c = await ctx.connect(f"/ws?events=deaf.*&since={since}",
                          headers={"X-Request-ID": rid})
    ev = await c.event()
    check(ev["id"] == i, f"replayed {ev}, want {i}")
    await recovered(c)
    await c.sync()

    async def receiver_gone():
        return f"receiver:{rid}" not in await ws_tasks(srv)

    check(await poll_until(receiver_gone, T(5)),
          f"receiver:{rid} still listed once live")
    r = await ahttp(srv.port, "DELETE", f"/tasks/receiver:{rid}?timeout=5")
    check_status(r, 404, what=f"DELETE /tasks/receiver:{rid} once live")
    i = await post(srv, "deaf.x", "hello?")
    ev = await c.event(3)  # delivery takes milliseconds, even so
    check(ev["id"] == i, f"got {ev}")
    r = await c.request({"subscribe": ["deaf2.*"]})
    check(r.get("patterns") == ["deaf.*", "deaf2.*"], f"subscribe: {r}")
    i = await post(srv, "deaf2.x", "and a new pattern")
    check((await c.event(3))["id"] == i, "the new pattern got nothing")
    check(set(await ws_tasks(srv)) >= {f"ws:{rid}"}, "ws task gone")
    return "live on the handler's subscription"


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


# ------------------------------------------------------------ many clients

MANY = 1000


async def connect_many(ctx, path, n=MANY):
    """n clients on path, each synced (its patterns in place), opened a
    hundred at a time."""
    cs = []
    for k in range(0, n, 100):
        batch = await asyncio.gather(*(
            ctx.connect(path, label=f"client {k + i}")
            for i in range(min(100, n - k))))
        await asyncio.gather(*(c.sync() for c in batch))
        cs += batch
    return cs


async def t_many_clients(ctx):
    """1000 clients, one task each (no receiver): every event reaches each
    client whose patterns match, once, also after subscribe and unsubscribe
    changed them; closed, their tasks leave."""
    srv = ctx.srv
    cs = await connect_many(ctx, "/ws?events=many.all")
    tasks = await ws_tasks(srv)
    kinds = sorted({t["kind"] for t in tasks.values()})
    check(len(tasks) == MANY and kinds == ["ws"],
          f"{len(tasks)} ws tasks listed, kinds {kinds}: want {MANY} of "
          f"kind ws")
    i = await post(srv, "many.all", "to all")
    got = await asyncio.gather(*(c.event() for c in cs))
    check(all(e["id"] == i for e in got), "an event other than the one posted")
    half, rest = cs[::2], cs[1::2]
    rs = await asyncio.gather(*(c.request({"subscribe": ["many.half"]})
                                for c in half))
    check(all(r.get("patterns") == ["many.all", "many.half"] for r in rs),
          f"subscribe answered {rs[0]}")
    i = await post(srv, "many.half", "to half")
    got = await asyncio.gather(*(c.event() for c in half))
    check(all(e["id"] == i for e in got), "many.half: another event")
    rs = await asyncio.gather(*(c.request({"unsubscribe": ["many.all"]})
                                for c in half))
    check(all(r.get("patterns") == ["many.half"] for r in rs),
          f"unsubscribe answered {rs[0]}")
    i = await post(srv, "many.all", "to the rest")
    got = await asyncio.gather(*(c.event() for c in rest))
    check(all(e["id"] == i for e in got), "many.all: another event")
    # The same server's delivery of both posts is over by now: any event
    # still due to half would be queued before this answer.
    rs = await asyncio.gather(*(c.request({"subscribe": []}) for c in half))
    check(all(r.get("ok") == "subscribe" for r in rs), f"sync: {rs[0]}")
    extra = [c.label for c in cs if c.events]
    check(not extra, f"events no pattern asked for, or twice: {extra[:5]}")
    await asyncio.gather(*(c.close() for c in cs))

    async def none_left():
        return not await ws_tasks(srv)

    check(await poll_until(none_left, T(10)),
          f"{len(await ws_tasks(srv))} ws tasks still listed after the close")


async def t_stop_many(ctx):
    """SIGTERM with 1000 idle clients: each is closed with 1001, and the
    server exits 0 (the runner checks it)."""
    srv = ctx.srv
    cs = await connect_many(ctx, "/ws?events=bye.*")
    srv.terminate()

    async def closed(c):
        try:
            m = await asyncio.wait_for(c.ws.recv(), T(20))
            raise AssertionError(f"{c.label}: a message instead of the "
                                 f"close: {m[:100]}")
        except ConnectionClosed:
            pass
        return c.ws.close_code

    codes = await asyncio.gather(*(closed(c) for c in cs))
    bad = [code for code in codes if code != 1001]
    check(not bad, f"{len(bad)} clients closed otherwise: {sorted(set(bad))}")
    return f"{len(codes)} closed with 1001"


def many_server():
    """Default limits (ws_max_clients 10 000)."""
    return {"many": TaskbusServer("many")}


GROUPS = [
    ("main", main_server, [
        ("POST /events: 202, bad_name, --max-body edge", t_http_post, 20),
        ("GET /ws: pattern checks before the upgrade", t_upgrade_patterns, 30),
        ("events arrive as envelopes, only when matching", t_envelopes, 20),
        ("\">\": one or more segments, raw or %3E; misplaced: bad_pattern",
         t_tail_wildcard, 20),
        ("event data may hold U+0000 (NUL)", t_nul_data, 20),
        ("subscribe, unsubscribe, dispatch, ref", t_messages, 20),
        ("bad messages are answered, the connection stays open",
         t_bad_messages, 20),
        ("request id: tasks listed while open, 409 on reuse, gone after",
         t_request_id, 60),
        ("DELETE /tasks/ws:<id> disconnects the client", t_cancel_ws_handler,
         30),
        ("a resumed connection's receiver ends once live, not deaf",
         t_cancel_ws_receiver, 30),
        ("DELETE /tasks/receiver:<id> during a replay: 1011, tasks leave",
         t_cancel_replaying, 60),
        ("a client that goes away during its replay leaves no tasks",
         t_close_replaying, 60),
        ("300 pipelined messages are answered once each, in order",
         t_pipelined, 30),
        ("fan-out: 50 clients get every event once, in order", t_fanout, 30),
        ("a client closing mid-stream leaves no tasks", t_close_midstream,
         60),
        ("cancel an HTTP-spawned task over HTTP", t_cancel_task, 30),
        # Last: it stops the server.
        ("SIGTERM closes open websockets with 1001", t_stop_with_client, 30),
    ]),
    ("many", many_server, [
        ("1000 clients subscribe, receive, unsubscribe, close",
         t_many_clients, 120),
        # Last: it stops the server.
        ("SIGTERM with 1000 idle clients closes each with 1001",
         t_stop_many, 120),
    ]),
]


# Descriptors the "many" group needs in each process (this one, and
# taskbus, which inherits the limit): a socket per client in each, more in
# taskbus, with room for the rest.
MANY_FDS = 2 * MANY + 200


def raise_nofile():
    """Raises the soft open-file limit to the hard one (inherited by the
    servers started here). {group: why} for the groups it is too low for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < MANY_FDS:
        return {"many": f"open-file limit {soft} (hard {hard}): {MANY} "
                        f"clients need {MANY_FDS}; raise it (ulimit -Hn)"}
    return {}


if __name__ == "__main__":
    sys.exit(tbharness.run_groups("ws_dispatch_suite", "taskbus-wsdisp.",
                                  GROUPS, raise_nofile()))
