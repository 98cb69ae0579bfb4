"""tbharness.py - what the integration suites share: child processes that
die with the suite, a temp directory that is removed even after a SIGKILL,
timeouts stretched for sanitizer builds, an HTTP client, a raw websocket
client (frames by hand), a throwaway redis-server, the start of a taskbus
process, and the suite's main loop; for the websocket suites (ws_*_suite.py)
also the websockets client wrapper, a case's context, the checks they share
and a runner of groups of cases, each group on servers of its own; for
the suites that run `taskbus serve` as an operator would (service_suite,
cluster_suite) the Taskbus process, redis-cli, waits, and a runner of
plain case functions that stops and checks every server a case started.

Imported by the *_suite.py files beside it (each puts its own directory on
sys.path first). Python's standard library only, but for the websocket
part, which needs python3-websockets (run_groups says so when it is
missing).

How a suite runs: the real taskbus binary ($TASKBUS_BIN) on free 127.0.0.1
ports, driven by the websockets client (python3-websockets), the raw
websocket client for what that client will not send, and http.client. One
line per case, "PASS name" or "FAIL name: reason", and exit 1 if any
failed. Every wait has a timeout (scaled up for sanitizer builds); a
watchdog ends the suite after HARD_CAP_S. Everything started is stopped:
try/finally per case, an atexit handler, SIGKILL on our death
(PR_SET_PDEATHSIG) and a reaper that removes the temp directory. At the end
of each group, each taskbus gets SIGTERM and must exit 0 within 15 s: a
sanitizer report makes that fail, with the log's tail printed. Words given
on the command line select the cases whose group or name contains one.

The state the helpers share lives in one object, H (a Harness): the binary
under test ($TASKBUS_BIN) and its timeout scale, read once at import, and
the temp directory and child processes of this run, set by run_suite().
"""

import asyncio
import atexit
import base64
import ctypes
import faulthandler
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

try:  # python3-websockets: only the websocket part needs it
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatusCode
except ImportError:  # run_groups reports it; nothing else uses these
    websockets = None

    class ConnectionClosed(Exception):
        pass

    class InvalidStatusCode(Exception):
        pass

HOST = "127.0.0.1"
HARD_CAP_S = 240  # the watchdog: the whole suite, at most
STOP_TIMEOUT_S = 15  # SIGTERM to exit status 0
SAN_RE = re.compile(r"Sanitizer|runtime error|LeakSan")
REDIS_SERVER = "/usr/bin/redis-server"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def sanitizer_of(path):
    """The sanitizer the binary was built with, from its symbols."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if b"__tsan_init" in data:
        return "tsan"
    if b"__asan_init" in data:
        return "asan"
    if b"__ubsan_handle" in data:
        return "ubsan"
    return None


class Harness:
    """One run of a suite: the binary under test (bin, sanitizer, scale),
    its temp directory (root, None until make_root) with the reaper that
    removes it, and every child process started (procs), for cleanup."""

    def __init__(self, binary):
        self.bin = binary
        self.sanitizer = sanitizer_of(binary) if binary else None
        self.scale = {"tsan": 5, "asan": 3, "ubsan": 2}.get(self.sanitizer, 1)
        self.procs = []
        self.root = None
        self.reaper = None

    def make_root(self, prefix):
        """The temp directory, with a reaper (sh in its own session,
        reading a pipe only we hold) that removes it once we are gone, even
        by SIGKILL."""
        self.root = tempfile.mkdtemp(prefix=prefix)
        script = ('IFS= read -r root; cat >/dev/null; '
                  '[ -n "$root" ] && rm -rf -- "$root"')
        try:
            self.reaper = subprocess.Popen(
                ["sh", "-c", script], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
            self.reaper.stdin.write((self.root + "\n").encode())
            self.reaper.stdin.flush()
        except OSError:
            self.reaper = None  # atexit still cleans in all but a SIGKILL

    def cleanup(self):
        """Kills every child still running, removes the temp directory and
        ends the reaper. Safe to call more than once."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self.reaper:
            try:
                self.reaper.stdin.close()  # EOF: it finds nothing left, exits
                self.reaper.wait(2)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.reaper = None


H = Harness(os.environ.get("TASKBUS_BIN", ""))


def T(seconds):
    """A timeout, stretched for slow (sanitizer) builds."""
    return seconds * H.scale


# ------------------------------------------------------------------ processes

_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent():
    # In the child, before exec: SIGKILL when the suite dies, however.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(127)


def spawn(argv, out_path, err_path=None, env=None):
    """Starts argv with stdout to out_path and stderr to err_path (or the
    same file); registered in H.procs for cleanup."""
    out = open(out_path, "wb")
    err = open(err_path, "wb") if err_path else subprocess.STDOUT
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err, env=env,
                             preexec_fn=die_with_parent, close_fds=True)
    finally:
        out.close()
        if err_path:
            err.close()
    H.procs.append(p)
    return p


def end_proc(p, sig=signal.SIGTERM, timeout=5.0):
    """Signals p, waits up to timeout, then SIGKILL. Returns its status."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGCONT)
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            return None
    return p.returncode


def rss_kb(pid):
    """Process pid's VmRSS in kB (0 when it has none)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def child_env(extra=None, keep_taskbus=False):
    """The environment for taskbus: sanitizer options that make any report
    fail the exit status (prepended: the caller's own options win), then
    extra. The caller's TASKBUS_* variables are dropped (a case sets what
    it tests) unless keep_taskbus."""
    env = {k: v for k, v in os.environ.items()
           if keep_taskbus or not k.startswith("TASKBUS_")}
    pre = {
        "ASAN_OPTIONS": "detect_leaks=1:fast_unwind_on_malloc=0:",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:",
        "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1:",
    }
    for k, v in pre.items():
        env[k] = v + env.get(k, "")
    env.update(extra or {})
    return env


