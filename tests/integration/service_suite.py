#!/usr/bin/python3
"""service_suite.py - the taskbus binary end to end, as an operator checks it.

Covers what `taskbus serve` promises on its command line and at run time:
--version/--help, every TASKBUS_* variable, bad values refused with exit 2
and a message naming the flag or variable, flags winning over variables,
the start log line without secrets (API token from a file, a Redis URL with
a password against a real redis-server with requirepass), JSON logs and log
levels, the client commands (dispatch, watch, tasks, healthcheck) and their
exit codes, and graceful shutdown on SIGTERM and SIGINT: /readyz 503 during
--shutdown-delay, websockets closed 1001, tasks cancelled, a second signal
exiting at once, and no event lost that was answered 202 while stopping
(two instances on one Redis).

Runs the real binary ($TASKBUS_BIN) on free 127.0.0.1 ports, a throwaway
redis-server in a mktemp -d directory, http.client, the websockets client
(python3-websockets) and the binary's own client commands. The helpers
it shares with the other suites (processes, temp directory, HTTP,
redis-server, the start of a taskbus, the main loop) are in tbharness.py,
beside it.

Prints "PASS name" or "FAIL name: reason" per case and exits 1 if any
failed. Every wait has a timeout, stretched for sanitizer builds; a
watchdog ends the suite after HARD_CAP_S. Every taskbus a case starts must
exit 0 on SIGTERM with no sanitizer report, or the case fails with the
log's tail. Everything started is stopped: try/finally per case, atexit,
SIGKILL on our death (PR_SET_PDEATHSIG), a reaper for the temp directory.

Usage: service_suite.py [WORD...]  runs only the cases whose group or name
contains one of the words (all when none are given).
"""

import asyncio
import base64
import http.client
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import websockets
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import tbharness  # noqa: E402 (after the path it is found on)
from tbharness import (H, HOST, STOP_TIMEOUT_S, Redis, T,  # noqa: E402
                       Taskbus, check, child_env, die_with_parent, end_proc,
                       free_port, http_req, instances_of, metric_value,
                       note_slow, read_text, redis_cli, san_excerpt, spawn,
                       tail, wait_for)

SRC = os.environ.get("TASKBUS_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))


def temp_file(name, content):
    path = os.path.join(H.root, name)
    with open(path, "w") as f:
        f.write(content)
    return path


# ------------------------------------------------------------------ HTTP


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ CLI


class Run:
    def __init__(self, rc, out, err, took):
        self.rc, self.out, self.err, self.took = rc, out, err, took

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            raise AssertionError(f"stdout is not JSON: {self.out[:300]!r} "
                                 f"(stderr {self.err[:300]!r})")

    def __repr__(self):
        err = self.err if len(self.err) < 600 else "..." + self.err[-600:]
        return f"exit {self.rc}, stdout {self.out[:300]!r}, stderr {err!r}"


def cli(args, env=None, stdin=None, timeout=20):
    """Runs `taskbus ARGS` to completion; a Run. Fails the case if it is
    still running after timeout (then killed)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([H.bin, *args], input=stdin, capture_output=True,
                           env=child_env(env), timeout=T(timeout),
                           preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"taskbus {' '.join(args)}: still running after {T(timeout)} s "
            f"(killed); stderr {(e.stderr or b'')[:400]!r}")
    note_slow(f"taskbus {' '.join(args)[:60]}", time.monotonic() - t0)
    bad = san_excerpt(p.stderr.decode("utf-8", "replace"))
    if bad:
        raise AssertionError(f"taskbus {' '.join(args)}: exit "
                             f"{p.returncode}, sanitizer report: {bad}")
    return Run(p.returncode, p.stdout.decode("utf-8", "replace"),
               p.stderr.decode("utf-8", "replace"), time.monotonic() - t0)


class Watch:
    """`taskbus watch PATTERN...` in the background, its stdout in a file."""

    def __init__(self, name, args, env=None):
        base = os.path.join(H.root, f"watch-{name}")
        self.out, self.err = base + ".out", base + ".err"
        self.proc = spawn([H.bin, "watch", *args], self.out, self.err,
                          env=child_env(env))

    def lines(self):
        got = []
        for l in read_text(self.out).splitlines():
            try:
                got.append(json.loads(l))
            except ValueError:
                got.append(l)
        return got

    def event(self, pred, timeout):
        """The first printed envelope pred accepts, or None."""
        def find():
            for o in self.lines():
                if isinstance(o, dict) and pred(o):
                    return o
            check(self.proc.poll() is None,
                  f"taskbus watch exited with {self.proc.returncode}: "
                  f"{read_text(self.err)[:400]!r}")
            return None
        return wait_for(find, timeout)

    def ready(self, port, headers=None, name="pat.ready"):
        """Dispatches name until the watch prints it (it subscribed)."""
        def probe():
            r = http_req(port, "POST", f"/events/{name}", "probe",
                         headers=headers)
            check(r.status == 202, f"POST /events/{name}: {r!r}")
            return self.event(lambda o: o.get("name") == name, 0.2)
        got = wait_for(probe, T(10), 0)
        check(got, f"taskbus watch printed no {name} event in {T(10)} s; "
                   f"stdout {read_text(self.out)[:300]!r} stderr "
                   f"{read_text(self.err)[:300]!r}")

    def stop(self):
        """SIGTERM: it must exit 0."""
        t0 = time.monotonic()
        rc = end_proc(self.proc, signal.SIGTERM, T(10))
        note_slow("taskbus watch's exit on SIGTERM", time.monotonic() - t0)
        check(rc == 0, f"taskbus watch: exit status {rc} on SIGTERM, want "
                       f"0; stderr {read_text(self.err)[:300]!r}")


# ------------------------------------------------------------------ websockets


async def ws_open(url, **kw):
    """A websockets client whose ?events= are in place (one round trip)."""
    ws = await asyncio.wait_for(websockets.connect(url, **kw), T(10))
    await ws.send(json.dumps({"subscribe": [], "ref": "sync"}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), T(10)))
        if msg.get("ref") == "sync":
            check(msg.get("ok") == "subscribe", f"sync answered {msg}")
            return ws


async def ws_close_code(ws, timeout):
    """Reads until the server closes: (close code, events seen)."""
    events = []
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            check(left > 0, f"the websocket was not closed within "
                            f"{timeout} s")
            msg = await asyncio.wait_for(ws.recv(), left)
            events.append(json.loads(msg))
    except ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        raise AssertionError(f"the websocket was not closed within "
                             f"{timeout} s")
    return ws.close_code, events


# ------------------------------------------------------------------ the help


def documented_vars():
    """(every TASKBUS_* variable, those `taskbus serve` reads): README's
    settings table (made from the settings table, and checked against it
    by t_settings_table), and a list that must be there whatever it says."""
    serve = {"TASKBUS_" + v for v in (
        "LISTEN", "REDIS_URL", "REDIS_PASSWORD_FILE", "NAMESPACE", "WORKERS",
        "TOKEN", "TOKEN_FILE", "GRACEFUL_TIMEOUT", "SHUTDOWN_DELAY",
        "LOG_FORMAT", "LOG_LEVEL", "WS_MAX_CLIENTS")}
    serve |= set(re.findall(r"`(TASKBUS_[A-Z0-9_]+)`", settings_table()))
    every = serve | {"TASKBUS_URL"}
    return every, serve


def settings_table():
    """The settings table between README's markers."""
    text = read_text(os.path.join(SRC, "README.md"))
    m = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->",
                  text, re.S)
    check(m is not None, "README.md has no settings table between "
                         "<!-- settings:begin --> and <!-- settings:end -->")
    return m.group(1)


def t_settings_table():
    r = cli(["config", "--markdown"])
    check(r.rc == 0, f"taskbus config --markdown: {r!r}")
    want, have = r.out, settings_table()
    if want != have:
        import difflib
        diff = "".join(difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), "README.md",
            "taskbus config --markdown"))
        raise AssertionError("README's settings table is not what taskbus "
                             "config --markdown prints; paste it in:\n" + diff)
    rows = [l for l in want.splitlines() if l.startswith("| `--")]
    check(len(rows) >= 40, f"only {len(rows)} settings in the table")
    return f"{len(rows)} settings"


def t_version():
    for args in (["--version"], ["serve", "--version"]):
        r = cli(args)
        check(r.rc == 0 and re.fullmatch(r"taskbus \d+\.\d+\.\d+\S*\n", r.out),
              f"taskbus {' '.join(args)}: want exit 0 and 'taskbus X.Y.Z', "
              f"got {r!r}")


def t_help():
    every, serve = documented_vars()
    for args, want in ((["--help"], every), (["serve", "--help"], serve),
                       (["-h"], every)):
        r = cli(args)
        check(r.rc == 0, f"taskbus {' '.join(args)}: {r!r}")
        missing = sorted(v for v in want if v not in r.out)
        check(not missing, f"taskbus {' '.join(args)} does not mention "
                           f"{', '.join(missing)}")
    return f"{len(every)} variables"


def bad_usage(args, env=None, names=(), also=()):
    """taskbus ARGS must exit 2 at once with a message on stderr naming one
    of names (the flag or variable) and containing every string of also.
    A free --listen port keeps a wrongly accepted value from serving on
    8080; it would be killed after the timeout."""
    if "--listen" not in args:
        args = [*args, "--listen", f"{HOST}:{free_port()}"]
    r = cli(args, env=env, timeout=10)
    what = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    what = (what + " " if what else "") + "taskbus " + " ".join(args)
    check(r.rc == 2, f"{what}: want exit 2, got {r!r}")
    check(not names or any(n in r.err for n in names),
          f"{what}: the message does not name {' or '.join(names)}: "
          f"{r.err[-600:]!r}")
    for s in also:
        check(s in r.err,
              f"{what}: the message lacks {s!r}: {r.err[-600:]!r}")
    return r


def t_unknown():
    bad_usage(["--bogus"], names=["bogus"])
    bad_usage(["serve", "--bogus"], names=["bogus"])
    bad_usage(["serve", "stray-argument"], names=["stray-argument"])
    r = cli(["frob"])
    check(r.rc == 2 and "frob" in r.err, f"taskbus frob: want exit 2 naming "
                                         f"frob, got {r!r}")
    r = cli(["tasks", "frob"])
    check(r.rc == 2 and "frob" in r.err,
          f"taskbus tasks frob: want exit 2 naming frob, got {r!r}")
    r = cli(["dispatch", "--bogus", "a.b"])
    check(r.rc == 2, f"taskbus dispatch --bogus a.b: want exit 2, got {r!r}")


def t_bad_values():
    bad_usage(["serve", "--workers", "0"], names=["--workers"])
    bad_usage(["serve"], env={"TASKBUS_WORKERS": "abc"},
              names=["TASKBUS_WORKERS"], also=["abc"])
    bad_usage(["serve", "--log-format", "xml"], names=["--log-format"],
              also=["xml"])
    bad_usage(["serve", "--graceful-timeout", "-1"],
              names=["--graceful-timeout"])
    bad_usage(["serve", "--ws-max-clients", "0"], names=["--ws-max-clients"])
    bad_usage(["serve", "--shutdown-delay", "soon"],
              names=["--shutdown-delay"])
    bad_usage(["serve"], env={"TASKBUS_LOG_LEVEL": "verbose"},
              names=["TASKBUS_LOG_LEVEL"])
    bad_usage(["serve"], env={"TASKBUS_PRINT_EVENTS": "maybe"},
              names=["TASKBUS_PRINT_EVENTS"])


def t_bad_token_files():
    missing = os.path.join(H.root, "no-such-token")
    bad_usage(["serve", "--token-file", missing], names=["--token-file"],
              also=[missing])
    bad_usage(["serve"], env={"TASKBUS_TOKEN_FILE": missing},
              names=["TASKBUS_TOKEN_FILE", "token-file"], also=[missing])
    empty = temp_file("empty-token", "")
    bad_usage(["serve", "--token-file", empty], names=["--token-file"],
              also=[empty])
    blank = temp_file("newline-token", "\n")
    bad_usage(["serve", "--token-file", blank], names=["--token-file"],
              also=[blank])
    bad_usage(["serve", "--redis-password-file", missing],
              names=["--redis-password-file"], also=[missing])


def t_bad_listen():
    # An address that cannot be: a configuration error like the others
    # (exit 2, the flag named), and found before anything starts.
    r = bad_usage(["serve", "--workers", "1", "--listen", "300.1.1.1:80"],
                  names=["--listen", "TASKBUS_LISTEN", "http_listen"],
                  also=["300.1.1.1:80"])
    check(r.took < T(5), f"took {r.took:.1f} s to refuse it")


def t_bad_redis_url():
    bad_usage(["serve", "--redis-url", "ftp://127.0.0.1:1"],
              names=["--redis-url", "TASKBUS_REDIS_URL", "redis_url"],
              also=["ftp://127.0.0.1:1"])


def t_listen_in_use():
    # Not a usage error: the operator's command is right, the port is not
    # free. It must stop at once, non-zero, naming the address.
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = cli(["serve", "--listen", f"{HOST}:{port}"], timeout=15)
        check(r.rc not in (0, None) and f"{HOST}:{port}" in r.err,
              f"--listen on a port in use: want a non-zero exit naming "
              f"{HOST}:{port}, got {r!r}")
    return f"exit {r.rc}"


