#!/usr/bin/env bash
# campaign.sh - the long fuzzing campaign (not part of the test command):
# runs each libFuzzer target, one at a time, for N inputs (-runs=N) from
# its seed corpus, keeps what it learns in a work directory, and prints a
# table: inputs, time, exec/s, corpus units added, coverage, crashes.
# docs/FUZZING.md records a run of it.
#
#   bash tests/fuzz/campaign.sh [options] [TARGET...]   (default: all)
#     -b DIR    fuzz build tree (default build-fuzz)
#     -n RUNS   inputs per target (default 10000000)
#     -o DIR    work directory: corpora, logs, crash inputs
#               (default /tmp/taskbus-campaign)
#     -u HH:MM  start no target after this time (UTC; the running one
#               finishes)
#
# A target stops at its first finding (libFuzzer's default): crashes is 0
# or 1, and the input is in DIR/<target>/artifacts/. Run it at low
# priority (nice -n 19) on a shared machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD="$ROOT/build-fuzz"
RUNS=10000000
OUT=/tmp/taskbus-campaign
UNTIL=""
while getopts "b:n:o:u:" opt; do
    case $opt in
    b) BUILD=$OPTARG ;;
    n) RUNS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    u) UNTIL=$OPTARG ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if (($# > 0)); then
    targets=("$@")
else
    targets=()
    for exe in "$BUILD"/tests/fuzz/fuzz_*; do
        [[ -x "$exe" ]] && targets+=("${exe##*/}")
    done
fi
((${#targets[@]} > 0)) || {
    echo "campaign.sh: no targets in $BUILD/tests/fuzz" >&2
    exit 1
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:halt_on_error=1:print_stacktrace=1"
mkdir -p "$OUT"
table="$OUT/table.md"
{
    echo "| target | inputs | seconds | exec/s | units added | coverage (edges) | crashes | finished |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
} >"$table"

for t in "${targets[@]}"; do
    if [[ -n "$UNTIL" ]] && [[ "$(date -u +%H:%M)" > "$UNTIL" ]]; then
        echo "| $t | - | - | - | - | - | - | not started (after $UNTIL UTC) |" >>"$table"
        continue
    fi
    exe="$BUILD/tests/fuzz/$t"
    dir="$OUT/$t"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    cp -n "$HERE/corpus/$t"/* "$dir/corpus/" 2>/dev/null || true
    dict=()
    [[ -f "$HERE/$t.dict" ]] && dict=("-dict=$HERE/$t.dict")
    echo "==> $t: $RUNS inputs, from $(date -u +%H:%M:%S) UTC" >&2
    start=$(date +%s)
    rc=0
    "$exe" -runs="$RUNS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
        >"$dir/log" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    stat() { sed -n "s/^stat::$1: *//p" "$dir/log" | tail -n 1; }
    runs=$(stat number_of_executed_units)
    runs=${runs:-0}
    rate=$(( ${runs:-0} / (secs > 0 ? secs : 1) ))
    added=$(stat new_units_added)
    cov=$(grep -oE 'cov: [0-9]+' "$dir/log" | tail -n 1 | cut -d' ' -f2)
    crashes=$(find "$dir/artifacts" -type f | wc -l)
    done_=$([[ $rc -eq 0 ]] && echo yes || echo "no (exit $rc)")
    echo "| $t | ${runs:-?} | $secs | ${rate:-?} | ${added:-?} | ${cov:-?} | $crashes | $done_ |" >>"$table"
    tail -n 1 "$table" >&2
done
cat "$table"
