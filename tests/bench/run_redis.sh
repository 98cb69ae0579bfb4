#!/usr/bin/env bash
# run_redis.sh - the Redis bus benchmark: events per second from one worker
# of one taskbus instance to every worker of another through one
# redis-server, end-to-end latency at a fixed rate, and redis-benchmark's
# PUBLISH rate on the same server as the ceiling, all in one invocation.
#
# Usage: tests/bench/run_redis.sh [BUILD_DIR|BENCH_BINARY] [-n N] [-r RATE]
#                                 [-d SECONDS] [-p] [-L]
#
#   BUILD_DIR   a build tree holding tests/bench/bench_redis (CMake target
#               bench_redis), or the binary itself; by default the first of
#               build-rbench, build-bench and build under the source tree
#               that has one. This script builds nothing.
#   -n N        events in the throughput run (default 1000000)
#   -r RATE     events/s in the latency run (default 1000)
#   -d SECONDS  length of the latency run (default 10)
#   -p          profile: one more throughput run (N/2 events) with
#               `perf record -g` on the subscriber, the publisher and
#               redis-server, then each one's split by thread and by library
#               and its top symbols (the data stays in $PROFILE_DIR, default
#               a new directory under /tmp that is kept and printed)
#   -L          keep Redis's default pubsub output-buffer limit (32 MB hard)
#               for the taskbus runs; by default it is lifted, see below
#
# Steps, against one throwaway redis-server (127.0.0.1, a free port, no
# persistence, in a mktemp -d directory):
#   1. ceiling: one `redis-cli psubscribe 'bench:*'` attached, then
#      redis-benchmark -P 16 and without -P, PUBLISH of 128 bytes. (Redis
#      7.0's redis-benchmark has no "publish" test: `-t publish` runs
#      nothing, so the command is given explicitly.)
#   2. throughput: `bench_redis -m sub` (2 workers) waits for "ready", then
#      `bench_redis -m pub -n N` (1 worker) dispatches as fast as accepted.
#   2b. CPU per event (issue 13 point 5): the throughput pair again with
#      history on (-H, history_size 10000, both instances), then
#      `bench_redis -m mem -n N`, the same publisher and subscribers in one
#      app on the in-process bus; with step 2 (history off) they make the
#      CPU table printed last: µs of CPU per event of the two taskbus
#      processes together and of redis-server (utime + stime from /proc,
#      all three read at the same two instants: bench_redis -S stops both
#      processes at marks before the first dispatch and after the last
#      arrival and acknowledgement),
#      their ratio against the target (at most 3x), events/s, and whether
#      every event arrived exactly once.
#   3. latency: the same at RATE events/s for SECONDS; then the floor:
#      `bench_redis -m raw`, a hiredis publisher thread and subscriber thread
#      in one process, no taskbus, same rate, data and server.
#   4. reference: redis-benchmark -P 16 again, with what Redis does for
#      taskbus: a payload the size of taskbus's envelope (measured in step
#      2 from Redis's input byte count) and two pattern subscribers (the
#      publishing instance subscribes to its own events too).
# CPU time of redis-server (from /proc), and of each taskbus process and
# thread (printed by bench_redis), is reported for each step.
#
# Before the taskbus runs the pubsub output-buffer limit is lifted (CONFIG
# SET client-output-buffer-limit "pubsub 0 0 0"): when the subscriber falls
# more than 32 MB behind, Redis drops its connection and pub/sub events are
# lost, and the throughput run would end in a failure instead of a rate.
#
# Everything is bounded: each process is killed after PER_RUN_S seconds
# (env, default 120), and steps that would start after TOTAL_S (default
# 280) are skipped; a trap kills everything at exit.
#
# Exit status: 0 when every run completed (whether or not the targets were
# met), 1 when a run failed, lost events or timed out, 2 on bad usage.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3

n=1000000
lat_rate=1000
lat_s=10
profile=0
keep_limit=0
per_run_s=${PER_RUN_S:-120}
total_s=${TOTAL_S:-280}
ns=tbbench

