#!/usr/bin/python3
"""hostile_suite.py - hostile clients against the real taskbus binary
(issue 9): every input the issue lists, replayed, each a named case.

Runs $TASKBUS_BIN twice, with the in-process bus and with --redis-url to a
throwaway redis-server, on free 127.0.0.1 ports. After each case the
process must still be alive and answer GET /healthz 200 within 1 s
(stretched for sanitizer builds); where the issue states the right answer,
the case checks it too. A server that died or hangs is shown (its stderr
since the case began) and replaced by a fresh one, so one crash does not
hide the cases after it. Each group ends with SIGTERM, which must give exit
status 0 and no sanitizer report (an ASan build exits non-zero on a leak).

JSON depth is the number of nested brackets ([[1]] is 2). The suite sends
3 000; the edge of json_max_depth (64 accepted, 65 bad_json) is checked
once `taskbus --help` lists --json-max-depth, and skipped until then.

Helpers (processes, ports, redis-server, HTTP, the raw websocket client,
the main loop) come from tbharness.py, beside it. Standard library only.

Usage: hostile_suite.py [WORD...]  runs only the cases whose group or name
contains one of the words (all when none are given).
"""

import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, SAN_RE, STOP_TIMEOUT_S, RawWS,  # noqa: E402
                       Redis, T, TaskbusProc, check, child_env, end_proc,
                       http_req, read_text, spawn)

DEEP = 3000  # nesting of the deep JSON documents
sys.setrecursionlimit(4 * DEEP)  # json.loads of an answer that echoes one
REDIS_CLI = "/usr/bin/redis-cli"
NS = "hostile"  # event namespace: Redis channels hostile:event:<name>
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def deep(n):
    return "[" * n + "]" * n


# ------------------------------------------------------------------ server


class Server(TaskbusProc):
    """One taskbus (redis: the Redis it uses, or None); stderr to a file
    of its own per start, so a report shows the instance that failed."""

    starts = 0

    def __init__(self, name, redis):
        super().__init__(name, *(["--redis-url", redis.url()] if redis
                                 else []))
        self.redis = redis
        self.err = None

    def _spawn(self, attempt):
        Server.starts += 1
        base = os.path.join(H.root, f"taskbus-{self.name}-{Server.starts}")
        self.err = base + ".err"
        argv = [H.bin, "--listen", f"{HOST}:{self.port}", "--workers", "2",
                "--namespace", NS, "--quiet", *self.args]
        return spawn(argv, base + ".out", self.err, env=child_env()), self.err

    def err_text(self):
        return read_text(self.err)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f
                        if l.startswith("VmRSS:"))

    def problem(self):
        """None when alive and /healthz answers 200 within T(1) (three
        tries: the bound catches hangs, not a busy machine); else what is
        wrong."""
        last = ""
        for _ in range(3):
            if self.proc.poll() is not None:
                break
            try:
                r = http_req(self.port, "GET", "/healthz", timeout=T(1))
                if r.status == 200:
                    return None
                last = repr(r)
            except (OSError, ValueError) as e:
                last = f"{type(e).__name__} {e}"
                time.sleep(0.2)
        try:  # refused: perhaps on its way out
            return f"the server died (exit status {self.proc.wait(0.5)})"
        except subprocess.TimeoutExpired:
            return f"alive, but /healthz not 200 within {T(1)} s: {last}"


def excerpt(text):
    """What to show of a server's stderr: its first sanitizer report
    (the error and the first stack), else its last lines."""
    lines = text.splitlines()
    first = next((i for i, l in enumerate(lines) if SAN_RE.search(l)), None)
    if first is None:
        lines = lines[-25:]
    else:
        lines = lines[first:first + 24] + [
            l for l in lines[first + 24:] if "SUMMARY" in l][:1]
    return "\n".join("    | " + l for l in lines) or "    (nothing)"


