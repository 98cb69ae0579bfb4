#!/usr/bin/python3
"""cluster_suite.py - one app across instances (issue 11), as a user checks
it with three `taskbus serve` processes on one redis-server.

Names unique across the cluster (20 concurrent POSTs of one name over
three instances: one 201, the others 409 naming the winner), a task found
and cancelled from any instance with its owner's final state, GET /tasks
paged across instances (every task once, cursors, ?scope=local) and its
bad parameters (400 bad_limit, bad_cursor, bad_scope), a killed owner's
tasks answered as "lost" until core.lost_keep_ms and its names free at
once, a clean stop's names free at once, singletons moved to another
instance within 3 s of their lease expiring after a kill -9 with a higher
fence, a suspended owner (SIGSTOP for two leases) that cancels its stale
run itself ("lease lost") once it runs again, a periodic task every 1 s
on three instances whose ticks fire once each (never twice) or are
counted skipped over 30 s, a redis-server restarted without persistence
after which claims
and singletons come back and no name is held twice, hostile messages on
an instance's control channel (dropped, counted, logged; a well-formed
one is obeyed), GET /stats?scope=cluster (the sums over the instances,
one that does not answer listed unreachable), and the same API on the
memory bus, where the instance is the cluster. The instances' registry
itself (GET /instances after SIGTERM and SIGKILL, a Redis restart,
hostile records) is service_suite's group "instances".

Runs the real binary ($TASKBUS_BIN) on free 127.0.0.1 ports and a
throwaway redis-server per case (tbharness.py has the helpers it shares
with service_suite). Leases, heartbeats and TTLs are short (1 s, stretched
for sanitizer builds) so that failovers take seconds. The 30 s periodic
case runs on a thread of its own beside the others.

Prints "PASS name" or "FAIL name: reason" per case and exits 1 if any
failed. Every taskbus a case starts must exit 0 on SIGTERM (or die of the
SIGKILL the case sent) with no sanitizer report.

Usage: cluster_suite.py [WORD...]  runs only the cases whose group or name
contains one of the words (all when none are given).
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, Redis, T, Taskbus, case_servers,  # noqa: E402
                       check, check_status, http_req, instances_of,
                       metric_value, redis_cli, tail, wait_for)

NS = "taskbus"
S = H.scale
LEASE_S = 1.0 * S  # core.singleton_lease_ms, in s
TTL_S = 1.0 * S  # core.instance_ttl_ms
HB_S = 0.2 * S  # core.instance_heartbeat_ms
MARGIN_S = 0.2 * S  # core.singleton_margin_ms (below a third of the lease)
FAST = ["--instance-heartbeat", f"{HB_S:g}", "--instance-ttl", f"{TTL_S:g}",
        "--singleton-lease", f"{LEASE_S:g}", "--singleton-margin",
        f"{MARGIN_S * 1000:g}", "--redis-retry-max", "300"]
SLEEP = {"kind": "sleep", "args": {"seconds": 600}}


# ------------------------------------------------------------------ helpers


def sleeper(name, **extra):
    return dict(SLEEP, name=name, **extra)


def post(s, body, query=""):
    return http_req(s.port, "POST", "/tasks" + query, body)


def task(s, name, scope=None):
    q = f"?scope={scope}" if scope else ""
    return http_req(s.port, "GET", f"/tasks/{name}{q}")


def want(r, status, code=None, what=""):
    """r must have status (and error code, with a message); r.json."""
    check_status(r, status, code, what)
    return r.json


def self_id(s):
    return next(i["id"] for i in instances_of(s) if i.get("self"))


def local_state(s, name, timeout=None):
    """(state, fence, object) of name on s alone; (None, None, None) when
    s has no such task."""
    r = http_req(s.port, "GET", f"/tasks/{name}?scope=local",
                 timeout=timeout)
    if r.status == 404:
        return None, None, None
    o = want(r, 200, what=f"GET /tasks/{name}?scope=local on {s.name}")
    return o["state"], o.get("fence"), o


def running_on(nodes, name):
    """The nodes on which name runs (scope=local)."""
    return [s for s in nodes if local_state(s, name)[0] == "running"]


def wait_running(s, name, timeout=None):
    o = wait_for(lambda: local_state(s, name)[0] == "running" and
                 local_state(s, name)[2], timeout or T(5))
    check(o, f"{name} is not running on {s.name}: "
             f"{local_state(s, name)[2]}")
    return o


def wall(iso):
    """tb__api_jtime's RFC 3339 UTC to seconds since the epoch."""
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


class Cluster:
    """n instances (a, b, c) on a redis-server of their own, all listing
    one another; the case's end stops the instances, then the Redis."""

    def __init__(self, name, n=3, extra=()):
        self.redis = Redis(name).start()
        case_servers().append(self.redis)
        self.nodes = [Taskbus(f"{name}-{c}", "--redis-url", self.redis.url(),
                              *FAST, *extra).start() for c in "abc"[:n]]
        want_ids = None

        def all_listed():
            nonlocal want_ids
            seen = [sorted(i["id"] for i in instances_of(s))
                    for s in self.nodes]
            want_ids = seen[0]
            return all(len(v) == n and v == seen[0] for v in seen)
        check(wait_for(all_listed, T(5)),
              f"{name}: the instances do not list one another: {want_ids}")
        self.ids = {s.name: self_id(s) for s in self.nodes}

    def id(self, s):
        return self.ids[s.name]

    def cli(self, *args, stdin=None):
        return redis_cli(self.redis, *args, stdin=stdin)


