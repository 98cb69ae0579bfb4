#!/usr/bin/python3
"""sentinel_suite.py - the Redis bus on Redis Sentinel, as an operator runs
it: redis-sentinel://[user:pass@]host1:26379,host2:26379/mastername.

With Debian's redis-sentinel: one master and one replica (both with a
password) and three sentinels (with a password of their own) on loopback
ports, each in its own directory with its own config file. Two taskbus
instances follow the master the sentinels name; `SENTINEL FAILOVER` during
a stream of dispatches on both: dispatch resumes within 5 s, every event an
instance acknowledged (202) reaches that instance's own websocket clients,
none twice, and the old master gets no write from taskbus once it is a
replica. What the other instance's clients miss of it is measured and
printed, not asserted: with pub/sub alone nothing keeps an event published
on the old master just before the switch for the instances that had left
it already. A name claimed by a task is claimed again on the new master
when the failover lost it.

The same failover with redis.wait_replicas (the history kept across it)
is sentinel_durable_suite.py's.

With fake sentinels (a socket server here that says what a case wants):
sentinels that answer garbage, nothing, too much, an error, no master or a
bad address are each logged with what was wrong and skipped for the next
one; a sentinel naming a replica is refused (ROLE) and the replica gets
nothing from us; a master demoted by hand (REPLICAOF, clients not closed)
is left at the next ROLE check. Bad sentinel URLs exit 2 with a clear
message that never shows a password.

How it runs (servers, clients, timeouts, the SIGTERM check at the end of
each group) is tbharness.py's. CTest runs it as integration_sentinel; by
hand: TASKBUS_BIN=build/taskbus /usr/bin/python3
tests/integration/sentinel_suite.py [WORD...].
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, Redis, T, TaskbusServer, ahttp,  # noqa: E402
                       check, check_status, die_with_parent, end_proc,
                       free_port, poll_until, read_text, spawn)

REDIS_SENTINEL = "/usr/bin/redis-sentinel"
REDIS_CLI = "/usr/bin/redis-cli"
MASTER = "mymaster"
MASTER_PW = "master-pw-4b1d"
SENT_PW = "sentinel-pw-77c2"
# Failovers and the demotion that follows take seconds of real time.
tbharness.HARD_CAP_S = 420


# ------------------------------------------------------------------ RESP


def resp_cmd(*args):
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def resp_read(f):
    """One reply from the file f: str, int, None, list, or an Exception
    for an error reply."""
    line = f.readline()
    check(line.endswith(b"\r\n"), f"RESP: connection closed ({line!r})")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return Exception(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise AssertionError(f"RESP: unexpected {line!r}")


def rcall(port, *args, password=None, timeout=5):
    """One command to the server on port (AUTH first with password): its
    reply (see resp_read)."""
    with socket.create_connection((HOST, port), timeout) as s:
        f = s.makefile("rb")
        if password:
            s.sendall(resp_cmd("AUTH", password))
            r = resp_read(f)
            check(r == "OK", f"AUTH on {port}: {r}")
        s.sendall(resp_cmd(*args))
        return resp_read(f)


# ------------------------------------------------------------------ servers


class Sentinel:
    """A redis-sentinel on a free loopback port, with its config file in a
    directory of its own, watching MASTER on master_port."""

    def __init__(self, name, master_port):
        self.name = name
        self.master_port = master_port
        self.proc = None
        self.port = None

    def start(self):
        for attempt in range(3):
            self.port = free_port()
            self.dir = os.path.join(H.root, f"{self.name}-{attempt}")
            os.makedirs(self.dir)
            self.log = os.path.join(self.dir, "sentinel.log")
            conf = os.path.join(self.dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"""port {self.port}