def c_sigterm(srv):
    """SIGTERM: exit status 0 within STOP_TIMEOUT_S (stretched for
    sanitizer builds: after a publish flood a worker may hold a full queue
    of events to deliver first, slow under TSan), no sanitizer report."""
    limit = T(STOP_TIMEOUT_S)
    rc = end_proc(srv.proc, signal.SIGTERM, limit)
    bad = [l for l in srv.err_text().splitlines() if SAN_RE.search(l)]
    check(rc == 0 and not bad,
          (f"still running {limit} s after SIGTERM (killed)"
           if rc is None else f"exit status {rc} after SIGTERM")
          + (f"; sanitizer: {bad[0]}" if bad else "")
          + f"\n{excerpt(srv.err_text())}")


# ------------------------------------------------------------------ clients


def req(method, target, *headers, body=b""):
    return (f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n"
            + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


def raw_http(port, data, wait_close=False, timeout=None):
    """Sends data on a fresh connection and reads one answer: (status line
    and headers, body, closed). closed: the server closed the connection
    (looked for up to T(2) after the answer only when wait_close)."""
    s = socket.create_connection((HOST, port), T(5))
    s.settimeout(timeout or T(5))
    buf, eof = b"", False
    try:
        s.sendall(data)
        while b"\r\n\r\n" not in buf and not eof:
            d = s.recv(65536)
            buf, eof = buf + d, not d
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        while not eof and (len(body) < int(m.group(1)) if m else True):
            d = s.recv(65536)
            body, eof = body + d, not d
        if wait_close and not eof:
            s.settimeout(T(2))
            try:
                eof = s.recv(4096) == b""
            except socket.timeout:
                pass
        return head, body[:int(m.group(1))] if m else body, eof
    except ConnectionResetError:
        return buf, b"", True
    finally:
        s.close()


def check_json_error(head, body, status=None):
    """A proper status line (status, if given) and a JSON error body."""
    m = STATUS_LINE.match(head)
    check(m, f"no proper 'HTTP/1.1 NNN ' status line: {head[:120]!r}")
    check(status is None or int(m.group(1)) == status,
          f"status {m.group(1).decode()}, want {status}: {head[:120]!r}")
    try:
        j = json.loads(body)
    except ValueError:
        j = None
    check(isinstance(j, dict) and "error" in j,
          f"the body is not a JSON error: {body[:120]!r}")


def ws(srv, path="/ws"):
    return RawWS(srv.port, path, timeout=T(5))


def reply(w):
    """The next answer on w (a message with "ok" or "error"), past any
    events."""
    end = time.monotonic() + T(5)
    while True:
        m = w.recv_json(max(0.1, end - time.monotonic()))
        if "ok" in m or m.get("error") not in (None, "events_dropped"):
            return m


def subscribe(w, *patterns):
    w.send_text(json.dumps({"subscribe": list(patterns)}))
    r = reply(w)
    check(r.get("ok") == "subscribe", f"subscribe {patterns}: {r}")


def post_json(srv, path, text):
    return http_req(srv.port, "POST", path, text,
                    {"Content-Type": "application/json"})


def spawn_task(srv, kind, name, args):
    return http_req(srv.port, "POST", "/tasks",
                    {"kind": kind, "name": name, "args": args})


def redis_cli(srv, *args):
    """redis-cli ARGS... against srv's Redis, as an operator would."""
    return [REDIS_CLI, "-h", HOST, "-p", str(srv.redis.port), *args]


def publish(srv, name, data):
    """PUBLISHes data on the channel of event name; the receiver count."""
    out = subprocess.run(redis_cli(srv, "PUBLISH", f"{NS}:event:{name}",
                                   data), capture_output=True, text=True,
                         timeout=T(10))
    check(out.returncode == 0, f"redis-cli PUBLISH: {out.stderr}")
    return int(out.stdout)


def in_threads(n, fn):
    """Runs fn() n times at once, in threads; returns the exceptions."""
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(fn) for _ in range(n)]
    return [f.exception() for f in futures if f.exception()]