bin=""
if [[ $# -gt 0 && $1 != -* ]]; then
    bin=$1
    shift
fi
while getopts "n:r:d:pLh" opt; do
    case $opt in
    n) n=$OPTARG ;;
    r) lat_rate=$OPTARG ;;
    d) lat_s=$OPTARG ;;
    p) profile=1 ;;
    L) keep_limit=1 ;;
    *)
        sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
if [[ -n $bin && -d $bin ]]; then
    bin=$bin/tests/bench/bench_redis
elif [[ -z $bin ]]; then
    for c in build-rbench build-bench build; do
        if [[ -x $src/$c/tests/bench/bench_redis ]]; then
            bin=$src/$c/tests/bench/bench_redis
            break
        fi
    done
fi
if [[ -z $bin || ! -x $bin ]]; then
    echo "run_redis.sh: no benchmark binary (${bin:-none found}); build it:" >&2
    echo "  cmake -S $src -B $src/build-rbench -DCMAKE_BUILD_TYPE=Release &&" \
        "cmake --build $src/build-rbench -j2" >&2
    exit 2
fi
if ! [[ $n =~ ^[1-9][0-9]*$ && $lat_rate =~ ^[1-9][0-9]*$ &&
    $lat_s =~ ^[1-9][0-9]*$ ]]; then
    echo "run_redis.sh: -n, -r and -d take positive integers" >&2
    exit 2
fi
for tool in redis-server redis-cli redis-benchmark "$py" timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "run_redis.sh: $tool not found (Debian: redis-server," \
            "redis-tools, python3, coreutils)" >&2
        exit 2
    fi
done
if ((profile)) && ! command -v perf >/dev/null; then
    echo "run_redis.sh: -p needs perf (Debian: linux-perf)" >&2
    exit 2
fi

me=run_redis.sh
# shellcheck source=tests/bench/lib.sh
source "$here/lib.sh"