bind {HOST}
daemonize no
dir {self.dir}
logfile {self.log}
requirepass {SENT_PW}
sentinel sentinel-pass {SENT_PW}
sentinel monitor {MASTER} {HOST} {self.master_port} 2
sentinel auth-pass {MASTER} {MASTER_PW}
sentinel down-after-milliseconds {MASTER} 1000
sentinel failover-timeout {MASTER} 5000
sentinel parallel-syncs {MASTER} 1
""")
            self.proc = spawn([REDIS_SENTINEL, conf],
                              os.path.join(self.dir, "stdout.log"))
            end = time.monotonic() + 10
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    break
                try:
                    if rcall(self.port, "PING", password=SENT_PW,
                             timeout=1) == "PONG":
                        return self
                except (OSError, AssertionError):
                    pass
                time.sleep(0.05)
            if "Address already in use" not in read_text(self.log):
                raise RuntimeError(f"redis-sentinel {self.name} did not "
                                   f"start\n{read_text(self.log)[-800:]}")
            end_proc(self.proc)
        raise RuntimeError("redis-sentinel: no free port after 3 tries")

    def call(self, *args):
        return rcall(self.port, *args, password=SENT_PW)

    def stop(self):
        return end_proc(self.proc), 0


class SentinelSet:
    """One master, one replica of it and three sentinels, all with
    passwords, ready for a failover: the replica is in sync and every
    sentinel knows it and the two others. A group's server: started by
    the group, stopped at its end."""

    def __init__(self, name, replicas=1):
        self.name = name
        self.nreplicas = replicas
        self.proc = None
        self.ready = False

    def start(self):
        auth = ("--requirepass", MASTER_PW, "--masterauth", MASTER_PW)
        self.master = Redis(f"{self.name}-master", *auth).start()
        self.replicas = [
            Redis(f"{self.name}-replica{i + 1}", *auth, "--replicaof", HOST,
                  str(self.master.port)).start()
            for i in range(self.nreplicas)]
        self.servers = {r.port: r for r in [self.master] + self.replicas}
        self.sentinels = [Sentinel(f"{self.name}-s{i + 1}", self.master.port)
                          .start() for i in range(3)]
        self.proc = self.master.proc
        check(wait(self.settled, T(20)),
              f"{self.name}: the sentinels did not see the replica and each "
              f"other within {T(20)} s")
        self.ready = True
        return self

    def settled(self):
        """The replica replicates, and every sentinel knows one replica (in
        sync with the master it names) and two other sentinels."""
        try:
            m = self.master_port()
            for p, r in self.servers.items():
                if p == m:
                    continue
                info = rcall(p, "INFO", "replication", password=MASTER_PW)
                if ("master_link_status:up" not in info or
                        f"master_port:{m}" not in info):
                    return False
            for s in self.sentinels:
                reps = s.call("SENTINEL", "REPLICAS", MASTER)
                others = s.call("SENTINEL", "SENTINELS", MASTER)
                if (len(reps) != self.nreplicas or len(others) != 2 or
                        s.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                               MASTER) != [HOST, str(m)]):
                    return False
                for r in reps:
                    rep = dict(zip(r[::2], r[1::2]))
                    if (rep.get("flags") != "slave" or
                            rep.get("master-link-status") != "ok"):
                        return False
            return True
        except (OSError, AssertionError, TypeError, ValueError):
            return False

    def url(self, password=MASTER_PW):
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis-sentinel://:{password}@{hosts}/{MASTER}"

    def master_port(self):
        """The master's port, as the first sentinel names it."""
        a = self.sentinels[0].call("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                   MASTER)
        return int(a[1])

    def role(self, port):
        """"master" or "slave"; None when the connection was closed (as
        Sentinel does to every client when it demotes a master)."""
        try:
            return rcall(port, "ROLE", password=MASTER_PW)[0]
        except (OSError, AssertionError):
            return None

    def failover(self):
        r = self.sentinels[0].call("SENTINEL", "FAILOVER", MASTER)
        check(r == "OK", f"SENTINEL FAILOVER {MASTER}: {r}")

    def stop(self):
        for s in self.sentinels:
            s.stop()
        for r in self.replicas:
            r.stop()
        return self.master.stop()


def wait(fn, timeout, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        if fn():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def taskbus_clients(port):
    """The clients of the Redis on port that subscribed the way the bus
    does (two patterns: the events and its control channel)."""
    out = rcall(port, "CLIENT", "LIST", password=MASTER_PW)
    return [l for l in out.splitlines() if " psub=2 " in l]


class Monitor:
    """redis-cli MONITOR of the server on port, into a file."""

    def __init__(self, name, port, password=MASTER_PW):
        self.path = os.path.join(H.root, f"monitor-{name}.log")
        argv = [REDIS_CLI, "-h", HOST, "-p", str(port), "--no-auth-warning"]
        if password:
            argv += ["-a", password]
        self.proc = spawn(argv + ["MONITOR"], self.path)
        check(wait(lambda: read_text(self.path).startswith("OK"), T(5)),
              f"MONITOR of {port} did not start: {read_text(self.path)!r}")

    def lines(self):
        return read_text(self.path).splitlines()

    def stop(self):
        end_proc(self.proc)


# What a write of ours looks like in MONITOR: a PUBLISH of an event or a
# control message, or a script (the store and the cluster).
OUR_WRITE = re.compile(r'"(?:publish|PUBLISH)" "taskbus:|"(?:EVALSHA|EVAL|'
                       r'evalsha|eval)"|"(?:SCRIPT|script)" "(?:LOAD|load)"')


async def stopped(srv):
    """SIGTERM to srv, if it was made: it must exit 0."""
    if srv:
        rc, _ = await asyncio.to_thread(srv.stop)
        check(rc == 0, f"taskbus {srv.name}: exit {rc} on SIGTERM")


def pw_file(name, pw):
    path = os.path.join(H.root, name)
    with open(path, "w") as f:
        f.write(pw + "\n")
    return path


async def wait_ready(srv, timeout):
    async def ready():
        return (await ahttp(srv.port, "GET", "/readyz")).status == 200
    check(await poll_until(ready, timeout),
          f"taskbus {srv.name}: /readyz not 200 within {timeout} s")


async def bus_of(srv):
    r = await ahttp(srv.port, "GET", "/readyz")
    check(r.json and "bus" in r.json, f"/readyz of {srv.name}: {r!r}")
    return r.status, r.json["bus"]


def no_secrets(srv):
    text = srv.log_text()
    for what, pw in (("the master's password", MASTER_PW),
                     ("the sentinels' password", SENT_PW)):
        check(pw not in text, f"{what} is in the log of {srv.name}")


# ------------------------------------------------------------------ failover


def two_instances(name, *extra, replicas=1):
    """A group's servers: a SentinelSet (with that many replicas), then
    taskbus a and b on it with the sentinels' password from a file, and
    extra flags."""
    ss = SentinelSet(name, replicas).start()
    yield "sentinels", ss
    args = ("--redis-url", ss.url(), "--redis-sentinel-password-file",
            pw_file(f"sentinel-pw-{name}", SENT_PW), *extra)
    yield "a", TaskbusServer("a", *args)
    yield "b", TaskbusServer("b", *args)


def failover_group():
    return two_instances("fo", "--redis-ping-interval", "1000",
                         "--redis-connect-timeout", "1000")


async def t_connects(ctx):
    """Both instances connect to the master the sentinels name, through
    the sentinels' password and the master's; no password is logged."""
    ss, a, b = ctx.s["sentinels"], ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        await wait_ready(srv, T(10))
    m = ss.master_port()
    for srv in (a, b):
        text = srv.log_text()
        check(re.search(rf"redis bus: sentinel {HOST}:\d+ says master "
                        rf"{MASTER} is at {HOST}:{m}\b", text),
              f"{srv.name} does not log which sentinel named the master")
        check(f"connected to master {MASTER} at {HOST}:{m} (named by "
              f"sentinel" in text, f"{srv.name}: no connection line")
        no_secrets(srv)
    subs = await asyncio.to_thread(taskbus_clients, m)
    check(len(subs) == 2, f"want 2 taskbus subscriptions on the master, "
                          f"CLIENT LIST has {len(subs)}")
    rep = next(p for p in ss.servers if p != m)
    check(not await asyncio.to_thread(taskbus_clients, rep),
          "taskbus is subscribed on the replica")


async def t_no_sentinel_password(ctx):
    """Without the sentinels' password: not ready, and the log says why
    and which setting fixes it."""
    ss = ctx.s["sentinels"]
    c = TaskbusServer("nopw", "--redis-url", ss.url(),
                      "--redis-connect-timeout", "300")
    await asyncio.to_thread(c.start)
    try:
        st, bus = await bus_of(c)
        check(st == 503 and bus["state"] != "connected",
              f"/readyz without the sentinels' password: {st} {bus}")
        check("no sentinel named master mymaster" in (bus["last_error"] or ""),
              f"last_error: {bus['last_error']!r}")
        text = c.log_text()
        check(re.search(r"sentinel \S+: authentication failed: .*"
                        r"redis\.sentinel_password", text),
              "no log line says the sentinels refused the authentication")
        no_secrets(c)
    finally:
        await stopped(c)


class Stream:
    """POSTs events to one instance from a thread, one every few ms, and
    records each answer: (monotonic time, status, id)."""

    def __init__(self, srv, name):
        self.srv = srv
        self.name = name
        self.got = []
        self.codes = []  # the error code of each answer that was not 202
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        poster = tbharness.Poster(self.srv.port)
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                r = poster.post(self.name, json.dumps({"n": n}).encode())
                st = r.status
                eid = r.json.get("id") if st == 202 and r.json else None
                if st != 202:
                    self.codes.append((r.json or {}).get("error"))
            except Exception as e:  # recorded: a gap in the 202s
                st, eid = f"{type(e).__name__}", None
            self.got.append((time.monotonic(), st, eid))
            time.sleep(0.004)
        poster.close()

    def acked(self):
        return [e for _, st, e in self.got if st == 202]

    def longest_gap(self, since, answers=(202,)):
        """The longest time after `since` between two answers of a status
        in answers, in s."""
        times = [t for t, st, _ in self.got if st in answers and t >= since]
        if len(times) < 2:
            return float("inf")
        return max(b - a for a, b in zip(times, times[1:]))


async def collect(c, ends, timeout):
    """The events c receives until it has seen each name in ends."""
    got, seen = [], set()
    while seen != ends:
        ev = await c.event(timeout)
        got.append(ev)
        if ev["name"] in ends:
            seen.add(ev["name"])
    return got


async def fail_over(ss, a, b):
    """SENTINEL FAILOVER; returns when it was asked for, once both a and b
    have moved to the new master."""
    t_fail = time.monotonic()
    await asyncio.to_thread(ss.failover)

    async def moved():
        return all("master mymaster moved from" in s.log_text()
                   for s in (a, b))
    check(await poll_until(moved, T(10)),
          "an instance did not move to the new master within 10 s")
    return t_fail


async def t_failover_stream(ctx):
    """SENTINEL FAILOVER while both instances dispatch: both resume within
    5 s on the new master; each instance's own clients get every event
    their instance acknowledged, none twice; the old master, once demoted,
    gets no write from us."""
    ss, a, b = ctx.s["sentinels"], ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        await wait_ready(srv, T(10))
    old = ss.master_port()
    mon = await asyncio.to_thread(Monitor, "old-master", old)
    ca = await ctx.connect("/ws?events=stream.*", srv=a, label="client on a")
    cb = await ctx.connect("/ws?events=stream.*", srv=b, label="client on b")
    await ca.sync()
    await cb.sync()
    ends = {"stream.end-a", "stream.end-b"}
    reading = [asyncio.create_task(collect(c, ends, T(60))) for c in (ca, cb)]
    sa, sb = Stream(a, "stream.a"), Stream(b, "stream.b")
    try:
        sa.thread.start()
        sb.thread.start()
        await asyncio.sleep(1)
        # The history's place before: the failover starts it over.
        before = (await ahttp(a.port, "GET",
                              "/history?events=stream.*&limit=1")).json
        t_fail = await fail_over(ss, a, b)
        new = ss.master_port()
        check(new != old, f"the sentinels still name {old} after the "
                          f"failover")

        async def demoted():
            return await asyncio.to_thread(ss.role, old) == "slave"
        # Sentinel demotes the old master some seconds after the switch
        # (and closes its clients then): keep dispatching through it.
        check(await poll_until(demoted, T(30), interval=0.05),
              f"the old master {old} was not made a replica within 30 s")
        # Sentinel's demotion closes the old master's clients, MONITOR's
        # too: a second one watches it as a replica while we dispatch on.
        mon2 = await asyncio.to_thread(Monitor, "old-master-replica", old)
        await asyncio.sleep(2.5)
        mon2_lines = await asyncio.to_thread(mon2.lines)
        mon2.stop()
    finally:
        sa.stop.set()
        sb.stop.set()
        await asyncio.to_thread(sa.thread.join, T(10))
        await asyncio.to_thread(sb.thread.join, T(10))
        mon_lines = await asyncio.to_thread(mon.lines)
        mon.stop()
    for srv, s in ((a, sa), (b, sb)):
        gap = s.longest_gap(t_fail - 0.5)
        check(gap <= T(5), f"dispatch on {srv.name} stopped for {gap:.2f} s "
                           f"around the failover, want at most 5 s")
        check(len(s.acked()) > 100, f"{srv.name}: only {len(s.acked())} "
                                    f"events acknowledged")
    after = (await ahttp(a.port, "GET", "/history?events=stream.*&limit=1")).json
    check(before["epoch"] and after["epoch"] != before["epoch"],
          f"the history's epoch before the failover {before['epoch']!r}, "
          f"after {after['epoch']!r}: want a new one")
    r = await ahttp(a.port, "GET",
                    f"/events/stream.*?since={before['next']}&timeout=1")
    check(r.status == 410, f"a long poll since {before['next']} (before the "
                           f"failover): {r.status}, want 410 history_gone")
    id_end_a = (await ahttp(a.port, "POST", "/events/stream.end-a")).json
    id_end_b = (await ahttp(b.port, "POST", "/events/stream.end-b")).json
    check(id_end_a and id_end_b, "POST of the end markers failed")
    got_a, got_b = [await t for t in reading]

    def ids(got, name):
        return [e["id"] for e in got if e["name"] == name]
    report = []
    for label, got, own, other in (("a", got_a, sa, sb),
                                   ("b", got_b, sb, sa)):
        mine, theirs = ids(got, own.name), ids(got, other.name)
        check(len(mine) == len(set(mine)) and len(theirs) == len(set(theirs)),
              f"the client on {label} got an event twice")
        lost = set(own.acked()) - set(mine)
        check(not lost, f"the client on {label} missed {len(lost)} of the "
                        f"{len(own.acked())} events its own instance "
                        f"acknowledged, e.g. {sorted(lost)[:3]}")
        check(set(mine) <= set(own.acked()) | {None},
              f"the client on {label} got events never acknowledged")
        missed = len(set(other.acked()) - set(theirs))
        report.append(f"{label} missed {missed} of the other's "
                      f"{len(other.acked())}")
    # The old master, from the moment it became a replica: nothing of ours.
    # (The first MONITOR ends there: Sentinel closes its clients when it
    # demotes it.)
    before = sum(1 for l in mon_lines if OUR_WRITE.search(l))
    check(before > 0, "MONITOR saw none of our writes before the failover")
    writes = [l for l in mon2_lines if OUR_WRITE.search(l)]
    check(not writes, f"{len(writes)} write(s) of ours reached the old "
                      f"master after it became a replica: {writes[:2]}")
    check(any("__sentinel__:hello" in l for l in mon2_lines),
          "the second MONITOR of the old master saw nothing at all")
    check(not await asyncio.to_thread(taskbus_clients, old),
          "taskbus is still subscribed on the old master, now a replica")
    subs = await asyncio.to_thread(taskbus_clients, new)
    check(len(subs) == 2, f"{len(subs)} taskbus subscriptions on the new "
                          f"master, want 2")
    gaps = ", ".join(f"{s.name} {s.longest_gap(t_fail - 0.5) * 1000:.0f} ms"
                     for s in (sa, sb))
    return f"longest pause {gaps}; {'; '.join(report)}"


# ------------------------------------------------------------------ cluster


def cluster_group():
    # A TTL far above the failover, so that a's record survives its pause
    # and only the failover can make it claim again.
    return two_instances("cl", "--instance-heartbeat", "0.2",
                         "--instance-ttl", "30")


async def t_claims_after_failover(ctx):
    """A failover may lose the last writes of an instance: here its claim
    of a task's name, deleted from the new master while the instance was
    paused through the failover. It claims the name again once on the new
    master, and another instance's task of that name is refused."""
    ss, a, b = ctx.s["sentinels"], ctx.s["a"], ctx.s["b"]
    for srv in (a, b):
        await wait_ready(srv, T(10))
    r = await ahttp(a.port, "POST", "/tasks", {
        "kind": "sleep", "name": "job1", "args": {"seconds": 600}})
    check_status(r, 201, what="POST /tasks job1 on a")
    old = ss.master_port()
    key = "{taskbus}:claim"
    claim = await asyncio.to_thread(rcall, old, "HGET", key, "job1",
                                    password=MASTER_PW)
    check(claim and claim.endswith(f" {r.json['id']}"),
          f"the claim of job1 on the master: {claim!r}")
    a.proc.send_signal(19)  # SIGSTOP: a sleeps through the failover
    try:
        await asyncio.to_thread(ss.failover)

        def promoted():
            try:
                return ss.master_port() != old
            except (OSError, AssertionError):
                return False
        check(await asyncio.to_thread(wait, promoted, T(15)),
              "no new master within 15 s")
        new = ss.master_port()
        check(await asyncio.to_thread(wait, lambda: ss.role(new) == "master",
                                      T(5)), f"{new} is not a master")
        # What the failover lost.
        await asyncio.to_thread(rcall, new, "HDEL", key, "job1",
                                password=MASTER_PW)
    finally:
        a.proc.send_signal(18)  # SIGCONT

    async def claimed():
        v = await asyncio.to_thread(rcall, new, "HGET", key, "job1",
                                    password=MASTER_PW)
        return v == claim
    check(await poll_until(claimed, T(10)),
          "a did not claim job1 again on the new master within 10 s")
    check("the bus moved to a new Redis master" in a.log_text(),
          "a does not log why it claimed its names again")
    r = await ahttp(b.port, "POST", "/tasks", {
        "kind": "sleep", "name": "job1", "args": {"seconds": 1}})
    check_status(r, 409, "name_taken", what="POST /tasks job1 on b")
    r = await ahttp(a.port, "DELETE", "/tasks/job1")
    check(r.status == 200, f"DELETE /tasks/job1: {r!r}")


# ------------------------------------------------------------------ fakes


class FakeSentinel:
    """A socket server that speaks enough RESP to play a sentinel, in the
    way `how` says:
      answer:HOST:PORT  names that master; PSUBSCRIBE and PING as Sentinel
      silent            reads, never answers
      garbage           answers bytes that are not RESP
      huge              answers the start of a 1 MB bulk string
      nil, error, int   answers a nil, "-ERR not today", ":1"
      badaddr           answers ["999.x y", "99999"]
      close             closes each connection at once
      shortarray        answers every command with *1 :1 (hiredis asserts
                        on that in a subscribed context)
      flood:H1:P1:H2:P2 names H1:P1, and announces on its subscriptions a
                        failover to H2:P2, then back to H1:P1, on and on
    Every connection is served by a thread; all close with the server."""

    def __init__(self, how):
        self.how = how
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.commands = []
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.how == "close":
                c.close()
                continue
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                cmd = resp_read(f)
                if not isinstance(cmd, list):
                    return
                self.commands.append(cmd)
                out = self.reply([str(x) for x in cmd])
                if out:
                    c.sendall(out)
                if (self.how.startswith("flood:") and
                        str(cmd[0]).upper() == "PSUBSCRIBE"):
                    threading.Thread(target=self.flood, args=(c,),
                                     daemon=True).start()
        except (OSError, AssertionError, ValueError):
            pass
        finally:
            c.close()

    def reply(self, cmd):
        how, verb = self.how, cmd[0].upper()
        if how == "silent":
            return b""
        if how == "garbage":
            return b"\x00\xffthis is not RESP\r\n"
        if how == "huge":
            return b"$1000000\r\n" + b"x" * 1000000
        if how == "shortarray":
            return b"*1\r\n:1\r\n"
        if verb == "AUTH":
            return b"+OK\r\n"
        if verb == "PSUBSCRIBE":
            return resp_cmd("psubscribe", cmd[1]).replace(b"*2", b"*3", 1) + \
                b":1\r\n"
        if verb == "PING":
            return resp_cmd("pong", cmd[1] if len(cmd) > 1 else "")
        if how == "nil":
            return b"*-1\r\n"
        if how == "error":
            return b"-ERR not today\r\n"
        if how == "int":
            return b":1\r\n"
        if how == "badaddr":
            return resp_cmd("999.x y", "99999")
        if how.startswith("answer:") or how.startswith("flood:"):
            _, host, port = how.split(":")[:3]
            return resp_cmd(host, port)
        return b"-ERR unknown\r\n"

    def flood(self, c):
        """+switch-master messages every 2 ms, alternating, until closed."""
        _, h1, p1, h2, p2 = self.how.split(":")
        a, b = f"{h1} {p1}", f"{h2} {p2}"
        try:
            while not self.closed:
                msg = f"{MASTER} {a} {b}"
                c.sendall(resp_cmd("pmessage", "+switch-master",
                                   "+switch-master", msg))
                a, b = b, a
                time.sleep(0.002)
        except OSError:
            pass

    def url_part(self):
        return f"{HOST}:{self.port}"

    def close(self):
        self.closed = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def on_fake(name, fake, *flags):
    """A taskbus (not started) whose one sentinel is fake."""
    return TaskbusServer(name, "--redis-url", f"redis-sentinel://:{MASTER_PW}@"
                         f"{fake.url_part()}/{MASTER}", *flags)


def fakes_group():
    r = Redis("plain", "--requirepass", MASTER_PW).start()
    yield "redis", r
    rep = Redis("plain-replica", "--requirepass", MASTER_PW, "--masterauth",
                MASTER_PW, "--replicaof", HOST, str(r.port)).start()
    yield "replica", rep
    # The cases start their own taskbus; a group has one of its own too.
    yield "plain", TaskbusServer("plain", "--redis-url", r.url(MASTER_PW))


# (how, what the log says about it: a regular expression)
HOSTILE = [
    ("silent", r"no answer within 500 ms"),
    ("garbage", r"sent something that is not the Redis protocol"),
    ("huge", r"or a reply over 8192 bytes"),
    ("nil", r"monitors no master named mymaster"),
    ("error", r"refused the question: ERR not today"),
    ("int", r"answered something that is not a host and port"),
    ("badaddr", r"answered something that is not a host and port"),
    # At once, or while our question arrives: a reset then.
    ("close", r"closed the connection|Connection reset by peer"),
    ("shortarray", r"answered something that is not a host and port"),
]


async def t_hostile_sentinels(ctx):
    """Sentinels that answer garbage, nothing, too much, an error, no
    master or a bad address, and one where nobody listens: each is logged
    with what it did, and the next one is asked; the last, a good one,
    makes the bus connect. The watches of the bad ones are refused
    without harm. Then with bad ones only: not ready, never a crash."""
    redis = ctx.s["redis"]
    fakes = [FakeSentinel(how) for how, _ in HOSTILE]
    good = FakeSentinel(f"answer:{HOST}:{redis.port}")
    nobody = free_port()
    srv = None
    try:
        hosts = ",".join([f.url_part() for f in fakes] +
                         [f"{HOST}:{nobody}", good.url_part()])
        url = f"redis-sentinel://:{MASTER_PW}@{hosts}/{MASTER}"
        srv = TaskbusServer("hostile", "--redis-url", url,
                            "--redis-connect-timeout", "500",
                            "--redis-ping-interval", "300")
        t0 = time.monotonic()
        await asyncio.to_thread(srv.start)
        await wait_ready(srv, T(15))
        took = time.monotonic() - t0
        text = srv.log_text()
        for f, (how, says) in zip(fakes, HOSTILE):
            check(re.search(rf"WARN .*sentinel {HOST}:{f.port}: .*(?:{says})",
                            text), f"no warning that the '{how}' sentinel "
                                   f"{f.port} failed: {says!r}")
        check(f"sentinel {HOST}:{nobody}: connection failed: Connection "
              f"refused" in text, "no warning for the sentinel nobody "
                                  "listens on")
        check(f"says master {MASTER} is at {HOST}:{redis.port}" in text,
              "the good sentinel's answer is not logged")
        # The watches of the bad ones: refused, logged, retried; the good
        # one's is subscribed.
        sub = [c for c in good.commands if c[0].upper() == "PSUBSCRIBE"]
        check(sub and sub[0][1] == "+switch-master",
              f"the good sentinel got {good.commands}")
        check(re.search(rf"sentinel {HOST}:{fakes[-1].port}: cannot watch "
                        rf"it for failovers: ", text),
              "no warning for a watch that got a short array")
        ok = await ahttp(srv.port, "POST", "/events/hostile.x", b"1")
        check_status(ok, 202, what="POST after connecting")
    finally:
        await stopped(srv)
        good.close()

    # Bad ones only: never ready, a clear last_error, bounded memory.
    srv = None
    try:
        hosts = ",".join(f.url_part() for f in fakes)
        srv = TaskbusServer("hostile-only", "--redis-url",
                            f"redis-sentinel://{hosts}/{MASTER}",
                            "--redis-connect-timeout", "500",
                            "--redis-retry-max", "300")
        await asyncio.to_thread(srv.start)
        rss0 = srv.rss_kb()
        await asyncio.sleep(3)
        st, bus = await bus_of(srv)
        check(st == 503 and "no sentinel named master mymaster (" in
              (bus["last_error"] or ""), f"/readyz: {st} {bus}")
        r = await ahttp(srv.port, "POST", "/events/hostile.y", b"1")
        check_status(r, 503, "bus_down", what="POST with no master")
        grew = srv.rss_kb() - rss0
        check(grew < 64 * 1024, f"RSS grew by {grew} KiB in 3 s of hostile "
                                f"sentinels")
    finally:
        await stopped(srv)
        for f in fakes:
            f.close()
    return f"connected through the 11th sentinel in {took:.2f} s"


async def t_replica_refused(ctx):
    """A sentinel that names a replica (a stale one would): ROLE says
    slave, the bus refuses it and never writes to it; dispatch is 503."""
    rep = ctx.s["replica"]
    fake = FakeSentinel(f"answer:{HOST}:{rep.port}")
    mon = await asyncio.to_thread(Monitor, "replica", rep.port)
    srv = None
    try:
        srv = on_fake("to-replica", fake, "--redis-connect-timeout", "500",
                      "--redis-retry-max", "300")
        await asyncio.to_thread(srv.start)
        await asyncio.sleep(2)
        st, bus = await bus_of(srv)
        check(st == 503 and "says it is a slave: not using it" in
              (bus["last_error"] or ""), f"/readyz: {st} {bus}")
        text = srv.log_text()
        check(re.search(rf"WARN .*{HOST}:{rep.port}, which sentinel 1 named "
                        rf"master {MASTER}, says it is a slave", text),
              "no warning names the replica")
        r = await ahttp(srv.port, "POST", "/events/never.x", b"1")
        check_status(r, 503, "bus_down", what="POST while only a replica is "
                                              "named")
        r = await ahttp(srv.port, "POST", "/tasks", {
            "kind": "sleep", "name": "n1", "args": {"seconds": 1}})
        check(r.status == 503, f"POST /tasks while only a replica is named: "
                               f"{r!r}")
        await asyncio.sleep(1)
    finally:
        lines = await asyncio.to_thread(mon.lines)
        mon.stop()
        await stopped(srv)
        fake.close()
    roles = sum(1 for l in lines if '"ROLE"' in l or '"role"' in l)
    writes = [l for l in lines if OUR_WRITE.search(l)]
    check(roles >= 2, f"the replica was asked ROLE {roles} times")
    check(not writes, f"writes reached the replica: {writes[:2]}")
    return f"refused {roles} times"


async def t_demoted_by_hand(ctx):
    """A master demoted without Sentinel (REPLICAOF by hand keeps its
    clients): the periodic ROLE check leaves it within the ping
    interval, and the bus does not come back to it."""
    redis = ctx.s["redis"]
    fake = FakeSentinel(f"answer:{HOST}:{redis.port}")
    other = Redis("other", "--requirepass", MASTER_PW).start()
    srv = None
    try:
        srv = on_fake("demoted", fake, "--redis-ping-interval", "500",
                      "--redis-retry-max", "300")
        await asyncio.to_thread(srv.start)
        await wait_ready(srv, T(10))
        t0 = time.monotonic()
        await asyncio.to_thread(rcall, redis.port, "CONFIG", "SET",
                                "masterauth", MASTER_PW, password=MASTER_PW)
        await asyncio.to_thread(rcall, redis.port, "REPLICAOF", HOST,
                                str(other.port), password=MASTER_PW)

        async def left():
            return (await ahttp(srv.port, "GET", "/readyz")).status == 503
        check(await poll_until(left, T(3)),
              "still ready 3 s after its master became a replica")
        took = time.monotonic() - t0
        check(took < T(0.5 + 1), f"left {took:.2f} s after the demotion, "
                                 f"want within the 0.5 s ROLE interval (and "
                                 f"1 s to spare)")
        # Either check may notice first: the periodic ROLE, or a write
        # (the instance heartbeat) answered READONLY on a slow host.
        log = srv.log_text()
        check(f"{HOST}:{redis.port} is no longer the master of {MASTER} "
              f"(ROLE: slave)" in log or
              f"{HOST}:{redis.port} answered READONLY: it is a replica now"
              in log, "no line says why")
        await asyncio.sleep(1)
        st, bus = await bus_of(srv)
        check(st == 503, f"came back to the replica: {st} {bus}")
    finally:
        await stopped(srv)
        fake.close()
        other.stop()
    return f"left {took * 1000:.0f} ms after the REPLICAOF"


async def t_announcement_flood(ctx):
    """A sentinel announcing failovers between two masters every 2 ms (a
    hostile one): the bus follows, but reconnects without its backoff at
    most once per redis.retry_min_ms, and keeps working."""
    redis = ctx.s["redis"]
    r2 = Redis("flood-2", "--requirepass", MASTER_PW).start()
    fake = FakeSentinel(f"flood:{HOST}:{redis.port}:{HOST}:{r2.port}")
    srv = None
    try:
        srv = on_fake("flood", fake, "--redis-retry-min", "200",
                      "--redis-retry-max", "400")
        await asyncio.to_thread(srv.start)
        mark = len(srv.log_text())
        await asyncio.sleep(3)
        lines = srv.log_text()[mark:].splitlines()
        moves = sum(1 for l in lines if "as sentinel" in l and
                    "announced" in l and "connecting to master" in l)
        # Attempts come at least 100 ms apart (a hurried one at most every
        # 200 ms, the backoff after a loss 100 to 200 ms): at most about
        # 30 in 3 s. Without the bound: over a thousand.
        check(0 < moves <= 60, f"{moves} announced reconnects in 3 s, want "
                               f"at most 60 (one per 100 ms, with room)")
        check(http_get_ok(srv), "taskbus stopped answering /healthz")
    finally:
        await stopped(srv)
        fake.close()
        r2.stop()
    return f"{moves} reconnects in 3 s"


def http_get_ok(srv):
    try:
        return tbharness.http_req(srv.port, "GET", "/healthz").status == 200
    except OSError:
        return False


async def t_bad_urls(ctx):
    """Bad redis-sentinel:// URLs: exit 2 at once, the message says what
    is wrong, never the password."""
    cases = [
        (f"redis-sentinel://:{MASTER_PW}@{HOST}:26379", "names no master"),
        (f"redis-sentinel://:{MASTER_PW}@{HOST}:26379,,{HOST}:1/m",
         "sentinel 2 of the Redis URL is empty"),
        (f"redis-sentinel://{HOST}:0/m", "the port in sentinel 1"),
        (f"redis-sentinel://{HOST}/bad name", "the master's name"),
        ("redis-sentinel://" + ",".join(["h"] * 17) + "/m",
         "more than 16 sentinels"),
        (f"redis-sentinel://{HOST}/m?db=1", "no query or fragment"),
        (f"redis-sentinel://{HOST}/m/x", "the db in the Redis URL"),
    ]
    for url, says in cases:
        p = await asyncio.to_thread(
            subprocess.run, [H.bin, "serve", "--redis-url", url, "--listen",
                             f"{HOST}:{free_port()}"],
            capture_output=True, timeout=T(10), preexec_fn=die_with_parent,
            env=tbharness.child_env())
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 2, f"{url}: exit {p.returncode}, want 2")
        check(says in err, f"{url}: the message lacks {says!r}: "
                           f"{err[-400:]!r}")
        check(MASTER_PW not in err, f"{url}: the password is in the message")


GROUPS = [
    ("failover", failover_group, [
        ("both instances connect to the master the sentinels name",
         t_connects, 60),
        ("without the sentinels' password: not ready, and why",
         t_no_sentinel_password, 60),
        ("SENTINEL FAILOVER during a stream of dispatches", t_failover_stream,
         120),
    ]),
    ("cluster", cluster_group, [
        ("a claim lost in a failover is made again on the new master",
         t_claims_after_failover, 90),
    ]),
    ("fakes", fakes_group, [
        ("sentinels that answer garbage, nothing or too much",
         t_hostile_sentinels, 90),
        ("a sentinel that names a replica: refused, nothing written",
         t_replica_refused, 60),
        ("a sentinel announcing failovers on and on: reconnects bounded",
         t_announcement_flood, 60),
        ("a master demoted by hand: left at the next ROLE check",
         t_demoted_by_hand, 60),
        ("bad redis-sentinel:// URLs: exit 2 with a clear message",
         t_bad_urls, 60),
    ]),
]


if __name__ == "__main__":
    if not os.access(REDIS_SENTINEL, os.X_OK):
        print(f"FAIL setup: {REDIS_SENTINEL} missing (apt-get install "
              "redis-sentinel)", flush=True)
        sys.exit(1)
    sys.exit(tbharness.run_groups("sentinel_suite", "taskbus-sentinel.",
                                  GROUPS))
