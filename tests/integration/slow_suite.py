#!/usr/bin/python3
"""slow_suite.py - slow, idle and vanishing HTTP clients against the real
taskbus binary (issue 14, point 1): the front reads every request whole
before civetweb sees it, so that none of these holds an HTTP thread.

Each case starts its own `taskbus serve` (in-process bus) on a free
127.0.0.1 port. Latencies are checked only against generous hang bounds
(the numbers are printed; docs/BENCHMARKS.md records them). With
TASKBUS_HTTP_FRONT=0 the first cases fail: civetweb gives each slow connection a
thread (SLOW_FRONT=0 in the environment runs them that way, to see it).

Usage: slow_suite.py [WORD...]  runs only the cases whose group or name
contains one of the words (all when none are given).
"""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, T, Taskbus, check, http_req,  # noqa: E402
                       metric_value)

N = 500  # slow or idle connections at once
FRONT = {"TASKBUS_HTTP_FRONT": os.environ.get("SLOW_FRONT", "1")}
# The probe: a request that needs one of civetweb's threads (the front
# answers /healthz itself), so that it shows whether one is free.
PROBE = b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"


def serve(name, *args):
    return Taskbus(name, *args, env=FRONT).start()


def connect(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), T(5))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def probe_ms(port):
    """Milliseconds GET /readyz (answered on one of civetweb's threads)
    takes on a fresh connection (to the whole answer)."""
    t0 = time.monotonic()
    r = http_req(port, "GET", "/readyz", timeout=T(10))
    took = (time.monotonic() - t0) * 1000
    check(r.status == 200, f"/readyz answered {r.status}")
    return took


