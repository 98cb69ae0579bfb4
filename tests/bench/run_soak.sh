#!/usr/bin/env bash
# run_soak.sh - the soak benchmark: one `taskbus serve` on a real
# redis-server takes 10 000 websocket connect/disconnect cycles, then
# 1 000 000 events through the Redis bus delivered to a websocket client;
# its open descriptors and resident memory are recorded at the start, after
# each phase and at the end (when every client has gone). Numbers are
# printed, not asserted: docs/BENCHMARKS.md (section 6) holds a run's.
#
# Usage: tests/bench/run_soak.sh [BUILD_DIR] [-c CYCLES] [-n EVENTS]
#                                [-r RATE] [-p PASSES]
#
#   BUILD_DIR  a build tree holding taskbus (target taskbus_bin) and
#              tests/bench/bench_redis (target bench_redis); by default the
#              first of build-bench and build under the source tree that has
#              both. This script builds nothing.
#   -c CYCLES  websocket connect/disconnect cycles (default 10000)
#   -n EVENTS  events through the bus (default 1000000)
#   -r RATE    events/s the publisher keeps to (default 20000: what one
#              Python websocket client reads on a shared 2-core machine;
#              faster, the server rightly closes it as a slow client)
#   -p PASSES  run both phases this many times in the same process (default
#              1): growth that goes on pass after pass is a leak, growth
#              that stops is caches warming
#
# The service: `taskbus --listen 127.0.0.1:PORT --redis-url ... --namespace
# tbsoak --workers 2 --tick 0 --quiet` (its log in the temporary folder,
# shown on failure). Cycles: /usr/bin/python3 with python3-websockets, 50 at
# a time, each subscribing to soak.*; every 5th drops its TCP connection
# without a close handshake, every 3rd sends a subscribe first. Events:
# `bench_redis -m pub -r RATE` (a second taskbus instance in one process)
# dispatches EVENTS events "bench.e" of 128 bytes on the same Redis and
# namespace; the service receives them on its Redis subscription and sends
# each to one websocket client subscribed to bench.*, which counts them
# (events_dropped notices included). Redis's pubsub output-buffer limit is
# lifted as run_redis.sh does. Warm-up: 200 cycles and 10 000 events before
# the start figures (allocator caches, thread stacks).
#
# Bounded: TOTAL_S (default 900) for the whole run; each phase is killed
# when it would pass it.
set -uo pipefail
me=run_soak.sh
total_s=${TOTAL_S:-900}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
# shellcheck source=lib.sh
source "$here/lib.sh"

build=
cycles=10000
events=1000000
rate=20000
passes=1
while (($#)); do
    case $1 in
    -c) cycles=$2; shift 2 ;;
    -n) events=$2; shift 2 ;;
    -r) rate=$2; shift 2 ;;
    -p) passes=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    -*) echo "$me: unknown option $1" >&2; exit 2 ;;
    *) build=$1; shift ;;
    esac
done
if [[ -z $build ]]; then
    for d in build-bench build; do
        if [[ -x $src/$d/taskbus && -x $src/$d/tests/bench/bench_redis ]]; then
            build=$src/$d
            break
        fi
    done
fi
[[ -n $build && -x $build/taskbus && -x $build/tests/bench/bench_redis ]] || {
    echo "$me: no build tree with taskbus and tests/bench/bench_redis" \
        "(cmake --build DIR --target taskbus_bin bench_redis)" >&2
    exit 2
}
"$py" -c 'import websockets' 2>/dev/null || {
    echo "$me: $py has no websockets module (python3-websockets)" >&2
    exit 2
}

redis_start || exit 1
redis-cli -p "$redis_port" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
url=redis://127.0.0.1:$redis_port
port=$(free_port)
log=$tmp/taskbus.log
"$build/taskbus" --listen "127.0.0.1:$port" --redis-url "$url" \
    --namespace tbsoak --workers 2 --tick 0 --quiet >"$log" 2>&1 &
tb=$!
pids+=("$tb")
for _ in $(seq 100); do
    curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null |
        grep -q 200 && break
    sleep 0.1
done