def t_listen_any():
    """--listen 0.0.0.0:P listens on every address, as a container's port
    mapping needs (the HTTP front took the loopback address meant for
    reaching it and listened on 127.0.0.1 only). Checked in the kernel's
    table of listening sockets; traffic goes to 127.0.0.1 only."""
    port = free_port()
    log = os.path.join(H.root, "taskbus-any.log")
    p = spawn([H.bin, "serve", "--listen", f"0.0.0.0:{port}", "--workers",
               "1", "--tick", "0", "--quiet"], log, env=child_env())
    try:
        def healthy():
            try:
                x = http_req(port, "GET", "/healthz")
            except OSError:
                return None
            return x if x.status == 200 else None

        r = wait_for(healthy, T(10))
        check(r and r.status == 200, f"GET /healthz on 127.0.0.1:{port}: "
              f"{r!r}; log: {tail(read_text(log))}")
        want = f"00000000:{port:04X}"
        with open("/proc/net/tcp") as f:
            rows = [l.split() for l in f.read().splitlines()[1:]]
        listening = [r[1] for r in rows if r[3] == "0A" and
                     r[1].endswith(f":{port:04X}")]
        check(listening == [want],
              f"listening sockets on port {port}: {listening}, want "
              f"[{want}] (0.0.0.0)")
    finally:
        rc = end_proc(p)
    check(rc == 0, f"taskbus exited {rc}")
    return f"listening on {want}"


def workers_of(s):
    r = http_req(s.port, "GET", "/healthz")
    check(r.status == 200 and isinstance(r.json, dict),
          f"GET /healthz: {r!r}")
    return r.json.get("workers")


def start_line(s):
    for l in s.err_text().splitlines():
        if "starting:" in l:
            return l
    raise AssertionError(f"no start line (\"starting:\") in the log of "
                         f"{s.name}:\n{tail(s.err)}")


def t_flags_win():
    env_port = free_port()
    a = Taskbus("flags", "--workers", "3",
                env={"TASKBUS_WORKERS": "1",
                     "TASKBUS_LISTEN": f"{HOST}:{env_port}"}).start()
    check(workers_of(a) == 3, f"TASKBUS_WORKERS=1 --workers 3: /healthz "
                              f"says {workers_of(a)} workers, want 3")
    check("workers=3" in start_line(a),
          f"start line without workers=3: {start_line(a)}")
    try:
        http_req(env_port, "GET", "/healthz", timeout=1)
        raise AssertionError(f"--listen lost to TASKBUS_LISTEN: something "
                             f"answers on {env_port}")
    except (ConnectionRefusedError, socket.timeout):
        pass
    b = Taskbus("env", listen="env", env={"TASKBUS_WORKERS": "1"}).start()
    check(workers_of(b) == 1, f"TASKBUS_WORKERS=1 alone: /healthz says "
                              f"{workers_of(b)} workers, want 1")
    check("workers=1" in start_line(b), f"start line: {start_line(b)}")
    a.stop_ok()
    b.stop_ok()


# ------------------------------------------------------------------ secrets


def t_secrets():
    password = "pw-" + secrets.token_hex(6)
    token = "tok-" + secrets.token_hex(12)
    r = Redis("auth", "--requirepass", password).start()
    try:
        tfile = temp_file("token", token + "\n")
        s = Taskbus("secret", "--redis-url", r.url(password),
                    "--log-level", "debug",
                    env={"TASKBUS_TOKEN_FILE": tfile}).start()
        ready = wait_for(lambda: http_req(s.port, "GET", "/readyz").status
                         == 200, T(10))
        check(ready, f"/readyz not 200 with the URL's password: "
                     f"{http_req(s.port, 'GET', '/readyz')!r}")
        # The API needs the token; /healthz and /readyz do not.
        r0 = http_req(s.port, "GET", "/tasks")
        check(r0.status == 401 and r0.code() == "unauthorized",
              f"GET /tasks without a token: want 401 unauthorized, got "
              f"{r0!r}")
        r1 = http_req(s.port, "GET", "/tasks", headers=bearer("tok-wrong"))
        check(r1.status == 401, f"GET /tasks with a wrong token: {r1!r}")
        r2 = http_req(s.port, "GET", "/tasks", headers=bearer(token))
        check(r2.status == 200, f"GET /tasks with the token: {r2!r}")
        r3 = http_req(s.port, "POST", "/events/secret.ok", "x",
                      headers=bearer(token))
        check(r3.status == 202, f"POST /events with the token: {r3!r}")
        r4 = http_req(s.port, "GET", f"/events/secret.none?timeout=0&token="
                      f"{token}")
        check(r4.status == 204, f"GET /events/...?token=: {r4!r}")
        r5 = http_req(s.port, "POST", "/events/secret.no", "x")
        check(r5.status == 401, f"POST /events without the token: {r5!r}")

        async def ws_with_token():
            ws = await ws_open(s.ws_url(f"/ws?events=secret.*&token={token}"))
            await ws.close()
        asyncio.run(ws_with_token())

        line = start_line(s)
        check("token=set" in line, f"start line does not say the token is "
                                   f"set: {line}")
        check(f"{HOST}:{r.port}" in line, f"start line without the Redis "
                                          f"address: {line}")
        s.stop_ok()
        for what, text in (("stderr", s.err_text()),
                           ("stdout", s.out_text())):
            for name, secret in (("the API token", token),
                                 ("the Redis password", password)):
                for l in text.splitlines():
                    check(secret not in l,
                          f"{name} is in taskbus's {what}: {l}")
    finally:
        r.stop()


def t_password_file():
    password = "pw-" + secrets.token_hex(6)
    r = Redis("authfile", "--requirepass", password).start()
    try:
        pfile = temp_file("redis-password", password + "\n")
        # Control: the URL's wrong password alone does not connect.
        bad = Taskbus("wrongpw", "--redis-url", r.url("pw-wrong"),
                      "--redis-connect-timeout", "300").start()
        rb = http_req(bad.port, "GET", "/readyz")
        check(rb.status == 503, f"/readyz with a wrong Redis password: want "
                                f"503, got {rb!r}")
        bad.stop_ok()
        s = Taskbus("pwfile", "--redis-url", r.url("pw-wrong"),
                    "--redis-connect-timeout", "300",
                    env={"TASKBUS_REDIS_PASSWORD_FILE": pfile}).start()
        ok = wait_for(lambda: http_req(s.port, "GET", "/readyz").status
                      == 200, T(10))
        check(ok, f"TASKBUS_REDIS_PASSWORD_FILE did not override the URL's "
                  f"password: /readyz {http_req(s.port, 'GET', '/readyz')!r}")
        s.stop_ok()
        for srv in (bad, s):
            for l in srv.err_text().splitlines():
                check(password not in l and "pw-wrong" not in l,
                      f"a Redis password in the log of {srv.name}: {l}")
    finally:
        r.stop()


# ------------------------------------------------------------------ logs


TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def json_lines(text, who):
    objs = []
    for l in text.splitlines():
        try:
            o = json.loads(l)
        except ValueError:
            raise AssertionError(f"{who}: a stderr line is not JSON: {l!r}")
        check(isinstance(o, dict), f"{who}: not an object: {l!r}")
        check(isinstance(o.get("ts"), str) and TS_RE.fullmatch(o["ts"]),
              f"{who}: no RFC 3339 ts: {l!r}")
        check(o.get("level") in ("debug", "info", "warn", "error"),
              f"{who}: bad level: {l!r}")
        check(isinstance(o.get("msg"), str) and o["msg"],
              f"{who}: no msg: {l!r}")
        objs.append(o)
    return objs


def t_log_json():
    s = Taskbus("json", "--log-format", "json").start()
    http_req(s.port, "GET", "/tasks/nope")  # logged: 404
    http_req(s.port, "POST", "/events/bad..name", "x")  # logged: 400

    async def ws():
        w = await ws_open(s.ws_url("/ws?events=j.*"))
        await w.close()
    asyncio.run(ws())
    s.stop_ok()
    objs = json_lines(s.err_text(), "--log-format json")
    msgs = [o["msg"] for o in objs]
    check(any("starting:" in m and "log=json" in m for m in msgs),
          f"no start line with log=json: {msgs[:3]}")
    check(any("nope" in m for m in msgs), f"the 404 was not logged: {msgs}")
    check(any("stopped" in m for m in msgs), f"no stop line: {msgs[-3:]}")
    return f"{len(objs)} lines"


def t_log_level_warn():
    # A Redis nobody listens on: warnings and errors, and info lines that
    # must not show.
    dead = free_port()
    s = Taskbus("warn", "--log-level", "warn", "--redis-url",
                f"redis://{HOST}:{dead}", "--redis-connect-timeout",
                "200").start()
    http_req(s.port, "GET", "/tasks/nope")  # an info line at info level
    s.stop_ok()
    lines = s.err_text().splitlines()
    info = [l for l in lines if re.search(r"\b(INFO|DEBUG)\b", l)
            or "starting:" in l or "listening on" in l]
    check(not info, f"--log-level warn shows info lines: {info[:3]}")
    shown = [l for l in lines if re.search(r"\b(WARN|ERROR)\b", l)]
    check(shown, f"--log-level warn hid the warnings too (Redis on {dead} "
                 f"is down): {lines[:5]}")
    # The same by variable, with JSON lines.
    e = Taskbus("warn-env", env={"TASKBUS_LOG_LEVEL": "warn",
                                 "TASKBUS_LOG_FORMAT": "json"}).start()
    e.stop_ok()
    objs = json_lines(e.err_text(), "TASKBUS_LOG_LEVEL=warn")
    check(all(o["level"] in ("warn", "error") for o in objs),
          f"TASKBUS_LOG_LEVEL=warn shows {[o['msg'] for o in objs][:3]}")


def t_inproc():
    s = Taskbus("inproc").start()
    line = start_line(s)
    check("in-process" in line, f"the start line does not say in-process "
                                f"bus: {line}")
    r = http_req(s.port, "GET", "/readyz")
    check(r.status == 200, f"/readyz with the in-process bus: {r!r}")
    s.stop_ok()


# ------------------------------------------------------------------ clients


def url_env(s):
    return {"TASKBUS_URL": s.url()}


def t_dispatch_watch():
    s = Taskbus("dispatch").start()
    w = Watch("dispatch", ["pat.*"], env=url_env(s))
    w.ready(s.port)
    r = cli(["dispatch", "pat.created", '{"order":7}'], env=url_env(s))
    check(r.rc == 0, f"taskbus dispatch pat.created: {r!r}")
    o = r.json()
    check(isinstance(o.get("id"), str) and o.get("name") == "pat.created",
          f"dispatch printed {o}, want {{id, name: pat.created}}")
    r2 = cli(["dispatch", "other.thing", "x"], env=url_env(s))
    check(r2.rc == 0, f"taskbus dispatch other.thing: {r2!r}")
    ev = w.event(lambda e: e.get("id") == o["id"], T(10))
    check(ev, f"taskbus watch 'pat.*' did not print event {o['id']}: "
              f"{w.lines()}")
    check(ev.get("name") == "pat.created" and ev.get("data") == {"order": 7}
          and isinstance(ev.get("ts"), int) and "origin" in ev,
          f"watch printed {ev}")
    w.ready(s.port, name="pat.last")  # anything after other.thing arrived
    check(not any(isinstance(e, dict) and e.get("name") == "other.thing"
                  for e in w.lines()), "watch 'pat.*' printed other.thing")
    w.stop()
    s.stop_ok()


def t_dispatch_stdin():
    s = Taskbus("stdin").start()
    w = Watch("stdin", ["pat.*"], env=url_env(s))
    w.ready(s.port)
    data = "line one\nline \"two\" \u00e9"
    r = cli(["dispatch", "pat.stdin", "-"], env=url_env(s),
            stdin=data.encode())
    check(r.rc == 0 and r.json().get("name") == "pat.stdin",
          f"taskbus dispatch pat.stdin - : {r!r}")
    ev = w.event(lambda e: e.get("id") == r.json()["id"], T(10))
    check(ev and ev.get("data") == data,
          f"watch printed {ev} for stdin {data!r}")
    obj = {"k": [1, 2], "s": "from stdin"}
    r = cli(["dispatch", "pat.json", "-"], env=url_env(s),
            stdin=json.dumps(obj).encode())
    check(r.rc == 0, f"taskbus dispatch pat.json - : {r!r}")
    ev = w.event(lambda e: e.get("id") == r.json()["id"], T(10))
    check(ev and ev.get("data") == obj, f"watch printed {ev} for {obj}")
    w.stop()
    s.stop_ok()


def t_tasks():
    s = Taskbus("tasks").start()
    env = url_env(s)
    r = cli(["tasks", "spawn", "sleep", "--name", "s1", "--args",
             '{"seconds":60}'], env=env)
    check(r.rc == 0, f"tasks spawn sleep --name s1: {r!r}")
    o = r.json()
    check(o.get("name") == "s1" and o.get("kind") == "sleep"
          and o.get("state") in ("pending", "running"),
          f"tasks spawn printed {o}")
    r = cli(["tasks", "spawn", "sleep", "--name", "s1", "--args",
             '{"seconds":60}'], env=env)
    check(r.rc == 1 and "name_taken" in r.err,
          f"a second tasks spawn --name s1: want exit 1 name_taken, got "
          f"{r!r}")

    def running():
        g = cli(["tasks", "get", "s1"], env=env)
        check(g.rc == 0, f"tasks get s1: {g!r}")
        return g.json().get("state") == "running"
    check(wait_for(running, T(5)), "tasks get s1: never running")
    r = cli(["tasks", "list", "--state", "running"], env=env)
    check(r.rc == 0, f"tasks list --state running: {r!r}")
    names = [t.get("name") for t in r.json().get("tasks", [])]
    check("s1" in names, f"tasks list --state running: {names}")
    r = cli(["tasks", "list", "--state", "done"], env=env)
    check(r.rc == 0 and "s1" not in [t.get("name") for t in
                                     r.json().get("tasks", [])],
          f"tasks list --state done: {r!r}")
    r = cli(["tasks", "list", "--state", "sleepy"], env=env)
    check(r.rc == 1 and "bad_state" in r.err,
          f"tasks list --state sleepy: want exit 1 bad_state, got {r!r}")
    r = cli(["tasks", "cancel", "s1", "--timeout", "5"], env=env)
    check(r.rc == 0 and r.json().get("state") == "cancelled",
          f"tasks cancel s1 --timeout 5: {r!r}")
    check(r.took < T(4), f"tasks cancel s1 took {r.took:.1f} s")
    r = cli(["tasks", "get", "s1"], env=env)
    check(r.rc == 0 and r.json().get("state") == "cancelled",
          f"tasks get s1 after cancel: {r!r}")
    r = cli(["tasks", "purge"], env=env)
    check(r.rc == 0 and isinstance(r.json().get("purged"), int)
          and r.json()["purged"] >= 1, f"tasks purge: {r!r}")
    r = cli(["tasks", "get", "s1"], env=env)
    check(r.rc == 1 and "not_found" in r.err,
          f"tasks get s1 after purge: want exit 1 not_found, got {r!r}")
    r = cli(["tasks", "get", "nope"], env=env)
    check(r.rc == 1 and "not_found" in r.err,
          f"tasks get nope: want exit 1 not_found, got {r!r}")
    r = cli(["tasks", "spawn", "sleep", "--args", "{not json"], env=env)
    check(r.rc == 2, f"tasks spawn --args '{{not json': want 2, got {r!r}")
    s.stop_ok()