class Sub:
    """A plain Redis subscriber (RESP by hand) on channels of r: what
    taskbus publishes there, as another program would see it."""

    def __init__(self, r, *channels):
        self.sock = socket.create_connection((HOST, r.port), T(5))
        self.buf = b""
        self.sock.sendall(resp("SUBSCRIBE", *channels))
        for _ in channels:
            m = self.next(T(5))
            check(m and m[0] == b"subscribe", f"SUBSCRIBE answered {m!r}")

    def _fill(self, enough, deadline):
        """Reads until enough() holds; TimeoutError past deadline."""
        while not enough():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def _value(self, deadline):
        self._fill(lambda: b"\r\n" in self.buf, deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        kind, rest = line[:1], line[1:]
        if kind == b"*":
            return [self._value(deadline) for _ in range(int(rest))]
        if kind == b"$":
            n = int(rest)
            self._fill(lambda: len(self.buf) >= n + 2, deadline)
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        return rest

    def next(self, timeout):
        """The next message ([kind, channel, payload]), or None after
        timeout seconds. A partial message stays buffered."""
        saved = self.buf
        try:
            return self._value(time.monotonic() + timeout)
        except TimeoutError:
            self.buf = saved
            return None

    def drain(self, quiet):
        """Every message until none came for quiet seconds."""
        out = []
        while (m := self.next(quiet)) is not None:
            out.append(m)
        return out

    def close(self):
        self.sock.close()


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


RATELOG_BURST = 10  # TB__RATELOG_BURST in service/log.h


def ratelog_lines(err, needle, who, what):
    """A rate-limited kind of log line in err: (the lines that hold needle,
    the sum of "<who>N more <what> suppressed", the seconds between the
    first and the last line). Each second of tb__ratelog begins with a
    line that is let through, so the lines span int(seconds) + 1 of them
    at most."""
    lines = [l for l in err.splitlines() if needle in l]
    suppressed = sum(int(m) for m in re.findall(
        re.escape(who) + r"(\d+) more " + re.escape(what) + " suppressed",
        err))
    stamps = [datetime.strptime(l.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
              for l in lines]
    span = (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0
    return lines, suppressed, span


def publish(r, channel, payload):
    """PUBLISH payload (bytes) on channel with redis-cli (from stdin, so
    that any byte and any size passes); returns the receivers."""
    return int(redis_cli(r, "-x", "PUBLISH", channel, stdin=payload))


# ------------------------------------------------------------------ names


def t_names_unique():
    """20 concurrent POSTs of one name, spread over three instances, three
    times: exactly one 201, the others 409 name_taken naming the winner."""
    c = Cluster("uniq")
    out = []
    for rnd in range(3):
        name = f"race-{rnd}"
        results = [None] * 20
        go = threading.Barrier(20)

        def one(i):
            go.wait()
            results[i] = post(c.nodes[i % 3], sleeper(name))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(30))
        check(all(r is not None for r in results),
              f"{name}: some POST did not answer: {results}")
        won = [r for r in results if r.status == 201]
        check(len(won) == 1,
              f"{name}: {len(won)} answers 201, want 1: "
              f"{[r.status for r in results]}")
        winner = won[0].json["instance"]
        check(winner in c.ids.values(), f"winner {winner} is no instance")
        for r in results:
            if r.status != 201:
                o = want(r, 409, "name_taken", f"{name}: a losing POST")
                check(o.get("instance") == winner,
                      f"{name}: 409 names {o.get('instance')}, the winner "
                      f"is {winner}: {r!r}")
        # Every instance finds the one task, and Redis holds its claim.
        tid = won[0].json["id"]
        for s in c.nodes:
            o = want(task(s, name), 200, what=f"GET /tasks/{name}")
            check(o["instance"] == winner and o["id"] == tid and
                  o["replicas"] == 1, f"GET /tasks/{name} on {s.name}: {o}")
        check(c.cli("HGET", f"{{{NS}}}:claim", name) == f"{winner} {tid}",
              f"the claim of {name} in Redis")
        out.append(next(k for k, v in c.ids.items() if v == winner))
    return "winners " + ", ".join(out)


def t_cancel_from_anywhere():
    """A task started on a: found from b and c with instance a; DELETE on
    c answers a's final state, cancelled, and a's ?scope=local agrees."""
    c = Cluster("cancel")
    a, b, cc = c.nodes
    o = want(post(a, sleeper("job1")), 201, what="POST job1 on a")
    check(o["instance"] == c.id(a), f"POST on a: instance {o}")
    wait_running(a, "job1")
    for s in (b, cc):
        o = want(task(s, "job1"), 200, what=f"GET /tasks/job1 on {s.name}")
        check(o["instance"] == c.id(a) and o["state"] == "running" and
              o["replicas"] == 1, f"GET /tasks/job1 on {s.name}: {o}")
        check(task(s, "job1", "local").status == 404,
              f"{s.name} holds job1 itself")
    listed = want(http_req(cc.port, "GET", "/tasks"), 200, what="GET /tasks")
    check([t["instance"] for t in listed["tasks"] if t["name"] == "job1"] ==
          [c.id(a)], f"GET /tasks on c: {listed}")
    t0 = time.monotonic()
    o = want(http_req(cc.port, "DELETE", "/tasks/job1?timeout=5"), 200,
             what="DELETE /tasks/job1 on c")
    took = time.monotonic() - t0
    check(o["state"] == "cancelled" and o["instance"] == c.id(a) and
          o["cancel_requested"] is True and o["ended"],
          f"DELETE on c: {o}")
    st, _, mine = local_state(a, "job1")
    check(st == "cancelled" and mine["id"] == o["id"] and
          mine["ended"] == o["ended"], f"a's own view: {mine}, c said {o}")
    # The name is free again (its release reaches Redis in a round trip).
    r = wait_for(lambda: post(b, sleeper("job1")).status == 201 or None,
                 T(2))
    check(r, "job1 is not free for b after the cancel")
    o = want(task(cc, "job1"), 200, what="GET /tasks/job1 after")
    check(o["instance"] == c.id(b), f"job1 now: {o}")
    # Nothing there: 404 from any instance.
    for s in c.nodes:
        want(http_req(s.port, "DELETE", "/tasks/nope"), 404, "not_found",
             f"DELETE /tasks/nope on {s.name}")
        want(task(s, "nope"), 404, "not_found", f"GET /tasks/nope on {s.name}")
    return f"cross-instance cancel answered in {took * 1000:.0f} ms"


def t_cancel_timeout_remote():
    """A task slow to end (a command ignoring SIGTERM, killed after its
    grace): DELETE ?timeout= shorter than that on another instance is 504
    cancel_timeout with the task still ending; a later DELETE sees it
    cancelled."""
    script = os.path.join(H.root, "ignore-term.sh")
    ready = os.path.join(H.root, "ignore-term.ready")
    # It says when it ignores SIGTERM: a cancel sent before its trap is set
    # (a slow sanitizer build) would end it at once.
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrap '' TERM\n: > %s\n"
                "while :; do sleep 0.1; done\n" % ready)
    os.chmod(script, 0o755)
    c = Cluster("ctimeout", 2, ("--exec-allow", script))
    a, b = c.nodes
    want(post(a, {"kind": "exec", "name": "stubborn",
                  "args": {"command": script, "grace": 1.0 * S}}), 201,
         what="POST exec")
    wait_running(a, "stubborn")
    check(wait_for(lambda: os.path.exists(ready), T(10)),
          "the stubborn script never set its trap")
    r = http_req(b.port, "DELETE", "/tasks/stubborn?timeout=0.3")
    o = want(r, 504, "cancel_timeout", "DELETE ?timeout=0.3 on b")
    t = o.get("task") or {}
    check(t.get("instance") == c.id(a) and t.get("state") == "running" and
          t.get("cancel_requested") is True, f"504's task: {o}")
    o = want(http_req(b.port, "DELETE", "/tasks/stubborn?timeout=10"), 200,
             what="DELETE again")
    check(o["state"] == "cancelled" and "signal 9" in (o["error"] or ""),
          f"the second DELETE: {o}")


# ------------------------------------------------------------------ list


def pages(s, limit, scope=None, query=""):
    """Every page of GET /tasks?query on s: (tasks, cursors, sizes). A page
    with a cursor after it must be full, whatever a filter skipped."""
    got, cursors, sizes, cursor = [], [], [], None
    for _ in range(1000):
        q = f"?{query}&limit={limit}" + (f"&scope={scope}" if scope else "")
        if cursor:
            q += f"&cursor={cursor}"
        o = want(http_req(s.port, "GET", "/tasks" + q), 200,
                 what=f"GET /tasks{q}")
        check("unreachable" not in o, f"unreachable instances: {o}")
        got += o["tasks"]
        sizes.append(len(o["tasks"]))
        cursor = o["cursor"]
        cursors.append(cursor)
        check(cursor is None or len(o["tasks"]) == limit,
              f"GET /tasks{q}: {len(o['tasks'])} tasks and a cursor")
        if cursor is None:
            return got, cursors, sizes
    raise AssertionError("GET /tasks: more than 1000 pages")


def t_paging():
    """250 tasks over three instances, paged with limit=100 (and 125, 7)
    from each instance: every task exactly once, in instance then id
    order, cursor null at the end; ?scope=local: only the answering
    instance's."""
    c = Cluster("paging")
    conns = [http.client.HTTPConnection(HOST, s.port, timeout=T(10))
             for s in c.nodes]
    names = [f"p-{i:03d}" for i in range(250)]
    for i, name in enumerate(names):
        k = conns[i % 3]
        k.request("POST", "/tasks", json.dumps(sleeper(name)),
                  {"Content-Type": "application/json"})
        r = k.getresponse()
        body = r.read()
        check(r.status == 201, f"POST {name}: {r.status} {body[:200]!r}")
    for k in conns:
        k.close()
    by_inst = {c.id(s): 0 for s in c.nodes}
    order = sorted(by_inst)
    for limit, sizes_want in ((100, [100, 100, 50]), (125, [125, 125]),
                              (7, [7] * 35 + [5])):
        for s in c.nodes:
            got, cursors, sizes = pages(s, limit)
            keys = [(t["instance"], t["id"]) for t in got]
            check(len(keys) == len(set(keys)) == 250 and
                  sorted(t["name"] for t in got) == names,
                  f"limit={limit} on {s.name}: {len(keys)} tasks, "
                  f"{len(set(keys))} distinct")
            check(keys == sorted(keys, key=lambda k: (order.index(k[0]),
                                                      k[1])),
                  f"limit={limit} on {s.name}: not in instance, id order")
            check(sizes == sizes_want and cursors[-1] is None and
                  all(cursors[:-1]),
                  f"limit={limit} on {s.name}: pages {sizes}, cursors "
                  f"{cursors[:3]}..{cursors[-2:]}")
    for s in c.nodes:
        got, _, _ = pages(s, 30, "local")
        check(got and all(t["instance"] == c.id(s) for t in got),
              f"?scope=local on {s.name} lists another instance's tasks")
        by_inst[c.id(s)] = len(got)
        o = want(http_req(s.port, "GET", "/tasks?scope=cluster&limit=1000"),
                 200, what="GET /tasks?scope=cluster")
        check(len(o["tasks"]) == 250 and o["cursor"] is None,
              f"?scope=cluster&limit=1000 on {s.name}: "
              f"{len(o['tasks'])} tasks, cursor {o['cursor']}")
    check(sorted(by_inst.values()) == [83, 83, 84],
          f"tasks per instance, scope=local: {by_inst}")
    # A state filter pages the same way.
    o = want(http_req(c.nodes[0].port, "GET",
                      "/tasks?state=done&limit=10"), 200, what="state=done")
    check(o["tasks"] == [] and o["cursor"] is None, f"state=done: {o}")


def t_list_bad_params():
    """GET /tasks with a bad limit, cursor or scope, and the scope of GET
    and DELETE /tasks/{name}: 400 with a stable code and a message."""
    c = Cluster("params", 2, ("--tasks-page-max", "50"))
    a = c.nodes[0]
    want(post(a, sleeper("one")), 201, what="POST one")
    for q in ("limit=0", "limit=-1", "limit=51", "limit=abc", "limit=",
              "limit=1.5", "limit=99999999999999999999", "limit=%2050",
              "limit=+5", "limit=5%20", "limit=0x10"):
        want(http_req(a.port, "GET", "/tasks?" + q), 400, "bad_limit", q)
    for q in ("limit=50", "limit=1"):
        want(http_req(a.port, "GET", "/tasks?" + q), 200, what=q)
    for cur in ("zz", "abc.", ".5", "abc.x", "g0.1", "ABC.1", "abc.-1",
                "a" * 21 + ".1", "abc." + "9" * 21, "abc.1.2", "abc",
                "%00.1", "c" * 3000):
        want(http_req(a.port, "GET", "/tasks?cursor=" + cur), 400,
             "bad_cursor", f"cursor={cur[:30]}")
    want(http_req(a.port, "GET", "/tasks?cursor=abc.0"), 200,
         what="cursor=abc.0")
    for sc in ("", "LOCAL", "global", "local%20", "x" * 100):
        for method, path in (("GET", "/tasks"), ("GET", "/tasks/one"),
                             ("DELETE", "/tasks/one")):
            want(http_req(a.port, method, f"{path}?scope={sc}"), 400,
                 "bad_scope", f"{method} {path}?scope={sc[:20]}")
    check(local_state(a, "one")[0] == "running",
          "a DELETE with a bad scope touched the task")


def t_list_filters():
    """?kind= and ?instance= beside ?state= over two instances: every task
    the filters keep exactly once, pages full until the last whatever the
    filters skip, on either instance; bad values 400 bad_kind and
    bad_instance."""
    c = Cluster("filters", 2)
    a, b = c.nodes
    tasks = {}  # name -> (instance, kind)
    for i in range(48):
        s = c.nodes[i % 2]
        name = f"f-{i:02d}"
        if i % 3 == 0:  # one in three: done at once
            body = {"kind": "delay", "name": name,
                    "args": {"seconds": 0, "event": "f.x"}}
        else:
            body = sleeper(name)
        want(post(s, body), 201, what=f"POST {name}")
        tasks[name] = (c.id(s), body["kind"])

    def settled():
        o = want(http_req(a.port, "GET", "/tasks?state=done&limit=1000"),
                 200)
        return len(o["tasks"]) == 16
    check(wait_for(settled, T(5)), "the 16 delay tasks never finished")
    cases = [
        ("kind=delay", lambda n, k: k[1] == "delay"),
        ("kind=sleep", lambda n, k: k[1] == "sleep"),
        ("kind=sleep&state=running", lambda n, k: k[1] == "sleep"),
        ("kind=delay&state=running", lambda n, k: False),
        ("kind=nope", lambda n, k: False),
        (f"instance={c.id(a)}", lambda n, k: k[0] == c.id(a)),
        (f"instance={c.id(b)}", lambda n, k: k[0] == c.id(b)),
        (f"instance={c.id(a)}&kind=delay",
         lambda n, k: k[0] == c.id(a) and k[1] == "delay"),
        (f"instance={c.id(b)}&state=done", lambda n, k: k[0] == c.id(b) and
         k[1] == "delay"),
        ("instance=0123456789abcdef", lambda n, k: False),
    ]
    n = 0
    for query, keep in cases:
        expect = sorted(nm for nm, k in tasks.items() if keep(nm, k))
        for s in c.nodes:
            for limit in (1, 5, 100):
                got, _, sizes = pages(s, limit, query=query)
                names = [t["name"] for t in got]
                check(sorted(names) == expect and len(names) == len(expect),
                      f"{query}, limit {limit} on {s.name}: {len(names)} "
                      f"tasks, want {len(expect)}")
                # One instance's tasks: the page that ends them ends the
                # listing (no cursor to an instance the filter skips).
                check("instance=" not in query or not expect or sizes[-1],
                      f"{query}, limit {limit} on {s.name}: pages {sizes}")
                n += 1
    # scope=local with another instance's id: nothing.
    o = want(http_req(a.port, "GET", f"/tasks?scope=local&instance="
                                     f"{c.id(b)}"), 200)
    check(o["tasks"] == [] and o["cursor"] is None, f"local + b: {o}")
    for q, code in (("kind=", "bad_kind"), ("kind=a%01b", "bad_kind"),
                    ("kind=a%zz", "bad_kind"), ("kind=" + "k" * 65,
                                                "bad_kind"),
                    ("kind=%7F", "bad_kind"), ("kind=%ff", "bad_kind"),
                    ("kind=a%c3", "bad_kind"),
                    ("instance=", "bad_instance"),
                    ("instance=ABCDEF", "bad_instance"),
                    ("instance=xyz", "bad_instance"),
                    ("instance=" + "a" * 20, "bad_instance"),
                    ("instance=" + "a" * 3000, "bad_instance"),
                    ("instance=%00", "bad_instance"),
                    ("instance=abc%20", "bad_instance")):
        want(http_req(a.port, "GET", "/tasks?" + q), 400, code, q[:40])
    want(http_req(a.port, "GET", "/tasks?kind=" + "k" * 64), 200,
         what="a 64-byte kind")
    # GET /stats over Redis: the bus, the cluster and its calls (the
    # listings above asked b from a).
    st = want(http_req(a.port, "GET", "/stats"), 200, what="GET /stats")
    check(st["instance"] == c.id(a) and st["bus"]["kind"] == "redis" and
          st["bus"]["connected"] is True and st["cluster"]["instances"] == 2
          and st["cluster"]["calls"] > 0 and st["tasks"]["running"] == 16 and
          st["tasks"]["done"] == 8, f"stats of a: {st}")
    return f"{n} listings"


def sigstop(proc):
    """SIGSTOP, then waits (bounded) until every thread has stopped: the
    signal is delivered to each thread when it next runs, so on a loaded
    host a thread could still answer a message sent right after."""
    proc.send_signal(signal.SIGSTOP)

    def all_stopped():
        try:
            for t in os.listdir(f"/proc/{proc.pid}/task"):
                with open(f"/proc/{proc.pid}/task/{t}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in "tT":
                        return False
        except OSError:
            return False
        return True

    wait_for(all_stopped, T(5), 0.005)


def t_stats_cluster():
    """GET /stats?scope=cluster over two instances: the sums of both
    instances' numbers (events delivered on a and on b, tasks by state,
    workers), "instances": 2 and none unreachable, the same from either;
    an instance that does not answer (SIGSTOP) is listed unreachable and
    the answer still comes; a bad scope is 400 bad_scope."""
    c = Cluster("stats", 2)
    a, b = c.nodes
    n = 7
    for s in c.nodes:
        want(post(s, {"kind": "relay", "name": f"relay-{s.name}",
                      "args": {"pattern": "cs.*", "event": "cr.x"}}), 201,
             what=f"relay on {s.name}")
        wait_running(s, f"relay-{s.name}")

    def local(s):
        return want(http_req(s.port, "GET", "/stats"), 200, what="stats")

    def cluster(s, timeout=None):
        return want(http_req(s.port, "GET", "/stats?scope=cluster",
                             timeout=timeout), 200, what="scope=cluster")

    # Each relay's subscription takes a first event before the count.
    want(http_req(a.port, "POST", "/events/cs.warm", "w"), 202, what="warm")
    check(wait_for(lambda: all(local(s)["events"]["delivered"] >= 1
                               for s in c.nodes), T(5)),
          "the relays never got cs.warm")
    la, lb, c0 = local(a), local(b), cluster(a)
    for i in range(n):
        want(http_req(a.port, "POST", f"/events/cs.e{i}", str(i)), 202,
             what=f"POST cs.e{i}")
    d0 = c0["events"]["delivered"]
    check(wait_for(lambda: cluster(a)["events"]["delivered"] >= d0 + 2 * n,
                   T(10)), f"delivered never moved by {2 * n} from {d0}")
    la2, lb2 = local(a), local(b)
    for s in c.nodes:
        o = cluster(s)
        check(o["scope"] == "cluster" and o["instances"] == 2 and
              o["unreachable"] == [], f"scope=cluster on {s.name}: {o}")
        for group, key in (("events", "delivered"), ("tasks", "running"),
                           ("events", "dispatched"), ("tasks", "added")):
            check(o[group][key] == la2[group][key] + lb2[group][key],
                  f"{group}.{key} on {s.name}: {o[group][key]}, a "
                  f"{la2[group][key]} + b {lb2[group][key]}")
        check(o["workers"] == la2["workers"] + lb2["workers"] and
              o["tasks"]["running"] == 2 and "instance" not in o and
              "uptime_ms" not in o, f"scope=cluster on {s.name}: {o}")
    check(la2["events"]["delivered"] - la["events"]["delivered"] == n and
          lb2["events"]["delivered"] - lb["events"]["delivered"] == n,
          f"delivered per instance: a {la['events']} -> {la2['events']}, "
          f"b {lb['events']} -> {lb2['events']}")
    # b stopped: a answers for itself within the call's bound, b listed.
    sigstop(b.proc)
    try:
        t0 = time.monotonic()
        o = cluster(a, timeout=T(15))
        took = time.monotonic() - t0
    finally:
        b.proc.send_signal(signal.SIGCONT)
    check(o["instances"] == 1 and o["unreachable"] == [c.id(b)] and
          o["events"]["delivered"] >= la2["events"]["delivered"] and
          o["tasks"]["running"] == 1, f"b stopped: {o}")
    check(took < T(9), f"b stopped: the answer took {took:.1f} s (the "
                       f"call's bound is redis.command_timeout, 5 s)")
    for sc in ("", "x", "LOCAL", "cluster%20", "%zz", "c" * 100):
        want(http_req(a.port, "GET", f"/stats?scope={sc}"), 400,
             "bad_scope", f"scope={sc[:20]}")
    want(http_req(a.port, "GET", "/stats?scope=local"), 200, what="local")
    return f"{o['events']['delivered']} delivered in all"


def t_post_singleton_inputs():
    """POST /tasks with singleton/every: bad values are 400 with a stable
    code; the interval's bounds (core.periodic_min_ms, set to 1.5 s here,
    and 7 days) and a singleton's 64 KiB definition at their edges; the
    settings' own rules (margin below a third of the lease, TTL above the
    heartbeat) refuse to start."""
    c = Cluster("post", 1, ("--periodic-min", "1500"))
    a = c.nodes[0]
    n = iter(range(1000))

    def every(v, **extra):
        return post(a, dict({"kind": "sleep", "name": f"e{next(n)}",
                             "args": {"seconds": 0}, "every": v}, **extra))
    for v in ("1499ms", "1s", "169h", "10081m", "604801s", "1d", "", "s",
              "-5s", "1.5s", " 2s", "2S", "0s", "9" * 30 + "s"):
        want(every(v), 400, "bad_every", f"every {v!r}")
    for v in ("1500ms", "2s", "168h", "10080m", "604800s", "01m"):
        o = want(every(v), 201, what=f"every {v!r}")
        check(o["every"] and o["singleton"] is True, f"every {v!r}: {o}")
    want(every(5), 400, "bad_request", "every 5")
    want(every("2s", worker=0), 400, "bad_request", "every with a worker")
    want(post(a, dict(SLEEP, every="2s")), 400, "bad_request", "no name")
    for bad in ("yes", 1, None):
        want(post(a, sleeper(f"s{next(n)}", singleton=bad)), 400,
             "bad_request", f"singleton {bad!r}")
    want(post(a, dict(SLEEP, singleton=True)), 400, "bad_request",
         "a singleton without a name")
    want(post(a, sleeper("sw", singleton=True, worker=0)), 400,
         "bad_request", "a singleton with a worker")
    # A singleton's definition (kind and arguments) is kept in Redis: at
    # most 64 KiB.
    data = {"kind": "delay", "args": {"seconds": 600, "event": "e"},
            "singleton": True}
    o = want(post(a, dict(data, name="big1", args=dict(
        data["args"], data="x" * 65000))), 201, what="a 65000-byte singleton")
    o = want(post(a, dict(data, name="big2", args=dict(
        data["args"], data="x" * 65536))), 400, "bad_args",
        "a singleton over 64 KiB")
    check("65536" in o["message"], f"the limit is not named: {o}")
    check(task(a, "big2").status == 404, "big2 was made anyway")
    # The settings' rules between them.
    for args, name in ((["--singleton-lease", "0.9", "--singleton-margin",
                         "300"], "singleton_margin_ms"),
                       (["--instance-heartbeat", "1", "--instance-ttl", "1"],
                        "instance_ttl_ms")):
        p = subprocess.run([H.bin, "serve", "--listen", f"{HOST}:1", *args],
                           capture_output=True, timeout=T(10))
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 2 and name in err,
              f"taskbus serve {' '.join(args)}: exit {p.returncode}, "
              f"{err[-300:]!r}")
    Taskbus("edge", "--singleton-lease", "0.9", "--singleton-margin",
            "299").start().stop_ok()


# ------------------------------------------------------------------ lost


def t_lost_and_freed():
    """kill -9 of an instance holding a named task: GET and DELETE on the
    others answer state "lost" with its instance once its record expired,
    for core.lost_keep_ms, then 404; its name is free at once. A SIGTERM
    frees the names of the stopped instance at once."""
    keep = 2 * S
    c = Cluster("lost", 3, ("--lost-keep", f"{keep:g}"))
    a, b, cc = c.nodes
    want(post(cc, sleeper("doomed")), 201, what="POST doomed on c")
    want(post(b, sleeper("tidy")), 201, what="POST tidy on b")
    wait_running(cc, "doomed")
    wait_running(b, "tidy")
    # A clean stop: b's names are free as soon as it has exited.
    b.stop_ok()
    want(post(a, sleeper("tidy")), 201, what="POST tidy after b's SIGTERM")
    cid = c.id(cc)
    cc.kill_with(signal.SIGKILL)
    cc.expect_rc = -signal.SIGKILL
    t_kill = time.monotonic()
    cc.proc.wait(T(5))
    # Before its record expires the owner cannot answer: 504, not 404.
    for method in ("GET", "DELETE"):
        r = http_req(a.port, method, "/tasks/doomed")
        check((r.status == 504 and r.code() == "instance_timeout") or
              (r.status == 200 and r.json.get("state") == "lost"),
              f"{method} /tasks/doomed at once: want 504 instance_timeout "
              f"(or lost), got {r!r}")
    check(wait_for(lambda: cid not in [i["id"] for i in instances_of(a)],
                   T(TTL_S + 2)), "c is still listed")
    gone = time.monotonic() - t_kill
    o = want(task(a, "doomed"), 200, what="GET /tasks/doomed (lost)")
    check(o["state"] == "lost" and o["instance"] == cid and o["id"] >= 1,
          f"GET /tasks/doomed: {o}")
    o = want(http_req(a.port, "DELETE", "/tasks/doomed"), 200,
             what="DELETE /tasks/doomed (lost)")
    check(o["state"] == "lost" and o["instance"] == cid,
          f"DELETE /tasks/doomed: {o}")
    o = want(http_req(a.port, "GET", "/tasks"), 200, what="GET /tasks")
    check("unreachable" not in o and
          all(t["instance"] == c.id(a) for t in o["tasks"]),
          f"GET /tasks lists a dead instance's tasks: {o}")
    # Then forgotten: 404 within lost_keep (plus a heartbeat and slack).
    t0 = time.monotonic()
    check(wait_for(lambda: task(a, "doomed").status == 404,
                   keep + T(TTL_S + 2)),
          f"doomed still answered {task(a, 'doomed')!r}")
    forgot = time.monotonic() - t0
    check(forgot > keep * 0.5, f"forgotten {forgot:.2f} s after being "
          f"lost, want about lost_keep ({keep} s)")
    want(post(a, sleeper("doomed")), 201, what="POST doomed again")
    return (f"c unlisted {gone:.2f} s after SIGKILL; lost for "
            f"{forgot:.2f} s")


# ------------------------------------------------------------------ singletons


def lease_left(c, name):
    """Seconds until name's lease expires in Redis (its PTTL)."""
    return int(c.cli("PTTL", f"{{{NS}}}:lease:{name}")) / 1000


def t_singleton_failover():
    """kill -9 of the instance running a singleton: another one runs it
    within 3 s of the lease expiring, with a higher fence."""
    c = Cluster("failover")
    a, b, cc = c.nodes
    o = want(post(b, sleeper("solo", singleton=True)), 201,
             what="POST solo on b")
    check(o["instance"] == c.id(b) and o.get("fence", 0) > 0,
          f"POST solo: {o}")
    # The others refuse the name, naming b.
    for s in (a, cc):
        for body in (sleeper("solo", singleton=True), sleeper("solo")):
            r = want(post(s, body), 409, "name_taken", f"POST solo on "
                     f"{s.name}")
            check(r.get("instance") == c.id(b),
                  f"409 on {s.name} names {r.get('instance')}, b is "
                  f"{c.id(b)}")
    o = wait_running(b, "solo")
    fence = o["fence"]
    time.sleep(LEASE_S / 2)  # renewed at least once
    left = lease_left(c, "solo")
    b.kill_with(signal.SIGKILL)
    b.expect_rc = -signal.SIGKILL
    expiry = time.monotonic() + left
    found = {}

    def moved():
        for s in (a, cc):
            st, f, obj = local_state(s, "solo")
            if st == "running":
                found.update(node=s, obj=obj)
                return True
        return False
    check(wait_for(moved, left + T(3) + 1),
          f"solo runs nowhere {left + T(3) + 1:.1f} s after b's kill")
    after = time.monotonic() - expiry
    check(after <= T(3), f"solo ran again {after:.2f} s after its lease "
          f"expired, want within 3 s")
    new = found["obj"]
    check(new["fence"] > fence and new["singleton"] is True,
          f"fence {new['fence']} after {fence}")
    others = [s for s in (a, cc) if s is not found["node"]]
    check(local_state(others[0], "solo")[0] is None,
          "solo runs on both survivors")
    check(metric_value(found["node"].port,
                       "taskbus_singleton_failovers_total") == 1,
          "taskbus_singleton_failovers_total is not 1 on the new owner")
    o = want(task(others[0], "solo"), 200, what="GET solo")
    check(o["instance"] == c.id(found["node"]) and o["fence"] == new["fence"],
          f"GET solo on the other survivor: {o}")
    # DELETE ends it for good: it is not run again anywhere.
    o = want(http_req(others[0].port, "DELETE", "/tasks/solo"), 200,
             what="DELETE solo")
    check(o["state"] == "cancelled", f"DELETE solo: {o}")
    time.sleep(LEASE_S)
    check(not running_on([a, cc], "solo"), "solo runs again after DELETE")
    # The ended run is still shown as it was (its state outlives the
    # run's bookkeeping: this read freed memory once).
    st, f, obj = local_state(found["node"], "solo")
    check(st == "cancelled" and f == new["fence"] and "every" not in obj,
          f"the ended run on {found['node'].name}: {obj}")
    check(c.cli("HEXISTS", f"{{{NS}}}:singleton", "solo") == "0",
          "solo's definition outlived its DELETE")
    return (f"ran again on {found['node'].name} {after:+.2f} s after the "
            f"lease expired")


def t_singleton_sigstop():
    """SIGSTOP of a singleton's owner for two leases, then SIGCONT: the
    stale run is cancelled by its owner ("lease lost"), one instance runs
    it with a higher fence, started after the lease expired, and no other
    instance ran it before the stop (polled with ?scope=local every
    50 ms)."""
    c = Cluster("sigstop", 3, ("--redis-command-timeout", f"{1000 * S:g}"))
    a, b, cc = c.nodes
    want(post(b, sleeper("solo", singleton=True)), 201, what="POST solo")
    fence_b = wait_running(b, "solo")["fence"]
    time.sleep(LEASE_S / 2)
    reports = []  # (node, sent, received, state, fence)
    stop = threading.Event()

    def poll(s):
        while not stop.is_set():
            sent = time.monotonic()
            try:
                st, f, _ = local_state(s, "solo", timeout=T(30))
            except (OSError, http.client.HTTPException,
                    AssertionError) as e:
                st, f = f"error {e}", None
            reports.append((s.name, sent, time.monotonic(), st, f))
            time.sleep(0.05)
    pollers = [threading.Thread(target=poll, args=(s,), daemon=True)
               for s in c.nodes]
    for p in pollers:
        p.start()
    time.sleep(0.2)
    before = time.time()
    left = lease_left(c, "solo")
    # Not kill_with: the teardown's SIGTERM is still to come.
    sigstop(b.proc)
    t_stop = time.monotonic()
    expiry_wall = before + left  # no later than the lease expires
    # Meanwhile a listing skips b, after the command timeout, and says so.
    # (On a slow sanitizer build b may have answered the call before the
    # stop took hold: then its task is listed and nothing is unreachable;
    # what must never be is a listing that both misses b's task and says
    # nothing.)
    o = want(http_req(a.port, "GET", "/tasks"), 200, what="GET /tasks")
    listed_b = any(t["instance"] == c.id(b) for t in o["tasks"])
    check((o.get("unreachable") == [c.id(b)] and not listed_b) or
          (listed_b and not o.get("unreachable")),
          f"GET /tasks with b stopped: {o}")
    time.sleep(max(0.0, t_stop + 2 * LEASE_S - time.monotonic()))
    b.proc.send_signal(signal.SIGCONT)
    t_cont = time.monotonic()
    # Until b's stale run has ended (its object may already show a later
    # run of b's: on a busy machine the new owner's lease may be lost in
    # turn and b take it back, with a higher fence) and one instance runs
    # it with a higher fence. Both are hang bounds.
    def stale_ended():
        st, f, _ = local_state(b, "solo")
        return not (st == "running" and f == fence_b)
    st_b = wait_for(stale_ended, T(5))
    runs = []

    def one_run():
        nonlocal runs
        runs = [(s, local_state(s, "solo")) for s in c.nodes]
        runs = [(s, st) for s, st in runs if st[0] == "running"]
        return len(runs) == 1 and runs[0][1][1] > fence_b
    taken = wait_for(one_run, T(5))
    time.sleep(0.5)
    stop.set()
    for p in pollers:
        p.join(T(35))
    _, _, old = local_state(b, "solo")
    check(st_b, f"b's stale run still runs: {old}")
    # Its owner cancelled it for the lost lease: the run's object says so
    # while it is b's latest, the log says so in any case.
    check("lease lost" in b.err_text() and f"(fence {fence_b})" in
          b.err_text() if old["fence"] != fence_b else
          old["state"] == "cancelled" and
          old["error"].startswith("lease lost"), f"b's stale run: {old}")
    check(taken, f"solo runs on {[s.name for s, _ in runs]}, want one "
          f"instance with a fence above {fence_b}")
    owner, (_, fence_new, obj) = runs[0]
    started = wall(obj["started"])
    check(started >= expiry_wall - 0.05,
          f"the new run started {expiry_wall - started:.3f} s before b's "
          f"lease expired")
    bad = [r for r in reports
           if r[3] not in (None, "pending", "running", "cancelled")]
    check(not bad, f"polls failed: {bad[:3]}")
    # Only b ran it before the stop. How long b's stale run is still
    # reported running after SIGCONT is not asserted: its lease thread
    # cancels it as soon as it runs again, but when that is depends on the
    # CPU a busy machine gives it (its HTTP thread may answer first); that
    # it ends is checked above (a hang bound), and the time is reported.
    early = [r for r in reports if r[0] != b.name and r[3] == "running" and
             r[2] < t_stop]
    check(not early, f"another instance ran it before b stopped: {early}")
    last_b = max((r[2] for r in reports if r[0] == b.name and
                  r[3] == "running" and r[4] == fence_b), default=t_stop)
    return (f"taken over by {owner.name} (fence {fence_new}); b's stale "
            f"run last reported {max(0.0, last_b - t_cont) * 1000:.0f} ms "
            f"after SIGCONT")


# ------------------------------------------------------------------ periodic


def t_periodic_30s():
    """A periodic task every 1 s on three instances for 30 s: each tick
    fired once for the cluster (the runs of every instance's run, summed,
    and as many fires seen on Redis, not one per instance), never twice,
    and a tick that did not fire (no run held the lease, or woke in time,
    as on a busy machine whose Redis stalls) counted as skipped."""
    c = Cluster("periodic")
    a, b, cc = c.nodes
    sub = Sub(c.redis, f"{NS}:event:pf.fire")
    try:
        t0 = time.time()
        o = want(post(a, {"kind": "delay", "name": "beat", "every": "1s",
                          "args": {"seconds": 0, "event": "pf.fire",
                                   "data": "x"}}), 201, what="POST beat")
        t_posted = time.time()
        check(o.get("every") == "1000ms" and o.get("singleton") is True,
              f"POST beat: {o}")
        for s in (b, cc):
            want(post(s, {"kind": "delay", "name": "beat", "every": "1s",
                          "args": {"seconds": 0, "event": "pf.fire"}}),
                 409, "name_taken", f"POST beat on {s.name}")
        time.sleep(max(0.0, t0 + 30 - time.time()))
        # The last tick recorded (the DELETE deletes the record).
        last = int(c.cli("HGET", f"{{{NS}}}:tick", "beat") or -1)
        runs = {}
        for s in c.nodes:
            st, _, obj = local_state(s, "beat")
            runs[s.name] = obj["runs"] if obj else 0
        o = want(http_req(cc.port, "DELETE", "/tasks/beat"), 200,
                 what="DELETE beat on c")
        t1 = time.time()
        check(o["state"] == "cancelled", f"DELETE beat: {o}")
        # The run has ended: its counts are final.
        fired, skipped = (
            sum(metric_value(s.port, f"taskbus_periodic_ticks{x}_total")
                for s in c.nodes) for x in ("", "_skipped"))
        # A fire is published as its run ends; on a busy machine that may
        # come late, hence a quiet second (scaled) before the count.
        fires = [m for m in sub.drain(T(1)) if m[0] == b"message"]
        ticks = int(t1) - int(t0)  # whole seconds in (t0, t1]
    finally:
        sub.close()
    total = sum(runs.values())
    detail = (f"{fired:.0f} ticks fired, {skipped:.0f} skipped, {total} "
              f"runs, {len(fires)} fires, last tick {last}, {ticks} ticks "
              f"in {t1 - t0:.1f} s: {runs}")
    check(fired >= 1 and last > int(t0), f"beat never fired: {detail}")
    # Never twice: the ticks fired are distinct whole seconds in (t0, t1].
    check(fired <= ticks and total <= fired, f"a tick fired twice: {detail}")
    # Each tick fired ran its action once (the run the DELETE cut short
    # may not have published its fire).
    check(fired - 1 <= len(fires) <= fired,
          f"fires on Redis are not one per tick fired: {detail}")
    # Each tick from the one after the run was started (before POST
    # answered) to the last one recorded fired or was counted skipped.
    check(fired + skipped >= last - int(t_posted),
          f"ticks neither fired nor counted skipped: {detail}\n"
          + "".join(tail(s.err, 10) for s in c.nodes))
    origins = {}
    for m in fires:
        inst = json.loads(m[2])["id"].split("-")[0]
        origins[inst] = origins.get(inst, 0) + 1
    check(set(origins) <= set(c.ids.values()), f"fires from {origins}")
    return detail


# ------------------------------------------------------------------ Redis


def t_redis_restart():
    """redis-server restarted without persistence mid-run: the claims and
    singletons come back, no name is held twice (POST of a held name on
    another instance: 409; the singleton runs on exactly one instance),
    and the periodic task keeps firing."""
    c = Cluster("restart")
    a, b, cc = c.nodes
    want(post(a, sleeper("held")), 201, what="POST held on a")
    want(post(b, sleeper("solo", singleton=True)), 201, what="POST solo")
    want(post(cc, {"kind": "sleep", "name": "beat", "every": "1s",
                   "args": {"seconds": 0}}), 201, what="POST beat")
    wait_running(a, "held")
    wait_running(b, "solo")
    check(wait_for(lambda: (local_state(cc, "beat")[2] or {}).get("runs"),
                   T(3)), "beat does not fire")
    port = c.redis.port
    try:
        c.cli("SHUTDOWN", "NOSAVE")
    except AssertionError:
        pass  # redis-cli may report the closed connection
    check(c.redis.proc.wait(T(5)) is not None, "redis did not shut down")
    t_down = time.monotonic()
    # Without Redis the cluster cannot be asked, nor a name claimed; each
    # instance still answers for itself.
    want(post(b, sleeper("other")), 503, "redis_unavailable", "POST")
    for method in ("GET", "DELETE"):
        want(http_req(b.port, method, "/tasks/held"), 503,
             "redis_unavailable", f"{method} /tasks/held")
    o = want(task(a, "held", "local"), 200, what="?scope=local")
    check(o["state"] == "running", f"held on a, Redis down: {o}")
    # Down for longer than a lease: the runs cannot renew meanwhile.
    time.sleep(max(0.0, t_down + 1.5 * LEASE_S - time.monotonic()))
    c.redis.start(port=port)
    t0 = time.monotonic()
    # Right after: whoever claims "held" first holds it; the other one's
    # task (a's, if b was first) is cancelled as a duplicate.
    r = wait_for(lambda: post(b, sleeper("held")).status in (201, 409),
                 T(5), 0.02)
    check(r, "POST held on b: neither 201 nor 409 after the restart")

    def claimed():
        v = c.cli("HGET", f"{{{NS}}}:claim", "held")
        return v if v else None
    check(wait_for(claimed, T(5)), "held's claim did not come back")
    t_claims = time.monotonic() - t0
    time.sleep(2 * HB_S + 0.2)
    holders = running_on(c.nodes, "held")
    check(len(holders) == 1, f"held runs on {[s.name for s in holders]}")
    h = holders[0]
    check(claimed().split()[0] == c.id(h),
          f"the claim {claimed()} is not {h.name}'s")
    for s in c.nodes:
        if s is not h:
            o = want(post(s, sleeper("held")), 409, "name_taken",
                     f"POST held on {s.name} after the restart")
            check(o["instance"] == c.id(h), f"409 names {o['instance']}")
    # The singleton: definition and lease back, one run.
    check(wait_for(lambda: c.cli("HEXISTS", f"{{{NS}}}:singleton", "solo")
                   == "1", T(LEASE_S + 2)),
          "solo's definition did not come back")
    check(wait_for(lambda: len(running_on(c.nodes, "solo")) == 1,
                   T(LEASE_S + 2)), "solo does not run again")
    t_solo = time.monotonic() - t0
    seen = set()
    end = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < end:
        on = running_on(c.nodes, "solo")
        check(len(on) == 1, f"solo runs on {[s.name for s in on]}")
        seen.add(on[0].name)
        time.sleep(0.1)
    check(len(seen) == 1, f"solo moved between {seen}")
    # The periodic task keeps firing.
    runs0 = sum((local_state(s, "beat")[2] or {}).get("runs", 0)
                for s in c.nodes)
    check(wait_for(lambda: sum((local_state(s, "beat")[2] or {})
                               .get("runs", 0) for s in c.nodes) >=
                   runs0 + 2, T(4)), "beat stopped firing")
    return (f"after the restart: claims back in {t_claims:.2f} s, solo "
            f"running in {t_solo:.2f} s; held on {h.name}")


# ------------------------------------------------------------------ control


def t_control_garbage():
    """Garbage on an instance's control channel (redis-cli PUBLISH
    <ns>:ctl:<id>): not JSON, too deep, too large, forged answers,
    requests with bad fields. Each is dropped, counted and logged (rate-
    limited); the instance still answers, calls between instances still
    work, and a well-formed request is obeyed (documented: protect
    Redis)."""
    c = Cluster("ctl", 2)
    a, b = c.nodes
    want(post(a, sleeper("mine")), 201, what="POST mine on a")
    ch = f"{NS}:ctl:{c.id(a)}"
    req = {"t": "req", "rid": 1, "from": "abc"}
    bad = [
        b"not json", b"[1,2,3]", b'"t"', b"{}", b'{"t":1}', b'{"t":"zzz"}',
        b'{"t":"req","t":"req"}', b"\xff\xfe{}", b'{"t":"req"\x00}',
        b'{"t":"req","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"t":"req","x":"' + b"x" * ((1 << 20) - 20) + b'"}',
        b"x" * (2 << 20),
        json.dumps({"t": "rep", "rid": 5}).encode(),
        json.dumps({"t": "rep", "status": "ok"}).encode(),
        json.dumps({"t": "rep", "rid": "5", "status": "ok"}).encode(),
        json.dumps(dict(req, op="nope")).encode(),
        json.dumps(dict(req, op="get")).encode(),
        json.dumps(dict(req, op="get", name="")).encode(),
        json.dumps(dict(req, op="get", name="n" * 300)).encode(),
        json.dumps(dict(req, op="get", name="x", **{"from": "XYZ"})).encode(),
        json.dumps(dict(req, op="get", name="x", **{"from": "a" * 21})
                   ).encode(),
        json.dumps(dict(req, op="get", name="x", rid="1")).encode(),
        json.dumps(dict(req, op="list", after=-1, limit=5, state=-1)).encode(),
        json.dumps(dict(req, op="list", after=0, limit=0, state=-1)).encode(),
        json.dumps(dict(req, op="list", after=0, limit=10 ** 6, state=-1)
                   ).encode(),
        json.dumps(dict(req, op="list", after=0, limit=5, state=99)).encode(),
        json.dumps(dict(req, op="list", after=0, limit=5)).encode(),
        json.dumps(dict(req, op="cancel", name="mine", timeout_ms=-5)
                   ).encode(),
        json.dumps(dict(req, op="cancel", name="mine", timeout_ms=10 ** 9)
                   ).encode(),
        json.dumps(dict(req, op="cancel", name="mine", id=-1,
                        timeout_ms=5)).encode(),
        json.dumps(dict(req, op="cancel", timeout_ms=5)).encode(),
    ]
    before = metric_value(a.port, "taskbus_cluster_messages_bad_total")
    for m in bad:
        check(publish(c.redis, ch, m) == 1, "a does not listen on " + ch)
    # A forged answer to no call is ignored (not a bad message).
    publish(c.redis, ch, json.dumps({"t": "rep", "rid": 987654,
                                     "from": "abc",
                                     "status": "ok"}).encode())
    counted = wait_for(
        lambda: metric_value(a.port, "taskbus_cluster_messages_bad_total") -
        before == len(bad), T(5))
    got = metric_value(a.port, "taskbus_cluster_messages_bad_total") - before
    check(counted, f"{got:.0f} bad messages counted, want {len(bad)}")
    # Still answering, calls included.
    want(http_req(a.port, "GET", "/healthz"), 200, what="/healthz")
    o = want(task(b, "mine"), 200, what="GET mine from b")
    check(o["instance"] == c.id(a) and o["state"] == "running", f"{o}")
    # A well-formed request is obeyed: its answer goes to "from"'s channel.
    sub = Sub(c.redis, f"{NS}:ctl:abc")
    try:
        publish(c.redis, ch, json.dumps(dict(req, op="get", rid=77,
                                             name="mine")).encode())
        m = sub.next(T(5))
    finally:
        sub.close()
    check(m and m[0] == b"message", f"no answer on {NS}:ctl:abc: {m!r}")
    ans = json.loads(m[2])
    check(ans["t"] == "rep" and ans["rid"] == 77 and ans["status"] == "ok"
          and ans["tasks"][0]["name"] == "mine", f"the answer: {ans}")
    check(metric_value(a.port, "taskbus_cluster_messages_bad_total") -
          before == len(bad), "the good request was counted as bad")
    # Logged, rate-limited (tb__ratelog): each bad message is either a
    # line or counted in a "N more ... suppressed" line, which the stop
    # flushes at the latest. The limit is per second, not per flood: a
    # busy machine spreads the 31 messages over more seconds, each of which
    # may log its TB__RATELOG_BURST lines.
    a.stop_ok()
    lines, suppressed, span = ratelog_lines(a.err_text(), "control channel",
                                            "cluster: ", "bad-message lines")
    check(lines and len(lines) + suppressed == len(bad),
          f"{len(lines)} log lines and {suppressed} suppressed for "
          f"{len(bad)} bad messages:\n{a.err_text()[-1500:]}")
    # + 0.25 s: a line is stamped after the limit read the clock, so a
    # logging thread preempted in between stamps its first line late.
    check(len(lines) <= RATELOG_BURST * (int(span + 0.25) + 1),
          f"{len(lines)} log lines within {span:.3f} s, want at most "
          f"{RATELOG_BURST} a second")
    return (f"{len(bad)} bad messages, {len(lines)} log lines over "
            f"{span:.2f} s, {suppressed} suppressed")


# ------------------------------------------------------------------ memory


def t_memory_bus():
    """Without --redis-url the instance is the cluster: the same API, the
    same fields, scope=cluster and scope=local alike."""
    s = Taskbus("mem").start()
    me = self_id(s)
    o = want(post(s, sleeper("m1")), 201, what="POST m1")
    check(o["instance"] == me, f"POST m1: {o}")
    o = want(post(s, sleeper("m1")), 409, "name_taken", "POST m1 again")
    check(o["instance"] == me, f"409: {o}")
    wait_running(s, "m1")
    for scope in (None, "cluster", "local"):
        o = want(task(s, "m1", scope), 200, what=f"GET m1 scope={scope}")
        check(o["instance"] == me and o["replicas"] == 1, f"{o}")
        q = f"?scope={scope}" if scope else ""
        o = want(http_req(s.port, "GET", "/tasks" + q), 200, what="GET /tasks")
        check([t["instance"] for t in o["tasks"]] == [me] and
              o["cursor"] is None, f"GET /tasks{q}: {o}")
    for i in range(4):
        want(post(s, sleeper(f"m-{i}")), 201, what="POST")
    got, cursors, sizes = pages(s, 2, "cluster")
    check(len(got) == 5 and sizes == [2, 2, 1] and cursors[-1] is None,
          f"paging on the memory bus: {sizes} {cursors}")
    want(http_req(s.port, "GET", "/tasks?scope=x"), 400, "bad_scope", "scope")
    o = want(http_req(s.port, "GET", "/stats?scope=cluster"), 200,
             what="GET /stats?scope=cluster")
    check(o["instances"] == 1 and o["unreachable"] == [] and
          o["tasks"]["running"] >= 5, f"stats, scope=cluster: {o}")
    o = want(post(s, sleeper("one", singleton=True)), 201, what="singleton")
    check(o["instance"] == me and o.get("fence", 0) >= 1, f"{o}")
    o = want(post(s, sleeper("one", singleton=True)), 409, "name_taken",
             "singleton again")
    check(o["instance"] == me, f"409: {o}")
    want(post(s, {"kind": "sleep", "name": "tick", "every": "1s",
                  "args": {"seconds": 0}}), 201, what="periodic")
    check(wait_for(lambda: (local_state(s, "tick")[2] or {}).get("runs", 0)
                   >= 1, T(3)), "the periodic task does not fire")
    for name in ("m1", "one", "tick"):
        o = want(http_req(s.port, "DELETE", f"/tasks/{name}"), 200,
                 what=f"DELETE {name}")
        check(o["state"] == "cancelled" and o["instance"] == me, f"{o}")
    s.stop_ok()


# ------------------------------------------------------------------ the run

# The long case runs on a thread of its own beside the others.
LONG = [("periodic", "every 1 s on three instances for 30 s: each tick "
         "fired once or counted skipped",
         t_periodic_30s)]
CASES = [
    ("names", "20 concurrent POSTs of one name over three instances: one "
     "201, 409s naming the winner", t_names_unique),
    ("cancel", "started on a, found from b and c, cancelled from c with a's "
     "final state", t_cancel_from_anywhere),
    ("cancel", "DELETE ?timeout= on another instance: 504 cancel_timeout "
     "with the task", t_cancel_timeout_remote),
    ("list", "250 tasks over three instances paged with cursors; "
     "scope=local", t_paging),
    ("list", "bad limit, cursor, scope: 400 bad_limit, bad_cursor, "
     "bad_scope", t_list_bad_params),
    ("list", "kind and instance filters over two instances; bad values",
     t_list_filters),
    ("stats", "GET /stats?scope=cluster: sums over two instances, one "
     "stopped is unreachable, bad scope 400", t_stats_cluster),
    ("post", "singleton and every: bad values 400, bounds at their edges, "
     "settings' rules", t_post_singleton_inputs),
    ("lost", "kill -9: its tasks lost, then forgotten; names free; SIGTERM "
     "frees names at once", t_lost_and_freed),
    ("singleton", "kill -9 of the owner: runs elsewhere within 3 s of the "
     "lease expiring, higher fence", t_singleton_failover),
    ("singleton", "SIGSTOP of the owner for two leases: stale run cancelled, "
     "one run with a higher fence after the lease expired",
     t_singleton_sigstop),
    ("redis", "restarted without persistence: claims and singletons back, "
     "no name held twice", t_redis_restart),
    ("control", "garbage on the control channel: dropped, counted, logged; "
     "still answering", t_control_garbage),
    ("memory", "memory bus: the instance is the cluster, same API",
     t_memory_bus),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    # The periodic case alone takes 30 s; with sanitizers the rest stretch.
    tbharness.HARD_CAP_S = min(540, int(150 * S))

    def run():
        long = threading.Thread(target=runner.run_cases, args=(LONG,),
                                daemon=True)
        long.start()
        runner.run_cases(CASES)
        long.join()
    return tbharness.run_suite("cluster_suite", "taskbus-cluster.", runner,
                               run)


if __name__ == "__main__":
    sys.exit(main())