rcli() { timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@"; }
rfield() { # rfield SECTION FIELD
    rcli info "$1" | tr -d '\r' | sed -n "s/^$2://p"
}

# ---------------------------------------------------------------- server

# shellcheck disable=SC2119 # redis_start takes no arguments here
redis_start || exit 1
port=$redis_port rpid=$redis_pid
url=redis://127.0.0.1:$port

echo "# redis bus benchmark: N=$n, latency run ${lat_rate}/s for ${lat_s} s"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# machine:  $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr)"
echo "# redis:    $(redis-server --version | sed 's/ sha=.*//'), 127.0.0.1:$port (pid $rpid)"
echo "# hiredis:  $(dpkg-query -W -f '${Version}' libhiredis0.14 2>/dev/null || echo '?')," \
    "libevent $(dpkg-query -W -f '${Version}' libevent-2.1-7 2>/dev/null || echo '?')"
echo "# binary:   $bin"
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (before)"
echo

# Starts a redis-cli pattern subscriber that discards what it gets; its pid
# goes to $last_pid.
psub() {
    timeout -k 2 "$per_run_s" redis-cli -h 127.0.0.1 -p "$port" psubscribe "$1" \
        >/dev/null 2>&1 &
    last_pid=$!
    pids+=("$last_pid")
}
# Subscribed clients (PUBSUB NUMPAT counts distinct patterns, not clients).
nsubs() { rcli client list type pubsub | grep -c 'cmd=psubscribe'; }
wait_subs() { # wait_subs COUNT
    for _ in $(seq 50); do
        [[ $(nsubs) == "$1" ]] && return 0
        sleep 0.1
    done
    echo "run_redis.sh: expected $1 subscribed clients, have $(nsubs)" >&2
    return 1
}
stop_pids() {
    local p
    for p in "$@"; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
}

# rbench STEP LABEL ARGS...: one redis-benchmark run; appends
# "<step> rps <label> <rps>" and redis-server's CPU to the results.
rbench() {
    local step=$1 label=$2 c0 c1 t0 t1 out rps
    shift 2
    c0=$(cpu_ticks "$rpid")
    t0=$(date +%s%N)
    out=$(timeout -k 5 "$per_run_s" redis-benchmark -h 127.0.0.1 -p "$port" -q "$@" 2>&1 |
        tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
    t1=$(date +%s%N)
    c1=$(cpu_ticks "$rpid")
    rps=${out%% *}
    if [[ -z $rps ]]; then
        echo "run_redis.sh: redis-benchmark ($label) printed no rate" >&2
        failed=1
        return 1
    fi
    echo "$step rps $label $rps" >>"$res"
    echo "$step redis-cpu $label $(ms_of $((c1 - c0))) $(((t1 - t0) / 1000000))" >>"$res"
    printf '  %-44s %12.0f/s  (redis-server %s ms CPU in %s ms)\n' "$label" "$rps" \
        "$(ms_of $((c1 - c0)))" "$(((t1 - t0) / 1000000))"
}

# ---------------------------------------------------------------- 1. ceiling

payload=$(head -c 128 /dev/zero | tr '\0' x)
echo "## 1. ceiling: redis-benchmark PUBLISH, 128 bytes, one subscriber (redis-cli psubscribe 'bench:*')"
if [[ -z $(timeout 30 redis-benchmark -h 127.0.0.1 -p "$port" -q -t publish -n 1000 2>&1 | tr -d '\r\n ') ]]; then
    echo "  (redis-benchmark -t publish runs nothing in this version: PUBLISH is given as a command)"
fi
if have 30 "the ceiling"; then
    psub 'bench:*'
    sp=$last_pid
    if wait_subs 1; then
        rbench ceil "-P 16, 1 subscriber" -P 16 -n 1000000 PUBLISH bench:ceiling "$payload"
        rbench ceil "no pipeline, 1 subscriber" -n 200000 PUBLISH bench:ceiling "$payload"
        np=$(nsubs)
        if [[ $np != 1 ]]; then
            echo "  warning: the subscriber was disconnected during the ceiling runs" \
                "($np subscribed clients left): the rates above are inflated" >&2
            echo "ceil warning subscriber-dropped" >>"$res"
        fi
    else
        failed=1
    fi
    stop_pids "$sp"
fi
echo

if ((!keep_limit)); then
    rcli config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
    echo "# pubsub output-buffer limit lifted for the taskbus runs (see the header)"
    echo
fi

# ---------------------------------------------------------------- taskbus runs

# mark_pid FILE ROLE WHAT PID: waits until FILE has "ROLE mark WHAT <pid>"
# (bench_redis -S) and prints that pid; fails if PID (its timeout wrapper)
# ends first or after per_run_s.
mark_pid() {
    local m
    for _ in $(seq $((per_run_s * 50))); do
        m=$(sed -n "s/^$2 mark $3 \([0-9]*\)\$/\1/p" "$1")
        [[ -n $m ]] && echo "$m" && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# pair STEP N [PUB ARGS...]: one subscriber instance (with sub_args) and one publisher
# instance; their output (prefixed with STEP) and redis-server's CPU and
# byte counts go to the results. With PERF_DIR set, each side and
# redis-server run under perf record.
#
# The CPU of the two taskbus processes and of redis-server is read from
# /proc at the same two instants, while both processes stand still at
# their marks (bench_redis -S): before the first dispatch, and once the
# subscriber has every event and the publisher every acknowledgement. The
# result line: "<step> cpu-window <pub ms> <sub ms> <redis ms> <wall ms>".
pair() {
    local step=$1 count=$2 spid ppid c0 c1 t0 t1 in0 in1 out0 out1 ok rc ready=0 perf_r=""
    local sbin pbin s0 s1 p0 p1 r0 r1 w0 w1
    shift 2
    local -a pre_sub=() pre_pub=()
    if [[ -n ${PERF_DIR:-} ]]; then
        pre_sub=(perf record -q -g -o "$PERF_DIR/sub.data" --)
        pre_pub=(perf record -q -g -o "$PERF_DIR/pub.data" --)
    fi
    timeout -k 5 "$per_run_s" "${pre_sub[@]}" "$bin" -m sub -S -u "$url" -s "$ns" -n "$count" \
        -t $((per_run_s - 15)) "${sub_args[@]}" >"$tmp/$step.sub" 2>"$tmp/$step.sub.err" &
    spid=$!
    pids+=("$spid")
    for _ in $(seq 300); do
        grep -q '^sub ready' "$tmp/$step.sub" && ready=1 && break
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.05
    done
    if ((!ready)); then
        echo "run_redis.sh: $step: the subscriber did not get ready" >&2
        cat "$tmp/$step.sub.err" >&2
        stop_pids "$spid"
        failed=1
        return 1
    fi
    if [[ -n ${PERF_DIR:-} ]]; then
        perf record -q -g -p "$rpid" -o "$PERF_DIR/redis.data" 2>/dev/null &
        perf_r=$!
        pids+=("$perf_r")
        sleep 0.5
    fi
    c0=$(cpu_ticks "$rpid")
    in0=$(rfield stats total_net_input_bytes)
    out0=$(rfield stats total_net_output_bytes)
    t0=$(date +%s%N)
    timeout -k 5 "$per_run_s" "${pre_pub[@]}" "$bin" -m pub -S -u "$url" -s "$ns" -n "$count" "$@" \
        >"$tmp/$step.pub" 2>"$tmp/$step.pub.err" &
    ppid=$!
    pids+=("$ppid")
    sbin=$(mark_pid "$tmp/$step.sub" sub ready "$spid")
    if pbin=$(mark_pid "$tmp/$step.pub" pub start "$ppid") && [[ -n $sbin ]]; then
        s0=$(cpu_ticks "$sbin") p0=$(cpu_ticks "$pbin") r0=$(cpu_ticks "$rpid")
        w0=$(date +%s%N)
        kill -USR1 "$pbin"
        if mark_pid "$tmp/$step.sub" sub end "$spid" >/dev/null &&
            mark_pid "$tmp/$step.pub" pub end "$ppid" >/dev/null; then
            s1=$(cpu_ticks "$sbin") p1=$(cpu_ticks "$pbin") r1=$(cpu_ticks "$rpid")
            w1=$(date +%s%N)
            if [[ -n $s0 && -n $s1 && -n $p0 && -n $p1 ]]; then
                echo "$step cpu-window $(ms_of $((p1 - p0))) $(ms_of $((s1 - s0)))" \
                    "$(ms_of $((r1 - r0))) $(((w1 - w0) / 1000000))" >>"$res"
            fi
        fi
        kill -USR1 "$sbin" "$pbin" 2>/dev/null
    fi
    wait "$ppid"
    ok=$?
    wait "$spid"
    rc=$?
    ((ok == 0)) && ok=$rc
    t1=$(date +%s%N)
    c1=$(cpu_ticks "$rpid")
    in1=$(rfield stats total_net_input_bytes)
    out1=$(rfield stats total_net_output_bytes)
    if [[ -n $perf_r ]]; then
        kill -INT "$perf_r" 2>/dev/null
        wait "$perf_r" 2>/dev/null
    fi
    sed "s/^/$step /" "$tmp/$step.sub" "$tmp/$step.pub" >>"$res"
    echo "$step redis-cpu $(ms_of $((c1 - c0))) $(((t1 - t0) / 1000000))" >>"$res"
    echo "$step redis-bytes $count $((in1 - in0)) $((out1 - out0))" >>"$res"
    grep -v '^sub ready' "$tmp/$step.pub" "$tmp/$step.sub" | sed 's/^[^:]*:/  /'
    printf '  redis-server: %s ms CPU in %s ms (from the publisher'"'"'s start to the subscriber'"'"'s end); %s B in, %s B out per event\n' \
        "$(ms_of $((c1 - c0)))" "$(((t1 - t0) / 1000000))" \
        "$(((in1 - in0) / count))" "$(((out1 - out0) / count))"
    if ((ok != 0)); then
        echo "run_redis.sh: $step failed (status $ok):" >&2
        cat "$tmp/$step.sub.err" "$tmp/$step.pub.err" >&2
        failed=1
    fi
    return 0
}

sub_args=()
echo "## 2. throughput: 1 publishing worker -> 2 subscribing workers, $n events of 128 bytes"
if have 60 "the throughput run"; then
    pair thr "$n"
fi
echo

echo "## 2b. CPU per event: the same with history on (history_size 10000), then on the in-process bus"
if have 60 "the history-on run"; then
    sub_args=(-H 10000)
    pair hist "$n" -H 10000
    sub_args=()
fi
if have 30 "the in-process run"; then
    if timeout -k 5 "$per_run_s" "$bin" -m mem -u none -n "$n" \
        >"$tmp/mem.out" 2>"$tmp/mem.err"; then
        grep -v '^sub ready' "$tmp/mem.out" | sed 's/^/  /'
    else
        echo "run_redis.sh: the in-process run failed:" >&2
        cat "$tmp/mem.out" "$tmp/mem.err" >&2
        failed=1
    fi
    sed 's/^/mem /' "$tmp/mem.out" >>"$res"
fi
echo

lat_n=$((lat_rate * lat_s))
echo "## 3. latency: $lat_n events at ${lat_rate}/s"
if have $((lat_s + 20)) "the latency run"; then
    pair lat "$lat_n" -r "$lat_rate"
fi
echo

echo "## 3b. latency floor: hiredis publisher and subscriber threads, no taskbus, $lat_n at ${lat_rate}/s"
if have $((lat_s + 15)) "the latency floor run"; then
    if timeout -k 5 "$per_run_s" "$bin" -m raw -u "$url" -s "$ns" -n "$lat_n" -r "$lat_rate" \
        >"$tmp/raw.out" 2>"$tmp/raw.err"; then
        sed 's/^/  /' "$tmp/raw.out"
    else
        echo "run_redis.sh: the latency floor run failed:" >&2
        cat "$tmp/raw.out" "$tmp/raw.err" >&2
        failed=1
    fi
    sed 's/^/raw /' "$tmp/raw.out" >>"$res"
fi
echo

# The envelope's size, from the bytes one PUBLISH command took on the wire:
# *3 $7 PUBLISH $<chlen> <channel> $<len> <envelope>, each with its CRLF.
envlen=$("$py" - "$res" "$ns" <<'EOF'
import sys
ns = sys.argv[2]
for line in open(sys.argv[1]):
    f = line.split()
    if f[:2] == ["thr", "redis-bytes"]:
        per = int(f[3]) / int(f[2])
        ch = len(ns + ":event:bench.e")
        fixed = 4 + 13 + 1 + len(str(ch)) + 2 + ch + 2
        for L in range(1, 100000):
            if fixed + 1 + len(str(L)) + 2 + L + 2 >= per:
                print(L)
                break
EOF
)
echo "## 4. reference: redis-benchmark -P 16 with taskbus's load on Redis"
if [[ -n $envlen ]] && have 30 "the reference run"; then
    env_payload=$(head -c "$envlen" /dev/zero | tr '\0' x)
    psub "$ns:*"
    sp1=$last_pid
    psub "$ns:*"
    sp2=$last_pid
    if wait_subs 2; then
        rbench ref "-P 16, $envlen bytes (envelope), 2 subscribers" -P 16 -n 1000000 \
            PUBLISH "$ns:event:bench.e" "$env_payload"
        rbench ref "no pipeline, $envlen bytes, 2 subscribers" -n 200000 \
            PUBLISH "$ns:event:bench.e" "$env_payload"
    fi
    stop_pids "$sp1" "$sp2"
else
    echo "  (skipped: no envelope size from the throughput run)"
fi
echo

# ---------------------------------------------------------------- profile

if ((profile)) && have 90 "the profile run"; then
    PERF_DIR=${PROFILE_DIR:-$(mktemp -d /tmp/run_redis-perf.XXXXXX)}
    mkdir -p "$PERF_DIR"
    export PERF_DIR
    echo "## 5. profile: $((n / 2)) events under perf record -g (data in $PERF_DIR)"
    pair prof $((n / 2)) >/dev/null
    for side in sub pub redis; do
        [[ -s $PERF_DIR/$side.data ]] || continue
        for sort in comm dso comm,dso,sym; do
            case $sort in
            comm) what="by thread" rows=8 ;;
            dso) what="by library" rows=8 ;;
            *) what="top symbols (self time)" rows=20 ;;
            esac
            echo "### $side: $what"
            timeout 120 perf report -i "$PERF_DIR/$side.data" --no-children \
                --sort "$sort" --stdio -g none 2>/dev/null |
                grep -v '^#' | grep -v '^$' | head -"$rows"
        done
        echo
    done
    unset PERF_DIR