def healthz_within(srv, seconds, what):
    try:
        r = http_req(srv.port, "GET", "/healthz", timeout=seconds)
    except OSError as e:
        raise AssertionError(f"/healthz {what}: no answer in {seconds} s "
                             f"({type(e).__name__})")
    check(r.status == 200, f"/healthz {what}: {r!r}")


# ------------------------------------------------------------ 1. JSON depth


def c_deep_ws(srv):
    w = ws(srv)
    w.send_text(deep(DEEP))
    r = reply(w)
    check(r.get("error") == "bad_json", f"{DEEP}-deep message: {r}")
    w.close()


def c_deep_task_args(srv):
    r = post_json(srv, "/tasks", '{"kind": "sleep", "name": "deep-args", '
                  f'"args": {{"seconds": 1, "x": {deep(DEEP)}}}}}')
    check(r.status == 400 and r.code() == "bad_json",
          f"POST /tasks with args {DEEP} deep: {r!r}")


def c_deep_delay(srv):
    """delay's data nested 500 and 3 000 deep: 400. The same nesting as
    text (data it dispatches as it is): 201 or 400, and it lives."""
    w = ws(srv, "/ws?events=dp.*")
    got = [post_json(srv, "/tasks", '{"kind": "delay", "name": "deep-d", '
                     '"args": {"seconds": 0, "event": "dp.d", "data": '
                     f'{deep(n)}}}}}') for n in (500, DEEP)]
    check(all(r.status == 400 for r in got),
          f"delay with nested data, 500 and {DEEP} deep: {got}")
    r = spawn_task(srv, "delay", "deep-text",
                   {"seconds": 0, "event": "dp.t", "data": deep(DEEP)})
    check(r.status in (201, 400), f"delay with {DEEP}-deep text: {r!r}")
    if r.status == 201:
        m = w.recv_json(T(5))
        check(m.get("name") == "dp.t" or "error" in m,
              f"{DEEP}-deep text event on /ws: {str(m)[:200]}")
    w.close()


def c_deep_event(srv):
    """A deep body while a long poll and a websocket wait for x: 202 (as
    opaque data) or 400 bad_json, and both waiters get a clean answer."""
    w = ws(srv)
    subscribe(w, "x")
    poll = {}

    def long_poll():
        try:
            poll["r"] = http_req(srv.port, "GET", "/events/x?timeout=5",
                                 timeout=T(5) + 5)
        except Exception as e:  # reported below
            poll["r"] = e
    t = threading.Thread(target=long_poll, daemon=True)
    t.start()
    time.sleep(T(0.3))
    r = http_req(srv.port, "POST", "/events/x", deep(DEEP))
    check(r.status == 202 or (r.status == 400 and r.code() == "bad_json"),
          f"POST /events/x {DEEP} deep: {r!r}")
    t.join(T(5) + 6)
    p = poll.get("r")
    check(isinstance(p, tbharness.Resp) and
          (p.status in (200, 204) or p.code()),
          f"the long poll got no clean answer: {p!r}")
    if r.status == 202:
        check(p.status == 200 and p.json.get("id") == r.json.get("id"),
              f"the long poll did not get the accepted event: {p!r}")
        fin, op, payload = w.recv_frame(T(5))
        if op == 0x8:  # a close, with a code: a clean error too
            return f"the websocket was closed {payload[:2].hex()}"
        m = json.loads(payload)
        check(m.get("id") == r.json.get("id") or "error" in m,
              f"the websocket got {str(m)[:200]}")
    subscribe(w, "y")  # still answering
    w.close()