# ------------------------------------------------------------------ instances

# Fast beats so that the cases take seconds: a killed instance must leave
# within the TTL (1 s), measured with 1.5 s to spare.
INST_ARGS = ["--instance-heartbeat", "0.2", "--instance-ttl", "1",
             "--redis-retry-max", "300"]


def listens_of(s):
    return sorted(i["listen"] for i in instances_of(s))


def wait_listed(servers, want, timeout, what):
    """Waits until every server in servers lists exactly the listen
    addresses of want; fails with what was listed."""
    expect = sorted(f"{HOST}:{w.port}" for w in want)
    seen = {}

    def ok():
        for s in servers:
            seen[s.name] = listens_of(s)
        return all(v == expect for v in seen.values())
    check(wait_for(ok, timeout), f"{what}: want {expect}, listed {seen}")


def three_instances(r, *extra):
    ss = [Taskbus(n, "--redis-url", r.url(), *INST_ARGS, *extra).start()
          for n in ("a", "b", "c")]
    wait_listed(ss, ss, T(5), "three instances on one Redis")
    return ss


def t_instances_three():
    r = Redis("inst").start()
    try:
        ss = three_instances(r)
        a, b, c = ss
        ids = {}
        for s in ss:
            got = instances_of(s)
            mine = [i for i in got if i["self"]]
            check(len(mine) == 1 and mine[0]["listen"] == f"{HOST}:{s.port}",
                  f"{s.name} lists itself as self once: {got}")
            ids[s.name] = mine[0]["id"]
            for i in got:
                check(i["bus"] == "redis" and i["workers"] >= 1
                      and i["version"] and i["host"] and i["started"],
                      f"{s.name}: instance fields: {i}")
        check(len(set(ids.values())) == 3, f"three distinct ids: {ids}")
        # Renewed: still listed well after the first records' TTL.
        time.sleep(1.5 * H.scale)
        wait_listed(ss, ss, T(0.5), "1.5 s (more than the TTL) later")
        for s in ss:
            check({i["id"] for i in instances_of(s)} == set(ids.values()),
                  f"{s.name} lists the ids {ids}")
        check(metric_value(a.port, "taskbus_instances") == 3,
              "taskbus_instances on a is not 3")
        keys = redis_cli(r, "--scan", "--pattern", "{taskbus}:instance*")
        check(sorted(keys.split()) == sorted(
            ["{taskbus}:instance"] +
            [f"{{taskbus}}:instance:{v}" for v in ids.values()]),
            f"the instance keys in Redis: {keys}")
        ttl = int(redis_cli(r, "PTTL", f"{{taskbus}}:instance:{ids['a']}"))
        check(0 < ttl <= 1000, f"PTTL of a's record: {ttl}")
        cl = cli(["instances"], env=url_env(b))
        check(cl.rc == 0 and sorted(i["id"] for i in
                                    cl.json()["instances"]) ==
              sorted(ids.values()), f"taskbus instances: {cl!r}")

        # A clean stop leaves at once: its record goes before it exits.
        c.kill_with(signal.SIGTERM)
        t0 = time.monotonic()
        wait_listed([a, b], [a, b], T(2), "after SIGTERM of c")
        term = time.monotonic() - t0
        check(term < T(0.5), f"c left the list {term:.2f} s after SIGTERM, "
                             f"want < 0.5 s")
        c.stop_ok()
        check(redis_cli(r, "EXISTS", f"{{taskbus}}:instance:{ids['c']}")
              == "0", "c's record is still in Redis after its clean stop")

        # A killed one leaves when its record expires: within the TTL.
        b.kill_with(signal.SIGKILL)
        b.expect_rc = -signal.SIGKILL
        t0 = time.monotonic()
        wait_listed([a], [a], T(4), "after SIGKILL of b")
        took = time.monotonic() - t0
        check(took < T(1 + 1.5), f"b left the list {took:.2f} s after "
                                 f"SIGKILL, want < TTL (1 s) + 1.5 s")
        check(metric_value(a.port, "taskbus_instances") == 1,
              "taskbus_instances on a is not 1 after b and c left")
        return f"gone {term:.2f} s after SIGTERM, {took:.2f} s after SIGKILL"
    finally:
        r.stop()


def t_instances_redis_restart():
    r = Redis("inst-restart").start()
    try:
        ss = three_instances(r)
        r.stop()
        r.start(port=r.port)  # empty: every record is gone
        t0 = time.monotonic()

        def records():
            return len(redis_cli(r, "--scan", "--pattern",
                                 "{taskbus}:instance:*").split())
        check(wait_for(lambda: records() == 3, T(5)),
              f"{records()} instance records in Redis 5 s after the restart")
        took = time.monotonic() - t0
        # The lists kept from before the restart prove nothing: a newcomer
        # reads only what the three wrote again, and they read it back.
        d = Taskbus("d", "--redis-url", r.url(), *INST_ARGS).start()
        wait_listed(ss + [d], ss + [d], T(3), "after a redis-server restart")
        return f"registered again {took:.2f} s after"
    finally:
        r.stop()


def t_instances_memory():
    s = Taskbus("mem").start()
    got = instances_of(s)
    check(len(got) == 1 and got[0]["self"] is True
          and got[0]["bus"] == "memory"
          and got[0]["listen"] == f"{HOST}:{s.port}",
          f"GET /instances on the memory bus: {got}")
    check(metric_value(s.port, "taskbus_instances") == 1,
          "taskbus_instances is not 1 on the memory bus")
    r = cli(["instances", "list"], env=url_env(s))
    check(r.rc == 0 and r.json()["instances"][0]["id"] == got[0]["id"],
          f"taskbus instances list: {r!r}")
    r = cli(["instances", "nope"], env=url_env(s))
    check(r.rc == 2, f"taskbus instances nope: want exit 2, got {r!r}")
    s.stop_ok()


def t_instances_hostile():
    """Whatever is under the instance keys, nothing crashes and nothing
    that is not a valid record is listed; skipped ones are logged, at most
    TB__RATELOG_BURST (10) lines a second."""
    r = Redis("inst-hostile").start()
    try:
        a = Taskbus("a", "--redis-url", r.url(), *INST_ARGS).start()
        wait_listed([a], [a], T(5), "one instance")
        me = instances_of(a)[0]
        fake = dict(me, id="f00d", listen="127.0.0.1:1")
        wrong_id = dict(me, id="other")
        big_host = dict(me, id="bighost", host="h" * 300)
        put = {
            "garbage": b"garbage",
            "json-array": b"[1,2,3]",
            "notjson": b'{"id":"notjson"',
            "wrongid": json.dumps(wrong_id).encode(),
            "bighost": json.dumps(big_host).encode(),
            "deep": b'{"id":"deep","x":' + b"[" * 5000 + b"]" * 5000
                    + b"}",
            "huge": b"x" * (5 << 20),
        }
        for k, v in put.items():
            redis_cli(r, "-x", "SET", f"{{taskbus}}:instance:{k}", stdin=v)
        redis_cli(r, "HSET", "{taskbus}:instance:hash", "a", "b")
        redis_cli(r, "SADD", "{taskbus}:instance", *put, "hash",
                  "bad id!", "x" * 200, "nokey")
        redis_cli(r, "SET", "{taskbus}:instance:bad id!", "x")
        # The instance's own record, overwritten with garbage: listed again
        # (valid) at its next heartbeat.
        redis_cli(r, "SET", f"{{taskbus}}:instance:{me['id']}", "garbage",
                  "PX", "5000")
        t0 = time.monotonic()
        time.sleep(1.5 * H.scale)
        got = instances_of(a)
        check([i["id"] for i in got] == [me["id"]],
              f"only a is listed among hostile records: {got}")
        check(http_req(a.port, "GET", "/healthz").status == 200,
              "a is not healthy after reading hostile records")
        # A valid record of another instance is believed (anyone who can
        # write to Redis can join): the store bounds, it does not sign.
        redis_cli(r, "SET", "{taskbus}:instance:f00d", json.dumps(fake),
                  "PX", "3000")
        redis_cli(r, "SADD", "{taskbus}:instance", "f00d")
        check(wait_for(lambda: "f00d" in [i["id"] for i in instances_of(a)],
                       T(2)), "a valid record written by hand is not listed")
        err = a.err_text()
        check("instances: record garbage" in err
              and "skipped" in err, f"no skipped-record line:\n{err[-1500:]}")
        # The rate limit: per second at most 10 skipped lines (and their
        # "suppressed" summary).
        per_s = {}
        for line in err.splitlines():
            if "instances: record " in line or "out of bounds" in line:
                per_s[line[:19]] = per_s.get(line[:19], 0) + 1
        check(per_s and max(per_s.values()) <= 10,
              f"skipped-record lines per second: {per_s}")
        check("suppressed" in err, "no suppressed-lines summary")
        # The set was cleaned of ids without a record.
        members = redis_cli(r, "SMEMBERS", "{taskbus}:instance").split()
        check("nokey" not in members, f"nokey still in the set: {members}")
        a.stop_ok()
        return f"{time.monotonic() - t0:.1f} s"
    finally:
        r.stop()


def t_healthcheck():
    s = Taskbus("health").start()
    r = cli(["healthcheck", "--url", s.url()])
    check(r.rc == 0, f"taskbus healthcheck --url {s.url()} with the service "
                     f"up: want exit 0, got {r!r}")
    r = cli(["healthcheck"], env=url_env(s))
    check(r.rc == 0, f"TASKBUS_URL={s.url()} taskbus healthcheck: want exit "
                     f"0, got {r!r}")
    port = s.port
    s.stop_ok()
    t = Taskbus("health-token", env={"TASKBUS_TOKEN": "tok-x"}).start()
    r = cli(["healthcheck", "--url", t.url()])
    check(r.rc == 0, f"healthcheck against a service with a token, none "
                     f"given (/healthz is open): want exit 0, got {r!r}")
    t.stop_ok()
    r = cli(["healthcheck", "--url", f"http://{HOST}:{port}"])
    check(r.rc == 1, f"taskbus healthcheck with the service down: want exit "
                     f"1, got {r!r}")


def t_service_down():
    port = free_port()
    env = {"TASKBUS_URL": f"http://{HOST}:{port}"}
    for args in (["dispatch", "a.b", "x"], ["tasks", "list"],
                 ["tasks", "get", "x"], ["watch", "a.*"]):
        r = cli(args, env=env, timeout=15)
        check(r.rc == 3 and str(port) in r.err,
              f"taskbus {' '.join(args)} with nothing on {port}: want exit "
              f"3 and the address in the message, got {r!r}")


def t_url_sources():
    s = Taskbus("url").start()
    dead = f"http://{HOST}:{free_port()}"
    r = cli(["tasks", "list"], env={"TASKBUS_URL": s.url()})
    check(r.rc == 0, f"TASKBUS_URL: {r!r}")
    r = cli(["tasks", "list", "--url", s.url()], env={"TASKBUS_URL": dead})
    check(r.rc == 0, f"--url must win over TASKBUS_URL: {r!r}")
    r = cli(["tasks", "list", "--url", dead], env={"TASKBUS_URL": s.url()})
    check(r.rc == 3, f"--url (down) must win over TASKBUS_URL (up): {r!r}")
    r = cli(["tasks", "list"],
            env={"TASKBUS_LISTEN": f"{HOST}:{s.port}"})
    check(r.rc == 0, f"TASKBUS_LISTEN as the default URL: {r!r}")
    s.stop_ok()


def t_client_token():
    token = "tok-" + secrets.token_hex(12)
    s = Taskbus("ctoken", env={"TASKBUS_TOKEN": token}).start()
    env = url_env(s)
    r = cli(["tasks", "list"], env=env)
    check(r.rc == 1 and "unauthorized" in r.err,
          f"tasks list without a token: want exit 1 unauthorized, got {r!r}")
    r = cli(["tasks", "list"], env={**env, "TASKBUS_TOKEN": token})
    check(r.rc == 0, f"TASKBUS_TOKEN: {r!r}")
    r = cli(["tasks", "list", "--token", token], env=env)
    check(r.rc == 0, f"--token: {r!r}")
    tf = temp_file("client-token", token + "\n")
    r = cli(["tasks", "list", "--token-file", tf], env=env)
    check(r.rc == 0, f"--token-file: {r!r}")
    r = cli(["tasks", "list"], env={**env, "TASKBUS_TOKEN_FILE": tf})
    check(r.rc == 0, f"TASKBUS_TOKEN_FILE: {r!r}")
    r = cli(["tasks", "list", "--token", "tok-wrong"], env=env)
    check(r.rc == 1, f"a wrong --token: want exit 1, got {r!r}")
    r = cli(["dispatch", "t.x", "y"], env=env)
    check(r.rc == 1 and "unauthorized" in r.err,
          f"dispatch without a token: want exit 1, got {r!r}")
    w = Watch("token", ["pat.*"], env={**env, "TASKBUS_TOKEN": token})
    w.ready(s.port, headers=bearer(token))
    r = cli(["dispatch", "pat.tok", "y"], env={**env, "TASKBUS_TOKEN": token})
    check(r.rc == 0, f"dispatch with TASKBUS_TOKEN: {r!r}")
    check(w.event(lambda e: e.get("id") == r.json()["id"], T(10)),
          f"watch with TASKBUS_TOKEN did not print {r.out}")
    w.stop()
    s.stop_ok()


