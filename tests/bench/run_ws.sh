#!/usr/bin/env bash
# run_ws.sh - the websocket benchmark: events POSTed over HTTP and fanned out
# to websocket clients by taskbus on its Redis bus (the headline: one
# throwaway redis-server on loopback, as in deploy/compose.yaml) and on its
# in-process bus, against a minimal one-thread wslay broadcast server
# (bench_wsraw), all three measured in the same invocation, plus wrk's
# plain request rates on each; last, one table of every issue-13 figure
# with its target, its memory-bus twin and the raw baseline.
#
# Usage: tests/bench/run_ws.sh [BUILD_DIR] [-s LIST] [-q] [-j THREADS]
#                              [-k CONNS] [-t SERVERS]
#
#   BUILD_DIR   a build tree holding tests/bench/bench_ws and
#               tests/bench/bench_wsraw (CMake targets bench_ws and
#               bench_wsraw) and taskbus (target taskbus_bin); by default the
#               first of build-rel, build-wsbench, build-bench and build
#               under the source tree that has those it needs (bench_ws,
#               and bench_wsraw for raw, taskbus for redis and memory; see
#               -t).
#               This script builds nothing.
#   -s LIST     scenarios, comma-separated (default 1,2,3,4,5,6):
#                 1  one subscriber: events/s received with events POSTed as
#                    fast as they are answered by 16 keep-alive publishers,
#                    at most 2048 deliveries outstanding (none lost) and the server's CPU per delivered event
#                    (taskbus plus its redis-server on the Redis bus), then
#                    p50/p99 publish-to-receive latency at 1 000 events/s
#                 2  1 000 clients on one pattern: deliveries/s with at most
#                    WINDOW deliveries outstanding, then latency at 200
#                    events/s (200 000 deliveries/s offered)
#                 3  100 patterns x 10 clients: deliveries/s (same window)
#                 4  10 000 idle clients on a fresh server: its VmRSS before
#                    and with them, per client (then 20 events to each, to
#                    prove they are subscribed)
#                 5  wrk -t2 -c50: GET /healthz and POST /events/x (128 B)
#                 6  batch publish: one subscriber, events POSTed 64 at a
#                    time (POST /events, a JSON array) and one at a time
#                    (POST /events/NAME, the baseline) by 16 keep-alive
#                    publishers, at most 2048 deliveries outstanding;
#                    events/s accepted and delivered, batch/single ratio,
#                    target 200 000/s delivered on Redis (raw has no batch
#                    route: taskbus only).
#   -q          quick: smaller runs (about a third of the time)
#   -j THREADS  load generator event-loop threads, 1 or 2 (default 1)
#   -k CONNS    publisher connections, one POST in flight each (default 16,
#               the issue's load; with 4, scenario 3 measured the POSTs'
#               round trip, not the server: 3,400 events/s on the Redis bus)
#   -t SERVERS  comma-separated, of raw, redis (taskbus on the Redis bus),
#               memory (taskbus on the in-process bus); taskbus means
#               redis,memory (default raw,redis,memory)
#
# Servers, each on a free 127.0.0.1 port: `bench_wsraw -p PORT`, and
# `taskbus --listen 127.0.0.1:PORT --workers 2 --tick 0 --quiet` without
# Redis (memory) and with `--redis-url redis://127.0.0.1:RPORT` (redis),
# its own throwaway redis-server (lib.sh's redis_start: no persistence).
# stdout to /dev/null, and without --quiet if this taskbus has none. All
# run side by side for scenarios 1-3, 5 and 6, which alternate raw, redis
# and memory; scenario 4 starts a fresh one of each (and a fresh
# redis-server). The load generator is `bench_ws -m load` with -S <server
# pid> (and -B <redis-server pid> on the Redis bus): it reports its own CPU
# time (getrusage), the server's and its redis-server's (/proc/PID/stat,
# read at the same instants) and the rest of the machine's (/proc/stat:
# other processes, and loopback softirqs charged to no process) over each
# run, since on a small machine they share the cores and a busy neighbour
# shows up there. The open-file limit is raised to the hard limit for
# everything started here.
#
# Everything is bounded: each run is killed after PER_RUN_S seconds (env,
# default 90), runs that would start after TOTAL_S (default 900) are
# skipped, and a trap kills every process started here at exit.
#
# Exit status: 0 when every run completed (whether or not the targets were
# met), 1 when a run failed, lost or duplicated events, or timed out, 2 on
# bad usage.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3

