#!/usr/bin/python3
"""front_events_suite.py - the HTTP front answers POST /events/{name} and
POST /events itself (http.front_answers, issue 13 point 1): the answers
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


def mint(claims):
    return hs256_token(SECRET, claims)


def serve(name, answers, *args, env=None):
    e = {"TASKBUS_HTTP_FRONT_ANSWERS": "1" if answers else "0"}
    e.update(env or {})
    return Taskbus(name, "--token", ADMIN, "--jwt-secret", SECRET,
                   "--max-event-size", str(MAX_EVENT), "--max-body",
                   str(MAX_BODY), *args, env=e).start()


def read_answers(sock, n, timeout):
    """n HTTP answers read off sock: [(status line, [(name, value)], body,
    raw head)], fewer if the connection ends first."""
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
            clen = int(dict((k.lower(), v) for k, v in hdrs)
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
        return read_answers(s, n, timeout or T(5))


# An id this server made (an event's, or a request's): they differ from
# one server to the other.
IDS = re.compile(r"\b[0-9a-f]{16}-h?[0-9a-f]+\b")


def norm(answer):
    status, hdrs, body = answer
    return (status, [(k, IDS.sub("ID", v)) for k, v in hdrs],
            IDS.sub("ID", body.decode("utf-8", "replace")))


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
    ]


def t_same_answers():
    """Every request of the table, on its own connection, to a server
    whose front answers and to one whose front relays to civetweb: the
    same status line, headers and JSON (ids aside); the front's counter
    counts the POSTs it took, the other's stays 0."""
    on, off = serve("on", True), serve("off", False)
    rows = table()
    taken = 0
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
                                       "escaped")):
            taken += 1
    got_on, got_off = answered(on.port), answered(off.port)
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


def redis_pair(answers, timeout_ms="1000"):
    r = Redis("redis").start()
    case_servers().append(r)
    s = serve("redis", answers, "--redis-url", r.url(),
              "--redis-command-timeout", timeout_ms)
    return r, s


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
    (a POST, a batch, a pipelined pair), then Redis answers: the service
    answers POSTs and /healthz, and exits cleanly (no sanitizer report)."""
    r, s = redis_pair(True, "3000")
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        for raw in (post("/events/v.x", b"1"),
                    post("/events", b'[{"name":"v.a"},{"name":"v.b"}]'),
                    post("/events/v.y", b"1") + post("/events/v.z", b"2")):
            c = socket.create_connection((HOST, s.port), T(5))
            c.sendall(raw)
            time.sleep(0.1)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()  # a reset
        time.sleep(0.3)
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    for i in range(5):
        got = exchange(s.port, post("/events/v.after", b"%d" % i))
        check(got and got[0][0].startswith("HTTP/1.1 202 "),
              f"POST {i} after the clients left: {got!r}")
    check(http_req(s.port, "GET", "/healthz").status == 200, "/healthz")
    s.stop_ok()
    return "5 of 5 answered after, clean exit"


def t_stop_in_flight():
    """SIGTERM while a POST waits for a stalled Redis: it is answered (503
    shutting_down, or 504) or its connection closed, and taskbus exits 0
    in time, without a sanitizer report."""
    r, s = redis_pair(True, "5000")
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
    check(not got or got[0][0].split()[1] in ("503", "504"),
          f"the POST in flight: {got!r}")
    return (f"{got[0][0] if got else 'closed'}, exit 0 after "
            f"{took:.2f} s")


def t_switch_off():
    """http.front_answers 0: the front relays the POSTs (its counter stays
    0) and they are answered 202."""
    s = serve("off", False)
    for i in range(3):
        got = exchange(s.port, post("/events/o.x", b"%d" % i))
        check(got and got[0][0].startswith("HTTP/1.1 202 "), f"{got!r}")
    check(answered(s.port) == 0, "counted")
    return "relayed"


CASES = [
    ("same", "a table of good and bad requests: the front's answers are "
     "civetweb's", t_same_answers),
    ("pipeline", "50 pipelined POSTs answered in order", t_pipelined),
    ("redis", "Redis stalled: 504; gone: 503; front and relay alike",
     t_redis_down),
    ("vanish", "clients gone while their publish waits: the service "
     "answers", t_vanish),
    ("stop", "SIGTERM with a publish in flight: clean exit", t_stop_in_flight),
    ("off", "http.front_answers 0 relays", t_switch_off),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    return tbharness.run_suite("front_events_suite", "taskbus-frontev.",
                               runner, lambda: runner.run_cases(CASES))


if __name__ == "__main__":
    sys.exit(main())