def c_deep_publish(srv):
    """PUBLISH of a deep non-envelope and a deep envelope to dp.a."""
    w = ws(srv, "/ws?events=dp.a")
    subscribe(w, "dp.b")
    env = ('{"id": "hostile-deep-1", "name": "dp.a", "ts": 1, "origin": '
           f'"external", "data": {deep(DEEP)}}}')
    for data in (deep(DEEP), env):
        check(publish(srv, "dp.a", data) >= 1, "nobody got the PUBLISH")
    time.sleep(T(0.5))
    subscribe(w, "dp.c")  # still answering (the events before, skipped)
    w.close()


def depth_edge(fn):
    def case(srv):
        if "--json-max-depth" not in subprocess.run(
                [H.bin, "--help"], capture_output=True, text=True,
                timeout=T(10)).stdout:
            return "SKIP: taskbus --help has no --json-max-depth yet"
        return fn(srv)
    return case


@depth_edge
def c_depth_edge_ws(srv):
    w = ws(srv)
    w.send_text(deep(64))  # valid JSON, but not an object: bad_message
    r64 = reply(w)
    w.send_text(deep(65))
    r65 = reply(w)
    check(r64.get("error") not in (None, "bad_json")
          and r65.get("error") == "bad_json",
          f"64 deep: {r64} (want an error other than bad_json); 65 deep: "
          f"{r65} (want bad_json)")
    w.close()


@depth_edge
def c_depth_edge_tasks(srv):
    def post(n):  # the body's object and "args" are two of the n levels
        return post_json(srv, "/tasks", '{"kind": "sleep", "name": '
                         f'"edge-{n}", "args": {{"seconds": 0, "x": '
                         f'{deep(n - 2)}}}}}')
    r64, r65 = post(64), post(65)
    check(r64.code() != "bad_json" and r65.code() == "bad_json",
          f"64 deep: {r64!r}; 65 deep: {r65!r}")


# ------------------------------------------------- 2, 3, 10. websocket churn


def dispatch_and_reset(srv):
    w = ws(srv)
    w.send_text('{"event": "a.b", "data": 1}')
    w.abort()


def c_dispatch_reset(srv):
    errors = in_threads(3, lambda: [dispatch_and_reset(srv)
                                    for _ in range(10)])
    time.sleep(T(0.5))  # what the resets break may show a little later
    check(not errors, f"{len(errors)} clients failed: {errors[:1]!r}")


def upgrade_and_reset(srv, read_answer):
    s = socket.create_connection((HOST, srv.port), T(5))
    s.sendall(req("GET", "/ws", "Upgrade: websocket", "Connection: Upgrade",
                  "Sec-WebSocket-Version: 13",
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))
    if read_answer:
        s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def c_reset_after_handshake(srv):
    """Half reset before the 101 arrives, half after it."""
    mark = len(srv.err_text())
    errors = in_threads(4, lambda: [upgrade_and_reset(srv, k % 2)
                                    for k in range(75)])
    check(not errors, f"{len(errors)} threads failed: {errors[:1]!r}")
    time.sleep(T(0.5))
    n = srv.err_text()[mark:].count("cannot take the socket over")
    check(n <= 10, f"{n} 'cannot take the socket over' lines for 300 "
          "resets: the log line is not rate-limited")


def c_stop_under_load(srv):
    """SIGTERM while clients dispatch and reset, subscribers read, and
    POSTs and PUBLISHes (redis-cli -r -1) go on."""
    stop = threading.Event()

    def loop(fn):
        while not stop.is_set():
            try:
                fn()
            except Exception:  # the server is going away: expected
                time.sleep(0.01)

    def reader():
        w = ws(srv, "/ws?events=load.*")
        while not stop.is_set():
            w.recv_frame(T(2))
    jobs = [lambda: dispatch_and_reset(srv)] * 3 + [reader] * 3 + [
        lambda: http_req(srv.port, "POST", "/events/load.p", "x", None,
                         T(2))]
    threads = [threading.Thread(target=loop, args=(f,), daemon=True)
               for f in jobs]
    for t in threads:
        t.start()
    pub = spawn(redis_cli(srv, "-r", "-1", "PUBLISH", f"{NS}:event:load.r",
                          "r"), os.devnull)
    time.sleep(T(1))
    try:
        c_sigterm(srv)
    finally:
        stop.set()
        end_proc(pub, signal.SIGKILL)
        for t in threads:
            t.join(T(5))


