#!/usr/bin/python3
"""front_events_suite.py - the HTTP front answers POST /events/{name},
POST /events and GET (HEAD) /healthz itself (http.front_answers, issue 13
points 1 and 8): the answers
are the same as civetweb's, byte for byte where a client can see them (a
table of good and bad requests sent to a server with the switch on and
one with it off); /metrics shows the front answered them; pipelined POSTs
are answered in order; a client that leaves while its publish waits for
a stalled Redis leaves the service answering; a stalled Redis is 504
publish_timeout and a stopped one 503 bus_down, as relayed; a publish in
flight at SIGTERM ends cleanly.

Each case starts its own `taskbus serve` processes (and redis-server) on
free 127.0.0.1 ports. CTest runs it as integration_front_events; by hand:
TASKBUS_BIN=build/taskbus /usr/bin/python3 \\
    tests/integration/front_events_suite.py [WORD...]
"""

import json
import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (HOST, Redis, T, Taskbus, case_servers,  # noqa: E402
                       check, hs256_token, http_req)

ADMIN = "front-events-admin-t0ken"
SECRET = "front-events-suite-secret-0123456789ab"
MAX_EVENT = 64   # --max-event-size
MAX_BODY = 4096  # --max-body
ANSWERED = "taskbus_http_front_answered_total"