def probe_while(port, seconds, bound_ms, what):
    """GET /readyz every 0.1 s for seconds: each within bound_ms (a hang
    bound). Returns (median, max) ms."""
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(probe_ms(port))
        time.sleep(0.1)
    times.sort()
    check(times[-1] < bound_ms,
          f"/readyz took {times[-1]:.0f} ms {what} (bound {bound_ms} ms)")
    return times[len(times) // 2], times[-1]


class Trickler:
    """Sends, every second, the next piece of each socket's script (one
    header line, one body byte...) from a thread, until stopped."""

    def __init__(self, socks, piece):
        self.socks, self.piece = socks, piece
        self.stop = threading.Event()
        self.errors = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        i = 0
        while not self.stop.wait(1.0):
            i += 1
            for s in self.socks:
                try:
                    s.sendall(self.piece(i))
                except OSError:
                    self.errors += 1

    def end(self):
        self.stop.set()
        self.t.join()


def closed_by_server(s, within):
    """1 if the server closes s (EOF or reset) within seconds."""
    s.settimeout(within)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return True
    except ConnectionResetError:
        return True
    except (socket.timeout, OSError):
        return False


# ------------------------------------------------------------ cases


def t_slow_headers():
    """500 connections that each send a request line and then one header
    line a second: /readyz still answers at once; at
    http.header_timeout_ms (from the first byte) all are closed, counted
    and logged."""
    s = serve("slow-headers")
    socks = connect(s.port, N)
    for c in socks:
        c.sendall(b"GET /readyz HTTP/1.1\r\n")
    t0 = time.monotonic()
    tr = Trickler(socks, lambda i: f"X-Slow-{i}: {i}\r\n".encode())
    try:
        med, worst = probe_while(s.port, 3.0, T(1000),
                                   f"with {N} slow-header connections")
    finally:
        tr.end()
    # The default header timeout (5 s) passes: every one is closed.
    left = max(0.1, 5.0 + T(3) - (time.monotonic() - t0))
    open_ = [c for c in socks if not closed_by_server(c, left)]
    close_all(socks)
    check(not open_, f"{len(open_)} of {N} slow-header connections still "
                     f"open {time.monotonic() - t0:.1f} s after their first "
                     f"byte (http.header_timeout_ms 5000)")
    n = metric_value(s.port, "taskbus_http_header_timeouts_total")
    check(n == N, f"taskbus_http_header_timeouts_total {n}, want {N}")
    check("http.header_timeout_ms" in s.err_text(),
          "no log line names http.header_timeout_ms")
    return f"/readyz median {med:.1f} ms, max {worst:.1f} ms"


def t_header_timeout_edge():
    """--http-header-timeout 1000: a head that completes at 0.5 s is
    served; one still incomplete at 1 s is closed then (not before 0.9 s);
    the time counts from the first byte, not from the connect."""
    s = serve("header-edge", "--http-header-timeout", "1000")
    ok = socket.create_connection((HOST, s.port), T(5))
    slow = socket.create_connection((HOST, s.port), T(5))
    quiet = socket.create_connection((HOST, s.port), T(5))
    try:
        t0 = time.monotonic()
        ok.sendall(b"GET /readyz HTTP/1.1\r\n")
        slow.sendall(b"GET /readyz HTTP/1.1\r\n")
        time.sleep(0.5)
        ok.sendall(b"Host: t\r\n\r\n")
        ok.settimeout(T(5))
        check(ok.recv(4096).startswith(b"HTTP/1.1 200 "),
              "a head complete at 0.5 s was not served")
        check(closed_by_server(slow, T(3)), "an incomplete head still open "
                                            "after the header timeout")
        took = time.monotonic() - t0
        check(0.9 <= took, f"an incomplete head closed after {took:.2f} s, "
                           f"before --http-header-timeout 1000")
        # quiet connected 0.5 s ago and has sent nothing: its first byte
        # starts its clock.
        quiet.sendall(b"GET /readyz HTTP/1.1\r\n")
        t1 = time.monotonic()
        time.sleep(0.6)
        quiet.sendall(b"Host: t\r\n\r\n")
        quiet.settimeout(T(5))
        head = quiet.recv(4096)
        check(head.startswith(b"HTTP/1.1 200 "),
              f"a head sent 0.6 s after its first byte (1.1 s after the "
              f"connect) was refused: {head[:60]!r}")
    finally:
        close_all([ok, slow, quiet])
    return f"closed after {took:.2f} s; served at {time.monotonic() - t1:.2f} s"


def t_slow_body():
    """500 POSTs whose bodies trickle a byte a second: /readyz still
    answers at once, and the events are accepted once whole."""
    s = serve("slow-body")
    socks = connect(s.port, N)
    for c in socks:
        c.sendall(b"POST /events/slow.body HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: 3\r\n\r\n1")
    tr = Trickler(socks, lambda i: b"2" if i == 1 else b"")
    try:
        med, worst = probe_while(s.port, 2.5, T(1000),
                                   f"with {N} slow bodies")
    finally:
        tr.end()
    for c in socks:
        c.sendall(b"3")
    bad = 0
    for c in socks:
        c.settimeout(T(10))
        try:
            if not c.recv(4096).startswith(b"HTTP/1.1 202 "):
                bad += 1
        except OSError:
            bad += 1
    close_all(socks)
    check(not bad, f"{bad} of {N} slow bodies not accepted (202) once whole")
    return f"/readyz median {med:.1f} ms, max {worst:.1f} ms"


def t_body_timeout_edge():
    """--http-body-timeout 1000: a body that stalls is closed after 1 s of
    silence (not before 0.9 s), counted; one that sends a byte every 0.5 s
    is not."""
    s = serve("body-edge", "--http-body-timeout", "1000")
    head = (b"POST /events/b.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
            b"application/json\r\nContent-Length: 4\r\n\r\n")
    stall = socket.create_connection((HOST, s.port), T(5))
    drip = socket.create_connection((HOST, s.port), T(5))
    try:
        stall.sendall(head + b"1")
        drip.sendall(head + b"1")
        t0 = time.monotonic()
        for b in (b"2", b"3", b"4"):
            time.sleep(0.5)
            drip.sendall(b)
        drip.settimeout(T(5))
        check(drip.recv(4096).startswith(b"HTTP/1.1 202 "),
              "a body dripping a byte every 0.5 s was not accepted")
        check(closed_by_server(stall, T(3)), "a stalled body still open")
        took = time.monotonic() - t0
        check(took >= 0.9, f"a stalled body closed after {took:.2f} s")
    finally:
        close_all([stall, drip])
    n = metric_value(s.port, "taskbus_http_body_timeouts_total")
    check(n == 1, f"taskbus_http_body_timeouts_total {n}, want 1")
    return f"stalled body closed after {took:.2f} s"


def t_idle_keepalive():
    """500 keep-alive connections, each after one answered request, left
    idle: /readyz answers at once; at http.keepalive_timeout_ms they are
    closed."""
    s = serve("idle", "--http-keepalive-timeout", "3000")
    socks = connect(s.port, N)
    t0 = time.monotonic()
    for c in socks:
        c.sendall(PROBE)
    for c in socks:
        c.settimeout(T(10))
        check(c.recv(4096).startswith(b"HTTP/1.1 200 "), "no answer")
    # Each connection, once answered, idles: those answered first must
    # not hold back the others' first requests.
    took = time.monotonic() - t0
    check(took < T(2), f"{N} requests on {N} connections took {took:.1f} s "
                       f"to be answered: idle ones held the others back")
    t0 = time.monotonic()
    med, worst = probe_while(s.port, 1.5, T(1000),
                               f"with {N} idle keep-alive connections")
    left = max(0.1, 3.0 + T(3) - (time.monotonic() - t0))
    open_ = [c for c in socks if not closed_by_server(c, left)]
    close_all(socks)
    check(not open_, f"{len(open_)} of {N} idle connections still open "
                     f"after --http-keepalive-timeout 3000")
    return (f"{N} first answers in {took:.2f} s; /readyz median "
            f"{med:.1f} ms, max {worst:.1f} ms")


def t_vanish():
    """Clients that vanish mid-head, mid-body, mid-response (a long poll
    and a big answer), by close or by reset: the server goes on."""
    s = serve("vanish")
    for i in range(20):
        http_req(s.port, "POST", "/events/v.x", body=b'"' + b"x" * 60000
                 + b'"', headers={"Content-Type": "application/json"})
    pieces = [
        b"GET /readyz HTTP/1.1\r\nHost",
        b"POST /events/v.y HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
        b"\r\n12345",
        b"POST /events/v.y HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
        b"chunked\r\n\r\n10\r\nabc",
        b"GET /events/v.*?timeout=5 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /history?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n",
    ]
    for rst in (False, True):
        for p in pieces:
            for _ in range(20):
                c = socket.create_connection((HOST, s.port), T(5))
                c.sendall(p)
                if rst:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
    # Long polls whose clients left must end (not hold threads).
    end = time.monotonic() + T(3)
    while time.monotonic() < end:
        n = metric_value(s.port, "taskbus_http_longpolls")
        if not n:
            break
        time.sleep(0.1)
    check(not n, f"{n} long polls still wait after their clients left")
    return f"/readyz {probe_ms(s.port):.1f} ms after"


def t_pipelined():
    """Three requests in one write, a fourth split across writes: four
    answers, in order, on the one connection."""
    s = serve("pipelined")
    body = b'{"n": 1}'
    data = (PROBE +
            b"POST /events/p.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
            b"application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body +
            b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n" +
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(data[:-10])
        time.sleep(0.2)
        c.sendall(data[-10:])
        got, end = b"", time.monotonic() + T(5)
        c.settimeout(T(5))
        while got.count(b"HTTP/1.1 ") < 4 and time.monotonic() < end:
            b = c.recv(65536)
            if not b:
                break
            got += b
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)
    check(statuses == [b"200", b"202", b"200", b"404"],
          f"pipelined answers {statuses}, want 200 202 200 404")
    return "200 202 200 404"


def t_431_readable(tries=20):
    """A head over 8192 bytes: 431 and the JSON error, read whole by
    http.client and by curl, 20 of 20; the server answers after."""
    s = serve("431")
    big = "b" * 9000
    bad = []
    for i in range(tries):
        try:
            conn = http.client.HTTPConnection(HOST, s.port, timeout=T(5))
            conn.putrequest("POST", "/events/h.x")
            conn.putheader("X-Big", big)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(1 << 20))
            conn.endheaders()
            try:
                conn.send(b"1" * (1 << 20))
            except OSError:
                pass  # the answer may already be in; it must be readable
            r = conn.getresponse()
            body = r.read()
            check(r.status == 431 and b'"headers_too_large"' in body,
                  f"{r.status} {body[:80]!r}")
            conn.close()
        except (AssertionError, OSError, http.client.HTTPException) as e:
            bad.append(f"http.client try {i + 1}: {e!r}")
        p = subprocess.run(
            ["curl", "-sS", "--max-time", str(T(10)), "-w", "\n%{http_code}",
             "-H", "X-Big: " + big, f"{s.url()}/readyz"],
            capture_output=True, text=True, timeout=T(20))
        if p.returncode != 0 or not p.stdout.endswith("\n431") or \
                '"headers_too_large"' not in p.stdout:
            bad.append(f"curl try {i + 1}: exit {p.returncode} "
                       f"{p.stdout[-80:]!r} {p.stderr.strip()}")
    check(not bad, f"{len(bad)} of {2 * tries} did not read the 431: "
                   + "; ".join(bad[:4]))
    n = metric_value(s.port, "taskbus_http_heads_too_large_total")
    check(n == 2 * tries, f"taskbus_http_heads_too_large_total {n}")
    return f"{tries} of {tries} with each client"