def t_watch_refused():
    s = Taskbus("refused", env={"TASKBUS_TOKEN": "tok-" +
                                secrets.token_hex(8)}).start()
    r = cli(["watch", "pat.*"], env=url_env(s), timeout=15)
    check(r.rc == 1 and ("401" in r.err or "unauthorized" in r.err),
          f"watch without the token: the upgrade is answered 401 (the "
          f"service answered an error): want exit 1 and the reason, got "
          f"{r!r}")
    s.stop_ok()


# ------------------------------------------------------------------ shutdown


def t_stop_with_task(sig):
    def case():
        s = Taskbus("task", "--graceful-timeout", str(T(5))).start()
        r = http_req(s.port, "POST", "/tasks", {"kind": "sleep", "name": "nap",
                                                "args": {"seconds": 600}})
        check(r.status == 201, f"POST /tasks sleep: {r!r}")
        check(wait_for(lambda: http_req(s.port, "GET", "/tasks/nap").json
                       .get("state") == "running", T(5)), "nap not running")
        # An open SSE stream: its handler task is a connection's, counted
        # with them, not named as work cut short.
        sse = socket.create_connection(("127.0.0.1", s.port), timeout=T(5))
        sse.sendall(b"GET /sse?events=bye.* HTTP/1.1\r\nHost: x\r\n"
                    b"Accept: text/event-stream\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sse.recv(4096)
            check(chunk, f"GET /sse closed: {head!r}")
            head += chunk
        check(head.startswith(b"HTTP/1.1 200"), f"GET /sse: {head[:60]!r}")
        took = s.stop_ok(sig, within=T(5))
        sse.close()
        check("stopped cleanly" in s.err_text(),
              f"no \"stopped cleanly\" line:\n{tail(s.err)}")
        # What the stop cancelled is said: an operator stopping a replica
        # learns which work it cut short.
        m = re.search(r"stopping: cancelling 1 task\(s\): \"nap\" "
                      r"\(sleep\); and 1 connection task", s.err_text())
        check(m, f"no line naming the cancelled task nap (and the SSE "
                 f"stream's as a connection's):\n{tail(s.err)}")
        return f"exit 0 in {took:.2f} s"
    return case


def t_ws_going_away(sig):
    def case():
        s = Taskbus("ws1001").start()

        async def body():
            ws = await ws_open(s.ws_url("/ws?events=bye.*"))
            s.kill_with(sig)
            code, _ = await ws_close_code(ws, T(10))
            return code
        code = asyncio.run(body())
        check(code == 1001, f"websocket closed with {code} on "
                            f"{signal.Signals(sig).name}, want 1001")
        s.stop_ok(sig)
    return case


def t_shutdown_delay(sig):
    def case():
        delay = 1.0 * H.scale
        s = Taskbus("delay", "--shutdown-delay", str(delay)).start()

        async def body():
            ws = await ws_open(s.ws_url("/ws?events=drain.*"))
            s.kill_with(sig)
            t0 = s.signalled

            def readyz_stopping():
                # The signal reaches the process asynchronously: a request
                # sent the same instant may still find it ready.
                end = time.monotonic() + T(0.5)
                while True:
                    r = http_req(s.port, "GET", "/readyz")
                    if r.status == 503 or time.monotonic() >= end:
                        return r
                    time.sleep(0.01)
            ready = await asyncio.to_thread(readyz_stopping)
            health = await asyncio.to_thread(http_req, s.port, "GET",
                                             "/healthz")
            post = await asyncio.to_thread(http_req, s.port, "POST",
                                           "/events/drain.one", "late")
            during = time.monotonic() - t0
            check(ready.status == 503 and b"stopping" in ready.body,
                  f"/readyz right after {signal.Signals(sig).name}: want "
                  f"503 stopping, got {ready!r}")
            check(health.status == 200, f"/healthz during the delay: "
                                        f"{health!r}")
            check(post.status == 202, f"POST /events during the delay: "
                                      f"{post!r}")
            check(during < delay, f"the three requests took {during:.2f} s, "
                                  f"longer than the delay: inconclusive")
            code, events = await ws_close_code(ws, delay + T(10))
            ids = [e.get("id") for e in events]
            check(post.json["id"] in ids,
                  f"the event dispatched during the delay did not reach the "
                  f"websocket: {events}")
            check(code == 1001, f"websocket closed {code}, want 1001")
        asyncio.run(body())
        took = s.stop_ok(sig, within=delay + T(10))
        check(took >= delay * 0.9, f"exited {took:.2f} s after "
                                   f"{signal.Signals(sig).name}, before the "
                                   f"{delay} s shutdown delay")
        return f"exit 0 after {took:.2f} s"
    return case


def t_second_signal(sig, fmt="text"):
    def case():
        s = Taskbus("twice", "--shutdown-delay", "30", "--log-format",
                    fmt).start()
        s.kill_with(sig)
        check(wait_for(lambda: http_req(s.port, "GET", "/readyz").status
                       == 503, T(5)), "/readyz not 503 after the first "
                                      "signal")
        t1 = time.monotonic()
        s.proc.send_signal(sig)
        rc, _ = s.wait_exit(T(3))
        took = time.monotonic() - t1
        if rc is None:
            end_proc(s.proc, signal.SIGKILL)
            raise AssertionError(f"still running {T(3)} s after the second "
                                 f"{signal.Signals(sig).name}")
        s.expect_rc = 128 + sig
        check(rc == 128 + sig, f"exit status {rc} after a second "
                               f"{signal.Signals(sig).name}, want "
                               f"{128 + sig}")
        if fmt == "json":
            json_lines(s.err_text(), "--log-format json, second signal")
        return f"exit {rc} in {took:.2f} s"
    return case


def t_signal_thread():
    """SIGINT and SIGTERM reach the main thread alone: every other thread
    (workers, the bus's, the HTTP server's, the front's) blocks them, so
    a signal is never handled on a library's thread (where a sanitizer's
    runtime may hold the handler back, or a lock be held)."""
    r = Redis("sigmask").start()
    try:
        s = Taskbus("sigmask", "--redis-url", r.url()).start()
        want = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        tasks = os.listdir(f"/proc/{s.proc.pid}/task")
        open_to = []
        for tid in tasks:
            try:
                with open(f"/proc/{s.proc.pid}/task/{tid}/status") as f:
                    st = f.read()
            except OSError:
                continue  # a thread that just ended
            blk = int(re.search(r"SigBlk:\s*([0-9a-f]+)", st).group(1), 16)
            name = re.search(r"Name:\s*(.*)", st).group(1)
            main = int(tid) == s.proc.pid
            if main:
                check(not blk & want, f"the main thread blocks {blk:#x}")
            elif blk & want != want:
                open_to.append(f"{name} ({tid})")
        check(len(tasks) > 4, f"only {len(tasks)} threads")
        check(not open_to, f"threads that take SIGINT/SIGTERM: {open_to}")
        s.kill_with(signal.SIGTERM)
        rc, _ = s.wait_exit(T(10))
        check(rc == 0, f"exit {rc} after SIGTERM")
        return f"{len(tasks) - 1} other threads block both"
    finally:
        r.stop()


def t_no_loss():
    """Two instances on one Redis; a client POSTs to A in a loop while A
    gets SIGTERM; every id A answered 202 must reach B's websocket."""
    r = Redis("loss").start()
    try:
        # A serves on for a while after SIGTERM (--shutdown-delay), so
        # that 202s come before, during and at the end of its shutdown.
        a = Taskbus("a", "--redis-url", r.url(), "--shutdown-delay",
                    str(0.5 * H.scale)).start()
        b = Taskbus("b", "--redis-url", r.url()).start()
        for s in (a, b):
            check(wait_for(lambda: http_req(s.port, "GET", "/readyz").status
                           == 200, T(10)), f"{s.name} not ready")
        accepted, statuses, errors = [], {}, []
        lock = threading.Lock()
        stop = threading.Event()

        def poster(tid):
            c, i = None, 0
            while not stop.is_set() and a.proc.poll() is None:
                try:
                    if c is None:
                        c = http.client.HTTPConnection(HOST, a.port,
                                                       timeout=T(10))
                    c.request("POST", "/events/loss.e",
                              body=json.dumps({"t": tid, "i": i}),
                              headers={"Content-Type": "application/json"})
                    resp = c.getresponse()
                    data = resp.read()
                    with lock:
                        statuses[resp.status] = statuses.get(resp.status,
                                                             0) + 1
                        if resp.status == 202:
                            accepted.append(json.loads(data)["id"])
                    if resp.will_close:
                        c.close()
                        c = None
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(type(e).__name__)
                    if c:
                        c.close()
                    c = None
                    time.sleep(0.005)
                i += 1
            if c:
                c.close()

        async def body():
            ws = await ws_open(b.ws_url("/ws?events=loss.*"), max_queue=None)
            got = {}  # id -> times seen

            async def reader():
                try:
                    async for m in ws:
                        o = json.loads(m)
                        if "id" in o and o.get("name", "").startswith("loss."):
                            got[o["id"]] = got.get(o["id"], 0) + 1
                except ConnectionClosed:
                    pass
            rt = asyncio.create_task(reader())
            # The path A -> Redis -> B works before we start.
            warm = await asyncio.to_thread(http_req, a.port, "POST",
                                           "/events/loss.warm", "w")
            check(warm.status == 202, f"warm-up POST to A: {warm!r}")
            end = time.monotonic() + T(10)
            while warm.json["id"] not in got and time.monotonic() < end:
                await asyncio.sleep(0.02)
            check(warm.json["id"] in got, "B never got A's warm-up event")
            threads = [threading.Thread(target=poster, args=(i,))
                       for i in range(2)]
            for t in threads:
                t.start()
            try:
                end = time.monotonic() + T(10)
                while len(accepted) < 300 and time.monotonic() < end:
                    await asyncio.sleep(0.01)
                check(len(accepted) >= 50, f"only {len(accepted)} events "
                                           f"accepted before SIGTERM")
                before = len(accepted)
                a.kill_with(signal.SIGTERM)
                rc, _ = await asyncio.to_thread(a.wait_exit, STOP_TIMEOUT_S)
            finally:
                stop.set()
                for t in threads:
                    await asyncio.to_thread(t.join, T(15))
            check(rc is not None, "A still running after SIGTERM")
            a.check_clean(rc, 0, "SIGTERM while posting")
            want = set(accepted)
            end = time.monotonic() + T(15)
            while not want <= got.keys() and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await ws.close()
            rt.cancel()
            missing = sorted(want - got.keys())
            dups = sorted(k for k, n in got.items() if n > 1)
            check(not missing,
                  f"{len(missing)} of {len(want)} events answered 202 by A "
                  f"never reached B: {missing[:5]} (statuses {statuses}, "
                  f"errors {len(errors)})")
            check(not dups, f"B got {len(dups)} events twice: {dups[:5]}")
            return (f"{len(want)} accepted ({len(want) - before} after "
                    f"SIGTERM), statuses {statuses}, all on B")
        detail = asyncio.run(body())
        b.stop_ok()
        return detail
    finally:
        r.stop()


# ------------------------------------------------------------------ runner

TERM, INT = signal.SIGTERM, signal.SIGINT

# ------------------------------------------------------------------ API rows


def t_api_long_poll():
    s = Taskbus("poll").start()
    # 200: the envelope of the next matching event.
    got = {}

    def poll():
        got["r"] = http_req(s.port, "GET", "/events/poll.<kind>.*?timeout=10")
    th = threading.Thread(target=poll)
    th.start()

    def waiting():
        r = http_req(s.port, "GET", "/tasks")
        return any(t["name"].startswith("http.wait:")
                   and t["state"] == "running" for t in r.json["tasks"])
    check(wait_for(waiting, T(5)), "the long poll's wait task never ran")
    http_req(s.port, "POST", "/events/other.thing", "skip me")
    p = http_req(s.port, "POST", "/events/poll.order.created", {"n": 1})
    check(p.status == 202, f"POST /events/poll.order.created: {p!r}")
    th.join(T(10))
    r = got.get("r")
    check(r and r.status == 200, f"long poll: {r!r}")
    check(r.json.get("id") == p.json["id"] and r.json.get("data") == {"n": 1}
          and isinstance(r.json.get("ts"), int) and "origin" in r.json,
          f"long poll answered {r.json}, want the envelope of {p.json}")
    # 204 on timeout; 400 for a bad pattern or timeout.
    t0 = time.monotonic()
    r = http_req(s.port, "GET", "/events/never.x?timeout=0.3")
    check(r.status == 204 and time.monotonic() - t0 < T(3),
          f"long poll timeout 0.3: {r!r}")
    r = http_req(s.port, "GET", "/events/a..b?timeout=1")
    check(r.status == 400 and r.code() == "bad_pattern", f"a..b: {r!r}")
    r = http_req(s.port, "GET", "/events/a.b?timeout=soon")
    check(r.status == 400 and r.code() == "bad_timeout", f"timeout=soon: "
                                                          f"{r!r}")
    s.stop_ok()


def t_api_long_poll_tail():
    """GET /events/{pattern} with a last ">", sent raw and as %3E: both
    wait for the same pattern and get the first event under it, whatever
    its depth; a misplaced ">" is a 400 that says why."""
    s = Taskbus("polltail").start()
    got = {}

    def poll(key, path):
        got[key] = http_req(s.port, "GET", path)
    threads = [threading.Thread(target=poll, args=(k, p)) for k, p in
               (("raw", "/events/lpt.>?timeout=10"),
                ("enc", "/events/lpt.%3E?timeout=10"),
                ("all", "/events/%3e?timeout=10"))]
    for th in threads:
        th.start()

    def waiting():
        r = http_req(s.port, "GET", "/tasks")
        return sum(t["name"].startswith("http.wait:")
                   and t["state"] == "running" for t in r.json["tasks"]) == 3
    check(wait_for(waiting, T(5)), "the long polls' wait tasks never ran")
    p0 = http_req(s.port, "POST", "/events/lpt", "too short for lpt.>")
    p = http_req(s.port, "POST", "/events/lpt.a.b.c", {"deep": True})
    check(p.status == 202, f"POST /events/lpt.a.b.c: {p!r}")
    for th in threads:
        th.join(T(10))
    for key in ("raw", "enc"):
        r = got.get(key)
        check(r and r.status == 200 and r.json.get("id") == p.json["id"]
              and r.json.get("name") == "lpt.a.b.c",
              f"long poll lpt.> ({key}): {r!r}, want lpt.a.b.c")
    r = got.get("all")
    check(r and r.status == 200 and r.json.get("id") == p0.json["id"],
          f"long poll > : {r!r}, want the first event, lpt")
    for path, says in (("/events/a.%3E.b?timeout=1",
                        "only be the last segment"),
                       ("/events/a.>.b?timeout=1", "only be the last segment"),
                       ("/events/a.b%3E?timeout=1", "must be a whole segment"),
                       ("/events/%3E%3E?timeout=1", "must be a whole segment")):
        r = http_req(s.port, "GET", path)
        check(r.status == 400 and r.code() == "bad_pattern" and
              says in r.json.get("message", ""), f"GET {path}: {r!r}")
    s.stop_ok()


def t_print_events():
    """serve --print-events with one worker: an event of one segment and
    one of eight (TB_EVENT_SEGMENTS_MAX) are each printed once, with its
    data."""
    s = Taskbus("print", "--print-events", "--workers", "1").start()
    names = ["p", "p.b.c.d.e.f.g.h"]
    for i, name in enumerate(names):
        r = http_req(s.port, "POST", f"/events/{name}", f"d{i}")
        check(r.status == 202, f"POST /events/{name}: {r!r}")

    def printed():
        out = s.out_text()
        return all(f"event {n} id=" in out for n in names) and out
    out = wait_for(printed, T(5))
    check(out, f"not printed: {s.out_text()[-500:]!r}")
    for i, name in enumerate(names):
        lines = [ln for ln in out.splitlines() if f" event {name} id=" in ln]
        check(len(lines) == 1 and lines[0].endswith(f"data=d{i}"),
              f"{name}: {lines}")
    s.stop_ok()


def t_api_kinds():
    """GET /kinds: every kind the binary has, sorted, each with its
    arguments' specs (a form is generated from them); query junk is
    ignored; other methods are 405."""
    s = Taskbus("kinds").start()
    r = http_req(s.port, "GET", "/kinds")
    check(r.status == 200 and r.headers.get("content-type", "").startswith(
        "application/json"), f"GET /kinds: {r!r}")
    kinds = r.json["kinds"]
    names = [k["name"] for k in kinds]
    check(names == sorted(names) and {"sleep", "delay", "interval", "relay",
                                      "exec"} <= set(names),
          f"kinds {names}")
    by = {k["name"]: k for k in kinds}
    check(by["sleep"] == {"name": "sleep", "args": [
        {"name": "seconds", "type": "number", "required": True, "min": 0,
         "max": 86400}]}, f"sleep: {by['sleep']}")
    check(by["relay"]["args"] == [
        {"name": "pattern", "type": "pattern", "required": True},
        {"name": "event", "type": "event_name", "required": True}],
        f"relay: {by['relay']}")
    types = {a["type"] for k in kinds for a in k["args"]}
    check(types <= {"number", "int", "string", "event_name", "pattern",
                    "bool"}, f"types {types}")
    for k in kinds:
        for a in k["args"]:
            check(("min" in a) == ("max" in a) and
                  ("min" not in a or a["min"] < a["max"]),
                  f"{k['name']}.{a['name']}: {a}")
    # What the listing says is what POST /tasks takes.
    p = http_req(s.port, "POST", "/tasks", {"kind": "sleep", "args": {
        "seconds": by["sleep"]["args"][0]["max"] + 1}})
    check(p.status == 400 and p.code() == "bad_args", f"over max: {p!r}")
    r2 = http_req(s.port, "GET", "/kinds?cursor=%zz&limit=-1&" + "x" * 3000)
    check(r2.status == 200 and r2.json == r.json, f"with junk: {r2!r}")
    for method in ("POST", "PUT", "DELETE"):
        r3 = http_req(s.port, method, "/kinds", "{}")
        check(r3.status == 405 and r3.code() == "method_not_allowed",
              f"{method} /kinds: {r3!r}")
    s.stop_ok()
    return f"{len(kinds)} kinds"


def t_api_stats():
    """GET /stats: one JSON object of counters; with a websocket and an SSE
    client on st.>, posting N events moves dispatched by N and delivered
    by 2N (one each), the clients are counted, counters never go back;
    JSON even for junk queries; 405 for other methods."""
    s = Taskbus("stats").start()
    a = http_req(s.port, "GET", "/stats")
    check(a.status == 200 and a.headers.get("content-type", "").startswith(
        "application/json"), f"GET /stats: {a!r}")
    a = a.json
    for key, typ in (("instance", str), ("version", str), ("started", str),
                     ("uptime_s", int), ("uptime_ms", int), ("workers", int)):
        check(isinstance(a.get(key), typ), f"stats.{key}: {a.get(key)!r}")
    check(a["bus"]["kind"] == "memory" and a["bus"]["connected"] is True,
          f"stats.bus: {a['bus']}")
    n = 9
    got = {}

    async def clients():
        ws = await ws_open(s.ws_url("/ws?events=st.%3E"))
        sse = socket.create_connection((HOST, s.port), T(5))
        sse.sendall(b"GET /sse?events=st.> HTTP/1.1\r\nHost: t\r\n\r\n")
        sse.settimeout(T(10))
        head = b""
        while b": ready" not in head:
            chunk = sse.recv(4096)
            check(chunk, f"/sse closed: {head!r}")
            head += chunk
        mid = http_req(s.port, "GET", "/stats").json
        got["mid"] = mid
        for i in range(n):
            r = http_req(s.port, "POST", f"/events/st.e{i}.x", str(i))
            check(r.status == 202, f"POST st.e{i}.x: {r!r}")
        http_req(s.port, "POST", "/events/nobody.x", "-")
        for i in range(n):
            ev = json.loads(await asyncio.wait_for(ws.recv(), T(10)))
            check(ev.get("name") == f"st.e{i}.x", f"ws got {ev}")
        data = head
        while data.count(b"event: st.") < n:
            chunk = sse.recv(65536)
            check(chunk, "/sse closed early")
            data += chunk

        def moved():
            o = http_req(s.port, "GET", "/stats").json
            got["after"] = o
            return o["events"]["delivered"] >= mid["events"]["delivered"] + 2 * n
        check(wait_for(moved, T(5)), f"delivered never moved by {2 * n}: "
                                     f"{got.get('after', {}).get('events')}")
        await ws.close()
        sse.close()
    asyncio.run(clients())
    mid, after = got["mid"], got["after"]
    check(mid["ws"]["clients"] == 1 and mid["sse"]["clients"] == 1,
          f"clients: ws {mid['ws']}, sse {mid['sse']}")
    check(mid["ws"]["memory_bytes"] >= 0, f"ws: {mid['ws']}")
    ev0, ev1 = mid["events"], after["events"]
    check(ev1["dispatched"] - ev0["dispatched"] == n + 1 and
          ev1["delivered"] - ev0["delivered"] == 2 * n,
          f"events before {ev0}, after {ev1}: want dispatched +{n + 1}, "
          f"delivered +{2 * n}")

    def walk(x, y, path=""):
        """Counters (every integer but the gauges) never go back."""
        gauges = {"clients", "memory_bytes", "waiting", "queue_depth",
                  "worker_queue_depth", "instances", "leases_held",
                  "pending", "running", "done", "failed", "cancelled"}
        if isinstance(x, dict):
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, int) and not isinstance(x, bool):
            k = path.rsplit(".", 1)[-1]
            check(k in gauges or y >= x, f"stats{path} went {x} -> {y}")
    walk(a, after)
    r = http_req(s.port, "GET", "/stats?x=%zz&" + "y" * 2000)
    check(r.status == 200 and isinstance(r.json, dict), f"junk query: {r!r}")
    for method in ("POST", "DELETE", "PUT"):
        r = http_req(s.port, method, "/stats", "{}")
        check(r.status == 405 and r.code() == "method_not_allowed",
              f"{method} /stats: {r!r}")
    s.stop_ok()
    return f"+{n + 1} dispatched, +{2 * n} delivered"