def read_text(path):
    """The file's text ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path, n=30):
    """The last n lines of a log, indented for a FAIL report."""
    if not os.path.exists(path):
        return f"    (no log {path})"
    lines = read_text(path).splitlines()
    return "\n".join("    | " + l for l in lines[-n:]) or "    (empty)"


def hs256_token(secret, claims):
    """A client token (JWT) with claims, signed HS256 with secret."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    si = (b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." +
          b64(json.dumps(claims).encode()))
    sig = hmac.new(secret.encode(), si.encode(), hashlib.sha256).digest()
    return si + "." + b64(sig)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ------------------------------------------------------------------ HTTP


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def code(self):
        return self.json.get("error") if isinstance(self.json, dict) else None

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:300]!r}"


def http_req(port, method, path, body=None, headers=None, timeout=None):
    """One request on its own connection. body: bytes, str, or a JSON value
    (dict/list). Returns a Resp."""
    h = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    c = http.client.HTTPConnection(HOST, port, timeout=timeout or T(10))
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        c.close()


# ------------------------------------------------------------------ websockets


class Refused(Exception):
    """An upgrade answered with something other than 101."""

    def __init__(self, status, headers, body):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body
        self.resp = Resp(status, headers, body)


def _mask(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[:len(data)]
    n = int.from_bytes(data, "big") ^ int.from_bytes(k, "big")
    return n.to_bytes(len(data), "big")


class RawWS:
    """A minimal blocking websocket client: the handshake by hand, frames
    by hand. For what the websockets client will not do."""

    def __init__(self, port, path, headers=None, rcvbuf=None, timeout=None,
                 first=None, upgrade="websocket", connection="Upgrade"):
        """first: a plain GET path to ask on the connection before the
        upgrade (keep-alive)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout or T(10))
        self.buf = b""
        try:
            self.sock.connect((HOST, port))
            if first:
                self.sock.sendall(f"GET {first} HTTP/1.1\r\nHost: {HOST}:"
                                  f"{port}\r\n\r\n".encode())
                status, hdrs, body = self._answer()
                check(status == 200 and hdrs.get("connection") != "close",
                      f"GET {first} before the upgrade: {status} {hdrs}")
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}",
                     f"Upgrade: {upgrade}", f"Connection: {connection}",
                     f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, hdrs, body = self._answer(upgrade=True)
            if status != 101:
                raise Refused(status, hdrs, body)
            want = base64.b64encode(
                hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            check(hdrs.get("sec-websocket-accept") == want,
                  f"bad Sec-WebSocket-Accept: {hdrs}")
            self.headers = hdrs
        except BaseException:
            self.sock.close()
            raise

    def _answer(self, upgrade=False):
        """Reads one HTTP answer: (status, headers, body). A 101 has no
        body: what follows it is frames."""
        while b"\r\n\r\n" not in self.buf:
            check(len(self.buf) < 65536, "HTTP answer head too long")
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        hl = head.decode("latin-1").split("\r\n")
        status = int(hl[0].split()[1])
        hdrs = {}
        for l in hl[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if status == 101 and upgrade:
            return status, hdrs, b""
        n = int(hdrs.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("the server closed the connection")
        self.buf += d

    @staticmethod
    def frame(opcode, payload=b"", fin=True, masked=True, rsv=0,
              form=None):
        """The bytes of one frame (a client's: masked, unless told). form:
        how the length is written, 7 (in 7 bits), 126 (16) or 127 (64);
        by default the shortest, as RFC 6455 5.2 wants."""
        b0 = (0x80 if fin else 0) | rsv << 4 | opcode
        m = 0x80 if masked else 0
        n = len(payload)
        if form is None:
            form = 127 if n >= 65536 else 126 if n >= 126 else 7
        if form == 126:
            hdr = struct.pack("!BBH", b0, m | 126, n)
        elif form == 127:
            hdr = struct.pack("!BBQ", b0, m | 127, n)
        else:
            hdr = struct.pack("!BB", b0, m | n)
        if not masked:
            return hdr + payload
        key = os.urandom(4)
        return hdr + key + _mask(payload, key)

    def send_frame(self, opcode, payload=b"", fin=True):
        self.sock.sendall(self.frame(opcode, payload, fin))

    def send_text(self, s):
        self.send_frame(0x1, s.encode() if isinstance(s, str) else s)

    def recv_frame(self, timeout=None):
        """(fin, opcode, payload) of the next frame. EOFError when the
        connection ends, socket.timeout when none comes in time."""
        self.sock.settimeout(timeout or T(10))
        while len(self.buf) < 2:
            self._fill()
        b0, b1 = self.buf[0], self.buf[1]
        check(not b1 & 0x80, "the server masked a frame")
        n, off = b1 & 0x7F, 2
        if n == 126:
            while len(self.buf) < 4:
                self._fill()
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            while len(self.buf) < 10:
                self._fill()
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        while len(self.buf) < off + n:
            self._fill()
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_json(self, timeout=None):
        """The next text message as JSON, skipping pings."""
        while True:
            fin, op, payload = self.recv_frame(timeout)
            if op == 0x9:
                continue
            check(op == 0x1 and fin, f"want a text frame, got opcode {op}")
            return json.loads(payload)

    def close_code(self, timeout=None):
        """Reads until the server's close frame or EOF: (code or None,
        reason, number of text frames skipped, pings seen)."""
        texts = pings = 0
        end = time.monotonic() + (timeout or T(10))
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise socket.timeout("no close within the timeout")
            try:
                fin, op, payload = self.recv_frame(left)
            except (EOFError, ConnectionResetError):
                return None, "", texts, pings
            if op == 0x8:
                code = (struct.unpack("!H", payload[:2])[0]
                        if len(payload) >= 2 else 1005)
                try:  # answer it, as a client should
                    self.send_frame(0x8, payload[:2])
                except OSError:
                    pass
                return code, payload[2:].decode("utf-8", "replace"), texts, \
                    pings
            if op == 0x1:
                texts += 1
            elif op == 0x9:
                pings += 1

    def abort(self):
        """Closes the socket with a reset, no close frame."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ servers


class TaskbusProc:
    """What every suite's taskbus process does the same way: a free
    loopback port, up to three tries when the port was taken meanwhile,
    and a wait for /healthz 200. A suite's subclass says how to start it
    (_spawn), and may add a condition before probing (_listening) and a
    step once it answers (_started)."""

    PORT_TAKEN = r"cannot listen"  # in its stderr: try another port
    POLL_S = 0.05

    def __init__(self, name, *args):
        self.name = name
        self.args = list(args)
        self.proc = None
        self.port = None

    def _spawn(self, attempt):
        """Starts the process on self.port; (Popen, its stderr's path)."""
        raise NotImplementedError

    def _listening(self):
        return True

    def _started(self, took):
        pass

    def start(self):
        """Starts it and waits up to T(15) for /healthz 200; returns self.
        RuntimeError, with its stderr's tail, when it exits or does not
        answer in time."""
        last = ""
        for attempt in range(3):
            self.port = free_port()
            self.proc, err = self._spawn(attempt)
            t0 = time.monotonic()
            end = t0 + T(15)
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    last = (f"taskbus {self.name} exited with {rc} at "
                            f"start\n{tail(err)}")
                    if re.search(self.PORT_TAKEN, read_text(err)):
                        break  # the port was taken: another one
                    raise RuntimeError(last)
                if self._listening() and self._healthz():
                    self._started(time.monotonic() - t0)
                    return self
                if time.monotonic() > end:
                    end_proc(self.proc, signal.SIGKILL)
                    raise RuntimeError(
                        f"taskbus {self.name}: /healthz not 200 after "
                        f"{T(15)} s\n{tail(err)}")
                time.sleep(self.POLL_S)
        raise RuntimeError(last)

    def _healthz(self):
        try:
            return http_req(self.port, "GET", "/healthz",
                            timeout=2).status == 200
        except (OSError, http.client.HTTPException):
            return False

    def ws_url(self, path):
        return f"ws://{HOST}:{self.port}{path}"


class Redis:
    """A throwaway redis-server on a free loopback port in its own dir
    under H.root; args are added to its command line (a --requirepass is
    used for its own readiness check)."""

    def __init__(self, name, *args):
        self.name = name
        self.args = list(args)
        self.proc = None
        self.password = None
        if "--requirepass" in self.args:
            self.password = self.args[self.args.index("--requirepass") + 1]

    def start(self, port=None):
        """Starts it on a free port, or on port (a restart: no retry on
        another port)."""
        for attempt in range(3):
            self.port = port or free_port()
            self.dir = tempfile.mkdtemp(prefix="redis.", dir=H.root)
            self.log = os.path.join(self.dir, "redis.log")
            argv = [REDIS_SERVER, "--save", "", "--appendonly",
                    "no", "--dir", self.dir, "--bind", HOST, "--port",
                    str(self.port), "--daemonize", "no", "--logfile",
                    self.log, *self.args]
            self.proc = spawn(argv, os.path.join(self.dir, "stdout.log"))
            end = time.monotonic() + 10
            while True:
                if self.proc.poll() is not None:
                    if ("Address already in use" in self.log_text()
                            and not port):
                        break
                    raise RuntimeError(f"redis-server exited at start\n"
                                       f"{tail(self.log)}")
                if ("Ready to accept connections" in self.log_text()
                        and self.ping()):
                    return self
                if time.monotonic() > end:
                    raise RuntimeError(f"redis-server not ready after 10 s\n"
                                       f"{tail(self.log)}")
                time.sleep(0.05)
        raise RuntimeError("redis-server: no free port after 3 tries")

    def log_text(self):
        return read_text(self.log)

    def ping(self):
        try:
            with socket.create_connection((HOST, self.port), 1) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, password=None):
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{HOST}:{self.port}"

    def stop(self):
        """SIGTERM, SIGKILL after 5 s: (its status or None, 0)."""
        if self.proc is None:
            return None, 0
        return end_proc(self.proc, signal.SIGTERM, 5), 0

    def teardown(self):
        """At the end of a case that registered it (case_servers): stops
        it; never a problem."""
        self.stop()
        return None


