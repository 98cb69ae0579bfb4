#!/usr/bin/env bash
# run_front.sh - what the HTTP front costs (docs/HTTP_DESIGN.md, "The
# front"): small keep-alive requests through the front against the same
# requests to civetweb listening itself (TASKBUS_HTTP_FRONT=0), in one
# invocation; then /healthz latency with 500 slow-header connections open,
# on each.
#
# Usage: tests/bench/run_front.sh [BUILD_DIR] [-d SECONDS] [-c CONNS]
#
#   BUILD_DIR   a build tree holding taskbus (default: build under the
#               source tree). This script builds nothing.
#   -d SECONDS  length of each wrk run (default 5)
#   -c CONNS    wrk connections (default 50; wrk -t2)
#
# Two servers on free 127.0.0.1 ports, `taskbus --listen ... --workers 2`
# with the in-process bus, front on and off, run one after the other (not
# side by side: 2 cores). For each: wrk GET /healthz and wrk POST
# /events/bench.x (128-byte JSON body), requests/s, p50/p99, and the
# server's CPU time per request (utime + stime from /proc over the run);
# wrk's own CPU shares the cores and is not counted. Then 500 connections
# that each send a request line and one header line a second, and 50
# GET /healthz on fresh connections: median and max ms.
#
# Then the event routes the front answers itself (http.front_answers,
# issue 13 point 1), on the Redis bus with a throwaway redis-server (the
# headline) and on the in-process bus, each with the front answering
# ("front") and relaying to civetweb ("relay"): wrk -c16 POST
# /events/bench.x (128-byte body) and POST /events with 64 such events
# (NDJSON), one SSE subscriber (curl) on bench.* receiving every event.
# req/s, events/s sent and delivered, and server CPU per delivered
# event: taskbus plus its redis-server, utime + stime over the run.
#
# Bounded: each wrk run is killed after SECONDS + 30 s, the whole script
# after TOTAL_S (env, default 420); a trap kills everything started here.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
me=run_front.sh
total_s=${TOTAL_S:-420}
dur=5
conns=50
build=$src/build
while (($#)); do
    case $1 in
    -d) dur=$2 && shift 2 ;;
    -c) conns=$2 && shift 2 ;;
    -*) echo "usage: $me [BUILD_DIR] [-d SECONDS] [-c CONNS]" >&2 && exit 2 ;;
    *) build=$1 && shift ;;
    esac
done
bin=$build/taskbus
[[ -x $bin ]] || { echo "$me: no $bin (build target taskbus_bin)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "$me: needs wrk (Debian: wrk)" >&2; exit 2; }
# shellcheck source=lib.sh
source "$here/lib.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null

body='{"bench":"'$(printf 'x%.0s' $(seq 116))'"}'
cat >"$tmp/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
EOF

batch=$(for _ in $(seq 64); do printf '{"name":"bench.x","data":%s}\n' "$body"; done)
cat >"$tmp/batch.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.body = [[
$batch
]]
EOF

# serve FRONT [ARG...]: starts a taskbus with the front on (1) or off (0)
# and ARGs; sets port and spid.
serve() {
    local front=$1
    shift
    port=$(free_port)
    TASKBUS_HTTP_FRONT=$front "$bin" --listen "127.0.0.1:$port" --workers 2 \
        "$@" >/dev/null 2>"$tmp/taskbus-$front.err" &
    spid=$!
    pids+=("$spid")
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
        sleep 0.05
    done
    echo "$me: taskbus (front=$front) did not start" >&2
    cat "$tmp/taskbus-$front.err" >&2
    return 1
}

# wrk_row FRONT LABEL URL [ARGS...]
wrk_row() {
    local front=$1 label=$2 url=$3 out c0 c1 n rps p50 p99
    shift 3
    have $((dur + 10)) "wrk $label" || return 1
    c0=$(cpu_ticks "$spid")
    out=$(timeout -k 5 $((dur + 30)) wrk -t2 -c"$conns" -d"${dur}s" --latency "$@" "$url" 2>&1)
    c1=$(cpu_ticks "$spid")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    if [[ -z $n || -z $rps ]]; then
        echo "$me: wrk $label printed no rate:" >&2
        echo "$out" >&2
        failed=1
        return 1
    fi
    grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^/  /'
    printf '| %-5s | %-18s | %8s | %7s | %7s | %6.1f |\n' "$front" "$label" \
        "$rps" "$p50" "$p99" \
        "$(awk -v t=$((c1 - c0)) -v hz="$hz" -v n="$n" 'BEGIN {print t / hz * 1e6 / n}')"
}