def t_pool_edges():
    """--http-upstream-pool 0 (a server connection per request) and 4096
    with --http-threads 4 (kept at threads): 10 clients x 20 keep-alive
    requests each are answered."""
    out = []
    for name, args in (("pool-0", ["--http-upstream-pool", "0"]),
                       ("pool-max", ["--http-upstream-pool", "4096",
                                     "--http-threads", "4"])):
        s = serve(name, *args)
        bad = []

        def client():
            conn = http.client.HTTPConnection(HOST, s.port, timeout=T(10))
            for _ in range(20):
                conn.request("GET", "/readyz")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    bad.append(r.status)
            conn.close()
        ts = [threading.Thread(target=client) for _ in range(10)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        check(not bad, f"{name}: statuses {bad[:5]}")
        out.append(f"{name} ok")
    return ", ".join(out)


def read_answer(c, within):
    """What the server sends on c until it closes or within seconds
    pass."""
    c.settimeout(within)
    got, end = b"", time.monotonic() + within
    try:
        while time.monotonic() < end:
            b = c.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    return got


MISFRAMED = [
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : "
    b"chunked\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nContent-Length\t: 5\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nX: a\r\n Content-Length: "
    b"5\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nX: \x01\r\nContent-Length: "
    b"5\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\n\r\nContent-Length: 5\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: "
    b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\n",
    b"POST /events/m.x HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\n",
]

# civetweb's own code for each (front off): bad_request for a byte it
# takes for a control byte (HTAB in a name among them), else bad_header.
MISFRAMED_CODE = [b"bad_header", b"bad_header", b"bad_request", b"bad_header",
                  b"bad_request", b"bad_header", b"bad_request",
                  b"bad_header"]


def t_misframed():
    """--http-threads 4: 8 heads civetweb would frame apart from the front
    (blanks before a colon, a folded line, a control byte, LF CR LF, an
    upgrade with a body), each left open: the front answers 400 with the
    JSON error itself (civetweb's code for each, and an X-Request-ID),
    and /readyz then answers at once (no civetweb thread waits for a
    body)."""
    s = serve("misframed", "--http-threads", "4")
    socks = connect(s.port, len(MISFRAMED))
    for c, req in zip(socks, MISFRAMED):
        c.sendall(req)
    bad = []
    for i, c in enumerate(socks):
        got = read_answer(c, T(3))
        want = b'"error":"%s"' % MISFRAMED_CODE[i]
        if not got.startswith(b"HTTP/1.1 400 ") or want not in got or \
                b"\r\nX-Request-ID: " not in got:
            bad.append(f"{i}: want {want!r}: {got[:200]!r}")
    took = probe_ms(s.port)
    close_all(socks)
    check(not bad, "not a 400 from the front: " + "; ".join(bad))
    check(took < 1000 * T(1.5),
          f"/readyz took {took:.0f} ms after 8 misframed requests")
    n = metric_value(s.port, "taskbus_http_front_refused_total")
    check(n == len(MISFRAMED), f"taskbus_http_front_refused_total {n}")
    return f"/readyz {took:.1f} ms after"


def t_upgrade_body():
    """A websocket upgrade with Content-Length: 5 and its 5 bytes: 400
    from the front, and another client's /readyz (on the pooled server
    connection) then answers 200 with its body."""
    s = serve("upgrade-body", "--http-threads", "4")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(MISFRAMED[6] + b"hello")
        got = read_answer(c, T(3))
    check(got.startswith(b"HTTP/1.1 400 "), f"upgrade with body: {got[:60]!r}")
    for _ in range(8):
        r = http_req(s.port, "GET", "/readyz", timeout=T(5))
        check(r.status == 200 and r.body, f"/readyz after: {r.status}")
    return "400, then /readyz 8 of 8"


def cpu_s(pid):
    """Seconds of CPU process pid has used (user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening_ports(pid):
    """The loopback TCP ports process pid listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            col = line.split()
            if col[3] == "0A" and col[9] in inodes:
                ports.add(int(col[1].split(":")[1], 16))
    return ports


def probe_on(c):
    """GET /readyz on the open socket c: the status, or None if the
    connection ended first."""
    c.sendall(PROBE)
    c.settimeout(T(5))
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"}\n") and \
            not got.endswith(b"}"):
        b = c.recv(65536)
        if not b:
            break
        got += b
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", got)
    return int(m.group(1)) if m else None