# ------------------------------------------------------------------ the run


class Runner:
    """Chooses the cases by the command line's words, prints one line per
    result and counts them. A suite's subclass runs the cases."""

    def __init__(self, words):
        self.words = [w.lower() for w in words]
        self.passed = 0
        self.failed = []
        self.skipped = 0

    def wanted(self, group, name):
        return not self.words or any(w in group.lower() or w in name.lower()
                                     for w in self.words)

    def report(self, ok, name, detail):
        """Prints "PASS name (detail)" or "FAIL name: detail"."""
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f" ({detail})" if detail else ""),
                  flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL {name}: {detail}", flush=True)

    def skip(self, name, reason):
        """Prints "SKIP name: reason"; counted apart from passes."""
        self.skipped += 1
        print(f"SKIP {name}: {reason}", flush=True)


def run_suite(title, tmp_prefix, runner, run):
    """A suite's main: checks the binary and redis-server, makes H.root,
    arms the watchdog (HARD_CAP_S), calls run() to run the cases into
    runner, stops everything and prints the summary. Returns the exit
    status: 1 if anything failed."""
    if not H.bin or not os.access(H.bin, os.X_OK):
        print(f"FAIL setup: TASKBUS_BIN ({H.bin!r}) is not an executable",
              flush=True)
        return 1
    if not os.access(REDIS_SERVER, os.X_OK):
        print(f"FAIL setup: {REDIS_SERVER} missing (apt-get install "
              "redis-server)", flush=True)
        return 1
    t0 = time.monotonic()
    H.make_root(tmp_prefix)
    atexit.register(H.cleanup)

    def on_term(sig, frame):
        raise SystemExit(128 + sig)

    def on_alarm(sig, frame):
        print(f"FAIL suite: still running after {HARD_CAP_S} s; stopped",
              flush=True)
        H.cleanup()
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HARD_CAP_S)
    faulthandler.dump_traceback_later(max(1, HARD_CAP_S - 5), exit=False)
    print(f"{title}: {H.bin}" + (f" ({H.sanitizer} build: timeouts "
                                 f"x{H.scale})" if H.sanitizer else ""),
          flush=True)
    try:
        run()
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        H.cleanup()
    took = time.monotonic() - t0
    skipped = f", {runner.skipped} skipped" if runner.skipped else ""
    print(f"{title}: {runner.passed} passed, {len(runner.failed)} failed"
          f"{skipped} in {took:.1f} s", flush=True)
    if runner.failed:
        print("failed:\n" + "\n".join(f"  {n}" for n in runner.failed),
              flush=True)
        return 1
    return 0


