#!/usr/bin/python3
"""sentinel_durable_suite.py - the history across a Redis Sentinel failover
with redis.wait_replicas (docs/HISTORY.md, "Across a Sentinel failover"),
on the same servers as sentinel_suite.py (one master, one or two replicas,
three sentinels on loopback ports; its helpers).

With one replica and wait_replicas 1: SENTINEL FAILOVER while both
instances dispatch. Events keep being published and delivered to a
subscriber that stays, with no pause over 5 s; what the old master took
after the promotion, and everything after it until the old master has
rejoined as the new master's replica, is answered 504 not_replicated (and
counted); the positions the old master alone gave out are fenced off; the
history keeps its epoch and holds every acknowledged event, once; a
websocket client that left before the failover resumes with since, is
told recovered true and gets every acknowledged event after since once, in
dispatch order; one that stayed never gets a position twice. With two
replicas and wait_replicas 1 (below the number of replicas: warned of at
start), the old master's WAIT may still succeed on the replica that was
not promoted, for events the new master never gets: then the instances
start a new epoch (recovered false), else they keep it and it holds every
acknowledged event.

CTest runs it as integration_sentinel_durable; by hand: TASKBUS_BIN=
build/taskbus /usr/bin/python3 tests/integration/sentinel_durable_suite.py
[WORD...].
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import T, ahttp, check, check_status, poll_until  # noqa: E402
from sentinel_suite import (REDIS_SENTINEL, Stream,  # noqa: E402
                            fail_over, two_instances, wait_ready)

# ------------------------------------------------------------ durable


def durable_group(replicas=1):
    return two_instances(f"du{replicas}", "--redis-ping-interval", "1000",
                         "--redis-connect-timeout", "1000",
                         "--redis-wait-replicas", "1",
                         "--redis-wait-timeout", "500", replicas=replicas)


def durable2_group():
    return durable_group(2)


async def history_ids(srv, pattern, since):
    """Every event of the history after since, in order, page by page:
    [(id, pos)]."""
    out = []
    while True:
        r = await ahttp(srv.port, "GET",
                        f"/history?events={pattern}&since={since}&limit=1000")
        check_status(r, 200, what=f"GET /history since {since}")
        out += [(e["id"], e["pos"]) for e in r.json["events"]]
        if not r.json["more"]:
            return out, r.json
        since = r.json["next"]


def seq_of(pos):
    return int(pos.rsplit("-", 1)[1])


async def through_failover(ctx, prefix, then):
    """Streams of dispatches on a and b (events prefix.a and prefix.b); a
    websocket client on a takes 20 of them and leaves; SENTINEL FAILOVER;
    once both instances moved, await then(sa, sb), and stop the streams.
    Returns the streams, the position the client left at, and when the
    failover was asked for."""
    ss, a, b = ctx.s["sentinels"], ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        await wait_ready(srv, T(10))
    sa, sb = Stream(a, f"{prefix}.a"), Stream(b, f"{prefix}.b")
    c1 = await ctx.connect(f"/ws?events={prefix}.*", srv=a, label="before")
    await c1.sync()
    try:
        sa.thread.start()
        sb.thread.start()
        since = [await c1.event(T(10)) for _ in range(20)][-1]["pos"]
        await c1.close()  # away from here on
        await asyncio.sleep(1)
        t_fail = await fail_over(ss, a, b)
        await then(sa, sb)
    finally:
        sa.stop.set()
        sb.stop.set()
        await asyncio.to_thread(sa.thread.join, T(10))
        await asyncio.to_thread(sb.thread.join, T(10))
    return sa, sb, since, t_fail


async def collect_timed(c, ends, timeout):
    """As collect, each event with when it arrived: [(monotonic, event)]."""
    got, seen = [], set()
    while seen != ends:
        ev = await c.event(timeout)
        got.append((time.monotonic(), ev))
        if ev["name"] in ends:
            seen.add(ev["name"])
    return got


async def t_failover_durable(ctx):
    """With redis.wait_replicas 1 and one replica: SENTINEL FAILOVER while
    both instances dispatch. Events keep being published and delivered to
    a subscriber that stays (no pause over 5 s), while what the old master
    took after the promotion, and what the new master takes until the old
    one has rejoined as its replica, is answered 504 not_replicated (and
    counted); the positions the old master alone gave out are fenced; the
    history keeps its epoch and holds every acknowledged event, once; a
    websocket client that left before the failover and resumes with since
    after it gets recovered true and every acknowledged event after since
    exactly once, in dispatch order."""
    a, b = ctx.s["a"], ctx.s["b"]
    # One that stays through the failover: never a position twice.
    c3 = await ctx.connect("/ws?events=du.*", srv=b, label="stays")
    await c3.sync()
    staying = asyncio.create_task(collect_timed(c3, {"du.end"}, T(60)))
    t_acked = None

    async def acked_again(sa, sb):
        # With one replica, the new master has none until Sentinel has
        # made the old master its replica (it demotes it seconds after
        # the switch) and it has synced: until then each publish is
        # answered not_replicated.
        nonlocal t_acked
        t_moved = time.monotonic()

        async def again():
            return all(any(st == 202 and t > t_moved for t, st, _ in s.got)
                       for s in (sa, sb))
        check(await poll_until(again, T(60)),
              "no publish acknowledged on the new master within 60 s")
        t_acked = time.monotonic()
        await asyncio.sleep(1)
    sa, sb, since, t_fail = await through_failover(ctx, "du", acked_again)
    check((await ahttp(a.port, "POST", "/events/du.end")).status == 202,
          "POST du.end")
    timed = await staying
    live = [(e["pos"], e["id"]) for _, e in timed]
    # Delivery resumes: the staying client's events of the streams.
    times = [t for t, e in timed if e["name"] in ("du.a", "du.b") and
             t >= t_fail - 0.5]
    pause = max((y - x for x, y in zip(times, times[1:])),
                default=float("inf"))
    check(pause <= T(5), f"delivery to the client that stayed paused "
                         f"{pause:.2f} s around the failover, want at most "
                         f"5 s")
    seqs = [seq_of(p) for p, _ in live]
    back = [(x, y) for x, y in zip(live, live[1:])
            if seq_of(y[0]) <= seq_of(x[0])]
    check(not back, f"the client that stayed got a position again or out "
                    f"of order: {back[:3]}")
    report = [f"delivery paused {pause * 1000:.0f} ms at most"]
    unrep_all = 0
    for srv, s in ((a, sa), (b, sb)):
        # Answered (published, 202 or 504): not a resume of 202s, which
        # wait for the old master to rejoin (about 16 s).
        gap = s.longest_gap(t_fail - 0.5, (202, 504))
        check(gap <= T(5), f"publishing on {srv.name} stopped for "
                           f"{gap:.2f} s around the failover, want at most "
                           f"5 s")
        check(len(s.acked()) > 50, f"{srv.name}: only {len(s.acked())} "
                                   f"events acknowledged")
        unrep = s.codes.count("not_replicated")
        unrep_all += unrep
        # With one replica: what the old master took after the promotion,
        # and the new master before the old one rejoined, is a 504.
        late = [t for t, st, _ in s.got if st == 504 and t > t_fail]
        check(late, f"{srv.name}: no 504 not_replicated after the "
                    f"failover: with one replica the new master has none "
                    f"to confirm until the old one rejoins")
        # bus_down: refused while the instance reconnects (nothing was
        # published; the pause check above bounds it).
        down = s.codes.count("bus_down")
        other = [c for c in s.codes if c not in ("not_replicated",
                                                 "bus_down")]
        check(not other, f"{srv.name}: answers other than 202, "
                         f"not_replicated and bus_down: {other[:5]}")
        counted = await tbharness.metric(srv,
                                         "taskbus_events_unreplicated_total")
        check(counted == unrep, f"{srv.name}: {unrep} answered not_replicated"
                                f", taskbus_events_unreplicated_total "
                                f"{counted}")
        report.append(f"{srv.name}: {len(s.acked())} acknowledged, {unrep} "
                      f"not_replicated, {down} bus_down, longest pause "
                      f"{gap * 1000:.0f} ms")
    ep = since.rsplit("-", 1)[0]
    for srv in (a, b):
        log = srv.log_text()
        check("history starts over in a new epoch" not in log,
              f"{srv.name} started the history over:\n" +
              "\n".join(l for l in log.splitlines() if "epoch" in l))
    check("the history goes on in epoch" in a.log_text() + b.log_text(),
          "no instance says the history goes on")
    hist, top = await history_ids(a, "du.*", f"{ep}-0")
    check(top["next"].startswith(ep + "-"),
          f"the history's epoch is now {top['next']}, was {ep}")
    ids = [i for i, _ in hist]
    check(len(ids) == len(set(ids)), "an event is twice in the history")
    pos = dict(hist)
    for s in (sa, sb):
        missing = [e for e in s.acked() if e not in pos]
        check(not missing, f"{len(missing)} of the {len(s.acked())} events "
                           f"{s.name} acknowledged are not in the history "
                           f"after the failover, e.g. {missing[:3]}")
    # The client that left before: every acknowledged event after since.
    c2 = await ctx.connect(f"/ws?events=du.*&since={since}", srv=a,
                           label="resumed")
    r = await c2.reply(T(30))
    check(r.get("recovered") is True, f"resumed since {since}: {r}")
    replay = [e["id"] for e in c2.events]
    check(len(replay) == len(set(replay)), "the replay has an event twice")
    for s in (sa, sb):
        want = [e for e in s.acked() if seq_of(pos[e]) > seq_of(since)]
        got = [e for e in replay if e in set(want)]
        check(got == want, f"{s.name}: the replay has {len(got)} of the "
                           f"{len(want)} acknowledged after {since}, or "
                           f"not in dispatch order")
    fenced = seq_of(hist[-1][1]) - seq_of(hist[0][1]) + 1 - len(hist)
    # The old master gave positions out after the promotion (the 504s
    # before the instances moved, delivered here): the fence skips them.
    check(unrep_all > 0 and fenced > 0,
          f"{fenced} positions fenced, {unrep_all} not_replicated: the "
          f"fence path did not run")
    report.append(f"acknowledged again {t_acked - t_fail:.1f} s after the "
                  f"failover")
    return "; ".join(report) + f"; {len(replay)} replayed, {fenced} " \
        f"positions fenced; the one that stayed got {len(seqs)}"


async def t_failover_fewer(ctx):
    """wait_replicas 1 with two replicas: after Sentinel promoted one, the
    old master still has the other, so its WAIT 1 confirms publishes the
    new master will never have (the other replica resyncs from the new
    one). The instances must not keep the epoch over them: the first to
    reach the new master finds its last acknowledged publish missing and
    starts a new epoch, so a client resuming from before is told
    recovered false, never true with events missing. (Should the switch
    come before any such publish, the epoch is kept and must then hold
    every acknowledged event.)"""
    a, b = ctx.s["a"], ctx.s["b"]

    async def a_while(sa, sb):
        await asyncio.sleep(2)
    sa, sb, since, t_fail = await through_failover(ctx, "dx", a_while)
    for srv in (a, b):
        check("replicas attached but redis.wait_replicas is 1" in
              srv.log_text(), f"{srv.name} did not warn that 2 replicas "
                              f"are attached and wait_replicas is 1")
    gaps = []
    for srv, s in ((a, sa), (b, sb)):
        gap = s.longest_gap(t_fail - 0.5)
        check(gap <= T(5), f"dispatch on {srv.name} stopped for {gap:.2f} s "
                           f"around the failover, want at most 5 s")
        gaps.append(f"{srv.name} {gap * 1000:.0f} ms")
    ep = since.rsplit("-", 1)[0]
    hist, top = await history_ids(a, "dx.*", f"{ep}-0")
    kept = top["next"].startswith(ep + "-")
    c2 = await ctx.connect(f"/ws?events=dx.*&since={since}", srv=a,
                           label="resumed")
    r = await c2.reply(T(30))
    acked = sa.acked() + sb.acked()
    if kept:
        missing = set(acked) - {i for i, _ in hist}
        check(not missing, f"the epoch was kept, but {len(missing)} "
                           f"acknowledged events are not in the history")
        check(r.get("recovered") is True, f"resumed since {since}: {r}")
        what = "no publish after the promotion: the epoch was kept"
    else:
        check("history starts over in a new epoch" in
              a.log_text() + b.log_text(), "no line says why the epoch "
                                           "changed")
        check(r.get("recovered") is False,
              f"a new epoch, but resumed since {since}: {r}")
        what = "a new epoch, resumes told recovered false"
    return f"{what}; longest pause {', '.join(gaps)}"


GROUPS = [
    ("durable", durable_group, [
        ("wait_replicas 1: a failover keeps the history, and resumes "
         "recover", t_failover_durable, 120),
    ]),
    ("durable2", durable2_group, [
        ("wait_replicas 1 of 2 replicas: what the old master acknowledged "
         "after the promotion is lost, and that is detected",
         t_failover_fewer, 120),
    ]),
]


if __name__ == "__main__":
    if not os.access(REDIS_SENTINEL, os.X_OK):
        print(f"FAIL setup: {REDIS_SENTINEL} missing (apt-get install "
              "redis-sentinel)", flush=True)
        sys.exit(1)
    sys.exit(tbharness.run_groups("sentinel_durable_suite",
                                  "taskbus-sentinel-durable.", GROUPS))