def answered(port):
    """The front's count of POSTs it answered, from /metrics."""
    r = http_req(port, "GET", "/metrics", None,
                 {"Authorization": f"Bearer {ADMIN}"})
    check(r.status == 200, f"GET /metrics: {r.status}")
    for line in r.body.decode().splitlines():
        if line.startswith(ANSWERED + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {ANSWERED} in /metrics")


def requests_by_status(port, status):
    """taskbus_http_requests_total summed over routes and methods for one
    status, from /metrics."""
    r = http_req(port, "GET", "/metrics", None,
                 {"Authorization": f"Bearer {ADMIN}"})
    check(r.status == 200, f"GET /metrics: {r.status}")
    n = 0.0
    for line in r.body.decode().splitlines():
        if (line.startswith("taskbus_http_requests_total{") and
                f'status="{status}"' in line):
            n += float(line.split()[-1])
    return n


def mint(claims):
    return hs256_token(SECRET, claims)


def serve(name, answers, *args, env=None):
    e = {"TASKBUS_HTTP_FRONT_ANSWERS": "1" if answers else "0"}
    e.update(env or {})
    return Taskbus(name, "--token", ADMIN, "--jwt-secret", SECRET,
                   "--max-event-size", str(MAX_EVENT), "--max-body",
                   str(MAX_BODY), *args, env=e).start()


def read_answers(sock, n, timeout, head=False):
    """n HTTP answers read off sock: [(status line, [(name, value)], body,
    raw head)], fewer if the connection ends first. head: answers to HEAD
    (a Content-Length, no body)."""
    sock.settimeout(timeout)
    buf, out = b"", []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            lines = buf[:i].decode("latin-1").split("\r\n")
            if lines[0].startswith("HTTP/1.1 100 "):
                buf = buf[i + 4:]
                continue
            hdrs = [tuple(x.strip() for x in ln.split(":", 1))
                    for ln in lines[1:]]
            clen = 0 if head else int(dict((k.lower(), v) for k, v in hdrs)
                                      .get("content-length", "0"))
            if len(buf) >= i + 4 + clen:
                out.append((lines[0], hdrs, buf[i + 4:i + 4 + clen]))
                buf = buf[i + 4 + clen:]
                continue
        try:
            got = sock.recv(65536)
        except socket.timeout:
            break
        if not got:
            break
        buf += got
    return out


def exchange(port, raw, n=1, timeout=None):
    with socket.create_connection((HOST, port), T(5)) as s:
        s.sendall(raw)
        return read_answers(s, n, timeout or T(5), raw.startswith(b"HEAD "))


# An id this server made (an event's, or a request's): they differ from
# one server to the other.
IDS = re.compile(r"\b[0-9a-f]{16}-h?[0-9a-f]+\b")


# How long ago a token expired: the two servers are asked a moment apart,
# and a second may pass between them (ASan builds are slow).
AGO = re.compile(r"\b\d+ s ago\b")


def norm(answer):
    """An answer as the comparison sees it: ids and ages replaced, and
    Content-Length checked against the body, then replaced too (an id's
    sequence number may have one more digit on one server: events of its
    own, such as instance heartbeats, take numbers)."""
    status, hdrs, body = answer
    for k, v in hdrs:
        if k.lower() == "content-length" and body:  # (HEAD: no body)
            check(int(v) == len(body), f"Content-Length {v} for a body of "
                                       f"{len(body)} bytes: {status}")
    text = IDS.sub("ID", body.decode("utf-8", "replace"))
    return (status,
            [(k, "N" if k.lower() == "content-length" else IDS.sub("ID", v))
             for k, v in hdrs],
            AGO.sub("N s ago", text))


def post(path, body=b"", token=ADMIN, extra=(), version="1.1",
         ctype="application/json"):
    head = [f"POST {path} HTTP/{version}", "Host: t"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    if ctype:
        head.append(f"Content-Type: {ctype}")
    head += list(extra)
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def probe(path="/healthz", method="GET", extra=(), version="1.1",
          body=None):
    head = [f"{method} {path} HTTP/{version}", "Host: t"] + list(extra)
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


def table():
    now = int(time.time())
    may_a = mint({"sub": "c", "exp": now + 600, "dispatch": ["a.*"]})
    expired = mint({"sub": "c", "exp": now - 600, "dispatch": ["a.*"]})
    nd = b'{"name":"a.x","data":1}\n{"name":"a.y","data":"s"}\n'
    return [
        ("202, 128 bytes", post("/events/a.x", b"x" * MAX_EVENT)),
        ("202, empty body", post("/events/a.x", b"", ctype=None)),
        ("202, own X-Request-ID", post("/events/a.x", b"{}",
                                       extra=["X-Request-ID: my-req-1"])),
        ("202, ?token=", post("/events/a.x?token=" + ADMIN, b"1",
                              token=None)),
        ("202, HTTP/1.0", post("/events/a.x", b"1", version="1.0")),
        ("202, HTTP/1.0 keep-alive", post("/events/a.x", b"1",
                                          version="1.0", extra=[
                                              "Connection: keep-alive"])),
        ("202, Connection: close", post("/events/a.x", b"1",
                                        extra=["Connection: close"])),
        ("202, Connection: TE", post("/events/a.x", b"1",
                                     extra=["Connection: TE"])),
        ("202, Expect: 100-continue", post("/events/a.x", b"1", extra=[
            "Expect: 100-continue"])),
        ("202, data at max_event_size", post("/events/a.x",
                                             b"y" * MAX_EVENT)),
        ("413 too_large, data over max_event_size",
         post("/events/a.x", b"y" * (MAX_EVENT + 1))),
        ("413 too_large, body over max_body",
         post("/events/a.x", b"z" * (MAX_BODY + 1))),
        ("401 no token", post("/events/a.x", b"1", token=None)),
        ("401 wrong token", post("/events/a.x", b"1", token="nope")),
        ("401 expired client token", post("/events/a.x", b"1",
                                          token=expired)),
        ("401 another scheme", post("/events/a.x", b"1", token=None,
                                    extra=["Authorization: Basic eDp5"])),
        ("401 before 404", post("/events/a/b", b"1", token=None)),
        ("202 client token", post("/events/a.x", b"1", token=may_a)),
        ("403 client token", post("/events/b.x", b"1", token=may_a)),
        ("400 bad_name", post("/events/a..x", b"1")),
        ("400 bad_name, escaped", post("/events/a%2Ex%00", b"1")),
        ("400 bad_data", post("/events/a.x", b"\xff\xfe")),
        ("404 deeper path", post("/events/a/b", b"1")),
        ("batch 202 NDJSON", post("/events", nd,
                                  ctype="application/x-ndjson")),
        ("batch 202 array", post("/events", b'[{"name":"a.z"}]')),
        ("batch 202 sniffed", post("/events", nd, ctype=None)),
        ("batch 400 bad item", post("/events", b'{"name":"a.x"}\n'
                                    b'{"name":"a..y"}\n',
                                    ctype="application/x-ndjson")),
        ("batch 413 item too large", post(
            "/events", json.dumps([{"name": "a.x",
                                    "data": "q" * (MAX_EVENT + 1)}])
            .encode())),
        ("batch 415", post("/events", nd, ctype="text/plain")),
        ("batch 403 client token", post("/events",
                                        b'[{"name":"a.x"},{"name":"b.x"}]',
                                        token=may_a)),
        ("batch 401", post("/events", nd, token=None)),
        ("batch 400 not JSON", post("/events", b"[{", ctype=None)),
        ("healthz 200", probe()),
        ("healthz 200 HEAD", probe(method="HEAD")),
        ("healthz 200 ?verbose=1", probe("/healthz?verbose=1")),
        ("healthz 200 HTTP/1.0", probe(version="1.0")),
        ("healthz 200 HTTP/1.0 keep-alive", probe(version="1.0", extra=[
            "Connection: keep-alive"])),
        ("healthz 200 Connection: close", probe(extra=[
            "Connection: close"])),
        ("healthz 200 own X-Request-ID", probe(extra=[
            "X-Request-ID: my-probe-1"])),
        ("healthz 200 with a wrong token (open)", probe(extra=[
            "Authorization: Bearer nope"])),
        ("healthz with a body: relayed", probe(body=b"x")),
        ("healthz 405 POST: relayed", probe(method="POST", body=b"")),
        ("healthz 405 DELETE: relayed", probe(method="DELETE")),
        ("healthz 404 /healthzz: relayed", probe("/healthzz")),
    ]


def t_same_answers():
    """Every request of the table, on its own connection, to a server
    whose front answers and to one whose front relays to civetweb: the
    same status line, headers and JSON (ids aside); the front's counter
    counts the POSTs it took, the other's stays 0."""
    on, off = serve("on", True), serve("off", False)
    rows = table()
    taken = 0
    before = answered(on.port)  # the harness's own /healthz at start
    for what, raw in rows:
        a = exchange(on.port, raw)
        b = exchange(off.port, raw)
        check(len(a) == 1 and len(b) == 1,
              f"{what}: answers {a!r} / {b!r}")
        check(norm(a[0]) == norm(b[0]),
              f"{what}: the front's answer differs from civetweb's:\n"
              f"  front: {norm(a[0])!r}\n  relay: {norm(b[0])!r}")
        # Relayed: a body over max_body (civetweb's 413 and lingering
        # close), and paths no asynchronous route matches (a deeper path,
        # an escaped NUL the router refuses).
        if not any(w in what for w in ("max_body", "deeper", "before 404",
                                       "escaped", "relayed")):
            taken += 1
    got_on, got_off = answered(on.port) - before, answered(off.port)
    check(got_on == taken and got_off == 0,
          f"{ANSWERED}: {got_on} on the front that answers (want {taken}),"
          f" {got_off} on the one that relays (want 0)")
    return f"{len(rows)} requests alike, {taken} answered by the front"


def t_pipelined():
    """50 POSTs in one write, one of them bad: 50 answers in the order
    sent (each names its event), the bad one 400 in its place, and the
    connection still serves."""
    s = serve("pipe", True)
    reqs = []
    for i in range(50):
        name = "p..bad" if i == 17 else f"p.n{i}"
        reqs.append(post(f"/events/{name}", b'{"i":%d}' % i))
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(b"".join(reqs))
        got = read_answers(c, 50, T(10))
        c.sendall(post("/events/p.after", b"1"))
        after = read_answers(c, 1, T(5))
    check(len(got) == 50, f"{len(got)} answers of 50")
    for i, (st, _, body) in enumerate(got):
        if i == 17:
            check(st.startswith("HTTP/1.1 400 ") and b"bad_name" in body,
                  f"answer {i}: {st} {body[:80]!r}")
        else:
            check(st.startswith("HTTP/1.1 202 ") and
                  json.loads(body)["name"] == f"p.n{i}",
                  f"answer {i}: {st} {body[:80]!r}, want p.n{i}")
    check(after and after[0][0].startswith("HTTP/1.1 202 "),
          f"after the 50: {after!r}")
    return "50 in order, the 51st too"


def redis_pair(answers, timeout_ms="1000", *args):
    r = Redis("redis").start()
    case_servers().append(r)
    s = serve("redis", answers, "--redis-url", r.url(),
              "--redis-command-timeout", timeout_ms, *args)
    return r, s


def reset(raw, port):
    """Sends raw, then resets the connection: a client that leaves."""
    c = socket.create_connection((HOST, port), T(5))
    c.sendall(raw)
    time.sleep(0.1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()


def monitor(r):
    """A socket in MONITOR mode on Redis r: every command it runs from
    now on, read with monitored()."""
    m = socket.create_connection((HOST, r.port), T(5))
    m.sendall(b"MONITOR\r\n")
    m.settimeout(T(5))
    check(m.recv(16).startswith(b"+OK"), "MONITOR")
    return m


def monitored(m, quiet):
    """What m has seen until it stays quiet for `quiet` seconds."""
    m.settimeout(quiet)
    buf = b""
    while True:
        try:
            got = m.recv(65536)
        except socket.timeout:
            return buf
        if not got:
            return buf
        buf += got


def t_redis_down():
    """The Redis bus, front answering and relaying: Redis stalled
    (SIGSTOP): a POST and a batch are 504 publish_timeout after
    redis.command_timeout_ms, with the same JSON either way; Redis gone:
    503 bus_down either way."""
    seen = {}
    for answers in (True, False):
        r, s = redis_pair(answers)
        check(http_req(s.port, "POST", "/events/r.x", b"1",
                       {"Authorization": f"Bearer {ADMIN}"}).status == 202,
              "POST with Redis up")
        os.kill(r.proc.pid, signal.SIGSTOP)
        try:
            one = exchange(s.port, post("/events/r.x", b"1"), timeout=T(10))
            many = exchange(s.port, post("/events", b'[{"name":"r.a"},'
                                         b'{"name":"r.b"}]'), timeout=T(10))
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        check(one and one[0][0].startswith("HTTP/1.1 504 ") and
              b'"publish_timeout"' in one[0][2],
              f"answers={answers}: POST with Redis stalled: {one!r}")
        check(many and many[0][0].startswith("HTTP/1.1 504 ") and
              b'"status"' in many[0][2],
              f"answers={answers}: batch with Redis stalled: {many!r}")
        r.stop()
        time.sleep(0.3)
        down = exchange(s.port, post("/events/r.x", b"1"))
        check(down and down[0][0].startswith("HTTP/1.1 503 ") and
              b'"bus_down"' in down[0][2],
              f"answers={answers}: POST with Redis gone: {down!r}")
        seen[answers] = [norm(x[0]) for x in (one, many, down)]
        s.stop_ok()
    # The messages name ids (masked) and the same timeout: alike.
    check(seen[True] == seen[False],
          f"front vs relay with Redis down:\n{seen[True]!r}\n{seen[False]!r}")
    return "504, 504, 503 alike"


def t_vanish():
    """Clients that leave while their publish waits for a stalled Redis
    (a POST, batches as many as core.batch_max_concurrent, a pipelined
    pair): their batch slots are free at once (a new batch, Redis still
    stalled, is 504 publish_timeout, not 503 busy); then Redis answers:
    the service answers POSTs and /healthz, and exits cleanly (no
    sanitizer report)."""
    r, s = redis_pair(True, "1000", "--batch-max-concurrent", "2")
    batch = post("/events", b'[{"name":"v.a"},{"name":"v.b"}]')
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        for raw in (post("/events/v.x", b"1"), batch, batch,
                    post("/events/v.y", b"1") + post("/events/v.z", b"2")):
            reset(raw, s.port)
        time.sleep(0.3)
        late = exchange(s.port, batch, timeout=T(10))
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    check(late and late[0][0].startswith("HTTP/1.1 504 ") and
          b'"publish_timeout"' in late[0][2],
          f"a batch after 2 batches' clients left: {late!r}")
    # The four that left with a publish out are 499 (client gone), not 504
    # bus timeouts (the pipelined pair's second never started): only the
    # late batch above was a 504.
    gone, timeouts = requests_by_status(s.port, 499), \
        requests_by_status(s.port, 504)
    check(gone == 4 and timeouts == 1,
          f"metrics: {gone} answered 499, {timeouts} 504 (want 4 and 1)")
    # The stall may have cost the bus its link (503 bus_down while it
    # reconnects): the first 202 within 10 s, then 5 in a row.
    end = time.monotonic() + T(10)
    while time.monotonic() < end:
        got = exchange(s.port, post("/events/v.again", b"1"))
        if got and got[0][0].startswith("HTTP/1.1 202 "):
            break
        time.sleep(0.1)
    for i in range(5):
        got = exchange(s.port, post("/events/v.after", b"%d" % i))
        check(got and got[0][0].startswith("HTTP/1.1 202 "),
              f"POST {i} after the clients left: {got!r}")
    check(http_req(s.port, "GET", "/healthz").status == 200, "/healthz")
    s.stop_ok()
    return "5 of 5 answered after, clean exit"


def t_stop_in_flight():
    """SIGTERM while a POST waits for a stalled Redis (its PUBLISH is in
    Redis's socket): the bus outlives the front, so the POST gets its
    real outcome, 504 publish_timeout ("may still be published") after
    redis.command_timeout_ms with Connection: close, never 503
    shutting_down ("nothing dispatched"): Redis, resumed, runs the
    PUBLISH (MONITOR sees it). taskbus exits 0 in time, without a
    sanitizer report."""
    r, s = redis_pair(True, "2000")
    m = monitor(r)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        c = socket.create_connection((HOST, s.port), T(5))
        c.sendall(post("/events/s.x", b"1"))
        time.sleep(0.2)
        s.kill_with(signal.SIGTERM)
        got = read_answers(c, 1, T(10))
        c.close()
        took = s.stop_ok(within=T(15))
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    published = b"s.x" in monitored(m, T(1))
    m.close()
    check(got, "the POST in flight: no answer")
    status, hdrs, body = got[0]
    check(not (status.split()[1] == "503" and published),
          f"answered {status} {body!r}, and published after")
    check(status.startswith("HTTP/1.1 504 ") and
          b'"publish_timeout"' in body and
          ("Connection", "close") in hdrs,
          f"the POST in flight: {got!r}")
    return (f"{status}, published after: {published}, exit 0 after "
            f"{took:.2f} s")


def t_in_flight_max():
    """At most http.threads POSTs wait for the bus in the front (the bus
    holds a copy of each one's data, also when the client has left):
    with Redis stalled and 3 threads, 2 POSTs whose clients reset and a
    third are the front's (taskbus_http_front_answered_total), the 4th
    is relayed; the two kept are answered 202 once Redis is back."""
    r, s = redis_pair(True, "5000", "--http-threads", "3")
    base = answered(s.port)
    os.kill(r.proc.pid, signal.SIGSTOP)
    socks = []
    try:
        for i in range(2):
            reset(post("/events/c.gone", b"%d" % i), s.port)
        for i in range(2):
            socks.append(socket.create_connection((HOST, s.port), T(5)))
            socks[-1].sendall(post("/events/c.x", b"%d" % i))
            time.sleep(0.2)
        mid = answered(s.port)
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    got = [read_answers(c, 1, T(10)) for c in socks]
    for c in socks:
        c.close()
    check(mid - base == 3, f"front-answered in flight: {mid - base}, not 3")
    check(all(g and g[0][0].startswith("HTTP/1.1 202 ") for g in got),
          f"answers: {got!r}")
    return "3 in the front (2 gone), the 4th relayed, 2 x 202"


def t_body_memory():
    """A POST waiting for the bus still counts its body in
    http.body_memory_max: with Redis stalled and 4096 bytes for all, a
    3000-byte batch waits, a second one is 503 at once (the front's
    memory refusal), and the first is 202 once Redis is back."""
    r, s = redis_pair(True, "5000", "--http-body-memory-max", "4096")
    one = b'[{"name":"m.x"}'
    body = one + b" " * (3000 - len(one) - 1) + b"]"
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        c = socket.create_connection((HOST, s.port), T(5))
        c.sendall(post("/events", body))
        time.sleep(0.2)
        second = exchange(s.port, post("/events", body))
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    first = read_answers(c, 1, T(10))
    c.close()
    check(second and second[0][0].startswith("HTTP/1.1 503 ") and
          b"body_memory_max" in second[0][2], f"the second: {second!r}")
    check(first and first[0][0].startswith("HTTP/1.1 202 "),
          f"the first: {first!r}")
    return "held while waiting: the second 503"


def t_batch_body_max():
    """http.front_batch_max_body: a batch body of exactly that many bytes
    is the front's, one byte more is relayed; both are answered 202."""
    one = b'[{"name":"b.x"}'
    body = one + b" " * (100 - len(one) - 1) + b"]"
    check(len(body) == 100, "body")
    s = serve("batchmax", True, "--http-front-batch-max-body", "100")
    seen = []
    for b in (body, body + b" "):
        before = answered(s.port)
        got = exchange(s.port, post("/events", b))
        check(got and got[0][0].startswith("HTTP/1.1 202 "),
              f"{len(b)} bytes: {got!r}")
        seen.append(answered(s.port) - before)
    check(seen == [1, 0], f"front-answered at 100, 101 bytes: {seen}")
    return "100 bytes: front; 101: relayed"


def t_switch_off():
    """http.front_answers 0: the front relays the POSTs (its counter stays
    0) and they are answered 202."""
    s = serve("off", False)
    for i in range(3):
        got = exchange(s.port, post("/events/o.x", b"%d" % i))
        check(got and got[0][0].startswith("HTTP/1.1 202 "), f"{got!r}")
    check(answered(s.port) == 0, "counted")
    return "relayed"


def t_healthz():
    """GET and HEAD /healthz answered by the front: a HEAD's answer has
    Content-Length and no body (a GET pipelined after it is read
    whole); 50 pipelined probes answered in order; 200 clients that send
    a probe and vanish (half of them with a reset) leave the service
    answering; every one counted as the front's."""
    s = serve("healthz", True)
    before = answered(s.port)
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(probe(method="HEAD") + probe())
        c.settimeout(T(5))
        got = b""
        while got.count(b"\r\n\r\n") < 2 or not got.endswith(b"}"):
            b = c.recv(65536)
            if not b:
                break
            got += b
    first, rest = got.split(b"\r\n\r\n", 1)
    check(b"Content-Length: 27\r\n" in first + b"\r\n" and
          rest.startswith(b"HTTP/1.1 200 OK\r\n"),
          f"HEAD then GET on one connection: {got!r}")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(b"".join(probe(extra=[f"X-Request-ID: p{i}"])
                           for i in range(50)))
        ans = read_answers(c, 50, T(10))
    ids = [dict(h).get("X-Request-ID") for _, h, _ in ans]
    check(ids == [f"p{i}" for i in range(50)] and
          all(st.startswith("HTTP/1.1 200 ") for st, _, _ in ans),
          f"50 pipelined probes: {len(ans)} answers, ids {ids[:5]}...")
    for i in range(200):
        c = socket.create_connection((HOST, s.port), T(5))
        if i % 2:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.sendall(probe())
        c.close()
    r = http_req(s.port, "GET", "/healthz")
    check(r.status == 200 and json.loads(r.body)["status"] == "ok",
          f"/healthz after 200 vanished probes: {r.status} {r.body!r}")
    got = answered(s.port) - before
    # The vanished ones the front read before they left (most of them).
    check(52 <= got <= 253, f"{ANSWERED} went up by {got}")
    s.stop_ok()
    return f"HEAD bodyless, 50 in order, {got:.0f} counted"


CASES = [
    ("same", "a table of good and bad requests: the front's answers are "
     "civetweb's", t_same_answers),
    ("pipeline", "50 pipelined POSTs answered in order", t_pipelined),
    ("redis", "Redis stalled: 504; gone: 503; front and relay alike",
     t_redis_down),
    ("vanish", "clients gone while their publish waits: the service "
     "answers", t_vanish),
    ("stop", "SIGTERM with a publish in flight: 504, clean exit",
     t_stop_in_flight),
    ("inflight", "http.threads front POSTs in flight, then relayed",
     t_in_flight_max),
    ("bodymem", "a POST waiting for the bus counts in body_memory_max",
     t_body_memory),
    ("batchmax", "http.front_batch_max_body at its edge", t_batch_body_max),
    ("off", "http.front_answers 0 relays", t_switch_off),
    ("healthz", "GET and HEAD /healthz in the front: HEAD bodyless, "
     "pipelined, vanishing probes", t_healthz),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    return tbharness.run_suite("front_events_suite", "taskbus-frontev.",
                               runner, lambda: runner.run_cases(CASES))


if __name__ == "__main__":
    sys.exit(main())