# ------------------------------------------------------------ websocket suites
#
# A websocket suite is a list of groups (name, make, cases): make() returns
# the group's servers ({key: server}, or (key, server) pairs, started in
# that order), and each case (name, async fn(ctx), timeout in s) runs
# against them with a Ctx. At the end of a group each TaskbusServer gets
# SIGTERM and must exit 0 with no sanitizer report: one more result line.


async def ahttp(port, method, path, body=None, headers=None, timeout=None):
    """http_req on a thread, for the cases (coroutines)."""
    return await asyncio.to_thread(http_req, port, method, path, body, headers,
                                   timeout)


class Poster:
    """POSTs events over one keep-alive connection (for bulk)."""

    def __init__(self, port, headers=None):
        self.port = port
        self.headers = dict(headers or {})
        self.c = None

    def post(self, name, body):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(HOST, self.port,
                                                    timeout=T(10))
            try:
                self.c.request("POST", "/events/" + name, body=body,
                               headers=self.headers)
                r = self.c.getresponse()
                data = r.read()
                if r.will_close:
                    self.c.close()
                    self.c = None
                return Resp(r.status, {}, data)
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = None
                if attempt:
                    raise

    def close(self):
        if self.c:
            self.c.close()
            self.c = None


def check_status(r, status, code=None, what=""):
    check(r.status == status and (code is None or r.code() == code),
          f"{what}: want {status}{' ' + code if code else ''}, got {r!r}")
    if code is not None:
        check(isinstance(r.json.get("message"), str) and r.json["message"],
              f"{what}: error without a message: {r!r}")


async def poll_until(fn, timeout, interval=0.05):
    """Calls the async fn until it returns a true value or timeout passes;
    returns the last value."""
    end = time.monotonic() + timeout
    while True:
        v = await fn()
        if v or time.monotonic() >= end:
            return v
        await asyncio.sleep(interval)


class TaskbusServer(TaskbusProc):
    """One taskbus process on a free loopback port, 2 workers, no tick,
    quiet; stdout and stderr to a log in H.root."""

    def __init__(self, name, *args):
        super().__init__(name, *args)
        self.log = None
        self.terminated = None
        self.ready = False  # /healthz answered

    def _spawn(self, attempt):
        self.log = os.path.join(H.root, f"taskbus-{self.name}-{attempt}.log")
        argv = [H.bin, "--listen", f"{HOST}:{self.port}", "--workers", "2",
                "--tick", "0", "--quiet", *self.args]
        return (spawn(argv, self.log, env=child_env(keep_taskbus=True)),
                self.log)

    def _listening(self):
        return f"listening on {HOST}:{self.port}" in self.log_text()

    def _started(self, took):
        self.ready = True

    def log_text(self):
        return read_text(self.log)

    def terminate(self):
        """SIGTERM, once: a second one makes taskbus exit at once."""
        if self.proc and self.proc.poll() is None and not self.terminated:
            self.terminated = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self):
        """SIGTERM (unless sent already); (status, seconds), status None
        when it had to be killed STOP_TIMEOUT_S after the SIGTERM."""
        self.terminate()
        t0 = self.terminated or time.monotonic()
        try:
            rc = self.proc.wait(max(0.1, t0 + STOP_TIMEOUT_S -
                                    time.monotonic()))
        except subprocess.TimeoutExpired:
            end_proc(self.proc, signal.SIGKILL)
            rc = None
        return rc, time.monotonic() - t0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kb(self):
        return rss_kb(self.proc.pid)


# The server most cases run on: small limits, so that their edges are
# cheap to reach (a 4 KiB message, 4 patterns, an 8 KiB body), and an
# Origin list.
MAIN_ARGS = ("--ws-max-message", "4096", "--ws-max-patterns", "4",
             "--ws-origins", "http://ok.example, https://app.example:8443",
             "--max-body", "8192")


def main_server():
    """A group's make(): one TaskbusServer "main" with MAIN_ARGS."""
    return {"main": TaskbusServer("main", *MAIN_ARGS)}


def upgrade_refused(port, path, headers=None):
    """Attempts an upgrade that must be refused; returns the Resp."""
    try:
        w = RawWS(port, path, headers)
    except Refused as e:
        return e.resp
    w.close()
    raise AssertionError(f"upgrade to {path} with {headers} was accepted")