# ------------------------------------------------------------ 4. long polls


def open_polls(srv, paths):
    """Sockets, each with a GET sent and not yet answered."""
    socks = []
    for p in paths:
        socks.append(socket.create_connection((HOST, srv.port), T(5)))
        socks[-1].sendall(req("GET", p))
    return socks


def longpolls_waiting(srv):
    """taskbus_http_longpolls from /metrics (None when absent)."""
    r = http_req(srv.port, "GET", "/metrics")
    m = re.search(rb"^taskbus_http_longpolls (\S+)$", r.body or b"", re.M)
    return float(m.group(1)) if m else None


def c_polls_abandoned(srv):
    socks = open_polls(srv, [f"/events/nobody.{i}?timeout=10"
                             for i in range(100)])
    time.sleep(0.5)
    for i, s in enumerate(socks):  # half close, half reset
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        s.close()
    for k in range(5):  # and it stays answering
        healthz_within(srv, T(1), f"{k * 0.5:.1f} s after 100 long polls "
                       "were abandoned")
        time.sleep(0.5)
    # The waits ended with their clients (else they would hold their HTTP
    # threads until the timeout): none is left 2.5 s after.
    check(longpolls_waiting(srv) == 0, f"{longpolls_waiting(srv)} long "
                                       "polls still wait after their "
                                       "clients left")


def c_polls_over_threads(srv):
    """More long polls than HTTP threads (64): the extra ones may be
    refused 503, every one gets an answer, and /healthz still answers."""
    n = 64 + 16
    socks = open_polls(srv, [f"/events/nobody.t{i}?timeout=3"
                             for i in range(n)])
    try:
        time.sleep(T(0.3))
        healthz_within(srv, T(1), f"while {n} long polls wait")
        statuses = []
        for s in socks:
            s.settimeout(T(3) + 10)
            try:
                m = STATUS_LINE.match(s.recv(4096))
            except OSError:
                m = None
            statuses.append(int(m.group(1)) if m else None)
        bad = [x for x in statuses if x not in (204, 503)]
        check(not bad, f"long-poll answers other than 204 or 503: {bad}")
        return f"{statuses.count(503)} of {n} refused 503"
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------ 5, 6. tasks

RELAYS = [("cyc-ab", "a.*", "b.x"), ("cyc-ba", "b.*", "a.x"),
          ("cyc-ba2", "b.*", "a.y")]


def c_relay_cycle(srv):
    """a.* -> b.x, b.* -> a.x and a.y: one a.q doubles every two hops
    unless the server bounds the hops. Counts what a subscriber to *.*
    sees (or is told it missed) in 3 s, and the server's RSS."""
    w = ws(srv, "/ws?events=*.*")
    subscribe(w, "z.z")
    for name, pattern, event in RELAYS:
        r = spawn_task(srv, "relay", name, {"pattern": pattern,
                                            "event": event})
        check(r.status == 201, f"spawn relay {name}: {r!r}")
    rss0 = peak = srv.rss_kb()
    r = http_req(srv.port, "POST", "/events/a.q", "go")
    check(r.status == 202, f"POST /events/a.q: {r!r}")
    seen, closed, end, next_rss = 0, None, time.monotonic() + 3, 0
    while time.monotonic() < end and closed is None:
        if time.monotonic() > next_rss:
            peak, next_rss = max(peak, srv.rss_kb()), time.monotonic() + 0.25
        try:
            fin, op, payload = w.recv_frame(0.25)
        except socket.timeout:
            continue
        except (EOFError, OSError) as e:
            closed = f"closed ({type(e).__name__})"
            break
        if op == 0x8:
            closed = f"closed {struct.unpack('!H', payload[:2])[0]}"
        elif op == 0x1:
            m = json.loads(payload)
            seen += m.get("dropped", 1) if "error" in m else 1
    w.abort()
    peak = max(peak, srv.rss_kb())
    for name, _, _ in RELAYS:
        r = http_req(srv.port, "DELETE", f"/tasks/{name}?timeout=5",
                     timeout=T(5) + 5)
        check(r.status in (200, 404), f"cancel relay {name}: {r!r}")
    http_req(srv.port, "POST", "/tasks/purge")
    grew = (peak - rss0) // 1024
    check(seen < 10000 and grew < 64,
          f"{seen} events (with dropped ones) in 3 s, RSS +{grew} MB"
          + (f", subscriber {closed}" if closed else "")
          + ": the relay cycle is not bounded")
    return f"{seen} events, RSS +{grew} MB"


