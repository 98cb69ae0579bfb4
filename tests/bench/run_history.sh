#!/usr/bin/env bash
# run_history.sh - the history benchmark (issue 12): bench_history (the
# Redis bus with history off and on in one run: dispatch and delivery
# rates, their ratio, Redis CPU per event; a subscription resuming after
# 10 000 missed events), then the same resume over a websocket: the
# taskbus binary on the same redis-server, 10 000 events dispatched while
# the client is away, and the time from its reconnection with since to
# {"recovered": true}. A replica of the redis-server gives bench_history
# its third run: history on with redis.wait_replicas 1 (and the latency of
# one tb_dispatch_wait at a time with wait_replicas 0 and 1).
#
# Usage: tests/bench/run_history.sh [BUILD_DIR] [-n N]
#   BUILD_DIR  a build tree with tests/bench/bench_history and taskbus
#              (default: build under the source tree). Builds nothing.
#   -n N       events per rate run (default 200000)
# Bounded: each step is killed after PER_RUN_S seconds (default 180).
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
me=run_history.sh total_s=600
# shellcheck source=lib.sh
source "$here/lib.sh"

build=$src/build
n=200000
[[ $# -gt 0 && $1 != -* ]] && { build=$1; shift; }
while getopts n: opt; do
    case $opt in
    n) n=$OPTARG ;;
    *) echo "usage: $me [BUILD_DIR] [-n N]" >&2; exit 2 ;;
    esac
done
per=${PER_RUN_S:-180}
bench=$build/tests/bench/bench_history
bin=$build/taskbus
[[ -x $bench && -x $bin ]] || { echo "$me: no $bench or $bin" >&2; exit 2; }

redis_start || exit 1
master_port=$redis_port
redis_start --replicaof 127.0.0.1 "$master_port" || exit 1
replica_port=$redis_port
redis_port=$master_port
for _ in $(seq 100); do
    redis-cli -p "$replica_port" info replication | grep -q 'master_link_status:up' && break
    sleep 0.1
done
echo "== bench_history: Redis bus, history off, on, on with wait_replicas 1 (N=$n), resume in-process"
timeout "$per" "$bench" -p "$redis_port" -r "$replica_port" -n "$n" || failed=1

echo "== resume over a websocket: 10000 missed events"
redis-cli -p "$redis_port" FLUSHALL >/dev/null
hport=$(free_port)
"$bin" --listen "127.0.0.1:$hport" --redis-url "redis://127.0.0.1:$redis_port" \
    --history-size 11000 --quiet >"$tmp/taskbus.log" 2>&1 &
pids+=($!)
timeout "$per" "$py" - "$hport" <<'PY' || failed=1
import asyncio, json, sys, time, urllib.request
import websockets

port = int(sys.argv[1])
base = f"127.0.0.1:{port}"

def http(path, body=None):
    req = urllib.request.Request(f"http://{base}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")

async def main():
    for _ in range(100):
        try:
            http("/healthz")
            break
        except OSError:
            await asyncio.sleep(0.1)
    http("/events/w.ev", b'"first"')
    since = http("/history?events=w.ev&limit=1")["next"]
    async with websockets.connect(f"ws://{base}/ws", max_size=None) as pub:
        for i in range(10000):
            await pub.send(json.dumps({"event": "w.ev", "data": {"i": i}}))
        for i in range(10000):
            await pub.recv()
    t0 = time.monotonic()
    got = 0
    async with websockets.connect(f"ws://{base}/ws?events=w.ev&since={since}",
                                  max_size=None) as c:
        while True:
            m = json.loads(await c.recv())
            if "recovered" in m:
                break
            got += 1
    dt = time.monotonic() - t0
    print(f"websocket resume: {got} events replayed, then recovered "
          f"{m['recovered']}, in {dt:.3f} s ({got / dt:.0f} events/s)")
    sys.exit(0 if got == 10000 and m["recovered"] else 1)

asyncio.run(main())
PY
exit $failed