def t_max_connections():
    """--http-max-connections 4: 4 open connections are served, a 5th is
    closed at once (nothing read from it, nothing answered), and once
    one of the 4 closes a new one is served again."""
    s = serve("max-conns", "--http-max-connections", "4",
              "--http-keepalive-timeout", "60000")
    socks = connect(s.port, 4)
    statuses = [probe_on(c) for c in socks]
    check(statuses == [200] * 4, f"the 4 allowed: {statuses}")
    extra = socket.create_connection((HOST, s.port), T(5))
    check(closed_by_server(extra, T(3)), "the 5th connection stays open")
    extra.close()
    socks.pop().close()
    ok, end = None, time.monotonic() + T(5)
    while time.monotonic() < end and ok != 200:
        with socket.create_connection((HOST, s.port), T(5)) as c:
            try:
                ok = probe_on(c)
            except OSError:
                ok = None
        time.sleep(0.05)
    check(ok == 200, f"after one closed: {ok}")
    close_all(socks)
    time.sleep(0.2)
    n = metric_value(s.port, "taskbus_http_connections_refused_total")
    check(n >= 1, f"taskbus_http_connections_refused_total {n}")
    check("http.max_connections" in s.err_text(), "no log line")
    return f"4 served, the 5th closed; refused {n}"


def t_out_of_fds():
    """ulimit -n 128 and 200 connections: accept fails with EMFILE; the
    front stops accepting for a while after each failure, so it does not
    spin (CPU over 2 s stays under a quarter of that) and logs a bounded
    number of lines; once the clients close it serves again."""
    s = Taskbus("nofile", "--http-threads", "4",
                "--http-keepalive-timeout", "60000",
                "--http-header-timeout", "60000", env=FRONT,
                wrap=("sh", "-c", 'ulimit -n 128 && exec "$@"', "sh")).start()
    t_start = time.monotonic()
    socks = connect(s.port, 200)
    time.sleep(0.5)
    c0 = cpu_s(s.proc.pid)
    time.sleep(2)
    used = cpu_s(s.proc.pid) - c0
    lines = s.err_text().count("accept failed")
    # At most one failure each 100 ms, and 10 lines a second at most.
    bound = 10 * (time.monotonic() - t_start + 1)
    close_all(socks)
    check(used < 0.5 * T(1), f"{used:.2f} s of CPU in 2 s while out of "
                             "descriptors")
    check(1 <= lines <= bound, f"{lines} accept lines (bound {bound:.0f})")
    took = None
    end = time.monotonic() + T(10)
    while time.monotonic() < end:
        try:
            took = probe_ms(s.port)
            break
        except (AssertionError, OSError, http.client.HTTPException):
            time.sleep(0.1)
    check(took is not None, "no /readyz after the clients closed")
    n = metric_value(s.port, "taskbus_http_accept_errors_total")
    check(n >= 1, f"taskbus_http_accept_errors_total {n}")
    return f"{used:.2f} s CPU in 2 s, {lines} log lines, {n} accept errors"