fds() { ls "/proc/$tb/fd" 2>/dev/null | wc -l; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$tb/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$tb/status"; }
metric() {
    curl -s -m 5 "http://127.0.0.1:$port/metrics" |
        awk -v m="$1" '$1 == m { print $2 }'
}
sample() {
    local what=$1
    printf '%-28s fds %5s  rss %7s kB  threads %3s  ws_clients %s  ws_memory %s\n' \
        "$what" "$(fds)" "$(rss_kb)" "$(threads)" "$(metric taskbus_ws_clients)" \
        "$(metric taskbus_ws_memory_bytes)" | tee -a "$res"
}
settle() { # until no websocket is open (at most 30 s)
    local i
    for i in $(seq 300); do
        [[ $(metric taskbus_ws_clients) == 0 ]] && return 0
        sleep 0.1
    done
    echo "$me: websockets still open 30 s after the clients left" >&2
    failed=1
}

# cycles N: N websocket connect/disconnect cycles, 50 at a time.
run_cycles() {
    timeout "$(left)" "$py" - "$port" "$1" <<'EOF'
import asyncio, json, sys, time
import websockets
port, n = int(sys.argv[1]), int(sys.argv[2])
errors = []
async def one(k, sem):
    async with sem:
        try:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws?events=soak.*", open_timeout=10,
                ping_interval=None, close_timeout=5, compression=None)
        except Exception as e:
            errors.append(f"connect {k}: {e!r}")
            return
        try:
            if k % 3 == 0:
                await ws.send('{"subscribe":["soak.more"]}')
                json.loads(await asyncio.wait_for(ws.recv(), 10))
            if k % 5 == 0:
                ws.transport.abort()
            else:
                await asyncio.wait_for(ws.close(), 10)
        except Exception as e:
            errors.append(f"client {k}: {e!r}")
            ws.transport.abort()
async def main():
    sem = asyncio.Semaphore(50)
    t0 = time.monotonic()
    await asyncio.gather(*(one(k, sem) for k in range(n)))
    took = time.monotonic() - t0
    print(f"{n} cycles in {took:.1f} s ({n / took:.0f}/s), {len(errors)} errors"
          + (f", first: {errors[0]}" if errors else ""))
    return 1 if errors else 0
sys.exit(asyncio.run(main()))
EOF
}

# events N: a websocket client on bench.* counts while bench_redis
# publishes N events; prints what it got.
# Returns 1 when the publisher failed or the client missed events.
run_events() {
    local n=$1 out=$tmp/sub.out rc=0
    timeout "$(left)" "$py" - "$port" "$n" >"$out" 2>&1 <<'EOF' &
import asyncio, json, sys, time
import websockets
port, n = int(sys.argv[1]), int(sys.argv[2])
async def main():
    got = dropped = 0
    async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws?events=bench.*", open_timeout=10,
            ping_interval=None, close_timeout=5, compression=None,
            max_queue=4096) as ws:
        await ws.send('{"subscribe":[]}')
        json.loads(await ws.recv())
        print("ready", flush=True)
        t0, why = None, ""
        while got + dropped < n:
            try:
                m = await asyncio.wait_for(ws.recv(), 10 if got else 60)
            except asyncio.TimeoutError:
                why = ", stopped waiting after 10 s without one"
                break
            except websockets.ConnectionClosed as e:
                why = f", closed by the server: {e}"
                break
            if t0 is None:
                t0 = time.monotonic()
            if m.startswith('{"error":"events_dropped"'):
                dropped += json.loads(m)["dropped"]
            else:
                got += 1
        took = time.monotonic() - (t0 or time.monotonic())
    print(f"received {got} of {n} events in {took:.1f} s "
          f"({got / max(took, 1e-9):.0f}/s), {dropped} dropped for this "
          f"slow client{why}", flush=True)
asyncio.run(main())
EOF
    local sub=$!
    for _ in $(seq 100); do
        grep -q ready "$out" 2>/dev/null && break
        sleep 0.1
    done
    local t0=$SECONDS
    timeout "$(left)" "$build/tests/bench/bench_redis" -m pub -u "$url" -n "$n" \
        -r "$rate" -s tbsoak >"$tmp/pub.out" 2>&1 || {
        echo "$me: bench_redis -m pub failed:" >&2
        cat "$tmp/pub.out" >&2
        rc=1
    }
    wait "$sub"
    echo "published $n at $rate/s in $((SECONDS - t0)) s; $(tail -n 1 "$out")"
    grep -q "^received $n of $n" "$out" || rc=1
    return $rc
}

echo "== taskbus $("$build/taskbus" --version 2>/dev/null | head -n 1), build $build" | tee -a "$res"
run_cycles 200 >/dev/null
run_events 10000 >/dev/null
settle
sample "start (after warm-up)"
t=$SECONDS
for pass in $(seq "$passes"); do
    ((passes > 1)) && echo "-- pass $pass of $passes" | tee -a "$res"
    run_cycles "$cycles" | tee -a "$res" || failed=1
    settle
    sample "after $cycles cycles"
    # Not in a pipeline: its status must reach this shell.
    run_events "$events" >"$tmp/events.txt" || failed=1
    tee -a "$res" <"$tmp/events.txt"
    settle
    sample "after $events events"
done
sleep 2
sample "end (2 s later)"
echo "total $((SECONDS - t)) s; redis-server $(redis-cli -p "$redis_port" info memory |
    awk -F: '/^used_memory_human/ { print $2 }' | tr -d '\r') used" | tee -a "$res"
if ((failed)); then
    echo "$me: FAILED; taskbus log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