fi

echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (after, $((SECONDS - start)) s)"
echo

# ---------------------------------------------------------------- summary

"$py" - "$res" <<'EOF'
import re, sys

R = {}
cpu = []
for line in open(sys.argv[1]):
    step, rest = line.rstrip("\n").split(" ", 1)
    R.setdefault(step, []).append(rest)

def find(step, pattern):
    for rest in R.get(step, []):
        m = re.search(pattern, rest)
        if m:
            return m
    return None

def num(step, pattern, cast=float):
    m = find(step, pattern)
    return cast(m.group(1)) if m else None

ceil = num("ceil", r"^rps -P 16, 1 subscriber (\S+)")
ceil1 = num("ceil", r"^rps no pipeline, 1 subscriber (\S+)")
ref = num("ref", r"^rps -P 16, \d+ bytes \(envelope\), 2 subscribers (\S+)")
recv = num("thr", r"^sub received: \d+ of \d+ per worker in \S+ s: (\d+)/s")
disp = num("thr", r"^pub dispatched: \d+ in \S+ s: (\d+)/s")
ack = num("thr", r"^pub acknowledged: \d+ in \S+ s: (\d+)/s")
lat = find("lat", r"^sub latency: samples (\d+) p50 (-?\d+) us p90 (-?\d+) us p99 (-?\d+) us p999 (-?\d+) us max (-?\d+) us")
lat_disp = num("lat", r"^pub dispatched: \d+ in \S+ s: (\d+)/s")