slow_row() {
    local front=$1
    have 20 "slow headers" || return 1
    "$py" - "$port" "$front" <<'EOF'
import socket, statistics, sys, threading, time
port, front = int(sys.argv[1]), sys.argv[2]
socks = []
for _ in range(500):
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    socks.append(s)
stop = threading.Event()
def trickle():
    i = 0
    while not stop.wait(1.0):
        i += 1
        for s in socks:
            try:
                s.sendall(b"X-Slow-%d: %d\r\n" % (i, i))
            except OSError:
                pass
threading.Thread(target=trickle, daemon=True).start()
times = []
for _ in range(50):
    t0 = time.monotonic()
    try:
        c = socket.create_connection(("127.0.0.1", port), 15)
        c.settimeout(15)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        ok = c.recv(4096).startswith(b"HTTP/1.1 200")
        c.close()
    except OSError:
        ok = False
    times.append((time.monotonic() - t0) * 1000 if ok else float("inf"))
    time.sleep(0.05)
stop.set()
for s in socks:
    s.close()
print("| %-5s | /healthz with 500 slow-header connections | median %.1f ms | max %s |"
      % (front, statistics.median(times),
         "%.1f ms" % max(times) if max(times) != float("inf") else "timed out (15 s)"))
EOF
}

echo "# run_front.sh: $(date -u '+%F %T UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), wrk -t2 -c$conns -d${dur}s, $("$bin" --version 2>/dev/null | head -1)"
echo
echo "| front | request | req/s | p50 | p99 | server CPU us/req |"
echo "|---|---|---:|---:|---:|---:|"
for front in 1 0; do
    serve "$front" || { failed=1; continue; }
    label=$([[ $front == 1 ]] && echo on || echo off)
    wrk_row "$label" "GET /healthz" "http://127.0.0.1:$port/healthz"
    wrk_row "$label" "POST /events (128 B)" "http://127.0.0.1:$port/events/bench.x" -s "$tmp/post.lua"
    echo "$label $port $spid" >>"$tmp/servers"
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
done
echo
for front in 1 0; do
    serve "$front" || { failed=1; continue; }
    slow_row "$([[ $front == 1 ]] && echo on || echo off)"
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
done

# event_row BUS ANSWERS LABEL PATH LUA PER: wrk on PATH with the body of
# LUA (PER events a request), one SSE subscriber counting deliveries.
event_row() {
    local bus=$1 answers=$2 label=$3 path=$4 lua=$5 per=$6 out c0 c1 r0 r1
    local n rps got sub
    have $((dur + 15)) "wrk $bus $label" || return 1
    curl -sN "http://127.0.0.1:$port/sse?events=bench.*" >"$tmp/sse.out" 2>/dev/null &
    sub=$!
    pids+=("$sub")
    sleep 0.3
    c0=$(cpu_ticks "$spid")
    r0=$([[ $bus == redis ]] && cpu_ticks "$redis_pid" || echo 0)
    out=$(timeout -k 5 $((dur + 30)) wrk -t2 -c16 -d"${dur}s" -s "$lua" \
        "http://127.0.0.1:$port$path" 2>&1)
    sleep 0.5 # the last deliveries
    c1=$(cpu_ticks "$spid")
    r1=$([[ $bus == redis ]] && cpu_ticks "$redis_pid" || echo 0)
    kill "$sub" 2>/dev/null
    wait "$sub" 2>/dev/null
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")
    got=$(grep -c '^data:' "$tmp/sse.out")
    if [[ -z $n || -z $rps || $got == 0 ]]; then
        echo "$me: wrk $bus $label printed no rate or nothing delivered:" >&2
        echo "$out" >&2
        failed=1
        return 1
    fi
    grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^/  /'
    printf '| %-6s | %-5s | %-22s | %7s | %8d | %8d | %6.1f | %5.1f |\n' "$bus" \
        "$([[ $answers == 1 ]] && echo front || echo relay)" "$label" "$rps" \
        "$((rps * per))" "$((got / dur))" \
        "$(awk -v t=$((c1 - c0 + r1 - r0)) -v hz="$hz" -v n="$got" 'BEGIN {print t / hz * 1e6 / n}')" \
        "$(awk -v t=$((r1 - r0)) -v hz="$hz" -v n="$got" 'BEGIN {print t / hz * 1e6 / n}')"
}

echo
echo "Event routes: wrk -t2 -c16 -d${dur}s, one SSE subscriber; CPU: taskbus + its redis-server per delivered event (redis alone in the last column)"
echo
echo "| bus | answers | request | req/s | events/s sent | delivered/s | CPU us/event | redis us/event |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for bus in redis memory; do
    args=()
    if [[ $bus == redis ]]; then
        redis_start || { failed=1; continue; }
        args=(--redis-url "redis://127.0.0.1:$redis_port")
    fi
    for answers in 1 0; do
        TASKBUS_HTTP_FRONT_ANSWERS=$answers serve 1 "${args[@]}" || { failed=1; continue; }
        event_row "$bus" "$answers" "POST /events/x 128 B" /events/bench.x "$tmp/post.lua" 1
        event_row "$bus" "$answers" "POST /events 64 x 128 B" /events "$tmp/batch.lua" 64
        kill "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
    done
    if [[ $bus == redis ]]; then
        kill "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
done
exit "$failed"
