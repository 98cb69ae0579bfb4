# shellcheck shell=bash disable=SC2154,SC2034 # me, total_s: the caller's; failed: read by it
# lib.sh - what the benchmark drivers (run_*.sh) share: a temporary folder
# and the processes they start, killed and removed at exit; a time budget
# for their steps; CPU time of a process from /proc. Sourced, not run:
#   me=run_x.sh total_s=300; source "$here/lib.sh"
# It sets tmp, res (a results file in tmp), pids (append what you start),
# start, failed=0 and hz, and traps EXIT, INT and TERM.

tmp=$(mktemp -d)
res=$tmp/results # "<step> <line>" lines for the summary
: >"$res"
pids=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    sleep 0.3
    for p in "${pids[@]}"; do
        kill -9 "$p" 2>/dev/null
    done
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

start=$SECONDS
failed=0
hz=$(getconf CLK_TCK)

left() { echo $((total_s - (SECONDS - start))); }
# have SECONDS WHAT: 0 if the budget still allows a step of that length.
have() {
    if (($(left) < $1)); then
        echo "$me: out of time ($total_s s), skipping $2" >&2
        failed=1
        return 1
    fi
}

# CPU ticks (utime + stime) of a process; fields counted after "(comm) ".
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
ms_of() { echo $((($1) * 1000 / hz)); }