def t_api_tasks_rows():
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=H.root,
                                     delete=False) as f:
        f.write("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.1; done\n")
        stubborn = f.name
    os.chmod(stubborn, 0o755)
    s = Taskbus("rows", "--exec-allow", stubborn).start()
    post = lambda body: http_req(s.port, "POST", "/tasks", body)
    r = post({"kind": "sleep", "name": "r1", "args": {"seconds": 30}})
    check(r.status == 201 and r.json.get("name") == "r1", f"spawn r1: {r!r}")
    r = post({"kind": "sleep", "name": "r1", "args": {"seconds": 30}})
    check(r.status == 409 and r.code() == "name_taken", f"r1 again: {r!r}")
    r = post({"kind": "nope", "name": "r2"})
    check(r.status == 404 and r.code() == "unknown_kind", f"kind nope: {r!r}")
    r = post({"kind": "sleep", "name": "r2", "args": {"seconds": "x"}})
    check(r.status == 400 and r.code() == "bad_args", f"seconds 'x': {r!r}")
    r = post({"kind": "sleep", "name": "r2", "args": {"secs": 1}})
    check(r.status == 400 and r.code() == "bad_args", f"unknown arg: {r!r}")
    r = http_req(s.port, "POST", "/tasks", "{not json")
    check(r.status == 400 and r.code() == "bad_json", f"bad JSON: {r!r}")
    r = post({"kind": "sleep", "worker": 99})
    check(r.status == 400 and r.code() == "bad_worker", f"worker 99: {r!r}")
    r = post({"kind": "sleep", "extra": 1})
    check(r.status == 400 and r.code() == "bad_request", f"extra: {r!r}")
    # A browser drops "." and ".." from a URL: no /tasks/{name} for them.
    for name in (".", ".."):
        r = post({"kind": "sleep", "name": name, "args": {"seconds": 1}})
        check(r.status == 400 and r.code() == "bad_name", f"{name}: {r!r}")
    r = http_req(s.port, "GET", "/tasks/r1")
    check(r.status == 200 and r.json.get("kind") == "sleep"
          and r.json.get("created"), f"GET /tasks/r1: {r!r}")
    r = http_req(s.port, "GET", "/tasks?state=running")
    check(r.status == 200 and "r1" in [t["name"] for t in r.json["tasks"]],
          f"GET /tasks?state=running: {r!r}")
    r = http_req(s.port, "DELETE", "/tasks/nope")
    check(r.status == 404, f"DELETE /tasks/nope: {r!r}")
    r = http_req(s.port, "DELETE", "/tasks/r1?timeout=5")
    check(r.status == 200 and r.json.get("state") == "cancelled",
          f"DELETE /tasks/r1: {r!r}")
    # 504: a task that does not finish in time is still cancelling.
    r = post({"kind": "exec", "name": "stub",
              "args": {"command": stubborn, "grace": 3}})
    check(r.status == 201, f"spawn exec stub: {r!r}")
    time.sleep(0.3)
    r = http_req(s.port, "DELETE", "/tasks/stub?timeout=0.3")
    check(r.status == 504, f"DELETE of a task still cancelling: want 504, "
                           f"got {r!r}")
    t = finished_task(s.port, "stub", T(10))
    check(t and t["state"] == "cancelled", f"stub ended {t}")
    r = http_req(s.port, "POST", "/tasks/purge")
    check(r.status == 200 and r.json.get("purged", 0) >= 2, f"purge: {r!r}")
    r = http_req(s.port, "GET", "/tasks/r1")
    check(r.status == 404, f"r1 after purge: {r!r}")
    s.stop_ok()


def t_api_bus_down():
    # A Redis URL with nothing listening: not ready, dispatch refused.
    port = free_port()
    s = Taskbus("busdown", "--redis-url", f"redis://127.0.0.1:{port}",
                "--redis-connect-timeout", "200").start()
    r = http_req(s.port, "GET", "/readyz")
    check(r.status == 503 and r.code() == "not_ready", f"/readyz: {r!r}")
    r = http_req(s.port, "GET", "/healthz")
    check(r.status == 200, f"/healthz with the bus down: {r!r}")
    r = http_req(s.port, "POST", "/events/a.b", "x")
    check(r.status == 503 and r.code() == "bus_down", f"POST with the bus "
                                                      f"down: {r!r}")
    s.stop_ok()