def post_body(port, body):
    """POST /events/b.x with body on a fresh connection: (status, JSON
    error code or None)."""
    r = http_req(port, "POST", "/events/b.x", body=body,
                 headers={"Content-Type": "application/json"},
                 timeout=T(5))
    return r.status, (r.json or {}).get("error")


def t_body_memory():
    """--max-body 4096 --http-body-memory-max 4096: with 4000 bytes of a
    body held, a body of 96 bytes is accepted, one of 97 is 503 busy from
    the front; the held body then completes (202), and 4096 again (the
    bytes held were given back)."""
    s = serve("body-mem", "--max-body", "4096",
              "--http-body-memory-max", "4096")
    body = lambda n: b'{"p":"' + b"a" * (n - 8) + b'"}'  # noqa: E731
    held = body(4096)
    c = socket.create_connection((HOST, s.port), T(5))
    c.sendall(b"POST /events/b.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
              b"application/json\r\nContent-Length: 4096\r\n\r\n" +
              held[:4000])
    time.sleep(0.3)
    got = [post_body(s.port, body(n)) for n in (96, 97)]
    c.sendall(held[4000:])
    first = read_answer(c, T(2))
    c.close()
    got.append(post_body(s.port, body(4096)))
    check(first.startswith(b"HTTP/1.1 202 "), f"the held body: {first[:60]!r}")
    check(got[0][0] == 202 and got[2][0] == 202, f"96, 4096 bytes: {got}")
    check(got[1] == (503, "busy"), f"97 bytes: {got[1]}")
    n = metric_value(s.port, "taskbus_http_front_busy_total")
    check(n == 1, f"taskbus_http_front_busy_total {n}")
    return f"{got}"


def t_body_deadline():
    """--http-body-deadline 1000 with --http-body-timeout 10000: a body
    sent a byte every 0.2 s (never stalling) is closed at the deadline,
    not before half of it."""
    s = serve("body-deadline", "--http-body-deadline", "1000",
              "--http-body-timeout", "10000")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(b"POST /events/d.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 100\r\n\r\n")
        t0 = time.monotonic()
        closed = None
        while time.monotonic() - t0 < T(5):
            try:
                c.sendall(b" ")
            except OSError:
                closed = time.monotonic() - t0
                break
            if closed_by_server(c, 0.2):
                closed = time.monotonic() - t0
                break
    check(closed is not None, "a trickled body was never closed")
    check(closed >= 0.5, f"closed after {closed:.2f} s, before its time")
    n = metric_value(s.port, "taskbus_http_body_timeouts_total")
    check(n == 1, f"taskbus_http_body_timeouts_total {n}")
    check("http.body_deadline_ms" in s.err_text(), "no log line")
    return f"closed after {closed:.2f} s"


def hold_thread(s):
    """A raw connection to civetweb's private port with half a head: it
    holds one of civetweb's threads (not a front connection) until
    closed."""
    ports = listening_ports(s.proc.pid) - {s.port}
    check(len(ports) == 1, f"civetweb's port among {ports}")
    raw = socket.create_connection((HOST, ports.pop()), T(5))
    raw.sendall(b"GET /readyz HTTP/1.1\r\n")
    time.sleep(0.2)
    return raw


def t_queue_timeout():
    """--http-threads 1 --http-queue-timeout 1000: with civetweb's one
    thread held (a raw connection to its private port with half a head),
    a first request waits in civetweb, a second in the front: the
    second is answered 503 busy (not before half the timeout), the
    first 200 once the thread is free."""
    s = serve("queue", "--http-threads", "1", "--http-queue-timeout", "1000",
              "--http-upstream-pool", "0")
    raw = hold_thread(s)
    a = socket.create_connection((HOST, s.port), T(5))
    a.sendall(PROBE)
    time.sleep(0.2)
    t0 = time.monotonic()
    b = socket.create_connection((HOST, s.port), T(5))
    b.sendall(PROBE)
    got = read_answer(b, T(5))
    took = time.monotonic() - t0
    b.close()
    raw.close()
    check(got.startswith(b"HTTP/1.1 503 ") and b'"busy"' in got,
          f"the queued request: {got[:80]!r}")
    check(took >= 0.5, f"503 after {took:.2f} s, before its time")
    a_got = read_answer(a, T(5))
    a.close()
    check(a_got.startswith(b"HTTP/1.1 200 "), f"the first: {a_got[:60]!r}")
    return f"503 after {took:.2f} s"


