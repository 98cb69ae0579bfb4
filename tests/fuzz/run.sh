#!/usr/bin/env bash
# run.sh - the fuzz pass of the test command: replays every regression
# input, then runs each libFuzzer target for a bounded time on a throwaway
# copy of its seed corpus (the committed corpus is never written). Fails on
# any crash, leak, invariant, timeout or out-of-memory.
#
#   bash tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET]   (default 10)
#
# BUILD_DIR is a tree configured with -DTB_FUZZ=ON and built with the
# fuzz_targets target. See docs/FUZZING.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${1:?usage: run.sh BUILD_DIR [SECONDS_PER_TARGET]}
SECONDS_PER=${2:-10}
BIN="$BUILD/tests/fuzz"

# Sanitizer reports are findings: stop at the first, with a stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:halt_on_error=1:print_stacktrace=1"

work=$(mktemp -d "${TMPDIR:-/tmp}/taskbus-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
targets=("$BIN"/fuzz_*)
((${#targets[@]} > 0)) || {
    echo "run.sh: no fuzz targets in $BIN (configure with -DTB_FUZZ=ON and build fuzz_targets)" >&2
    exit 1
}

failed=()
for exe in "${targets[@]}"; do
    [[ -x "$exe" ]] || continue
    t=${exe##*/}
    regressions=("$HERE/regressions/$t"/*)
    if ((${#regressions[@]} > 0)); then
        echo "==> $t: replaying ${#regressions[@]} regression input(s)"
        if ! "$exe" -timeout=10 "${regressions[@]}" >"$work/$t.replay.log" 2>&1; then
            tail -n 40 "$work/$t.replay.log"
            failed+=("$t (regression)")
            continue
        fi
    fi
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    if [[ -d "$HERE/corpus/$t" ]]; then
        cp "$HERE/corpus/$t"/* "$work/$t/corpus/" 2>/dev/null || true
    fi
    dict=()
    [[ -f "$HERE/$t.dict" ]] && dict=("-dict=$HERE/$t.dict")
    echo "==> $t: ${SECONDS_PER} s on a copy of tests/fuzz/corpus/$t"
    if "$exe" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" \
        >"$work/$t.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|new_units_added)' \
            "$work/$t.log" | tr '\n' ' '
        echo
    else
        tail -n 60 "$work/$t.log"
        for a in "$work/$t/artifacts"/*; do
            echo "--- input that failed ($a), as hex:"
            od -A d -t x1 "$a" | head -n 20
        done
        failed+=("$t")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ok (${SECONDS_PER} s each)"