class Client:
    """A websockets connection; sorts what arrives into replies (with "ok"
    or "error") and events (with "id" and "name")."""

    def __init__(self, ws, label):
        self.ws = ws
        self.label = label
        self.events = []
        self.replies = []

    async def _pump(self, end):
        left = end - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        try:
            msg = await asyncio.wait_for(self.ws.recv(), left)
        except ConnectionClosed:
            raise AssertionError(
                f"{self.label}: the connection closed ({self.ws.close_code} "
                f"{self.ws.close_reason!r})") from None
        check(isinstance(msg, str),
              f"{self.label}: a binary message: {msg[:80]!r}")
        try:
            o = json.loads(msg)
        except ValueError:
            raise AssertionError(f"{self.label}: not JSON: {msg[:200]!r}")
        check(isinstance(o, dict), f"{self.label}: not an object: {msg[:200]}")
        if "ok" in o or "error" in o or "recovered" in o:
            self.replies.append(o)  # "recovered": where a resume's replay ended
        elif "id" in o and "name" in o:
            self.events.append(o)
        else:
            raise AssertionError(f"{self.label}: neither an answer nor an "
                                 f"event: {msg[:200]}")

    async def reply(self, timeout=None):
        t = timeout or T(10)
        end = time.monotonic() + t
        while not self.replies:
            try:
                await self._pump(end)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.label}: no answer in {t} s")
        return self.replies.pop(0)

    async def event(self, timeout=None):
        t = timeout or T(10)
        end = time.monotonic() + t
        while not self.events:
            try:
                await self._pump(end)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.label}: no event in {t} s")
        return self.events.pop(0)

    async def events_until(self, name, timeout=None):
        """Events up to and including the first named name."""
        got = []
        while True:
            ev = await self.event(timeout)
            got.append(ev)
            if ev["name"] == name:
                return got

    async def request(self, msg, timeout=None):
        """Sends msg (a str/bytes as is, else as JSON) and returns the
        answer."""
        if not isinstance(msg, (str, bytes)):
            msg = json.dumps(msg)
        await self.ws.send(msg)
        return await self.reply(timeout)

    async def sync(self):
        """A round trip: once answered, the patterns of ?events= are in
        place (the handler adds them before it reads messages)."""
        r = await self.request({"subscribe": [], "ref": "sync"})
        check(r.get("ok") == "subscribe" and r.get("ref") == "sync",
              f"{self.label}: sync answered {r}")
        return r["patterns"]

    async def no_events(self, seconds):
        """Fails if an event arrives within seconds."""
        end = time.monotonic() + seconds
        try:
            while not self.events:
                await self._pump(end)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.label}: unexpected event "
                             f"{self.events[0]}")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), T(5))
        except (asyncio.TimeoutError, OSError):
            self.ws.transport.abort()


class Ctx:
    """What a test case gets: its servers, and connections that are closed
    when it ends, however it ends."""

    def __init__(self, servers):
        self.s = servers
        self.srv = next(v for v in servers.values()
                        if isinstance(v, TaskbusServer))
        self._clients = []
        self._raws = []

    async def connect(self, path, srv=None, headers=None, label=None,
                      compression=None, **kw):
        srv = srv or self.srv
        ws = await websockets.connect(
            srv.ws_url(path), extra_headers=headers, open_timeout=T(10),
            ping_interval=None, close_timeout=T(5), compression=compression,
            **kw)
        c = Client(ws, label or path)
        self._clients.append(c)
        return c

    async def refused(self, path, srv=None, headers=None, **kw):
        """Connects with the websockets client, expecting a refusal: the
        status code."""
        srv = srv or self.srv
        try:
            ws = await websockets.connect(
                srv.ws_url(path), extra_headers=headers, open_timeout=T(10),
                ping_interval=None, close_timeout=T(5), compression=None,
                **kw)
        except InvalidStatusCode as e:
            return e.status_code
        self._clients.append(Client(ws, path))
        raise AssertionError(f"upgrade to {path} was accepted")

    def raw(self, path, srv=None, **kw):
        w = RawWS((srv or self.srv).port, path, **kw)
        self._raws.append(w)
        return w

    async def close_all(self):
        for c in self._clients:
            await c.close()
        for w in self._raws:
            w.close()


async def ws_tasks(srv, headers=None):
    """{name: task} of the kinds ws and ws.receiver in GET /tasks."""
    r = await ahttp(srv.port, "GET", "/tasks", headers=headers)
    check_status(r, 200, what="GET /tasks")
    return {t["name"]: t for t in r.json["tasks"]
            if t.get("kind") in ("ws", "ws.receiver")}


async def gone(srv, rid, timeout, headers=None):
    """Waits until neither ws:rid nor receiver:rid is listed; returns the
    seconds it took, fails if they stay."""
    t0 = time.monotonic()
    names = {f"ws:{rid}", f"receiver:{rid}"}

    async def left():
        return not (names & set(await ws_tasks(srv, headers)))

    ok = await poll_until(left, timeout)
    check(ok, f"tasks {sorted(names & set(await ws_tasks(srv, headers)))} "
              f"still listed {timeout} s after the close")
    return time.monotonic() - t0


async def metric(srv, name, headers=None):
    r = await ahttp(srv.port, "GET", "/metrics", headers=headers)
    check_status(r, 200, what="GET /metrics")
    m = re.search(rf"^{re.escape(name)} (\S+)$", r.body.decode(), re.M)
    check(m, f"/metrics has no {name}")
    return float(m.group(1))


POS_RE = re.compile(r"[0-9a-f]{8,16}-[1-9][0-9]{0,15}")


