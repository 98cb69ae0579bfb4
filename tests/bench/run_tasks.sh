#!/usr/bin/env bash
# run_tasks.sh - runs the taskbus and asyncio task benchmarks alternately and
# prints their rates side by side, with the issue's targets.
#
# Usage: tests/bench/run_tasks.sh [BENCH_BINARY] [-n TASKS] [-r ROUNDS]
#
# BENCH_BINARY is the built tests/bench/bench_tasks.c (CMake target
# bench_tasks); by default the first that exists of
# build-bench/tests/bench/bench_tasks and build/tests/bench/bench_tasks
# under the source tree. This script builds nothing.
#
# Each round runs one fresh taskbus process, then one fresh asyncio process
# (/usr/bin/python3 tests/bench/bench_tasks_asyncio.py), each with -r 1, so
# both see the same machine noise and both measure memory in a fresh
# process. The table shows the best round (and the median) of each side.
# Every run is killed after PER_RUN_S seconds (env, default 90) and the whole
# script gives up after TOTAL_S (default 240), so it ends within minutes.
#
# Exit status: 0 when every run completed (whether or not the targets were
# met), 1 when a run failed or timed out, 2 on bad usage.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
pyside="$here/bench_tasks_asyncio.py"

n=100000
rounds=3
per_run_s=${PER_RUN_S:-90}
total_s=${TOTAL_S:-240}

bin=""
if [[ $# -gt 0 && $1 != -* ]]; then
    bin=$1
    shift
fi
while getopts "n:r:h" opt; do
    case $opt in
    n) n=$OPTARG ;;
    r) rounds=$OPTARG ;;
    *)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
if [[ -z $bin ]]; then
    for c in "$src/build-bench/tests/bench/bench_tasks" \
        "$src/build/tests/bench/bench_tasks"; do
        if [[ -x $c ]]; then
            bin=$c
            break
        fi
    done
fi
if [[ -z $bin || ! -x $bin ]]; then
    echo "run_tasks.sh: no benchmark binary (${bin:-none found}); build it:" >&2
    echo "  cmake -S $src -B $src/build-bench -DCMAKE_BUILD_TYPE=Release &&" \
        "cmake --build $src/build-bench -j2" >&2
    exit 2
fi
if [[ ! -x $py ]]; then
    echo "run_tasks.sh: $py not found" >&2
    exit 2
fi
if ! [[ $n =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]]; then
    echo "run_tasks.sh: -n and -r take positive integers" >&2
    exit 2
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "# tasks benchmark: taskbus vs asyncio, N=$n, $rounds rounds"
echo "# date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# machine:  $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr)"
echo "# python:   $($py -c 'import sys; print(sys.version.split()[0])')"
echo "# binary:   $bin"
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (before)"

start=$SECONDS
failed=0
run() { # run LABEL CMD...: appends "LABEL-output" lines to $out
    local label=$1 left rc
    shift
    left=$((total_s - (SECONDS - start)))
    if ((left <= 5)); then
        echo "run_tasks.sh: out of time ($total_s s), skipping $label" >&2
        failed=1
        return
    fi
    ((left > per_run_s)) && left=$per_run_s
    timeout -k 5 "$left" "$@" >>"$out"
    rc=$?
    if ((rc != 0)); then
        echo "run_tasks.sh: $label exited with status $rc" \
            "$( ((rc == 124)) && echo "(timed out after ${left}s)")" >&2
        failed=1
    fi
}
for ((i = 1; i <= rounds; i++)); do
    run "taskbus round $i" "$bin" -n "$n" -r 1
    run "asyncio round $i" "$py" "$pyside" -n "$n" -r 1
done
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (after, $((SECONDS - start)) s)"
echo

"$py" - "$out" <<'EOF'
import re, statistics, sys

rates = {}  # (impl, phase) -> [values]
detail = []
for line in open(sys.argv[1]):
    m = re.match(r"^(taskbus|asyncio) (idle|wake|spawn|cancel): ([0-9.]+)", line)
    if m:
        rates.setdefault((m[1], m[2]), []).append(float(m[3]))
    elif line.startswith("taskbus idle-detail:"):
        detail.append(line.split(":", 1)[1].strip())

def best(impl, phase):
    v = rates.get((impl, phase))
    if not v:
        return None, None
    b = min(v) if phase == "idle" else max(v)
    return b, statistics.median(v)

def fmt(v, unit):
    return "-" if v is None else f"{v:,.0f}{unit}"

targets = {"spawn": 10.0, "cancel": 10.0, "wake": 5.0}
rows = []
for phase, what in (("spawn", "spawn+start"), ("cancel", "cancel+join"),
                    ("wake", "wake-all")):
    tb, tbm = best("taskbus", phase)
    ai, aim = best("asyncio", phase)
    ratio = tb / ai if tb and ai else None
    mratio = tbm / aim if tbm and aim else None
    t = targets[phase]
    verdict = "-" if ratio is None else ("PASS" if ratio >= t else "MISS")
    rows.append((what, f"{fmt(tb, '/s')} ({fmt(tbm, '')})",
                 f"{fmt(ai, '/s')} ({fmt(aim, '')})",
                 "-" if ratio is None else f"{ratio:.2f}x ({mratio:.2f}x)",
                 f">= {t:g}x", verdict))

tb, tbm = best("taskbus", "idle")
ai, aim = best("asyncio", "idle")
ratio = tb / ai if tb and ai else None
verdict = "-" if tb is None else ("PASS" if tb <= 8192 else "MISS")
if tb is not None and ai is not None and tb <= ai:
    verdict += " (stretch met)"
rows.append(("idle memory", f"{fmt(tb, ' B/task')} ({fmt(tbm, '')})",
             f"{fmt(ai, ' B/task')} ({fmt(aim, '')})",
             "-" if ratio is None else f"{ratio:.2f}x",
             "<= 8192 B", verdict))

head = ("phase", "taskbus best (median)", "asyncio best (median)",
        "ratio best (median)", "target", "result")
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head, tuple("-" * x for x in w)] + rows:
    print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
print()
print("rates: tasks per second, best of the rounds (median in parentheses);")
print("ratio: taskbus / asyncio. idle: resident bytes per suspended task,")
print("lowest of the rounds; the idle target is absolute (asyncio: stretch).")
for d in detail:
    print(f"taskbus idle detail: {d}")
EOF
exit $failed