def respawner(srv, name, done):
    """Spawns name in a tight loop (one keep-alive connection) until one
    spawn is 201 or done is set."""
    c = http.client.HTTPConnection(HOST, srv.port, timeout=T(5))
    body = json.dumps({"kind": "sleep", "name": name, "args": {"seconds": 60}})
    end = time.monotonic() + T(10)
    try:
        while not done.is_set() and time.monotonic() < end:
            c.request("POST", "/tasks", body)
            r = c.getresponse()
            r.read()
            if r.status == 201:
                done.set()
    finally:
        c.close()


def c_delete_race(srv):
    """DELETE /tasks/N while three clients spawn N again and again: the
    answer describes the task that was cancelled, never a new one."""
    wrong = []
    for i in range(20):
        name = f"race-{i}"
        r = spawn_task(srv, "sleep", name, {"seconds": 60})
        check(r.status == 201, f"spawn {name}: {r!r}")
        done = threading.Event()
        spawners = [threading.Thread(target=respawner, daemon=True,
                                     args=(srv, name, done))
                    for _ in range(3)]
        for t in spawners:
            t.start()
        try:
            d = http_req(srv.port, "DELETE", f"/tasks/{name}?timeout=5")
        finally:
            done.set()
            for t in spawners:
                t.join(T(10))
        if d.status != 200 or d.json.get("id") != r.json["id"] or \
                d.json.get("state") != "cancelled":
            wrong.append(f"try {i}: cancelled id {r.json['id']}, answer {d!r}")
        http_req(srv.port, "DELETE", f"/tasks/{name}?timeout=5")
    http_req(srv.port, "POST", "/tasks/purge")
    check(not wrong, f"{len(wrong)} of 20 wrong: {wrong[:1]}")


# ------------------------------------------------------------ 7, 8. HTTP


def framing(data, status=400, closed=True):
    def case(srv):
        head, body, eof = raw_http(srv.port, data, wait_close=closed)
        check_json_error(head, body, status)
        check(eof or not closed, "the connection stayed open")
    return case


def c_long_ws_key(srv):
    head, body, _ = raw_http(srv.port, req(
        "GET", "/ws", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + "A" * 5000))
    check(not head.startswith(b"HTTP/1.1 101"), f"upgraded: {head[:80]!r}")
    check_json_error(head, body)


def c_nul_body(srv):
    r = http_req(srv.port, "POST", "/events/x", b"a\0b")
    check(r.status == 202, f"POST /events/x 'a\\0b': {r!r}")


# ------------------------------------------------------------ 9. frames


def closes(data, want):
    """A case: data sent on a fresh websocket; the server must close it
    with code want."""
    def case(srv):
        w = ws(srv)
        w.sock.sendall(data)
        code = w.close_code(T(5))[0]
        w.close()
        check(code == want, f"close code {code}, want {want}")
    return case