def check_envelope(ev, name, data, post_id=None):
    # pos: the event's position when history is on (the default).
    check(set(ev) - {"pos"} == {"id", "name", "data", "ts", "origin"},
          f"envelope members {sorted(ev)}: want id, name, data, ts, origin"
          f" (and pos)")
    check("pos" not in ev or (isinstance(ev["pos"], str)
                              and POS_RE.fullmatch(ev["pos"])),
          f"{name}: pos {ev.get('pos')!r} is not <epoch>-<seq>")
    check(ev["name"] == name, f"event name {ev['name']!r}, want {name!r}")
    check(ev["data"] == data, f"{name}: data {ev['data']!r}, want {data!r}")
    if post_id is not None:
        check(ev["id"] == post_id,
              f"{name}: id {ev['id']!r}, the POST said {post_id!r}")
    check(isinstance(ev["ts"], int)
          and abs(ev["ts"] / 1e6 - time.time()) < 300,
          f"{name}: ts {ev['ts']!r} is not microseconds since the epoch, "
          f"now")
    check(isinstance(ev["origin"], str) and ev["origin"],
          f"{name}: origin {ev['origin']!r}")


async def post(srv, name, body=b"", headers=None):
    r = await ahttp(srv.port, "POST", "/events/" + name, body, headers)
    check_status(r, 202, what=f"POST /events/{name}")
    check(r.json.get("name") == name and r.json.get("id"),
          f"POST /events/{name} answered {r!r}")
    return r.json["id"]


def where(e):
    """(at function:line, "source") of the innermost frame of a suite file
    (a *_suite.py beside this one) in e's traceback."""
    here = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.dirname(os.path.abspath(f.filename)) == here
              and f.filename.endswith("_suite.py")]
    if not frames:
        return ""
    f = frames[-1]
    return f"(at {f.name}:{f.lineno}, {f.line!r})"


class GroupRunner(Runner):
    """Runs a websocket suite's groups (see above)."""

    def __init__(self, words, groups, skips=None):
        super().__init__(words)
        self.groups = groups
        self.skips = skips or {}  # group name: why it is not run

    def report(self, ok, name, detail, servers=(), marks=None):
        """One PASS/FAIL line; on failure, the log lines each taskbus wrote
        since marks (its log sizes when the case began), the last 25."""
        super().report(ok, name, detail)
        if ok:
            return
        for s in servers:
            if not isinstance(s, TaskbusServer) or not s.log:
                continue
            text = s.log_text()[(marks or {}).get(s.name, 0):]
            lines = text.splitlines()[-25:]
            if lines:
                print(f"  taskbus {s.name} logged:\n" + "\n".join(
                    "    | " + l for l in lines), flush=True)

    async def case(self, group, name, fn, timeout, servers):
        full = f"{group}: {name}"
        ctx = Ctx(servers)
        marks = {s.name: len(s.log_text()) for s in servers.values()
                 if isinstance(s, TaskbusServer)}
        t0 = time.monotonic()
        ok, detail = False, ""
        try:
            detail = await asyncio.wait_for(fn(ctx), T(timeout)) or ""
            ok = True
        except AssertionError as e:
            detail = str(e)
        except asyncio.TimeoutError as e:  # also socket.timeout
            detail = (f"timed out after {T(timeout)} s"
                      if time.monotonic() - t0 >= T(timeout) - 0.5 else
                      f"a wait timed out after {time.monotonic() - t0:.1f} s"
                      f" {where(e)}")
        except Exception as e:  # any failure is this case's FAIL line
            detail = f"{type(e).__name__}: {e} {where(e)}"
        finally:
            try:
                await asyncio.wait_for(ctx.close_all(), T(10))
            except Exception as e:  # reported, never hides the result
                detail += f" (closing its clients: {type(e).__name__} {e})"
        took = time.monotonic() - t0
        self.report(ok, full, (f"{detail}; " if ok and detail else detail)
                    + (f"{took:.2f} s" if ok else ""),
                    servers.values(), marks)

    async def group(self, gname, make, tests):
        tests = [t for t in tests if self.wanted(gname, t[0])]
        if not tests:
            return
        if gname in self.skips:
            for t in tests:
                self.skip(f"{gname}: {t[0]}", self.skips[gname])
            return
        servers = {}
        try:
            try:
                made = make()
                items = made.items() if isinstance(made, dict) else made
                for key, s in items:
                    servers[key] = s
                    if s.proc is None:
                        s.start()  # the main thread: PR_SET_PDEATHSIG
            except Exception as e:  # a server did not start
                first, _, rest = str(e).partition("\n")
                self.report(False, f"{gname}: start the servers",
                            f"{first} (not run: "
                            f"{', '.join(t[0] for t in tests)})"
                            + (f"\n{rest}" if rest else ""))
                return
            for name, fn, timeout in tests:
                await self.case(gname, name, fn, timeout, servers)
        finally:
            for key, s in reversed(list(servers.items())):
                if s.proc is None:
                    continue
                if not getattr(s, "ready", True):
                    end_proc(s.proc, signal.SIGKILL)  # failed at start
                    continue
                rc, took = await asyncio.to_thread(s.stop)
                if not isinstance(s, TaskbusServer):
                    continue
                name = f"{gname}: taskbus {s.name} exits 0 on SIGTERM"
                text = s.log_text()
                bad = [l for l in text.splitlines()
                       if SAN_RE.search(l)]
                if rc == 0 and not bad:
                    self.report(True, name, f"{took:.2f} s")
                else:
                    why = (f"still running {STOP_TIMEOUT_S} s after SIGTERM "
                           f"(killed)" if rc is None else f"exit status {rc}")
                    self.report(False, name, why + (f"; {bad[0]}" if bad
                                                    else ""))
                    print(f"  stderr tail:\n{tail(s.log, 60)}", flush=True)

    async def run(self):
        for gname, make, tests in self.groups:
            await self.group(gname, make, tests)