def errors(step):
    dup = miss = drop = 0
    for rest in R.get(step, []):
        m = re.match(r"sub worker \d+: received \d+ duplicates (\d+) missing (\d+) foreign \d+ dropped (\d+)", rest)
        if m:
            dup += int(m[1]); miss += int(m[2]); drop += int(m[3])
    return dup, miss, drop

def f(v, unit="/s"):
    return "-" if v is None else f"{v:,.0f}{unit}"

rows = []
ratio = recv / ceil if recv and ceil else None
d, m, x = errors("thr")
rows.append(("received per worker (2 workers)" + (" INCOMPLETE" if m else ""), f(recv),
             f"{f(ceil)} (-P 16, 128 B, 1 sub)",
             "-" if ratio is None else f"{ratio:.0%}", ">= 50%",
             "-" if ratio is None else ("PASS" if ratio >= 0.5 and not m else "MISS")))
if ref:
    r2 = recv / ref if recv else None
    rows.append(("  same, vs Redis doing taskbus's work", f(recv),
                 f"{f(ref)} (-P 16, envelope, 2 subs)",
                 "-" if r2 is None else f"{r2:.0%}", "(info)", ""))
rows.append(("dispatched (1 worker)", f(disp), "", "", "", ""))
rows.append(("acknowledged by Redis", f(ack), "", "", "", ""))
d, m, x = errors("thr")
rows.append(("duplicates / missing / dropped", f"{d} / {m} / {x}", "", "",
             "0 / 0 / 0", "PASS" if R.get("thr") and d == m == x == 0 else "MISS"))