def t_api_metrics():
    s = Taskbus("metrics").start()

    async def go():
        async with websockets.connect(f"ws://{HOST}:{s.port}/ws?events=m.*"):
            await asyncio.sleep(0.2)
            return http_req(s.port, "GET", "/metrics")
    http_req(s.port, "POST", "/events/m.x", "1")
    http_req(s.port, "GET", "/tasks/nope")
    r = asyncio.run(go())
    check(r.status == 200 and r.headers.get("content-type", "")
          .startswith("text/plain"), f"/metrics: {r!r}")
    text = r.body.decode()

    def value(series):
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return None
    check(value("taskbus_ws_clients") == 1, "taskbus_ws_clients is not 1 "
          "with one websocket open")
    check(value("taskbus_events_published_total") >= 1,
          "taskbus_events_published_total")
    check(re.search(r'taskbus_http_requests_total\{route="/tasks/\{name\}",'
                    r'method="GET",status="404"\} 1', text),
          "the 404 on /tasks/{name} is not counted")
    check('taskbus_http_request_duration_seconds_bucket' in text,
          "no request duration histogram")
    check(re.search(r'taskbus_tasks\{state="running"\} [1-9]', text),
          "no running tasks counted (the websocket's two)")
    s.stop_ok()


# ------------------------------------------------------------------ HTTP edges
#
# Raw sockets against the binary: what civetweb lets through or answers
# itself (framing headers, malformed requests), long polls that hold HTTP
# threads, and websocket clients that reset during the hand-over.


def raw_read(s, timeout):
    """Reads s until the server closes it or timeout passes: (bytes,
    closed by the server)."""
    data, end = b"", time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return data, False
        s.settimeout(left)
        try:
            b = s.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not b:
            return data, True
        data += b


def raw_exchange(port, data, timeout=None):
    """Sends data on a new connection: (everything the server sent until
    it closed, or until timeout, and whether it closed)."""
    with socket.create_connection((HOST, port), T(5)) as s:
        s.sendall(data)
        return raw_read(s, timeout or T(3))


def parse_answers(data):
    """The answers in data: [(status line, {header: value}, body)], header
    names in lower case; bytes that are not a whole answer end the list as
    (their text, {}, b"")."""
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            out.append((data.decode("latin-1"), {}, b""))
            break
        lines = data[:end].decode("latin-1").split("\r\n")
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        out.append((lines[0], headers, data[end + 4:end + 4 + n]))
        data = data[end + 4 + n:]
    return out


def check_refused(what, data, closed, status, code):
    """One answer: an HTTP/1.1 status line with status, the API's JSON
    error {"error": code, "message"}, Connection: close; then closed."""
    answers = parse_answers(data)
    check(len(answers) == 1, f"{what}: want one answer, got "
                             f"{len(answers)}: {data[:600]!r}")
    line, headers, body = answers[0]
    check(re.fullmatch(rf"HTTP/1\.1 {status} [A-Za-z][A-Za-z -]*", line),
          f"{what}: status line {line!r}, want HTTP/1.1 {status} <reason>")
    check(headers.get("content-type") == "application/json",
          f"{what}: content type {headers.get('content-type')!r}; "
          f"{data[:400]!r}")
    try:
        j = json.loads(body)
    except ValueError:
        j = None
    check(isinstance(j, dict) and j.get("error") == code
          and isinstance(j.get("message"), str) and j["message"],
          f"{what}: body {body[:300]!r}, want error {code!r} and a message")
    check(headers.get("connection") == "close",
          f"{what}: Connection {headers.get('connection')!r}, want close")
    check(closed, f"{what}: the connection stayed open after {status}")


