# shellcheck shell=bash disable=SC2154,SC2034 # me, total_s: the caller's; failed, redis_*: read by it
# lib.sh - what the shell scripts under tests/ share: a temporary folder
# and the processes they start, killed and removed at exit; a time budget
# for their steps; CPU time of a process from /proc; a free loopback port;
# the one throwaway redis-server launcher of the shell scripts (the C tests
# have tests/support/redis_harness.c, the Python suites tbharness.Redis).
# Sourced, not run:
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

# A free TCP port on 127.0.0.1 (bound, then released: start the server
# soon, and retry with another if it was taken meanwhile).
free_port() {
    "${py:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# redis_start [ARG...]: a throwaway redis-server (no persistence, ARGs
# added) on a free 127.0.0.1 port, files and log in $tmp, stopped at exit.
# Ready once its own log says so and it answers PING (PONG, or NOAUTH with
# --requirepass), within 5 s; up to 5 tries when the port was taken
# meanwhile. Sets redis_port and redis_pid; returns 1, after printing its
# log, if it never got ready.
redis_start() {
    local try answer log=$tmp/redis.log
    for try in 1 2 3 4 5; do
        redis_port=$(free_port)
        : >"$log"
        redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
            --appendonly no --dir "$tmp" --logfile "$log" --daemonize no "$@" &
        redis_pid=$!
        pids+=("$redis_pid")
        for _ in $(seq 50); do
            kill -0 "$redis_pid" 2>/dev/null || break # the port was taken
            if grep -q 'Ready to accept connections' "$log"; then
                answer=$(timeout 5 redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)
                [[ $answer == PONG || $answer == NOAUTH* ]] && return 0
            fi
            sleep 0.1
        done
        kill "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    done
    echo "$me: redis-server did not start (try $try):" >&2
    cat "$log" >&2
    return 1
}