if lat:
    p50, p99, mx = int(lat[2]), int(lat[4]), int(lat[6])
    rows.append((f"latency p50 / p99 / max at {f(lat_disp)}", f"{p50} / {p99} / {mx} us",
                 "", "", "p99 < 1000 us", "PASS" if p99 < 1000 else "MISS"))
    d, m, x = errors("lat")
    rows.append(("  latency run: dup / missing / dropped", f"{d} / {m} / {x}", "",
                 "", "0 / 0 / 0", "PASS" if d == m == x == 0 else "MISS"))
raw = find("raw", r"^raw latency: samples (\d+) p50 (-?\d+) us p90 (-?\d+) us p99 (-?\d+) us p999 (-?\d+) us max (-?\d+) us")
if raw:
    rows.append(("  floor: raw hiredis pub -> sub, same rate", f"{raw[2]} / {raw[4]} / {raw[6]} us",
                 "", "", "", ""))
if ceil1:
    rows.append(("(redis-benchmark without -P, 1 sub)", "", f(ceil1), "", "", ""))

head = ("measure", "taskbus", "redis-benchmark", "ratio", "target", "result")
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head, tuple("-" * x for x in w)] + rows:
    print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
print()
for step, what in (("thr", "throughput"), ("hist", "history on"), ("mem", "in-process"), ("lat", "latency")):
    for rest in R.get(step, []):
        if rest.startswith(("sub cpu:", "pub cpu:")):
            print(f"{what} {rest}")
    m = find(step, r"^redis-cpu (\d+) (\d+)")
    if m:
        print(f"{what} redis-server cpu: {m[1]} ms in {int(m[2]) / 1000:.3f} s "
              f"({int(m[1]) / int(m[2]):.0%} of one core)")
    m = find(step, r"^cpu-window (\d+) (\d+) (\d+) (\d+)")
    if m:
        print(f"{what} same window (first dispatch to last arrival and ack, "
              f"{int(m[4]) / 1000:.3f} s): pub {m[1]} ms, sub {m[2]} ms, "
              f"redis-server {m[3]} ms")
    m = find(step, r"^redis-bytes (\d+) (\d+) (\d+)")
    if m:
        print(f"{what} redis bytes per event: {int(m[2]) // int(m[1])} in, "
              f"{int(m[3]) // int(m[1])} out")