def run_groups(title, tmp_prefix, groups, skips=None):
    """A websocket suite's main: runs the groups (by the command line's
    words) with run_suite, but those in skips ({group name: why}), which
    it reports as skipped. Returns the exit status."""
    runner = GroupRunner(sys.argv[1:], groups, skips)
    if websockets is None:
        print(f"FAIL setup: {title} needs python3-websockets (apt-get "
              "install python3-websockets)", flush=True)
        return 1
    return run_suite(title, tmp_prefix, runner,
                     lambda: asyncio.run(runner.run()))


# ------------------------------------------------------------ serve suites
#
# The suites that run `taskbus serve` as an operator would (service_suite,
# cluster_suite): cases are plain functions that start Taskbus processes,
# which the case's end stops and checks.

REDIS_CLI = "/usr/bin/redis-cli"


def san_excerpt(text):
    """The gist of a sanitizer report in text: its ERROR line, the first
    frames, the SUMMARY; None when there is none."""
    lines = text.splitlines()
    first = next((i for i, l in enumerate(lines) if SAN_RE.search(l)), None)
    if first is None:
        return None
    keep = [l.strip() for l in lines[first:]
            if re.search(r"ERROR:|runtime error|^\s*#[0-4] |SUMMARY", l)]
    return " | ".join(keep[:7]) or lines[first].strip()


def wait_for(fn, timeout, interval=0.05):
    """Calls fn until it returns a true value or timeout passes; returns
    the last value."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


# What the case running on this thread started and noticed: each thread
# runs one case at a time (a suite may run a long case on a thread of its
# own beside the others).
_CASE = threading.local()


def case_servers():
    """The servers of the case running on this thread, for its teardown."""
    if not hasattr(_CASE, "servers"):
        _CASE.servers = []
    return _CASE.servers


def case_slow():
    """Steps of the case running on this thread that took long."""
    if not hasattr(_CASE, "slow"):
        _CASE.slow = []
    return _CASE.slow


def note_slow(what, took, limit=1.0):
    if took > limit * H.scale:
        case_slow().append(f"{what} took {took:.1f} s")


class Taskbus(TaskbusProc):
    """One `taskbus serve` on a free loopback port; stderr and stdout to
    files in H.root. listen: "flag" (--listen), "env" (TASKBUS_LISTEN)."""

    PORT_TAKEN = r"cannot listen|in use"
    POLL_S = 0.03

    def __init__(self, name, *args, env=None, listen="flag", serve=True,
                 wrap=()):
        super().__init__(name, *args)
        self.wrap = list(wrap)  # argv prefix, e.g. unshare
        self.env = dict(env or {})
        self.listen = listen
        self.serve = serve
        self.err = self.out = None
        self.signalled = None  # monotonic time of the first signal
        self.expect_rc = 0  # what its exit status must be at teardown
        case_servers().append(self)

    def _spawn(self, attempt):
        base = os.path.join(H.root, f"taskbus-{self.name}-{attempt}")
        self.err, self.out = base + ".err", base + ".out"
        env = dict(self.env)
        argv = self.wrap + [H.bin] + (["serve"] if self.serve else [])
        if self.listen == "flag":
            argv += ["--listen", f"{HOST}:{self.port}"]
        else:
            env["TASKBUS_LISTEN"] = f"{HOST}:{self.port}"
        argv += self.args
        return spawn(argv, self.out, self.err, env=child_env(env)), self.err

    def _started(self, took):
        note_slow(f"starting taskbus {self.name}", took, 2.5)

    def url(self):
        return f"http://{HOST}:{self.port}"

    def err_text(self):
        return read_text(self.err)

    def out_text(self):
        return read_text(self.out)

    def kill_with(self, sig):
        if self.signalled is None:
            self.signalled = time.monotonic()
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """(status or None if still running after timeout, seconds since
        the first signal)."""
        try:
            rc = self.proc.wait(max(0.05, timeout))
        except subprocess.TimeoutExpired:
            rc = None
        t0 = self.signalled or time.monotonic()
        return rc, time.monotonic() - t0

    def stop_ok(self, sig=signal.SIGTERM, within=STOP_TIMEOUT_S):
        """Sends sig (unless a signal was sent already: a second one
        means "exit at once") and requires exit 0 within `within` seconds
        of the first and no sanitizer report; returns the seconds it
        took."""
        if self.proc.poll() is None and self.signalled is None:
            self.kill_with(sig)
        rc, took = self.wait_exit(within - (time.monotonic() -
                                            self.signalled))
        if rc is None:
            end_proc(self.proc, signal.SIGKILL)
            raise AssertionError(
                f"taskbus {self.name} still running {within} s after "
                f"{signal.Signals(sig).name} (killed)\n{tail(self.err)}")
        self.check_clean(rc, 0, signal.Signals(sig).name)
        note_slow(f"stopping taskbus {self.name}", took, 2)
        return took

    def check_clean(self, rc, want, what):
        bad = san_excerpt(self.err_text())
        check(rc == want and not bad,
              f"taskbus {self.name}: exit status {rc} after {what}, want "
              f"{want}" + (f"; sanitizer report: {bad}" if bad else "") +
              f"\n{tail(self.err, 40)}")

    def teardown(self):
        """At the end of a case: SIGTERM if still running, exit status as
        expected. Returns a problem or None."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.stop_ok()
            except AssertionError as e:
                return str(e)
            return None
        try:
            self.check_clean(self.proc.returncode, self.expect_rc,
                             "the case")
        except AssertionError as e:
            return str(e)
        return None


def redis_cli(r, *args, stdin=None):
    """redis-cli against the Redis r with args; its output, stripped.
    Fails the case unless it exits 0."""
    p = subprocess.run([REDIS_CLI, "-h", HOST, "-p", str(r.port), *args],
                       input=stdin, capture_output=True, timeout=10)
    check(p.returncode == 0, f"redis-cli {args[:2]}: {p.stderr!r}")
    return p.stdout.decode(errors="replace").strip()