def t_upgrade_substring():
    """--http-threads 2: civetweb takes "upgrade" anywhere in Connection
    for an upgrade and closes after answering. A long poll with
    "Connection: keep-alive, x-upgrade" is answered with "Connection:
    close"; the requests that waited behind it meanwhile (civetweb's
    other thread held by a raw half head) are all answered, the POST
    once, and the service answers after (no resend that spins). The
    POST must go through civetweb for that (the relay is what is tested),
    so the front does not answer it itself (http.front_answers 0)."""
    s = Taskbus("upgrade-substr", "--http-threads", "2",
                "--http-upstream-pool", "2",
                env={**FRONT, "TASKBUS_HTTP_FRONT_ANSWERS": "0"}).start()
    raw = hold_thread(s)
    lp = socket.create_connection((HOST, s.port), T(5))
    lp.sendall(b"GET /events/u.*?timeout=1 HTTP/1.1\r\nHost: t\r\n"
               b"Connection: keep-alive, x-upgrade\r\n\r\n")
    time.sleep(0.2)
    post = (b"POST /events/u.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
            b"application/json\r\nContent-Length: 2\r\n\r\n{}")
    waiters = connect(s.port, 3)
    for c, req in zip(waiters, (PROBE, PROBE, post)):
        c.sendall(req)
        time.sleep(0.1)
    got = read_answer(lp, T(3))
    lp.close()
    check(got.startswith(b"HTTP/1.1 204 ") and
          b"Connection: close" in got,
          f"the x-upgrade long poll: {got[:120]!r}")
    time.sleep(0.5)
    raw.close()
    answers = []
    for c in waiters:
        c.settimeout(T(5))
        try:
            answers.append(c.recv(65536)[:40])
        except OSError as e:
            answers.append(repr(e).encode())
    close_all(waiters)
    check([a[:13] for a in answers] ==
          [b"HTTP/1.1 200 ", b"HTTP/1.1 200 ", b"HTTP/1.1 202 "],
          f"the waiting requests: {answers}")
    for _ in range(4):
        r = http_req(s.port, "GET", "/readyz", timeout=T(5))
        check(r.status == 200, f"/readyz after: {r.status}")
    return "204 close, then 200 200 202, /readyz 4 of 4"


def t_chunked_trailer():
    """A chunked POST with a trailer (civetweb closes its connection
    after one) and a GET pipelined after it: the GET goes to the server
    connection the POST returned, so both must be answered (202, 200);
    so must later requests."""
    s = serve("trailer", "--http-threads", "2")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(b"POST /events/t.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/json\r\nTransfer-Encoding: chunked\r\n"
                  b"\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n" + PROBE)
        got = b""
        c.settimeout(T(5))
        while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
            b = c.recv(65536)
            if not b:
                break
            got += b
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)
    check(statuses == [b"202", b"200"], f"answers {statuses}, want 202 200")
    for i in range(4):
        r = http_req(s.port, "GET", "/readyz", timeout=T(5))
        check(r.status == 200, f"after: {r.status}")
    return "202 200, then 200 x 4"


def t_gone_while_paused():
    """A long poll with over 8 KiB pipelined after it (the front stops
    reading that client) whose client then leaves: the long poll ends
    (the server sees the end), it does not wait out its timeout."""
    s = serve("gone-paused")
    c = socket.create_connection((HOST, s.port), T(5))
    c.sendall(b"GET /events/g.*?timeout=30 HTTP/1.1\r\nHost: t\r\n\r\n")
    end = time.monotonic() + T(3)
    while time.monotonic() < end and \
            not metric_value(s.port, "taskbus_http_longpolls"):
        time.sleep(0.05)
    c.sendall(b"POST /events/g.x HTTP/1.1\r\nX: " + b"a" * 12000)
    time.sleep(0.3)
    c.close()
    n, end = None, time.monotonic() + T(5)
    while time.monotonic() < end:
        n = metric_value(s.port, "taskbus_http_longpolls")
        if not n:
            break
        time.sleep(0.1)
    check(not n, f"{n} long polls still wait after their client left")
    return "the long poll ended"


def exchange(port, data, answers, within=None):
    """Sends data on one connection and reads until `answers` answers
    (each with its body, by Content-Length) have come or it closes.
    Returns (statuses, bytes read, closed)."""
    within = within or T(5)
    with socket.create_connection((HOST, port), T(5)) as c:
        c.sendall(data)
        c.settimeout(within)
        got, closed = b"", False
        end = time.monotonic() + within
        while time.monotonic() < end:
            if len(answers_in(got)) >= answers:
                break
            try:
                b = c.recv(65536)
            except socket.timeout:
                break
            if not b:
                closed = True
                break
            got += b
    return answers_in(got), got, closed