# Issue 13 point 5: the taskbus processes' CPU per event against Redis's.
print()
cpu_rows = []
for step, what in (("thr", "Redis bus, history off"), ("hist", "Redis bus, history on"),
                   ("mem", "in-process bus (1 process)")):
    if not R.get(step):
        continue
    tb = 0.0
    win = find(step, r"^cpu-window (\d+) (\d+) (\d+) (\d+)")
    for role in ("pub", "sub"):
        m = find(step, rf"^{role} cpu: (\d+) ms")
        if m and not win:
            tb += int(m[1])
    if win:  # both processes and redis-server over the same window
        tb = int(win[1]) + int(win[2])
    rate = num(step, r"^sub received: \d+ of \d+ per worker in \S+ s: (\d+)/s")
    m = find(step, r"^sub received: (\d+) of (\d+)")
    count = int(m[2]) if m else 0
    d, mi, x = errors(step)
    ok = count > 0 and d == mi == x == 0 and m and int(m[1]) == count
    rc = find(step, r"^redis-cpu (\d+) (\d+)")
    r_ms = int(win[3]) if win else int(rc[1]) if rc else None
    tb_us = tb * 1000 / count if count else None
    r_us = r_ms * 1000 / count if r_ms is not None and count else None
    ratio = tb_us / r_us if tb_us and r_us else None
    cpu_rows.append((what, "-" if tb_us is None else f"{tb_us:.2f} us",
                     "-" if r_us is None else f"{r_us:.2f} us",
                     "-" if ratio is None else f"{ratio:.2f}x",
                     "<= 3x" if step != "mem" else "",
                     "PASS" if ratio is not None and ratio <= 3 and ok else
                     ("" if step == "mem" and ok else "MISS"),
                     f(rate), f"{d} / {mi} / {x}" + ("" if ok else " INCOMPLETE")))
if cpu_rows:
    head = ("CPU per event", "taskbus (pub + sub)", "redis-server", "ratio", "target",
            "result", "events/s per worker", "dup / missing / dropped")
    w = [max(len(r[i]) for r in cpu_rows + [head]) for i in range(len(head))]
    for r in [head, tuple("-" * x for x in w)] + cpu_rows:
        print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
    print()
for rest in R.get("ceil", []) + R.get("ref", []):
    m = re.match(r"redis-cpu (.*) (\d+) (\d+)$", rest)
    if m:
        print(f"redis-benchmark {m[1]}: redis-server cpu {m[2]} ms in "
              f"{int(m[3]) / 1000:.3f} s")
EOF
exit $failed