def instances_of(s):
    r = http_req(s.port, "GET", "/instances")
    check(r.status == 200, f"GET /instances on {s.name}: {r!r}")
    return json.loads(r.body)["instances"]


def metric_value(port, series):
    """The value of one /metrics series (None when absent)."""
    r = http_req(port, "GET", "/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def post_until_metric(port, name, body, ids, series, limit=20000, rate=1000,
                      seconds=None):
    """POSTs events name (body(n) the n-th's) at rate a second, appending
    each id to ids, until /metrics series is non-zero (looked at every 50
    events), limit events or seconds (T(40)) passed. Returns how many were
    posted. Blocking: run it in a thread."""
    p = Poster(port)
    t0 = time.monotonic()
    seconds = seconds or T(40)
    try:
        for n in range(limit):
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0.005:
                time.sleep(ahead)
            r = p.post(name, body(n))
            check(r.status == 202, f"POST {n}: {r.status}")
            ids.append(json.loads(r.body)["id"])
            if n % 50 == 49 and metric_value(port, series):
                return n + 1
            if time.monotonic() - t0 > seconds:
                return n + 1
        return limit
    finally:
        p.close()


class CaseRunner(Runner):
    """Runs cases that start `taskbus serve` processes (Taskbus): one line
    per case with its time and slow steps; at its end every server it
    started that still runs gets SIGTERM and must exit 0 (or the status
    the case expects) without a sanitizer report, else the case fails
    with the tail of its stderr. The servers are stopped newest first, so
    that a redis-server a case registered before its instances outlives
    them. Cases may run on several threads at once (one case a thread)."""

    def __init__(self, words):
        super().__init__(words)
        self.lock = threading.Lock()  # one case's lines together

    def case(self, group, name, fn):
        full = f"{group}: {name}"
        servers, slow = case_servers(), case_slow()
        servers.clear()
        slow.clear()
        t0 = time.monotonic()
        ok, detail = False, ""
        try:
            detail = fn() or ""
            ok = True
        except AssertionError as e:
            detail = str(e)
        except Exception as e:  # any failure is this case's FAIL line
            detail = f"{type(e).__name__}: {e}"
        finally:
            for s in reversed(servers):
                problem = s.teardown()
                if problem and ok:
                    ok, detail = False, problem
        took = time.monotonic() - t0
        if slow:
            detail += ("; " if detail else "") + "slow: " + ", ".join(slow)
        if ok:
            detail = (detail + "; " if detail else "") + f"{took:.2f} s"
        with self.lock:
            self.report(ok, full, detail)
            for s in servers if not ok else ():
                err = getattr(s, "err", None)
                if err and err not in detail and read_text(err):
                    print(f"  stderr of taskbus {s.name} (last lines):\n"
                          f"{tail(err, 15)}", flush=True)

    def run_cases(self, cases):
        """Runs the wanted ones of cases, (group, name, fn) triples, in
        order on this thread."""
        for group, name, fn in cases:
            if self.wanted(group, name):
                self.case(group, name, fn)


# ------------------------------------------------------------ browser tests
#
# A browser test is a node script in its own npm package directory (its
# package.json's "engines" says which Node it needs, .ci/dev.sh installs
# its node_modules with npm ci): `node SCRIPT CONFIG_JSON` prints one JSON
# line a check, {"check", "ok", "detail"}, and exits 1 if any failed.


def node_missing(pkg_dir, module=None):
    """Why node cannot run the browser test in pkg_dir, which imports
    module (None: nothing installed): a list of reasons, empty when it
    can."""
    node = shutil.which("node")
    if not node:
        return ["no node"]
    why = []
    with open(os.path.join(pkg_dir, "package.json")) as f:
        want = json.load(f)["engines"]["node"]
    need = int(re.fullmatch(r">=(\d+)", want).group(1))
    try:
        have = subprocess.run([node, "-v"], capture_output=True, timeout=T(10),
                              text=True).stdout.strip()
        major = int(re.match(r"v(\d+)\.", have).group(1))
        if major < need:
            why.append(f"{node} is Node {have}; {module} needs Node {need} "
                       "or newer: install a newer nodejs")
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        why.append(f"{node} -v did not say its version ({e})")
    mods = module and os.path.join(pkg_dir, "node_modules", module)
    if mods and not os.path.isdir(mods):
        why.append(f"no {mods} (npm ci in {pkg_dir})")
    return why


def run_browser_test(pkg_dir, script, cfg, limit, env):
    """Runs `node script CONFIG_JSON` (cfg as JSON) in pkg_dir with env,
    prints its checks indented, and fails the case (AssertionError) unless
    it printed at least one, all passed and it exited 0 within limit
    seconds. Returns how many checks it printed."""
    try:
        p = subprocess.run([shutil.which("node"), script, json.dumps(cfg)],
                           cwd=pkg_dir, capture_output=True, timeout=limit,
                           env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{script} ran over {limit:.0f} s: "
                             f"{(e.stdout or b'').decode()[-2000:]}")
    lines, bad = [], []
    for line in p.stdout.decode(errors="replace").splitlines():
        try:
            o = json.loads(line)
        except ValueError:
            continue
        lines.append(o)
        mark = "ok  " if o["ok"] else "FAIL"
        print(f"    {mark} {o['check']}" +
              (f": {o['detail'][:300]}" if o["detail"] else ""), flush=True)
        if not o["ok"]:
            bad.append(f"{o['check']}: {o['detail'][:600]}")
    check(not bad and p.returncode == 0 and lines,
          f"exit {p.returncode}; " + " | ".join(bad) +
          (f"\n{p.stderr.decode(errors='replace')[-1500:]}" if p.stderr
           else ""))
    return len(lines)