def answers_in(got):
    """The statuses of the whole answers at the start of got."""
    out = []
    while True:
        m = re.match(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n((?:[^\r\n]+\r\n)*)"
                     rb"\r\n", got)
        if not m:
            return out
        st = int(m.group(1))
        n = re.search(rb"(?im)^content-length: *(\d+)", m.group(2))
        blen = int(n.group(1)) if n and st not in (100, 204, 304) else 0
        if len(got) < m.end() + blen:
            return out
        out.append(st)
        got = got[m.end() + blen:]


def t_head_edges():
    """A request head of exactly 8192 bytes is served, 8193 is 431; 63
    header lines are served, 64 are 431."""
    s = serve("head-edges")
    out = []
    for size, want in ((8192, 200), (8193, 431)):
        base = b"GET /readyz HTTP/1.1\r\nHost: t\r\nX: \r\n\r\n"
        req = base.replace(b"X: ", b"X: " + b"a" * (size - len(base)))
        check(len(req) == size, f"built {len(req)}")
        st, got, _ = exchange(s.port, req, 1)
        check(st[:1] == [want], f"head of {size} bytes: {st} {got[:60]!r}")
        out.append(f"{size}: {want}")
    for lines, want in ((63, 200), (64, 431)):
        req = b"GET /readyz HTTP/1.1\r\nHost: t\r\n" + b"".join(
            b"X%d: v\r\n" % i for i in range(lines - 1)) + b"\r\n"
        st, got, _ = exchange(s.port, req, 1)
        check(st[:1] == [want], f"{lines} header lines: {st} {got[:60]!r}")
        out.append(f"{lines} lines: {want}")
    return ", ".join(out)


def t_keepalive_not_early():
    """--http-keepalive-timeout 1500: an idle connection still serves a
    second request after 0.5 s, and is closed after the timeout (within
    a generous bound)."""
    s = serve("ka-edge", "--http-keepalive-timeout", "1500")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        check(probe_on(c) == 200, "first request")
        time.sleep(0.5)
        check(probe_on(c) == 200, "second request after 0.5 s idle")
        t0 = time.monotonic()
        check(closed_by_server(c, T(5)), "not closed after the timeout")
        took = time.monotonic() - t0
    check(took >= 0.75, f"closed {took:.2f} s after the answer, before "
                        "its time")
    return f"closed after {took:.2f} s idle"


def keepalive_headers(port, req):
    """The Keep-Alive header lines of the answer to req (one request)."""
    _, got, _ = exchange(port, req, 1)
    head = got.split(b"\r\n\r\n", 1)[0]
    return re.findall(rb"(?im)^keep-alive: *([^\r\n]*)", head)


def t_keepalive_header():
    """An answer that keeps its connection says for how long it stays
    idle: Keep-Alive: timeout=S, S the keep-alive timeout in whole seconds
    (rounded down), from civetweb and from the front's own answers, with
    the front off too; an answer that closes has none."""
    post = (b"POST /events/e.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
            b"application/json\r\nContent-Length: 1\r\n\r\n1")
    close = b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    out = []
    for front, ms, want in (("1", "3000", b"timeout=3"),
                            ("1", "1999", b"timeout=1"),
                            ("0", "3000", b"timeout=3")):
        s = Taskbus(f"ka-hdr-{front}-{ms}", "--http-keepalive-timeout", ms,
                    env={"TASKBUS_HTTP_FRONT": front}).start()
        for what, req in (("GET /readyz", PROBE), ("POST /events", post)):
            got = keepalive_headers(s.port, req)
            check(got == [want], f"front {front}, {ms} ms, {what}: "
                                 f"Keep-Alive {got}, want {want}")
        got = keepalive_headers(s.port, close)
        check(got == [], f"front {front}: Connection: close answered with "
                         f"Keep-Alive {got}")
        s.stop_ok()
        out.append(f"front {front} {ms} ms: {want.decode()}")
    return ", ".join(out)


def t_stalled_server():
    """A keep-alive connection whose next request arrives while taskbus
    is stalled (SIGSTOP) past --http-keepalive-timeout 500: after SIGCONT
    the request is answered, not reset (the idle timer and the request's
    bytes become due together)."""
    s = serve("stall", "--http-keepalive-timeout", "500")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        check(probe_on(c) == 200, "first request")
        s.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.0)
            c.sendall(PROBE)
            time.sleep(0.2)
        finally:
            s.proc.send_signal(signal.SIGCONT)
        c.settimeout(T(5))
        got = b""
        try:
            while b"\r\n\r\n" not in got:
                b = c.recv(65536)
                if not b:
                    break
                got += b
        except ConnectionResetError:
            got = b"reset"
        check(got.startswith(b"HTTP/1.1 200 "),
              f"request sent while stalled: {got[:60]!r}, want a 200")
    return "answered after the stall"


