#!/usr/bin/python3
"""idle_ws.py - bytes per idle /ws client, with or without ?since=.

bench_ws's scenario 4 opens plain clients; this opens N clients that each
resume (`/ws?events=idle.*&since=POS`, REPLAY events to replay, read), or
plain ones (--plain), on a fresh taskbus (in-process bus), probes each
with one event, and reports the server's VmRSS before and with them:

  tests/bench/idle_ws.py BUILD_DIR/taskbus [-n N] [--replay K] [--plain]
                         [--live K] [--history-size S]

--live K posts K more events while the clients replay (they queue on the
subscription, which grows its ring, then go out live). Loopback only; the
server is stopped at the end. Raises the open-file limit to the hard one.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "integration"))
sys.dont_write_bytecode = True
from tbharness import RawWS, free_port, http_req, rss_kb  # noqa: E402


def until(w, pred, timeout=30):
    while True:
        fin, op, payload = w.recv_frame(timeout)
        if op == 0x1 and pred(json.loads(payload)):
            return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("taskbus")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--replay", type=int, default=20)
    ap.add_argument("--live", type=int, default=0)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--history-size", default=None)
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    args = [a.taskbus, "--listen", f"127.0.0.1:{port}", "--workers", "2",
            "--tick", "0", "--quiet"]
    if a.history_size is not None:
        args += ["--history-size", a.history_size]
    srv = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    ws = []
    try:
        for _ in range(100):
            try:
                if http_req(port, "GET", "/healthz").status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        since = None
        if not a.plain:
            http_req(port, "POST", "/events/idle.x", "before")
            since = http_req(port, "GET", "/history?events=idle.x&limit=1"
                             ).json["next"]
            for i in range(a.replay):
                http_req(port, "POST", "/events/idle.x", {"i": i})
        time.sleep(0.5)
        before = rss_kb(srv.pid)
        path = "/ws?events=idle.*" + (f"&since={since}" if since else "")
        for k in range(a.n):
            ws.append(RawWS(port, path))
        if a.live:
            for i in range(a.live):
                http_req(port, "POST", "/events/idle.y", {"i": i})
        # Live, as bench_ws's clients are once connected: a plain client
        # once its handler has subscribed (a short wait), a resumed one
        # once it got {"recovered"}.
        for w in ws:
            if since:
                until(w, lambda m: "recovered" in m)
        time.sleep(1)
        http_req(port, "POST", "/events/idle.p", "probe")
        for w in ws:
            until(w, lambda m: m.get("name") == "idle.p")
        time.sleep(1)
        after = rss_kb(srv.pid)
        print(json.dumps({"clients": a.n, "since": bool(since),
                          "replayed": 0 if a.plain else a.replay,
                          "live_during_replay": a.live,
                          "rss_before_kb": before, "rss_after_kb": after,
                          "bytes_per_client":
                              round((after - before) * 1024 / a.n)}))
    finally:
        for w in ws:
            w.close()
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    main()
