#!/usr/bin/env python3
"""bench_cluster.py - the cluster's figures (issue 11), each against its
baseline in the same run, on a real redis-server and three taskbus
instances on loopback:

  1. cancel latency: DELETE /tasks/{name} on instance B of a task running
     on A (the whole confirmed path: lookup in Redis, a call to A over its
     control channel, A cancels and waits for the end, answers) against
     DELETE ?scope=local on A itself; p50 and p99 of each, in rounds that
     alternate the two;
  2. POST /tasks rate: named tasks whose names are claimed across the
     cluster against ?scope=local (the name checked on one instance only),
     C concurrent keep-alive clients, alternating rounds; the ratio
     (target: claims at least half the local rate);
  3. failover: K times, a singleton is started, the instance running it is
     killed with SIGKILL and the time until another instance reports it
     running is measured (and restarted for the next kill); median and max,
     also minus the lease (the lease expires at most one lease after the
     kill, and at least two thirds of it).

Usage: /usr/bin/python3 tests/bench/bench_cluster.py [--bin build/taskbus]
       [--cancels N] [--posts N] [--concurrency C] [--kills K] [--rounds R]

Every wait is bounded; everything started is stopped at the end (and on
Ctrl-C). Loopback only. Prints a table; exit status 0 when every part ran.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Conn:
    """One keep-alive HTTP connection to an instance."""

    def __init__(self, port):
        self.port = port
        self.c = http.client.HTTPConnection(HOST, port, timeout=30)

    def req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(2):
            try:
                self.c.request(method, path, body=data,
                               headers={"Content-Type": "application/json"}
                               if data else {})
                r = self.c.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (ConnectionError, http.client.HTTPException, OSError):
                self.c.close()
                self.c = http.client.HTTPConnection(HOST, self.port,
                                                    timeout=30)
                if attempt:
                    raise
        return None, None


class Cluster:
    def __init__(self, binary, tmp, lease_s):
        self.bin = binary
        self.tmp = tmp
        self.lease_s = lease_s
        self.rport = free_port()
        self.redis = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(self.rport), "--bind",
             HOST, "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_port(self.rport)
        self.procs = {}  # port -> Popen

    @staticmethod
    def wait_port(port, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            try:
                socket.create_connection((HOST, port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"port {port} never opened")

    def start(self, port=None):
        port = port or free_port()
        log = open(os.path.join(self.tmp, f"tb-{port}.log"), "ab")
        p = subprocess.Popen(
            [self.bin, "serve", "--listen", f"{HOST}:{port}", "--redis-url",
             f"redis://{HOST}:{self.rport}", "--singleton-lease",
             str(self.lease_s), "--log-level", "warn"],
            stdout=log, stderr=log)
        self.procs[port] = p
        self.wait_port(port)
        # Registered once the others list it (a heartbeat).
        return port

    def kill(self, port, sig=signal.SIGKILL):
        p = self.procs.pop(port)
        p.send_signal(sig)
        p.wait(timeout=20)

    def stop(self):
        for port in list(self.procs):
            try:
                self.kill(port, signal.SIGTERM)
            except Exception:
                pass
        self.redis.terminate()
        self.redis.wait(timeout=10)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def bench_cancel(cl, ports, n, rounds):
    a, b = Conn(ports[0]), Conn(ports[1])
    remote, local = [], []
    k = 0
    for r in range(rounds):
        for mode in ("remote", "local"):
            for i in range(n // rounds):
                k += 1
                name = f"c{k}"
                st, _ = a.req("POST", "/tasks", {
                    "kind": "sleep", "name": name, "args": {"seconds": 60}})
                assert st == 201, st
                t0 = time.perf_counter()
                if mode == "remote":
                    st, o = b.req("DELETE", f"/tasks/{name}")
                else:
                    st, o = a.req("DELETE", f"/tasks/{name}?scope=local")
                dt = time.perf_counter() - t0
                assert st == 200 and o["state"] == "cancelled", (st, o)
                (remote if mode == "remote" else local).append(dt * 1000)
        a.req("POST", "/tasks/purge", {})
    return remote, local


def bench_posts(ports, n, conc, rounds):
    rates = {"cluster": [], "local": []}
    seq = [0]
    lock = threading.Lock()

    def one_round(mode):
        per = n // conc
        errs = []

        def worker(w):
            c = Conn(ports[w % len(ports)])
            for i in range(per):
                with lock:
                    seq[0] += 1
                    k = seq[0]
                path = "/tasks" if mode == "cluster" else "/tasks?scope=local"
                st, o = c.req("POST", path, {"kind": "sleep", "name": f"p{k}",
                                             "args": {"seconds": 0}})
                if st != 201:
                    errs.append((st, o))

        ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        if errs:
            raise RuntimeError(f"{mode}: {len(errs)} errors, first {errs[0]}")
        for p in ports:
            Conn(p).req("POST", "/tasks/purge", {})
        return per * conc / dt

    for r in range(rounds):
        for mode in ("cluster", "local"):
            rates[mode].append(one_round(mode))
    return rates


def running_on(conns, name):
    """The instance ports whose local view has name running."""
    out = []
    for port, c in conns.items():
        try:
            st, o = c.req("GET", f"/tasks/{name}?scope=local")
        except Exception:
            continue
        if st == 200 and o.get("state") == "running":
            out.append((port, o.get("fence")))
    return out


def bench_failover(cl, ports, kills):
    times = []
    fences_ok = True
    for k in range(kills):
        name = f"leader{k}"
        c = Conn(ports[k % len(ports)])
        st, o = c.req("POST", "/tasks", {"kind": "sleep", "name": name,
                                         "singleton": True,
                                         "args": {"seconds": 3600}})
        assert st == 201, (st, o)
        conns = {p: Conn(p) for p in ports}
        end = time.time() + 10
        where = []
        while not where and time.time() < end:
            where = running_on(conns, name)
            time.sleep(0.02)
        assert len(where) == 1, where
        owner, fence = where[0]
        cl.kill(owner)
        t0 = time.perf_counter()
        del conns[owner]
        moved = None
        end = time.time() + cl.lease_s * 3 + 10
        while time.time() < end:
            w = running_on(conns, name)
            if w:
                moved = w[0]
                break
            time.sleep(0.02)
        if not moved:
            raise RuntimeError(f"{name} did not move within the bound")
        times.append(time.perf_counter() - t0)
        fences_ok &= moved[1] > fence
        # Back to three instances; the dead one's port is reused.
        ports[ports.index(owner)] = cl.start(owner)
        time.sleep(1.2)  # listed by the others before the next round
        Conn(moved[0]).req("DELETE", f"/tasks/{name}?timeout=5")
    return times, fences_ok


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bin", default=os.path.join(here, "..", "..", "build",
                                                  "taskbus"))
    ap.add_argument("--cancels", type=int, default=400)
    ap.add_argument("--posts", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--lease", type=float, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tb-bench-cluster-")
    cl = Cluster(os.path.abspath(args.bin), tmp, args.lease)
    ok = True
    try:
        ports = [cl.start() for _ in range(3)]
        time.sleep(1.5)
        remote, local = bench_cancel(cl, ports, args.cancels, args.rounds)
        rates = bench_posts(ports, args.posts, args.concurrency, args.rounds)
        times, fences_ok = bench_failover(cl, ports, args.kills)
        print(f"{'figure':44} {'cluster':>12} {'baseline':>12} {'ratio':>7}")
        rp50, lp50 = statistics.median(remote), statistics.median(local)
        rp99, lp99 = pct(remote, 0.99), pct(local, 0.99)
        print(f"{'cancel latency p50 (ms; remote vs local)':44} "
              f"{rp50:12.2f} {lp50:12.2f} {rp50 / lp50:7.2f}")
        print(f"{'cancel latency p99 (ms; remote vs local)':44} "
              f"{rp99:12.2f} {lp99:12.2f} {rp99 / lp99:7.2f}")
        cr, lr = max(rates["cluster"]), max(rates["local"])
        print(f"{'POST /tasks /s best (claimed vs scope=local)':44} "
              f"{cr:12.0f} {lr:12.0f} {cr / lr:7.2f}   target >= 0.50")
        cm, lm = statistics.median(rates["cluster"]), statistics.median(
            rates["local"])
        print(f"{'POST /tasks /s median':44} {cm:12.0f} {lm:12.0f} "
              f"{cm / lm:7.2f}")
        med, mx = statistics.median(times), max(times)
        print(f"failover over {len(times)} kills (lease {args.lease} s): "
              f"median {med:.2f} s, max {mx:.2f} s after the kill; "
              f"minus the lease: median {med - args.lease:.2f} s, max "
              f"{mx - args.lease:.2f} s (target: within 2 s of the expiry); "
              f"fences higher every time: {fences_ok}")
        ok = fences_ok
    finally:
        cl.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
