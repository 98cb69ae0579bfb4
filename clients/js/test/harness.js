// harness.js - what the client's tests share: a throwaway redis-server and
// taskbus processes on free 127.0.0.1 ports (the real binary, $TASKBUS_BIN,
// default build/taskbus), killed with the test process (setpriv
// --pdeathsig), their files in one temp directory removed at exit; waits
// with timeouts scaled for sanitizer builds; HTTP helpers; HS256 tokens.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const HOST = "127.0.0.1";
const here = path.dirname(fileURLToPath(import.meta.url));
const SOURCE = path.resolve(here, "../../..");
export const BIN = path.resolve(
  process.env.TASKBUS_BIN || path.join(SOURCE, "build/taskbus"),
);
const REDIS_SERVER = "/usr/bin/redis-server";

function sanitizerOf(file) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch {
    return null;
  }
  if (data.includes("__tsan_init")) return "tsan";
  if (data.includes("__asan_init")) return "asan";
  if (data.includes("__ubsan_handle")) return "ubsan";
  return null;
}

export const SANITIZER = sanitizerOf(BIN);
export const SCALE = { tsan: 5, asan: 3, ubsan: 2 }[SANITIZER] ?? 1;
/** ms, stretched for a sanitizer build: for hang bounds only. */
export const T = (ms) => ms * SCALE;

/** Why the tests cannot run here, or null. */
export function missing() {
  if (!fs.existsSync(BIN)) return `no taskbus binary at ${BIN} (TASKBUS_BIN)`;
  if (!fs.existsSync(REDIS_SERVER)) return `no ${REDIS_SERVER}`;
  return null;
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), "tb-jsclient."));
const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  fs.rmSync(root, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"])
  process.on(sig, () => process.exit(128 + os.constants.signals[sig]));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value (returned), or throws after ms. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + T(ms);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Starts argv with its output to log; it dies with us (SIGKILL).
function start(argv, log) {
  const fd = fs.openSync(log, "a");
  const p = spawn("setpriv", ["--pdeathsig", "KILL", "--", ...argv], {
    stdio: ["ignore", fd, fd],
  });
  fs.closeSync(fd);
  children.add(p);
  p.exited = new Promise((r) => p.on("exit", (code, sig) => r(code ?? sig)));
  p.exited.then(() => children.delete(p));
  return p;
}

function tail(file) {
  try {
    return fs.readFileSync(file, "utf8").split("\n").slice(-20).join("\n");
  } catch {
    return "";
  }
}

async function stop(p, sig) {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  p.kill(sig);
  const t = setTimeout(() => p.kill("SIGKILL"), T(10000));
  await p.exited;
  clearTimeout(t);
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, HOST);
    let got = "";
    s.setTimeout(1000, () => s.destroy());
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      got += d;
      if (got.includes("\r\n")) s.end();
    });
    s.on("close", () => resolve(got.startsWith("+PONG")));
    s.on("error", () => resolve(false));
  });
}

export class Redis {
  async start() {
    this.port = await freePort();
    this.dir = fs.mkdtempSync(path.join(root, "redis."));
    this.proc = start(
      [REDIS_SERVER, "--save", "", "--appendonly", "no", "--dir", this.dir,
        "--bind", HOST, "--port", String(this.port), "--daemonize", "no"],
      path.join(this.dir, "redis.log"),
    );
    await waitFor(() => redisPing(this.port), 10000, "redis-server");
    return this;
  }

  url() {
    return `redis://${HOST}:${this.port}`;
  }

  stop() {
    return stop(this.proc, "SIGTERM");
  }
}

let serial = 0;

/** One taskbus on a loopback port: 2 workers, no tick, quiet. */
export class Taskbus {
  constructor(name, ...args) {
    this.name = name;
    this.args = args;
  }

  get url() {
    return `http://${HOST}:${this.port}`;
  }

  /** Starts it on a free port, or on its own port again (a restart). */
  async start() {
    const again = this.port !== undefined;
    for (let tries = 0; ; tries++) {
      if (!again) this.port = await freePort();
      this.log = path.join(root, `taskbus-${this.name}-${++serial}.log`);
      this.proc = start(
        [BIN, "--listen", `${HOST}:${this.port}`, "--workers", "2", "--tick",
          "0", "--quiet", ...this.args],
        this.log,
      );
      try {
        await waitFor(async () => {
          if (this.proc.exitCode !== null) throw new Error("exited");
          try {
            return (await fetch(`${this.url}/readyz`)).status === 200;
          } catch {
            return false;
          }
        }, 15000, `taskbus ${this.name} ready`);
        return this;
      } catch (e) {
        await stop(this.proc, "SIGKILL");
        const why = tail(this.log);
        // The port may still be taken (a restart right after a kill).
        if (tries < 20 && /cannot listen|in use/i.test(why)) {
          if (!again) continue;
          await sleep(250);
          continue;
        }
        throw new Error(`taskbus ${this.name} did not start: ${e.message}\n${why}`);
      }
    }
  }

  kill() {
    return stop(this.proc, "SIGKILL");
  }

  /** SIGTERM; its exit status (0 expected: a sanitizer report fails it). */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return this.proc?.exitCode;
    await stop(this.proc, "SIGTERM");
    return this.proc.exitCode;
  }

  logText() {
    return fs.readFileSync(this.log, "utf8");
  }
}

/** POST /events/{name}: the event id (throws on anything but 202). */
export async function post(base, name, body, token) {
  const res = await fetch(`${base}/events/${name}`, {
    method: "POST",
    body,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  const o = await res.json();
  if (res.status !== 202) throw new Error(`POST ${name}: ${res.status} ${JSON.stringify(o)}`);
  return o.id;
}

const b64url = (s) => Buffer.from(s).toString("base64url");

/** An HS256 client token with the given claims (exp: an hour from now). */
export function jwt(secret, claims) {
  const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64url(
    JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims }),
  );
  const sig = createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url");
  return `${h}.${p}.${sig}`;
}

/** Collects a client's events and waits for them. */
export class Recorder {
  constructor(client) {
    this.events = [];
    this.recovered = [];
    this.errors = [];
    this.states = [];
    this.reconnects = [];
    client.on("event", (e) => this.events.push(e));
    client.on("recovered", (r) => this.recovered.push(r));
    client.on("error", (e) => this.errors.push(e));
    client.on("state", (s) => this.states.push(s));
    client.on("reconnect", (r) => this.reconnects.push(r));
  }

  named(prefix) {
    return this.events.filter((e) => e.name.startsWith(prefix));
  }

  until(fn, what, ms = 15000) {
    return waitFor(() => fn(this), ms, what);
  }
}