def t_protocol_edges():
    """Through the front: a GET pipelined after a chunked body; HTTP/1.0
    with and without keep-alive; Expect: 100-continue (one 100, then the
    answer); HEAD (no body, the connection goes on); 204 (a long poll's
    timeout, then another request on the connection)."""
    s = serve("protocol-edges")
    st, _, _ = exchange(s.port, b"POST /events/e.x HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Type: application/json\r\nTransfer-Encoding:"
                        b" chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + PROBE, 2)
    check(st == [202, 200], f"pipelined after chunked: {st}")
    h10 = b"GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    st, got, _ = exchange(s.port, h10 + h10, 2)
    check(st == [200, 200], f"HTTP/1.0 keep-alive: {st}")
    st, got, closed = exchange(s.port, b"GET /readyz HTTP/1.0\r\n\r\n", 2,
                               T(3))
    check(st == [200] and closed, f"HTTP/1.0: {st} closed={closed}")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(b"POST /events/e.x HTTP/1.1\r\nHost: t\r\nContent-Type: "
                  b"application/json\r\nContent-Length: 2\r\nExpect: "
                  b"100-continue\r\n\r\n")
        c.settimeout(T(5))
        first = c.recv(65536)
        check(first.startswith(b"HTTP/1.1 100 "), f"expect: {first[:40]!r}")
        c.sendall(b"{}")
        got = first
        while len(answers_in(got)) < 2:
            b = c.recv(65536)
            if not b:
                break
            got += b
    check(answers_in(got) == [100, 202], f"expect: {answers_in(got)}")
    st, got, _ = exchange(s.port, b"HEAD /readyz HTTP/1.1\r\nHost: t\r\n"
                          b"\r\n" + PROBE, 2)
    # HEAD's Content-Length describes a body that is not sent.
    check(got.startswith(b"HTTP/1.1 200 ") and got.count(b"HTTP/1.1 ") == 2,
          f"HEAD then GET: {got[:200]!r}")
    st, got, _ = exchange(s.port, b"GET /events/e.none?timeout=1 HTTP/1.1\r\n"
                          b"Host: t\r\n\r\n" + PROBE, 2, T(10))
    check(st == [204, 200], f"204 then GET: {st} {got[:120]!r}")
    return "all answered"


def t_front_off():
    """--http-front 0: civetweb listens itself, and answers."""
    s = Taskbus("front-off", env={"TASKBUS_HTTP_FRONT": "0"}).start()
    check(http_req(s.port, "GET", "/readyz").status == 200, "no answer")


CASES = [
    ("slow", f"{N} slow-header connections: /readyz answers, all closed "
     "at the header timeout", t_slow_headers),
    ("slow", "--http-header-timeout 1000: from the first byte, at the edge",
     t_header_timeout_edge),
    ("slow", f"{N} slow bodies: /readyz answers, bodies accepted once "
     "whole", t_slow_body),
    ("slow", "--http-body-timeout 1000: a stalled body is closed",
     t_body_timeout_edge),
    ("idle", f"{N} idle keep-alive connections: /readyz answers, closed "
     "at the keep-alive timeout", t_idle_keepalive),
    ("vanish", "clients gone mid-head, mid-body, mid-response",
     t_vanish),
    ("pipeline", "pipelined requests answered in order", t_pipelined),
    ("431", "a head over 8192 bytes: 431 read by http.client and curl",
     t_431_readable),
    ("pool", "--http-upstream-pool 0 and over http-threads", t_pool_edges),
    ("misframed", "8 misframed heads with --http-threads 4: 400 from the "
     "front, /readyz at once", t_misframed),
    ("upgrade", "an upgrade with a body: 400, the pool stays clean",
     t_upgrade_body),
    ("conns", "--http-max-connections 4: the 5th closed at once",
     t_max_connections),
    ("conns", "ulimit -n 128, 200 connections: no spin, bounded log, "
     "serves after", t_out_of_fds),
    ("memory", "--http-body-memory-max 4096: 4096 held in all, 4097 503",
     t_body_memory),
    ("deadline", "--http-body-deadline 1000: a trickled body is closed",
     t_body_deadline),
    ("queue", "--http-queue-timeout 1000: a request waiting for a thread "
     "is 503", t_queue_timeout),
    ("upgrade", "Connection: keep-alive, x-upgrade: close, waiters "
     "answered", t_upgrade_substring),
    ("trailer", "a chunked POST with a trailer, then requests on the pool",
     t_chunked_trailer),
    ("vanish", "a client gone while its pipelined bytes wait: its long "
     "poll ends", t_gone_while_paused),
    ("edges", "head of 8192/8193 bytes, 63/64 header lines", t_head_edges),
    ("edges", "--http-keepalive-timeout: not before its time",
     t_keepalive_not_early),
    ("edges", "Keep-Alive: timeout= from the setting, none on close",
     t_keepalive_header),
    ("edges", "chunked then pipelined, HTTP/1.0, 100-continue, HEAD, 204",
     t_protocol_edges),
    ("edges", "a request sent while taskbus was stalled is answered",
     t_stalled_server),
    ("off", "--http-front 0 still serves", t_front_off),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    return tbharness.run_suite("slow_suite", "taskbus-slowtest.", runner,
                               lambda: runner.run_cases(CASES))


if __name__ == "__main__":
    sys.exit(main())
