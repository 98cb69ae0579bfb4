#!/usr/bin/env bash
# run_coldstart.sh - cold start of the taskbus binary: process start to
# the first 200 from GET /readyz, against the same measure for the minimal
# libevent websocket server bench_wsraw (GET /healthz) as the
# baseline, alternately, in one invocation. Prints the median and best of
# each and their ratio.
#
# Usage: tests/bench/run_coldstart.sh [BUILD_DIR] [-r ROUNDS] [-R REDIS_URL]
#   BUILD_DIR  holds taskbus and tests/bench/bench_wsraw (default: the first of
#              build-wsbench, build-bench, build that has both); builds
#              nothing
#   -r ROUNDS  rounds (default 20)
#   -R URL     also measure taskbus with this Redis bus (readiness then
#              includes connecting to Redis)
# Loopback only; every process is killed at the end of its round; the
# whole run is bounded (each start gets 10 s).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
rounds=20
redis=""
build=""
while (($#)); do
    case $1 in
    -r) rounds=$2; shift 2 ;;
    -R) redis=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "run_coldstart.sh: unknown option $1" >&2; exit 2 ;;
    *) build=$1; shift ;;
    esac
done
if [[ -z $build ]]; then
    for d in build-wsbench build-bench build; do
        if [[ -x $src/$d/taskbus && -x $src/$d/tests/bench/bench_wsraw ]]; then
            build=$src/$d
            break
        fi
    done
fi
if [[ -z $build || ! -x $build/taskbus || ! -x $build/tests/bench/bench_wsraw ]]
then
    echo "run_coldstart.sh: no build dir with taskbus and bench_wsraw" >&2
    exit 2
fi
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg)"
exec /usr/bin/python3 - "$build" "$rounds" "$redis" <<'EOF'
import http.client, os, signal, socket, statistics, subprocess, sys, time

build, rounds, redis = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def cold(argv, path):
    """ms from exec to the first 200 on path."""
    port = free_port()
    argv = [a.replace("PORT", str(port)) for a in argv]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < 10:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", path)
                if c.getresponse().status == 200:
                    return (time.monotonic() - t0) * 1000
            except OSError:
                pass
            time.sleep(0.0005)
        raise SystemExit(f"{argv[0]}: not ready in 10 s")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

runs = {
    "raw (bench_wsraw, /healthz)":
        ([f"{build}/tests/bench/bench_wsraw", "-p", "PORT"],
         "/healthz"),
    "taskbus (in-process bus, /readyz)":
        ([f"{build}/taskbus", "--listen", "127.0.0.1:PORT", "--quiet"],
         "/readyz"),
}
if redis:
    runs["taskbus (Redis bus, /readyz)"] = (
        [f"{build}/taskbus", "--listen", "127.0.0.1:PORT", "--quiet",
         "--redis-url", redis], "/readyz")
got = {k: [] for k in runs}
for _ in range(rounds):
    for k, (argv, path) in runs.items():
        got[k].append(cold(argv, path))
base = statistics.median(got[next(iter(runs))])
print(f"{'start to ready, ms':40} {'median':>8} {'best':>8} {'ratio':>7}")
for k, v in got.items():
    m = statistics.median(v)
    print(f"{k:40} {m:8.1f} {min(v):8.1f} {m / base:7.2f}")
EOF