def post_head(*headers, target="/events/frame.a", version="1.1"):
    return (f"POST {target} HTTP/{version}\r\nHost: t\r\n" +
            "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def t_http_framing():
    s = Taskbus("framing").start()
    chunked = b"3\r\nabc\r\n0\r\n\r\n"
    many = [f"X-H{i}: v" for i in range(62)]  # + Host, Content-Length: 64
    refused = [
        ("Content-Length 3 and 5", post_head("Content-Length: 3",
                                             "Content-Length: 5") + b"abcde",
         400, "bad_content_length"),
        ("Content-Length: 0x10 (the body is a request)",
         post_head("Content-Length: 0x10") +
         b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
         400, "bad_content_length"),
        ("Content-Length: -1", post_head("Content-Length: -1") + b"abc",
         400, "bad_content_length"),
        ("Content-Length: +3", post_head("Content-Length: +3") + b"abc",
         400, "bad_content_length"),
        ("Content-Length: 3, 3", post_head("Content-Length: 3, 3") + b"abc",
         400, "bad_content_length"),
        ("Content-Length: (empty)", post_head("Content-Length:") + b"abc",
         400, "bad_content_length"),
        ("Content-Length with Transfer-Encoding: chunked",
         post_head("Content-Length: 3", "Transfer-Encoding: chunked") +
         chunked, 400, "bad_framing"),
        ("Transfer-Encoding: chunked with Content-Length after it",
         post_head("Transfer-Encoding: chunked", "Content-Length: 30") +
         chunked, 400, "bad_framing"),
        ("Transfer-Encoding: gzip", post_head("Transfer-Encoding: gzip") +
         b"abc", 400, "bad_transfer_encoding"),
        ("Transfer-Encoding: identity",
         post_head("Transfer-Encoding: identity", "Content-Length: 3") +
         b"abc", 400, "bad_framing"),
        ("Transfer-Encoding: identity alone",
         post_head("Transfer-Encoding: identity") + b"abc", 400,
         "bad_transfer_encoding"),
        ("Transfer-Encoding: chunked, chunked",
         post_head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
         + chunked, 400, "bad_transfer_encoding"),
        ("Transfer-Encoding: chunked, gzip",
         post_head("Transfer-Encoding: chunked", "Transfer-Encoding: gzip")
         + chunked, 400, "bad_transfer_encoding"),
        ("Transfer-Encoding: gzip, chunked",
         post_head("Transfer-Encoding: gzip, chunked") + chunked, 501,
         "unsupported_transfer_encoding"),
        ("Transfer-Encoding in HTTP/1.0",
         post_head("Transfer-Encoding: chunked", version="1.0") + chunked,
         400, "bad_transfer_encoding"),
        ("64 header lines (civetweb reads 64 at most)",
         post_head(*many, "Content-Length: 3") + b"abc", 431,
         "headers_too_large"),
    ]
    # civetweb stops at a line that does not start like a header and
    # ignores the rest: the hidden Content-Length would make the body (a
    # DELETE) the next request.
    smuggled = b"DELETE /tasks/victim HTTP/1.1\r\nHost: t\r\n\r\n"
    hidden = f"Content-Length: {len(smuggled)}"
    for what, line, code in (
            ("an obs-fold line", " folded", "bad_header"),
            ("a line starting with ':'", ":x", "bad_header"),
            # civetweb refuses these two itself
            ("a tab-folded line", "\tfolded", "bad_request"),
            ("a line starting with a control byte", "\x01j: y",
             "bad_request")):
        refused.append((what + " before Content-Length",
                        post_head(line, hidden) + smuggled, 400, code))
    # Ambiguous in civetweb's buffer with a CRLF head whose next line is
    # not a header: refused (RFC 9112 2.2 lets a server require CRLF).
    refused.append(("bare-LF line endings, a body after \\n\\n",
                    b"POST /events/frame.a HTTP/1.1\nHost: t\nContent-Length:"
                    b" 3\n\nabc", 400, "bad_header"))
    refused.append(("an obs-fold line after bare-LF lines",
                    b"POST /events/frame.a HTTP/1.1\nHost: t\n folded\n" +
                    hidden.encode() + b"\n\n" + smuggled, 400,
                    "bad_header"))
    for what, req, status, code in refused:
        data, closed = raw_exchange(s.port, req)
        check_refused(what, data, closed, status, code)
    # What stays accepted: equal copies, chunked alone, 63 header lines,
    # and a request pipelined after a body.
    close = "Connection: close"
    accepted = [
        ("Content-Length 3 twice", post_head(
            "Content-Length: 3", "Content-Length: 3", close) + b"abc"),
        ("Transfer-Encoding: chunked",
         post_head("Transfer-Encoding: Chunked", close) + chunked),
        ("63 header lines", post_head(*many[:60], "Content-Length: 3",
                                      close) + b"abc"),
        ("a pipelined GET after a body",
         post_head("Content-Length: 3") + b"abc" +
         b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    ]
    for what, req in accepted:
        data, closed = raw_exchange(s.port, req)
        answers = parse_answers(data)
        check(closed and answers and answers[0][0].startswith("HTTP/1.1 202 "),
              f"{what}: want 202, got {data[:400]!r}")
        if "pipelined" in what:
            check(len(answers) == 2 and
                  answers[1][0].startswith("HTTP/1.1 200 "),
                  f"{what}: want 202 then 200, got {data[:600]!r}")
    s.stop_ok()
    return f"{len(refused)} refused, {len(accepted)} accepted"


def ws_upgrade(key, version="13"):
    return (f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: {version}\r\n"
            f"Sec-WebSocket-Key: {key}\r\n\r\n").encode()


def head_of(size):
    """A GET /healthz head (Connection: close) of exactly size bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-A: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def t_http_malformed():
    s = Taskbus("malformed").start()
    good_key = "dGhlIHNhbXBsZSBub25jZQ=="
    cases = [
        ("method FOO<script>, HTTP/9.9",
         b"FOO<script> /x HTTP/9.9\r\nHost: t\r\n\r\n", 400, "bad_request"),
        ("raw spaces in the target",
         b"GET /a b c HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_request"),
        ("no request line", b"GARBAGE\r\n\r\n", 400, "bad_request"),
        ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505,
         "http_version_not_supported"),
        ("headers over max_request_size",
         b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 9000 +
         b"\r\n\r\n", 431, "headers_too_large"),
        ("a head of max_request_size + 1 (8193) bytes", head_of(8193), 431,
         "headers_too_large"),
        ("a 5000-byte Sec-WebSocket-Key", ws_upgrade("A" * 5000), 400,
         "bad_websocket_key"),
        ("a 23-byte Sec-WebSocket-Key", ws_upgrade(good_key[:-1]), 400,
         "bad_websocket_key"),
        ("Sec-WebSocket-Version: 8", ws_upgrade(good_key, "8"), 426,
         "bad_websocket_version"),
    ]
    for what, req, status, code in cases:
        data, closed = raw_exchange(s.port, req)
        check_refused(what, data, closed, status, code)
    # civetweb's max_request_size (8192) is the head's limit: at it, served.
    data, _ = raw_exchange(s.port, head_of(8192))
    check(data.startswith(b"HTTP/1.1 200 "), f"a head of exactly 8192 bytes: "
                                             f"{data[:200]!r}")
    # Refused upgrades hold no websocket slot; a good one still works.
    check(metric_value(s.port, "taskbus_ws_clients") == 0,
          "taskbus_ws_clients is not 0 after refused upgrades")
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(ws_upgrade(good_key))
        c.settimeout(T(5))
        head = c.recv(4096)
    check(head.startswith(b"HTTP/1.1 101 ") and
          b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head,
          f"a good upgrade: {head[:300]!r}")
    s.stop_ok()
    return f"{len(cases)} requests"


def t_http_auth_order():
    """With a token, the token is checked before routing: a client without
    it cannot tell unknown paths and wrong methods from real routes."""
    token = "tok-" + secrets.token_hex(8)
    s = Taskbus("authorder", "--token", token).start()
    good_key = "dGhlIHNhbXBsZSBub25jZQ=="
    creds = [("no token", ""), ("a wrong token", "Bearer tok-wrong"),
             ("the token", f"Bearer {token}")]

    def ask(method, target, auth, upgrade=False):
        extra = f"Authorization: {auth}\r\n" if auth else ""
        if upgrade:
            extra += ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      f"Sec-WebSocket-Key: {good_key}\r\n")
        else:
            extra += "Connection: close\r\n"
        data, _ = raw_exchange(s.port, f"{method} {target} HTTP/1.1\r\n"
                               f"Host: t\r\n{extra}\r\n".encode())
        answers = parse_answers(data)
        check(answers, f"{method} {target}: no answer")
        line, headers, body = answers[0]
        try:
            code = json.loads(body).get("error") if body else None
        except ValueError:
            code = None
        return int(line.split()[1]), headers, code

    # (method, target, upgrade, status and code with the token)
    cases = [
        ("GET", "/nope", False, 404, "not_found"),
        ("GET", "/tasks/a/b", False, 404, "not_found"),
        ("HEAD", "/nope", False, 404, None),
        ("PUT", "/tasks", False, 405, "method_not_allowed"),
        ("GET", "/kinds", False, 200, None),
        ("GET", "/stats", False, 200, None),
        ("DELETE", "/stats", False, 405, "method_not_allowed"),
        ("POST", "/kinds", False, 405, "method_not_allowed"),
        ("DELETE", "/events/x", False, 405, "method_not_allowed"),
        ("POST", "/healthz", False, 405, "method_not_allowed"),
        ("GET", "/nope", True, 404, "not_found"),
    ]
    n = 0
    for method, target, upgrade, status, code in cases:
        for who, auth in creds:
            what = (f"{method} {target}{' (websocket upgrade)' if upgrade else ''}"
                    f" with {who}")
            st, headers, got = ask(method, target, auth, upgrade)
            n += 1
            if auth.endswith(token):
                check(st == status and got == code,
                      f"{what}: {st} {got}, want {status} {code}")
                if status == 405:
                    check("allow" in headers, f"{what}: no Allow header")
                continue
            check(st == 401, f"{what}: {st} {got}, want 401")
            check(method == "HEAD" or got == "unauthorized",
                  f"{what}: error {got!r}, want unauthorized")
            check(headers.get("www-authenticate") == "Bearer",
                  f"{what}: WWW-Authenticate {headers.get('www-authenticate')!r}")
            check("allow" not in headers, f"{what}: an Allow header: {headers}")
    # The probes stay open, GET and HEAD.
    for method in ("GET", "HEAD"):
        for target in ("/healthz", "/readyz"):
            st, _, _ = ask(method, target, "")
            n += 1
            check(st == 200, f"{method} {target} without a token: {st}")
    # With the token the websocket endpoint still upgrades.
    with socket.create_connection((HOST, s.port), T(5)) as c:
        c.sendall(f"GET /ws?token={token} HTTP/1.1\r\nHost: t\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Key: {good_key}\r\n\r\n".encode())
        c.settimeout(T(5))
        head = c.recv(4096)
    check(head.startswith(b"HTTP/1.1 101 "), f"/ws with the token: "
                                             f"{head[:200]!r}")
    s.stop_ok()
    return f"{n} requests"


def raw_get(port, target):
    """A socket that has sent GET target (keep-alive)."""
    c = socket.create_connection((HOST, port), T(5))
    c.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return c


def wait_tasks(port):
    r = http_req(port, "GET", "/tasks")
    return [t for t in r.json["tasks"] if t["name"].startswith("http.wait:")]


def timed_probe(port, what):
    """GET /readyz (it needs one of civetweb's threads; the front answers
    /healthz itself) answers 200 within T(1) s."""
    t0 = time.monotonic()
    try:
        r = http_req(port, "GET", "/readyz", timeout=T(3))
    except (OSError, http.client.HTTPException) as e:
        raise AssertionError(f"/readyz {what}: {type(e).__name__} after "
                             f"{time.monotonic() - t0:.1f} s")
    took = time.monotonic() - t0
    check(r.status == 200 and took < T(1),
          f"/readyz {what}: {r.status} after {took:.2f} s, want 200 "
          f"within {T(1)} s")
    return took


def t_longpoll_abandoned():
    """The issue's case: 100 long polls whose clients leave after 0.5 s,
    half closing, half resetting. Other requests keep answering; the
    waits end with their clients."""
    s = Taskbus("abandon").start()
    socks = [raw_get(s.port, f"/events/nobody.{i}?timeout=10")
             for i in range(100)]
    time.sleep(0.5)
    took = timed_probe(s.port, "with 100 long polls open")
    # Half of the 64 HTTP threads wait (the default http_longpoll_max);
    # the others were refused.
    waiting = 32
    check(wait_for(lambda: metric_value(s.port, "taskbus_http_longpolls")
                   == waiting, T(5)),
          f"taskbus_http_longpolls is not {waiting} with 100 long polls")
    for i, c in enumerate(socks):
        if i % 2:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        c.close()
    t0 = time.monotonic()
    timed_probe(s.port, "once the 100 clients left")
    left = wait_for(lambda: not wait_tasks(s.port) and
                    metric_value(s.port, "taskbus_http_longpolls") == 0,
                    T(2))
    check(left, f"{len(wait_tasks(s.port))} wait tasks still there "
                f"{time.monotonic() - t0:.1f} s after their clients left")
    gone = metric_value(s.port, "taskbus_http_longpolls_abandoned_total")
    check(gone == waiting, f"taskbus_http_longpolls_abandoned_total "
                           f"{gone}, want the {waiting} that were waiting")
    s.stop_ok()
    return f"{waiting} waited, /readyz in {took:.2f} s"


def t_longpoll_tricks():
    """Clients that leave in the ways the first detection missed: a reset
    right after the request (before the server ever looked for the
    socket), and a byte sent after the request, then a close or a reset.
    Each wait ends within 2 s, and the slots are free again."""
    s = Taskbus("tricks", "--http-threads", "8", "--http-longpoll-max",
                "4").start()
    ways = ("reset at once", "byte then close", "byte then reset",
            "half-close")
    for way in ways:
        socks = [raw_get(s.port, f"/events/trick.{i}?timeout=300")
                 for i in range(4)]
        if way != "reset at once":
            time.sleep(0.3)  # the server found each socket meanwhile
        for c in socks:
            if way.startswith("byte"):
                c.sendall(b"X")
            if way == "half-close":
                c.shutdown(socket.SHUT_WR)
                continue
            if way != "byte then close":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
            c.close()
        left = wait_for(lambda: metric_value(s.port, "taskbus_http_longpolls")
                        == 0, T(2))
        check(left, f"{way}: {metric_value(s.port, 'taskbus_http_longpolls')}"
                    f" long polls still wait 2 s after their clients left")
        r = http_req(s.port, "GET", "/events/trick.free?timeout=0")
        check(r.status == 204, f"{way}: a new long poll after they left: "
                               f"want 204, got {r!r}")
        for c in socks:
            c.close()
    s.stop_ok()
    return ", ".join(ways)


def t_longpoll_cap():
    """--http-longpoll-max 3: three long polls wait, the fourth is 503
    too_many_waits with Retry-After; one leaving makes room again."""
    s = Taskbus("cap", "--http-threads", "6", "--http-longpoll-max",
                "3").start()
    socks = [raw_get(s.port, f"/events/cap.{i}?timeout=20") for i in range(3)]
    try:
        check(wait_for(lambda: len(wait_tasks(s.port)) == 3, T(5)),
              f"3 long polls: {len(wait_tasks(s.port))} wait tasks")
        t0 = time.monotonic()
        r = http_req(s.port, "GET", "/events/cap.x?timeout=20")
        check(r.status == 503 and r.code() == "too_many_waits" and
              r.headers.get("retry-after") == "1" and
              r.headers.get("connection") == "close" and
              time.monotonic() - t0 < T(1),
              f"the 4th long poll: {r!r} {r.headers}")
        timed_probe(s.port, "with the long polls at their cap")
        check(metric_value(s.port, "taskbus_http_longpolls_refused_total")
              == 1, "taskbus_http_longpolls_refused_total is not 1")
        socks.pop().close()
        check(wait_for(lambda: metric_value(s.port, "taskbus_http_longpolls")
                       == 2, T(2)), "a long poll whose client left still "
                                    "counts")
        t0 = time.monotonic()
        r = http_req(s.port, "GET", "/events/cap.y?timeout=0.5")
        check(r.status == 204 and time.monotonic() - t0 >= 0.45,
              f"a third long poll again: want 204 after 0.5 s, got {r!r}")
    finally:
        for c in socks:
            c.close()
    s.stop_ok()
    bad_usage(["serve", "--http-threads", "4", "--http-longpoll-max", "4"],
              names=["http.longpoll_max"])
    bad_usage(["serve", "--http-longpoll-max", "-1"],
              names=["--http-longpoll-max"])
    # The front holds at least one whole body: below max_body, refused.
    bad_usage(["serve", "--max-body", "4096", "--http-body-memory-max",
               "4095"], names=["http.body_memory_max"],
              also=["http.max_body"])


def t_ws_handover_reset():
    """Clients that reset right after sending the upgrade: the failed
    hand-overs are counted, and logged at most once a second."""
    s = Taskbus("reset").start()
    n = 300
    t0 = time.monotonic()
    for _ in range(n):
        c = socket.create_connection((HOST, s.port), T(5))
        key = base64.b64encode(os.urandom(16)).decode()
        c.sendall(ws_upgrade(key))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        c.close()
    took = time.monotonic() - t0
    timed_probe(s.port, f"after {n} resets")
    time.sleep(0.2)
    failed = metric_value(s.port, "taskbus_ws_handover_failures_total")
    check(failed is not None and failed >= 1,
          f"taskbus_ws_handover_failures_total is {failed}")
    check(wait_for(lambda: metric_value(s.port, "taskbus_ws_clients") == 0,
                   T(2)), "taskbus_ws_clients is not back to 0")
    lines = [l for l in s.err_text().splitlines()
             if "cannot take the socket over" in l]
    most = int(took) + 2
    check(len(lines) <= most, f"{len(lines)} 'cannot take the socket over' "
                              f"lines for {n} resets in {took:.1f} s, want "
                              f"at most {most}")
    s.stop_ok()
    return f"{int(failed)} failed hand-overs, {len(lines)} log lines"


# Refusals before the body is read: lingering close (docs/HTTP_DESIGN.md).
BIG = 2 * 1024 * 1024  # over the default http.max_body (1 MiB)


def refusal_json(what, status, body, want=413, code="too_large"):
    try:
        j = json.loads(body)
    except ValueError:
        j = None
    check(status == want and isinstance(j, dict) and j.get("error") == code,
          f"{what}: {status} {body[:200]!r}, want {want} {code!r}")


def t_refusal_httpclient(tries=20, args=()):
    """Python's http.client sends its whole 2 MiB body before it reads:
    it gets the 413 and its JSON error every time, no broken pipe."""
    s = Taskbus("linger-py", *args).start()
    body = os.urandom(BIG)
    bad = []
    for i in range(tries):
        c = http.client.HTTPConnection(HOST, s.port, timeout=T(10))
        try:
            c.request("POST", "/events/big.x", body=body,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            refusal_json(f"try {i + 1}", r.status, r.read())
        except (OSError, http.client.HTTPException, AssertionError) as e:
            bad.append(f"try {i + 1}: {type(e).__name__}: {e}")
        finally:
            c.close()
    check(not bad, f"{len(bad)} of {tries} did not read the 413: "
                   + "; ".join(bad[:5]))
    timed_probe(s.port, f"after {tries} refused bodies")
    s.stop_ok()
    return f"{tries} of {tries} read the 413"


def t_refusal_curl(tries=20):
    """curl --data-binary with a 2 MiB file: 413 and the JSON error,
    curl exits 0, every time."""
    s = Taskbus("linger-curl").start()
    path = os.path.join(H.root, "big.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(BIG))
    out = os.path.join(H.root, "curl.out")
    bad = []
    for i in range(tries):
        p = subprocess.run(
            ["curl", "-sS", "--max-time", str(T(10)), "-o", out, "-w",
             "%{http_code}", "-H", "Content-Type: application/json",
             "--data-binary", "@" + path, f"{s.url()}/events/big.x"],
            capture_output=True, text=True, timeout=T(20))
        try:
            check(p.returncode == 0, f"curl exit {p.returncode}: "
                                     f"{p.stderr.strip()}")
            with open(out, "rb") as f:
                refusal_json(f"try {i + 1}", int(p.stdout or 0), f.read())
        except AssertionError as e:
            bad.append(f"try {i + 1}: {e}")
    check(not bad, f"{len(bad)} of {tries} did not get the 413: "
                   + "; ".join(bad[:5]))
    s.stop_ok()
    return f"{tries} of {tries} got the 413"


def send_until_closed(c, chunk, pause, limit_s, limit_bytes):
    """Sends chunk every pause s until the send fails (the server closed):
    (seconds, bytes sent), or fails the case past limit_s/limit_bytes."""
    t0, sent = time.monotonic(), 0
    c.settimeout(T(5))
    while True:
        took = time.monotonic() - t0
        check(took < limit_s and sent < limit_bytes,
              f"still sending after {took:.1f} s and {sent} bytes")
        try:
            sent += c.send(chunk)
        except OSError:  # EPIPE, ECONNRESET: closed
            return took, sent
        if pause:
            time.sleep(pause)


def t_refusal_trickle():
    """Clients that trickle an over-limit body a byte at a time: each has
    its 413, and is cut off within http.discard_timeout_ms (default 2 s)
    of it; /healthz answers meanwhile (4 HTTP threads, 3 tricklers)."""
    s = Taskbus("linger-slow", "--http-threads", "4").start()
    socks = []
    for _ in range(3):
        c = socket.create_connection((HOST, s.port), T(5))
        c.sendall(post_head(f"Content-Length: {BIG}",
                            target="/events/slow.x"))
        socks.append(c)
    try:
        for i, c in enumerate(socks):
            c.settimeout(T(3))
            data = b""
            while b"\r\n\r\n" not in data:
                b = c.recv(4096)
                check(b, f"trickler {i}: closed before an answer")
                data += b
            check(data.startswith(b"HTTP/1.1 413 "),
                  f"trickler {i}: {data[:100]!r}, want a 413")
        t0 = time.monotonic()
        timed_probe(s.port, "with 3 clients trickling refused bodies")
        send_until_closed(socks[0], b"x", 0.05, T(2) + 2, BIG)
        took = time.monotonic() - t0  # since the answers
        check(took > 1.0, f"cut off after {took:.2f} s, before the 2 s "
                          f"bound")
        for c in socks[1:]:
            send_until_closed(c, b"x", 0.05, T(1), BIG)
        timed_probe(s.port, "once the tricklers were cut off")
    finally:
        for c in socks:
            c.close()
    s.stop_ok()
    return f"cut off {took:.2f} s after the answers"


def t_refusal_flood():
    """A client that sends more than http.discard_max after its refusal is
    closed once that much is read, long before the time bound: the server
    does not read an unbounded body."""
    mib = 1024 * 1024
    s = Taskbus("linger-flood", "--http-discard-max", str(mib),
                "--http-discard-timeout", "10000").start()
    c = socket.create_connection((HOST, s.port), T(5))
    try:
        c.sendall(post_head(f"Content-Length: {1024 * mib}",
                            target="/events/flood.x"))
        # Loopback buffers hold a few MiB more than the server reads.
        took, sent = send_until_closed(c, b"x" * 65536, 0, T(3), 64 * mib)
    finally:
        c.close()
    timed_probe(s.port, "after the flood")
    s.stop_ok()
    return f"closed after {sent // 1024} KiB sent, {took:.2f} s"


# ------------------------------------------------------------------ exec


def spawn_exec(port, name, args):
    return http_req(port, "POST", "/tasks", json.dumps(
        {"kind": "exec", "name": name, "args": args}).encode(),
        {"Content-Type": "application/json"})


def task_of(port, name):
    r = http_req(port, "GET", f"/tasks/{name}")
    return r.json if r.status == 200 else None


def finished_task(port, name, timeout):
    got = {}

    def done():
        t = task_of(port, name)
        if t and t.get("state") not in ("pending", "running"):
            got["t"] = t
            return True
        return False
    wait_for(done, timeout)
    return got.get("t")


def t_exec_off():
    s = Taskbus("exec-off").start()
    r = spawn_exec(s.port, "e0", {"command": "/bin/echo hi"})
    check(r.status == 403 and r.json.get("error") == "not_allowed",
          f"exec without --exec-allow: want 403 not_allowed, got {r!r}")
    s.stop_ok()


def t_exec_runs():
    s = Taskbus("exec", "--exec-allow", "/bin/echo,/bin/sh,/bin/sleep").start()
    w = Watch("exec", ["task.e1.*", "pat.*"], env=url_env(s))
    w.ready(s.port)
    r = spawn_exec(s.port, "e1", {"command": "/bin/echo hello  world"})
    check(r.status == 201, f"exec /bin/echo: {r!r}")
    ev = w.event(lambda e: e.get("name") == "task.e1.stdout", T(10))
    check(ev and ev.get("data") == "hello world",
          f"no task.e1.stdout event with the line: {w.lines()}")
    t = finished_task(s.port, "e1", T(10))
    check(t and t["state"] == "done" and t["result"] == 0,
          f"exec /bin/echo ended {t}")
    # Not allowed: a program off the list, or a path that only starts
    # like an allowed one.
    for cmd in ("/usr/bin/id", "/bin/echoX hi", "/bin/sh/../echo x"):
        r = spawn_exec(s.port, "e-no", {"command": cmd})
        check(r.status == 403 and r.json.get("error") == "not_allowed",
              f"exec {cmd!r}: want 403, got {r!r}")
    r = spawn_exec(s.port, "e-bad", {"command": "   "})
    check(r.status == 400, f"exec of a blank command: want 400, got {r!r}")
    r = spawn_exec(s.port, "e-bad", {"command": "/bin/echo", "shell": 1})
    check(r.status == 400 and r.json.get("error") == "bad_args",
          f"exec with an unknown arg: want 400 bad_args, got {r!r}")
    # The exit status is the result; stderr lines are events too.
    r = spawn_exec(s.port, "e2", {"command": "/bin/sh -c 'exit'"})
    check(r.status == 201, f"exec /bin/sh: {r!r}")
    t = finished_task(s.port, "e2", T(10))
    check(t and t["state"] in ("done", "failed"), f"exec /bin/sh: {t}")
    w2 = Watch("exec2", ["task.e3.stderr", "pat.*"], env=url_env(s))
    w2.ready(s.port)
    # No shell quoting: each blank-separated word is one argument.
    r = spawn_exec(s.port, "e3", {"command": "/bin/sh -c no_such_cmd_tb"})
    check(r.status == 201, f"exec /bin/sh -c no_such_cmd_tb: {r!r}")
    t = finished_task(s.port, "e3", T(10))
    check(t and t["state"] == "failed" and t["result"] == 127
          and "127" in (t.get("error") or ""),
          f"a command exiting 127 ended {t}")
    ev = w2.event(lambda e: "no_such_cmd_tb" in str(e.get("data")), T(10))
    check(ev, f"no task.e3.stderr event: {w2.lines()}")
    # Cancel: SIGTERM, then the task ends cancelled.
    r = spawn_exec(s.port, "e4", {"command": "/bin/sleep 60", "grace": 2})
    check(r.status == 201, f"exec /bin/sleep 60: {r!r}")
    time.sleep(0.3)
    t0 = time.monotonic()
    r = http_req(s.port, "DELETE", "/tasks/e4?timeout=10")
    check(r.status == 200 and r.json.get("state") == "cancelled"
          and "signal 15" in (r.json.get("error") or ""),
          f"cancel exec /bin/sleep: {r!r}")
    check(time.monotonic() - t0 < T(3), "cancelling /bin/sleep took "
          f"{time.monotonic() - t0:.1f} s")
    w.stop()
    w2.stop()
    s.stop_ok()


def t_exec_env():
    # The command must not see the service's settings (token, Redis URL).
    s = Taskbus("exec-env", "--exec-allow", "/usr/bin/env",
                env={"TASKBUS_NAMESPACE": "nsenv",
                     "TB_TEST_MARK": "visible"}).start()
    w = Watch("exec-env", ["task.envp.stdout", "pat.*"],
              env=dict(url_env(s), TASKBUS_NAMESPACE="nsenv"))
    w.ready(s.port)
    r = spawn_exec(s.port, "envp", {"command": "/usr/bin/env"})
    check(r.status == 201, f"exec /usr/bin/env: {r!r}")
    t = finished_task(s.port, "envp", T(10))
    check(t and t["state"] == "done", f"exec /usr/bin/env ended {t}")
    check(w.event(lambda e: e.get("data") == "TB_TEST_MARK=visible", T(10)),
          f"the command's environment lacks TB_TEST_MARK: {w.lines()}")
    leaked = [e for e in w.lines() if isinstance(e, dict)
              and str(e.get("data", "")).startswith("TASKBUS_")]
    check(not leaked, f"TASKBUS_* reached the command: {leaked}")
    w.stop()
    s.stop_ok()


def t_exec_ignores_term():
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=H.root,
                                     delete=False) as f:
        f.write("#!/bin/sh\ntrap '' TERM\necho started\n"
                "while :; do sleep 0.1; done\n")
        script = f.name
    os.chmod(script, 0o755)
    s = Taskbus("exec-kill", "--exec-allow", script).start()
    w = Watch("exec-kill", ["task.e6.stdout", "pat.*"], env=url_env(s))
    w.ready(s.port)
    r = spawn_exec(s.port, "e6", {"command": script, "grace": 0.5})
    check(r.status == 201, f"exec {script}: {r!r}")
    check(w.event(lambda e: e.get("data") == "started", T(10)),
          f"the script did not start: {w.lines()}")
    t0 = time.monotonic()
    r = http_req(s.port, "DELETE", "/tasks/e6?timeout=10")
    took = time.monotonic() - t0
    check(r.status == 200 and r.json.get("state") == "cancelled"
          and "signal 9" in (r.json.get("error") or ""),
          f"cancel of a command ignoring SIGTERM: {r!r}")
    check(0.4 < took < T(4), f"SIGKILL came after {took:.2f} s, want the "
          f"0.5 s grace")
    w.stop()
    s.stop_ok()


def children(pid):
    """(pid, state) of every process whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == pid:
            out.append((int(d), rest[0]))
    return out


def t_pid1_reaps():
    if os.geteuid() != 0 or not os.access("/usr/bin/unshare", os.X_OK):
        print("  (skipped: needs root and unshare for a PID namespace)")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=H.root,
                                     delete=False) as f:
        # Leaves an orphan behind: re-parented to PID 1, i.e. taskbus.
        f.write("#!/bin/sh\n(sleep 0.3; exit 3) >/dev/null 2>&1 &\n"
                "echo spawned\n")
        script = f.name
    os.chmod(script, 0o755)
    # --kill-child: if unshare goes, so does taskbus (PID 1 of the new
    # namespace); signals are sent to taskbus itself below.
    s = Taskbus("pid1", "--exec-allow", script,
                wrap=["/usr/bin/unshare", "--pid", "--fork",
                      "--kill-child"]).start()
    kids = [p for p, _ in children(s.proc.pid)]
    check(len(kids) == 1, f"unshare's children: {kids}")
    tb = kids[0]
    r = spawn_exec(s.port, "orphan", {"command": script})
    check(r.status == 201, f"exec {script}: {r!r}")
    t = finished_task(s.port, "orphan", T(10))
    check(t and t["state"] == "done", f"the script ended {t}")
    time.sleep(0.3)

    def no_zombie():
        return not [p for p, state in children(tb) if state == "Z"]
    ok = wait_for(no_zombie, T(3))
    check(ok, f"zombies left under taskbus as PID 1: {children(tb)}")
    # SIGTERM to taskbus (PID 1 there): a clean stop, and unshare exits 0.
    os.kill(tb, signal.SIGTERM)
    s.signalled = time.monotonic()
    s.stop_ok()


CASES = [
    ("cli", "--version and serve --version", t_version),
    ("cli", "--help, serve --help list every TASKBUS_* variable", t_help),
    ("cli", "README's settings table is taskbus config --markdown",
     t_settings_table),
    ("cli", "unknown options and commands exit 2", t_unknown),
    ("config", "bad values exit 2 naming the flag or variable", t_bad_values),
    ("config", "missing or empty token/password files exit 2",
     t_bad_token_files),
    ("config", "--listen 300.1.1.1:80 exits 2 naming the setting",
     t_bad_listen),
    ("config", "--redis-url ftp://... exits 2 naming the setting",
     t_bad_redis_url),
    ("config", "--listen on a port in use fails at once", t_listen_in_use),
    ("config", "--listen 0.0.0.0:P listens on every address", t_listen_any),
    ("config", "flags win over TASKBUS_* variables", t_flags_win),
    ("secrets", "token file and Redis password: API needs the token, no "
     "secret in the logs", t_secrets),
    ("secrets", "TASKBUS_REDIS_PASSWORD_FILE overrides the URL's password",
     t_password_file),
    ("logs", "--log-format json: every line a JSON object", t_log_json),
    ("logs", "--log-level warn hides info lines", t_log_level_warn),
    ("logs", "no Redis URL: in-process bus, /readyz 200", t_inproc),
    ("logs", "--print-events: events of 1 and 8 segments printed once",
     t_print_events),
    ("client", "dispatch NAME DATA, seen by watch 'pat.*'", t_dispatch_watch),
    ("client", "dispatch NAME - reads stdin", t_dispatch_stdin),
    ("client", "tasks spawn/get/list/cancel/purge", t_tasks),
    ("client", "healthcheck: 0 up, 1 down", t_healthcheck),
    ("instances", "three instances on one Redis list each other; SIGTERM "
     "leaves at once, SIGKILL within the TTL", t_instances_three),
    ("instances", "after a redis-server restart all three are listed again",
     t_instances_redis_restart),
    ("instances", "memory bus: GET /instances and taskbus instances list "
     "this one", t_instances_memory),
    ("instances", "hostile records in Redis: skipped, bounded, logged "
     "rate-limited", t_instances_hostile),
    ("client", "service down: exit 3", t_service_down),
    ("client", "--url, TASKBUS_URL, TASKBUS_LISTEN", t_url_sources),
    ("client", "token: TASKBUS_TOKEN, --token, token files, 401 exit 1",
     t_client_token),
    ("client", "watch refused (401): exit 1 with the reason",
     t_watch_refused),
    ("shutdown", "SIGTERM with a running sleep task: exit 0 in time",
     t_stop_with_task(TERM)),
    ("shutdown", "SIGINT with a running sleep task: exit 0 in time",
     t_stop_with_task(INT)),
    ("shutdown", "SIGTERM closes websockets 1001", t_ws_going_away(TERM)),
    ("shutdown", "SIGINT closes websockets 1001", t_ws_going_away(INT)),
    ("shutdown", "SIGTERM with --shutdown-delay: readyz 503, rest serves",
     t_shutdown_delay(TERM)),
    ("shutdown", "SIGINT with --shutdown-delay: readyz 503, rest serves",
     t_shutdown_delay(INT)),
    ("shutdown", "a second SIGTERM exits at once with 143",
     t_second_signal(TERM)),
    ("shutdown", "a second SIGINT exits at once with 130",
     t_second_signal(INT)),
    ("shutdown", "--log-format json: the second-signal line is JSON too",
     t_second_signal(TERM, "json")),
    ("shutdown", "SIGINT and SIGTERM reach the main thread alone",
     t_signal_thread),
    ("shutdown", "no 202-answered event lost at SIGTERM (two instances, "
     "one Redis)", t_no_loss),
    ("api", "GET /events long poll: 200 envelope, 204, 400", t_api_long_poll),
    ("api", "GET /events/{pattern} with a last \">\", raw and %3E",
     t_api_long_poll_tail),
    ("api", "GET /kinds: sorted kinds with argument specs", t_api_kinds),
    ("api", "GET /stats: counters move with events, clients counted",
     t_api_stats),
    ("api", "POST/GET/DELETE /tasks and purge: every status", t_api_tasks_rows),
    ("api", "Redis down: /readyz 503, POST /events 503 bus_down",
     t_api_bus_down),
    ("api", "GET /metrics: websocket clients, requests by route, tasks",
     t_api_metrics),
    ("http", "framing: Content-Length and Transfer-Encoding checked, 400 "
     "JSON and closed", t_http_framing),
    ("http", "malformed requests: a proper status line and a JSON error",
     t_http_malformed),
    ("http", "with a token: 401 before 404/405, probes open",
     t_http_auth_order),
    ("http", "abandoned long polls end at once; /readyz answers",
     t_longpoll_abandoned),
    ("http", "long polls whose clients reset early, or send a byte and "
     "leave, end too", t_longpoll_tricks),
    ("http", "--http-longpoll-max: the cap waits, one more is 503",
     t_longpoll_cap),
    ("http", "websocket resets at the hand-over: counted, logged once a "
     "second", t_ws_handover_reset),
    ("http", "413 read by http.client sending 2 MiB first, 20 of 20",
     t_refusal_httpclient),
    ("http", "413 read by curl --data-binary 2 MiB, 20 of 20",
     t_refusal_curl),
    ("http", "a refused body trickled: cut off within the discard time",
     t_refusal_trickle),
    ("http", "a refused body past http.discard_max: closed", t_refusal_flood),
    ("exec", "exec kind off without --exec-allow: 403", t_exec_off),
    ("exec", "as PID 1 (a PID namespace): orphans are reaped, SIGTERM stops",
     t_pid1_reaps),
    ("exec", "exec: output events, exit status, allow-list, cancel",
     t_exec_runs),
    ("exec", "exec: SIGKILL after the grace for a command ignoring SIGTERM",
     t_exec_ignores_term),
    ("exec", "exec: the command does not get TASKBUS_* variables",
     t_exec_env),
]


def main():
    runner = tbharness.CaseRunner(sys.argv[1:])
    return tbharness.run_suite("service_suite", "taskbus-svctest.", runner,
                               lambda: runner.run_cases(CASES))


if __name__ == "__main__":
    sys.exit(main())