scen=1,2,3,4,5,6
quick=0
threads=1
conns=16
servers=raw,redis,memory
per_run_s=${PER_RUN_S:-90}
total_s=${TOTAL_S:-900}
window=65536 # deliveries outstanding in the fan-out runs (-W)

usage() {
    sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

dir=""
if [[ $# -gt 0 && $1 != -* ]]; then
    dir=$1
    shift
fi
while getopts "s:qj:k:t:h" opt; do
    case $opt in
    s) scen=$OPTARG ;;
    q) quick=1 ;;
    j) threads=$OPTARG ;;
    k) conns=$OPTARG ;;
    t) servers=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
(($# == 0)) || usage
[[ $scen =~ ^[1-6](,[1-6])*$ ]] || {
    echo "run_ws.sh: -s takes scenarios 1 to 6, comma-separated" >&2
    exit 2
}
[[ $threads =~ ^[12]$ ]] || {
    echo "run_ws.sh: -j takes 1 or 2" >&2
    exit 2
}
[[ $conns =~ ^[1-9][0-9]*$ ]] || {
    echo "run_ws.sh: -k takes a positive integer" >&2
    exit 2
}
[[ $servers =~ ^(raw|redis|memory|taskbus)(,(raw|redis|memory|taskbus))*$ ]] || {
    echo "run_ws.sh: -t takes raw, redis, memory or taskbus, comma-separated" >&2
    exit 2
}
servers=${servers//taskbus/redis,memory}
want() { [[ ,$scen, == *,$1,* ]]; }
use() { [[ ,$servers, == *,$1,* ]]; }
usetb() { use redis || use memory; }

if [[ -n $dir ]]; then
    [[ -d $dir ]] || {
        echo "run_ws.sh: $dir is not a directory" >&2
        exit 2
    }
    dir=$(cd "$dir" && pwd)
else
    for c in build-rel build-wsbench build-bench build; do
        if [[ -x $src/$c/tests/bench/bench_ws ]] &&
            { ! use raw || [[ -x $src/$c/tests/bench/bench_wsraw ]]; } &&
            { ! usetb || [[ -x $src/$c/taskbus ]]; }; then
            dir=$src/$c
            break
        fi
    done
fi
bench=${dir:+$dir/tests/bench/bench_ws}
rawbin=${dir:+$dir/tests/bench/bench_wsraw}
tb=${dir:+$dir/taskbus}
if [[ -z $dir || ! -x $bench ]] || { use raw && [[ ! -x $rawbin ]]; } ||
    { usetb && [[ ! -x $tb ]]; }; then
    what=tests/bench/bench_ws
    use raw && what="$what, tests/bench/bench_wsraw"
    usetb && what="$what and taskbus"
    echo "run_ws.sh: no build with $what (${dir:-none found}); build them:" >&2
    echo "  cmake -S $src -B $src/build-wsbench -DCMAKE_BUILD_TYPE=Release &&" \
        "cmake --build $src/build-wsbench -j2 --target bench_ws bench_wsraw taskbus_bin" >&2
    exit 2
fi
for tool in "$py" timeout curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "run_ws.sh: $tool not found (Debian: python3, coreutils, curl)" >&2
        exit 2
    fi
done
if use redis && ! command -v redis-server >/dev/null; then
    echo "run_ws.sh: the Redis bus needs redis-server (Debian: redis-server; or -t raw,memory)" >&2
    exit 2
fi
if want 5 && ! command -v wrk >/dev/null; then
    echo "run_ws.sh: scenario 5 needs wrk (Debian: wrk)" >&2
    exit 2
fi

# Sizes: full / quick.
if ((quick)); then
    n1=50000 lat1_s=3 n2=500 lat2_s=2 n3=10000 wrk_s=2 n6=64000
else
    n1=200000 lat1_s=10 n2=2000 lat2_s=5 n3=50000 wrk_s=5 n6=256000
fi
n4_clients=10000

ulimit -n "$(ulimit -Hn)" 2>/dev/null
me=run_ws.sh
# shellcheck source=tests/bench/lib.sh
source "$here/lib.sh"

# ---------------------------------------------------------------- servers

quiet_flag=--quiet
if usetb && ! "$tb" --help 2>&1 | grep -q -- --quiet; then
    quiet_flag=""
    echo "# note: this taskbus has no --quiet: it prints every event (to /dev/null here)"
fi

declare -A spid sport sargs
declare -A bpid # kind -> the redis-server pid its CPU is counted with
# start_server KIND: starts raw, taskbus on the in-process bus (memory) or
# taskbus on the Redis bus (redis: on a redis-server of its own, started
# first unless one is running) on a free port; sets spid[KIND],
# sport[KIND] and, for redis, bpid[KIND]. Non-zero if it did not answer
# /healthz within 5 s.
start_server() {
    local kind=$1 port pid code args=()
    port=$(free_port)
    if [[ $kind == redis ]]; then
        if [[ -z ${redis_pid:-} ]] || ! kill -0 "$redis_pid" 2>/dev/null; then
            redis_start || return 1
            echo "# redis:    pid $redis_pid: redis-server on 127.0.0.1:$redis_port ($(redis-server --version | awk '{print $3}'))"
        fi
        args=(--redis-url "redis://127.0.0.1:$redis_port")
        bpid[$kind]=$redis_pid
    fi
    if [[ $kind == raw ]]; then
        "$rawbin" -p "$port" -d $((total_s + 60)) >"$tmp/$kind.out" 2>"$tmp/$kind.err" &
    else
        timeout -k 5 $((total_s + 60)) "$tb" --listen "127.0.0.1:$port" --workers 2 \
            --tick 0 $quiet_flag "${args[@]}" >/dev/null 2>"$tmp/$kind.err" &
    fi
    pid=$!
    pids+=("$pid")
    for _ in $(seq 50); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/healthz")
        [[ $code == 200 ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ $code != 200 ]]; then
        echo "run_ws.sh: $kind server did not answer GET /healthz on 127.0.0.1:$port:" >&2
        cat "$tmp/$kind.err" >&2
        stop_server "$pid"
        return 1
    fi
    sargs[$kind]="taskbus --listen 127.0.0.1:$port --workers 2 --tick 0 $quiet_flag ${args[*]}"
    [[ $kind == raw ]] && sargs[$kind]="bench_wsraw -p $port"
    # timeout(1) runs taskbus as its child: measure the server itself.
    if [[ $kind != raw ]]; then
        local child
        child=$(pgrep -P "$pid" | head -1)
        [[ -n $child ]] && pid=$child
    fi
    spid[$kind]=$pid
    sport[$kind]=$port
}
stop_server() {
    kill "$1" 2>/dev/null
    for _ in $(seq 30); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null
}
# stop_all: every server of this round, and the redis-server.
stop_all() {
    local k
    for k in "${kinds[@]}"; do
        if [[ -n ${spid[$k]:-} ]]; then
            stop_server "${spid[$k]}"
            unset "spid[$k]"
        fi
    done
    if [[ -n ${redis_pid:-} ]]; then
        stop_server "$redis_pid"
        redis_pid=""
    fi
}

echo "# websocket benchmark: scenarios $scen$( ((quick)) && echo ' (quick)'), servers $servers, load generator: $threads thread(s), $conns publisher connections"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# machine:  $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr), open files $(ulimit -n)"
echo "# libs:     libevent $(dpkg-query -W -f '${Version}' libevent-2.1-7 2>/dev/null || echo '?')," \
    "wslay $(dpkg-query -W -f '${Version}' libwslay1 2>/dev/null || echo '?')," \
    "civetweb $(dpkg-query -W -f '${Version}' libcivetweb1 2>/dev/null || echo '?')," \
    "wrk $(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo '?')"
echo "# binaries: $bench$(use raw && echo ", $rawbin")$(usetb && echo ", $tb")"
echo "# commit:   $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$src" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (before)"
echo

if ! "$bench" -m test >"$tmp/selftest" 2>&1; then
    echo "run_ws.sh: bench_ws -m test failed:" >&2
    cat "$tmp/selftest" >&2
    exit 1
fi

kinds=()
use raw && kinds+=(raw)
use redis && kinds+=(redis)
use memory && kinds+=(memory)
tbkinds=()
use redis && tbkinds+=(redis)
use memory && tbkinds+=(memory)
# start_all KINDS...: a server of each kind, side by side.
start_all() {
    local k code
    for k in "$@"; do
        if ! start_server "$k"; then
            failed=1
            continue
        fi
        printf '# %-9s pid %s: %s\n' "$k:" "${spid[$k]}" "${sargs[$k]}"
        [[ $k == raw ]] && continue
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H 'Connection: Upgrade' \
            -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
            -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
            "http://127.0.0.1:${sport[$k]}/ws?events=bench.probe")
        if [[ $code != 101 ]]; then
            echo "run_ws.sh: taskbus ($k) answers $code, not 101, to a websocket upgrade on /ws:" \
                "its websocket scenarios will fail" >&2
        fi
    done
}
if want 1 || want 2 || want 3 || want 5 || want 6; then
    start_all "${kinds[@]}"
    echo
fi

# load SCEN KIND LABEL ARGS...: one load generator run against KIND; its
# output goes to the screen (indented) and its result line to $res.
load() {
    local sc=$1 kind=$2 label=$3 rc t
    shift 3
    if [[ -z ${spid[$kind]:-} ]]; then
        echo "  $kind: no server"
        failed=1
        return 1
    fi
    have 15 "$sc $kind" || return 1
    t=$per_run_s
    (($(left) < t)) && t=$(left)
    local busarg=()
    [[ -n ${bpid[$kind]:-} ]] && busarg=(-B "${bpid[$kind]}")
    timeout -k 5 "$t" "$bench" -m load -p "${sport[$kind]}" -S "${spid[$kind]}" \
        "${busarg[@]}" -j "$threads" -k "$conns" -d $((t - 5)) "$@" \
        >"$tmp/run.out" 2>"$tmp/run.err"
    rc=$?
    echo "  $kind:"
    grep -v '^result ' "$tmp/run.out" | sed 's/^load /    /'
    grep '^result ' "$tmp/run.out" | sed "s/^result /$sc $kind label=$label rc=$rc /" >>"$res"
    if ((rc != 0)); then
        echo "run_ws.sh: $sc $label against $kind failed (status $rc$( ((rc == 124)) && echo ", timed out after $t s")):" >&2
        sed 's/^/  /' "$tmp/run.err" >&2
        grep -q '^result ' "$tmp/run.out" ||
            echo "$sc $kind label=$label rc=$rc failed=1" >>"$res"
        failed=1
    fi
}

# ---------------------------------------------------------------- scenarios

if want 1; then
    echo "## 1a. one subscriber, $n1 events of 128 bytes POSTed as fast as answered by $conns publishers"
    # -W 2048 as in scenario 6: the 202 comes when the bus has the event,
    # not when the client has it, so a load generator starved by its
    # neighbours let more than ws.send_queue_msgs (4096) frames pile up in
    # the server, and the slow-client rule closed the subscriber (seen
    # once on the in-process bus at a load average of 6).
    for k in "${kinds[@]}"; do load s1 "$k" thr -c 1 -n "$n1" -W 2048; done
    echo
    echo "## 1b. one subscriber, 1000 events/s for $lat1_s s: publish-to-receive latency"
    for k in "${kinds[@]}"; do load s1lat "$k" lat -c 1 -n $((1000 * lat1_s)) -r 1000; done
    echo
fi
if want 2; then
    echo "## 2a. 1000 clients on one pattern, $n2 events, at most $window deliveries outstanding"
    for k in "${kinds[@]}"; do load s2 "$k" thr -c 1000 -n "$n2" -W "$window"; done
    echo
    echo "## 2b. 1000 clients on one pattern, 200 events/s (200 000 deliveries/s) for $lat2_s s"
    for k in "${kinds[@]}"; do load s2lat "$k" lat -c 1000 -n $((200 * lat2_s)) -r 200; done
    echo
fi
if want 3; then
    echo "## 3. 100 patterns x 10 clients, $n3 events round-robin over the patterns, at most $window outstanding"
    for k in "${kinds[@]}"; do load s3 "$k" thr -c 1000 -P 100 -n "$n3" -W "$window"; done
    echo
fi

# wrk_run KIND LABEL URL [ARGS...]: one wrk run; rate, latency and errors
# (and the server's CPU) to $res.
wrk_run() {
    local kind=$1 label=$2 url=$3 out c0 c1 b0 b1 t0 t1 rps lat p99 non2xx errs
    shift 3
    have $((wrk_s + 10)) "wrk $label on $kind" || return 1
    c0=$(cpu_ticks "${spid[$kind]}")
    b0=$([[ -n ${bpid[$kind]:-} ]] && cpu_ticks "${bpid[$kind]}" || echo 0)
    t0=$(date +%s%N)
    out=$(timeout -k 5 $((wrk_s + 30)) wrk -t2 -c50 -d"${wrk_s}s" --latency "$@" "$url" 2>&1)
    t1=$(date +%s%N)
    c1=$(cpu_ticks "${spid[$kind]}")
    b1=$([[ -n ${bpid[$kind]:-} ]] && cpu_ticks "${bpid[$kind]}" || echo 0)
    rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(awk '$1 == "Latency" {print $2; exit}' <<<"$out")
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' <<<"$out")
    errs=$(sed -n 's/.*Socket errors: *\(.*\)/\1/p' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' <<<"$out")
    if [[ -z $rps ]]; then
        echo "run_ws.sh: wrk $label on $kind printed no rate:" >&2
        echo "$out" >&2
        failed=1
        return 1
    fi
    printf '  %-8s %10.0f req/s, latency avg %s p99 %s, non-2xx %s%s; server CPU %s ms, redis %s ms in %s ms\n' \
        "$kind:" "$rps" "$lat" "${p99:-?}" "${non2xx:-0}" "${errs:+, socket errors: $errs}" \
        $(((c1 - c0) * 1000 / hz)) $(((b1 - b0) * 1000 / hz)) $(((t1 - t0) / 1000000))
    echo "s5 $kind label=$label rps=$rps lat=$lat p99=${p99:-?} non2xx=${non2xx:-0}" \
        "server_cpu_ms=$(((c1 - c0) * 1000 / hz)) bus_cpu_ms=$(((b1 - b0) * 1000 / hz))" \
        "wall_ms=$(((t1 - t0) / 1000000))" >>"$res"
    [[ -z $non2xx || $non2xx == 0 ]] || failed=1
}
if want 5; then
    body=$("$py" -c 'h = "{\"seq\":0,\"t\":0,\"p\":\""; print(h + "x" * (128 - len(h) - 2) + "\"}", end="")')
    cat >"$tmp/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
EOF
    echo "## 5. wrk -t2 -c50 -d${wrk_s}s"
    echo " GET /healthz"
    for k in "${kinds[@]}"; do
        [[ -n ${spid[$k]:-} ]] && wrk_run "$k" healthz "http://127.0.0.1:${sport[$k]}/healthz"
    done
    echo " POST /events/x, 128 bytes of JSON"
    for k in "${kinds[@]}"; do
        [[ -n ${spid[$k]:-} ]] && wrk_run "$k" post "http://127.0.0.1:${sport[$k]}/events/x" -s "$tmp/post.lua"
    done
    echo
fi

if want 6; then
    echo "## 6. batch publish: one subscriber, $n6 events of 128 bytes, $conns publishers, at most 2048 deliveries outstanding"
    echo "     64 events a POST (POST /events) and 1 (POST /events/NAME); taskbus only (raw has no batch route)"
    for b in 64 1; do
        for k in "${tbkinds[@]}"; do
            echo " $k bus, $b event(s) a POST"
            load s6 "$k" "b$b" -c 1 -n "$n6" -b "$b" -W 2048
        done
    done
    echo
fi

stop_all

if want 4; then
    echo "## 4. $n4_clients idle clients on a fresh server: its VmRSS (then 20 events to each)"
    for k in "${kinds[@]}"; do
        have 30 "scenario 4 on $k" || break
        start_all "$k"
        if [[ -n ${spid[$k]:-} ]]; then
            load s4 "$k" idle -c "$n4_clients" -n 20
        fi
        stop_all
    done
    echo
fi

echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (after, $((SECONDS - start)) s)"
echo

# ---------------------------------------------------------------- summary

"$py" - "$res" <<'EOF'
import sys

R = {}  # (scenario, server) -> [{key: value}]
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 2:
        continue
    d = dict(kv.split("=", 1) for kv in f[2:] if "=" in kv)
    R.setdefault((f[0], f[1]), []).append(d)

KINDS = ("redis", "memory", "raw")

def run(sc, kind, label=None):
    for d in R.get((sc, kind), []):
        if label is None or d.get("label") == label:
            return d
    return None

def num(d, key):
    try:
        v = float(d[key])
    except (TypeError, KeyError, ValueError):
        return None
    return v if v >= 0 else None

def clean(d):
    return (d is not None and d.get("rc") in (None, "0") and d.get("failed", "0") == "0"
            and all(d.get(k, "0") == "0" for k in ("lost", "dup", "foreign", "bad_ids")))

# Derived figures, per run.
for runs in R.values():
    for d in runs:
        srv, bus, dl = num(d, "server_cpu_ms"), num(d, "bus_cpu_ms"), num(d, "delivered")
        if srv is not None and dl:
            d["cpu_us"] = str((srv + (bus or 0)) * 1000 / dl)
            d["tb_cpu_us"] = str(srv * 1000 / dl)
            if bus is not None:
                d["bus_us"] = str(bus * 1000 / dl)
        try:
            d["per_client"] = str((float(d["rss_after_kb"]) - float(d["rss_before_kb"]))
                                  * 1024 / float(d["clients"]))
        except (KeyError, ValueError, ZeroDivisionError):
            pass

def n(v, unit=""):
    return "-" if v is None else f"{v:,.0f}{unit}"
def f1(v, unit=""):
    return "-" if v is None else f"{v:,.1f}{unit}"

rows = []
def row(what, sc, key, unit="", target=None, point="", better="high", fmt=n, label=None,
        kinds=KINDS):
    if not any(run(sc, k, label) for k in kinds):
        return
    got = {k: (num(run(sc, k, label), key) if k in kinds else None) for k in KINDS}
    r, t = got["raw"], got["redis"]
    ratio = f"{t / r:.2f}" if r and t is not None else "-"
    verdict = ""
    if target is not None:
        d = run(sc, "redis", label)
        if d is None:
            verdict = ""
        elif t is None:
            verdict = "no (failed)"
        else:
            hit = t >= target if better == "high" else t <= target
            verdict = "yes" if hit and clean(d) else "no"
    tgt = "" if target is None else (f">= {fmt(target, unit)}" if better == "high"
                                     else f"<= {fmt(target, unit)}")
    if point:
        tgt = f"{tgt} ({point})" if tgt else f"({point})"
    rows.append((what, tgt, fmt(got["redis"], unit), fmt(got["memory"], unit),
                 fmt(got["raw"], unit), ratio, verdict))

def loss_row(sc, label=None, kinds=KINDS):
    cells = {}
    for k in KINDS:
        d = run(sc, k, label) if k in kinds else None
        cells[k] = "-" if d is None else (
            f"{d.get('lost', '?')} / {d.get('dup', '?')}" + ("" if clean(d) else " FAILED"))
    if all(v == "-" for v in cells.values()):
        return
    d = run(sc, "redis", label)
    rows.append(("   lost / duplicated", "0 / 0", cells["redis"], cells["memory"], cells["raw"],
                 "", "" if d is None else ("yes" if clean(d) else "no")))

row("1a events/s, 1 subscriber, as answered", "s1", "rate", "/s", 30000, "pt 1")
row("1a server CPU per event (taskbus + redis)", "s1", "cpu_us", " us", 40, "pt 1", "low", f1)
row("   of which taskbus", "s1", "tb_cpu_us", " us", fmt=f1)
row("   of which redis-server", "s1", "bus_us", " us", fmt=f1)
row("   POSTs answered/s", "s1", "pub_rate", "/s")
row("   p99 latency while saturated", "s1", "p99_us", " us")
loss_row("s1")
row("1b p50 latency at 1 000/s", "s1lat", "p50_us", " us")
row("1b p99 latency at 1 000/s", "s1lat", "p99_us", " us", 1000, "pt 2", "low")
loss_row("s1lat")
row("2a deliveries/s, 1 000 clients", "s2", "rate", "/s", 500000, "pt 4")
row("   server CPU per delivery", "s2", "cpu_us", " us", fmt=f1)
row("   p99 latency in that run", "s2", "p99_us", " us")
loss_row("s2")
row("2b deliveries/s at 200 000/s offered", "s2lat", "rate", "/s")
row("2b p50 latency at 200 000/s offered", "s2lat", "p50_us", " us")
row("2b p99 latency at 200 000/s offered", "s2lat", "p99_us", " us", 50000, "pt 4", "low")
loss_row("s2lat")
row("3  deliveries/s, 100 patterns x 10", "s3", "rate", "/s", 120000, "pt 3")
row("   server CPU per delivery", "s3", "cpu_us", " us", fmt=f1)
row("   p99 latency in that run", "s3", "p99_us", " us")
loss_row("s3")
row("4  server VmRSS before the clients", "s4", "rss_before_kb", " kB")
row("4  server VmRSS with 10 000 clients", "s4", "rss_after_kb", " kB")
row("4  bytes per idle client", "s4", "per_client", " B", 8192, "pt 6", "low")
row("4  seconds to connect them", "s4", "connect_s", " s",
    fmt=lambda v, u="": "-" if v is None else f"{v:.2f}{u}")
loss_row("s4")
row("5  wrk GET /healthz req/s", "s5", "rps", "/s", point="pt 8: none slower", label="healthz")
row("5  wrk POST /events/x req/s", "s5", "rps", "/s", point="pt 8: none slower", label="post")
tb = ("redis", "memory")
row("6  events/s delivered, 64 a POST", "s6", "rate", "/s", 200000, "pt 7", label="b64", kinds=tb)
row("   events/s accepted, 64 a POST", "s6", "pub_rate", "/s", label="b64", kinds=tb)
row("   server CPU per event, 64 a POST", "s6", "cpu_us", " us", label="b64", kinds=tb, fmt=f1)
loss_row("s6", "b64", tb)
row("6  events/s delivered, 1 a POST", "s6", "rate", "/s", label="b1", kinds=tb)
row("   server CPU per event, 1 a POST", "s6", "cpu_us", " us", label="b1", kinds=tb, fmt=f1)
loss_row("s6", "b1", tb)

if rows:
    print("Issue 13 figures: the Redis bus is the headline; 'holds' judges it (and needs the run clean).")
    print("Server CPU counts taskbus and, on the Redis bus, its redis-server, read at the same instants.")
    head = ("figure", "target (issue 13)", "Redis bus", "memory bus", "raw", "Redis/raw", "holds")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head, tuple("-" * x for x in w)] + rows:
        print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
    print()

names = {"s1": "1a", "s1lat": "1b", "s2": "2a", "s2lat": "2b", "s3": "3", "s4": "4", "s6": "6"}
print("CPU over each run's timed part (first event to the end of the run); one core = 100%;")
print("rest: everything else on the machine (other processes, and loopback softirqs charged to none):")
for sc in ("s1", "s1lat", "s2", "s2lat", "s3", "s4", "s6"):
    for k in KINDS:
        for d in R.get((sc, k), []):
            try:
                wall = float(d.get("cpu_s", d["wall_s"]))
                lc, sc_ = float(d["load_cpu_ms"]), float(d["server_cpu_ms"])
                oc = float(d.get("other_cpu_ms", "nan"))
                bc = float(d.get("bus_cpu_ms", "-1"))
            except (KeyError, ValueError):
                continue
            pct = (lambda ms: f"{ms / 10 / wall:.0f}%") if wall > 0 else (lambda ms: "-")
            who = f"{k} {d.get('label')}" if sc == "s6" else k
            redis = f", redis {bc:6.0f} ms ({pct(bc):>4})" if bc >= 0 else ""
            print(f"  {names[sc]:>2} {who:<10} load generator {lc:6.0f} ms ({pct(lc):>4}), "
                  f"server {sc_:6.0f} ms ({pct(sc_):>4}){redis}, rest {oc:6.0f} ms ({pct(oc):>4}) "
                  f"in {wall:.3f} s")
for k in KINDS:
    for d in R.get(("s5", k), []):
        try:
            wall = float(d["wall_ms"])
            ms = float(d["server_cpu_ms"])
            bms = float(d.get("bus_cpu_ms", "0"))
        except (KeyError, ValueError):
            continue
        print(f"   5 {k:<10} wrk {d.get('label')}: server {ms:6.0f} ms ({ms / wall * 100:.0f}%), "
              f"redis {bms:.0f} ms in {wall / 1000:.3f} s (wrk itself not measured)")
EOF
exit $failed