def c_vanish_mid_frame(srv):
    for frame, cut in ((RawWS.frame(0x1, b"x" * 1000), 40),  # mid-payload
                       (RawWS.frame(0x1, b"y" * 70000), 4)):  # mid-header
        w = ws(srv)
        w.sock.sendall(frame[:cut])
        w.abort()


# ------------------------------------------------------------ garbage


def c_random_bytes(srv):
    rnd = random.Random(9)
    for _ in range(3):
        try:
            raw_http(srv.port, rnd.randbytes(4096), timeout=T(2))
        except OSError:
            pass  # no answer, or a reset: either is fine


def c_half_requests(srv):
    for data in [req("GET", "/healthz")[:-2],
                 req("POST", "/events/x", "Content-Length: 100", body=b"ab"),
                 b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n"] * 4:
        with socket.create_connection((HOST, srv.port), T(5)) as s:
            s.sendall(data)


def c_silent_clients(srv):
    socks = [socket.create_connection((HOST, srv.port), T(5))
             for _ in range(10)]
    try:
        healthz_within(srv, T(1), "with 10 silent connections open")
    finally:
        for s in socks:
            s.close()


def c_oversized_headers(srv):
    for data in [req("GET", "/healthz", "X-Big: " + "b" * 65536),
                 req("GET", "/healthz", *[f"X-H{i}: v" for i in range(500)]),
                 req("GET", "/" + "p" * 65536)]:
        try:
            head, _, _ = raw_http(srv.port, data, timeout=T(3))
        except OSError:
            continue  # refused by closing: fine
        check(not head or re.match(rb"HTTP/1\.[01] \d{3} ", head),
              f"no proper status line: {head[:80]!r}")


# ------------------------------------------------------------------ cases

DEPTH = [
    (f"1 /ws message {DEEP} deep: bad_json", c_deep_ws),
    (f"1 POST /tasks, args {DEEP} deep: 400 bad_json", c_deep_task_args),
    ("1 delay with nested data: 400", c_deep_delay),
    (f"1 POST /events/x {DEEP} deep with a long poll and /ws waiting",
     c_deep_event),
]

MEM = DEPTH + [
    ("1 /ws message 64 deep accepted, 65 bad_json", c_depth_edge_ws),
    ("1 POST /tasks 64 deep accepted, 65 bad_json", c_depth_edge_tasks),
    ("4 100 abandoned long polls: /healthz answers", c_polls_abandoned),
    ("4 more long polls than HTTP threads", c_polls_over_threads),
    ("5 relay cycle a.* -> b.x -> a.x, a.y is bounded", c_relay_cycle),
    ("6 DELETE /tasks/N racing spawns of N", c_delete_race),
    ("7 conflicting Content-Length values: 400, closed", framing(req(
        "POST", "/events/x", "Content-Length: 3", "Content-Length: 5",
        body=b"abcde"))),
    ("7 Content-Length: 0x10: 400, closed", framing(req(
        "POST", "/events/x", "Content-Length: 0x10", body=b"a" * 16))),
    ("7 Content-Length and Transfer-Encoding: chunked: 400, closed",
     framing(req("POST", "/events/x", "Content-Length: 3",
                 "Transfer-Encoding: chunked",
                 body=b"3\r\nabc\r\n0\r\n\r\n"))),
    ("7 Content-Length: -1: 400, closed", framing(req(
        "POST", "/events/x", "Content-Length: -1", body=b"abc"))),
    ("7 garbage request line: 400", framing(b"\x01\x02 garbage\x7f\r\n\r\n",
                                            closed=False)),
    ("7 raw spaces in the target: 400", framing(req("GET", "/events/a b c"),
                                                closed=False)),
    ("7 5000-byte Sec-WebSocket-Key: a JSON error", c_long_ws_key),
    ("8 POST /events/x 'a\\0b': 202", c_nul_body),
    ("9 fragmented ping: close 1002",
     closes(RawWS.frame(0x9, b"ping", fin=False), 1002)),
    ("9 5-byte text frame in the 126 length form: close 1002",
     closes(struct.pack("!BBH4x", 0x81, 0x80 | 126, 5)  # mask key 0
            + b'"abc"', 1002)),
    ("10 300 websockets reset after the handshake", c_reset_after_handshake),
    ("garbage: random bytes", c_random_bytes),
    ("garbage: half-sent requests, then gone", c_half_requests),
    ("garbage: silent connections", c_silent_clients),
    ("garbage: oversized headers and target", c_oversized_headers),
    ("garbage: invalid UTF-8 text: close 1007",
     closes(RawWS.frame(0x1, b'{"event": "\xc3\x28"}'), 1007)),
    ("garbage: websocket clients gone mid-frame", c_vanish_mid_frame),
    ("SIGTERM: exit 0, no sanitizer report", c_sigterm),
]

REDIS = DEPTH + [
    (f"1 PUBLISH {DEEP} deep on {NS}:event:dp.a to a /ws subscriber",
     c_deep_publish),
    ("2 30 websockets dispatch a.b and reset at once", c_dispatch_reset),
    ("5 relay cycle a.* -> b.x -> a.x, a.y is bounded", c_relay_cycle),
    ("3 SIGTERM under websocket churn and publish load: exit 0, no "
     "sanitizer report", c_stop_under_load),
]

# Each group's last case stops its server, and runs whenever another does.
GROUPS = [("in-process bus", False, MEM), ("redis bus", True, REDIS)]


class Runner(tbharness.Runner):
    def case(self, gname, srv, name, fn, last):
        """Runs fn(srv); unless it is the last case (which stops the
        server), requires the server alive and healthy after it. A broken
        server is shown and replaced. Returns the server to use next."""
        full = f"{gname}: {name}"
        mark, t0 = len(srv.err_text()), time.monotonic()
        try:
            detail, ok = fn(srv) or "", True
        except AssertionError as e:
            detail, ok = str(e), False
        except Exception as e:  # any failure is this case's FAIL line
            detail, ok = f"{type(e).__name__}: {e}", False
        if detail.startswith("SKIP: "):
            self.skip(full, detail[6:])
            return srv
        problem = None if last else srv.problem()
        if problem:
            ok, detail = False, problem + ("" if ok else "; " + detail)
        if ok:
            took = f"{time.monotonic() - t0:.2f} s"
            detail = f"{detail}; {took}" if detail else took
        self.report(ok, full, detail)
        since = srv.err_text()[mark:]
        if not ok and not last and since.strip():
            print("  stderr since the case began:\n" + excerpt(since),
                  flush=True)
        if problem:
            end_proc(srv.proc, signal.SIGKILL)
            return self.start(gname, srv.redis)
        return srv

    def start(self, gname, redis):
        try:
            return Server(gname.split()[0], redis).start()
        except RuntimeError as e:
            self.report(False, f"{gname}: start taskbus", str(e))
            return None

    def group(self, gname, with_redis, cases):
        chosen = [c for c in cases[:-1] if self.wanted(gname, c[0])]
        if not chosen and not self.wanted(gname, cases[-1][0]):
            return
        redis = Redis("hostile").start() if with_redis else None
        srv = self.start(gname, redis)
        for name, fn in chosen + cases[-1:]:
            if srv is None:
                self.report(False, f"{gname}: {name}", "no server (above)")
                continue
            srv = self.case(gname, srv, name, fn, fn is cases[-1][1])
        if redis:
            redis.stop()

    def run(self):
        for g in GROUPS:
            self.group(*g)


def main():
    runner = Runner(sys.argv[1:])
    return tbharness.run_suite("hostile_suite", "taskbus-hostile.", runner,
                               runner.run)


if __name__ == "__main__":
    sys.exit(main())
