"""tbharness.py - what the integration suites share: child processes that
die with the suite, a temp directory that is removed even after a SIGKILL,
timeouts stretched for sanitizer builds, an HTTP client, a raw websocket
client (frames by hand), a throwaway redis-server, the start of a taskbus
process, and the suite's main loop.

Imported by ws_suite.py, service_suite.py and hostile_suite.py (each puts
its own directory on sys.path first). Python's standard library only.

The state the helpers share lives in one object, H (a Harness): the binary
under test ($TASKBUS_BIN) and its timeout scale, read once at import, and
the temp directory and child processes of this run, set by run_suite().
"""

import atexit
import base64
import ctypes
import faulthandler
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

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

    def start(self):
        for attempt in range(3):
            self.port = free_port()
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
                    if "Address already in use" in self.log_text():
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
