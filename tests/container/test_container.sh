#!/usr/bin/env bash
# test_container.sh - builds the Dockerfile with podman and runs the image as
# an operator would: two replicas on one Redis, an event posted to one reaches
# a websocket on the other, health checks, a graceful stop, cold-start times;
# then deploy/compose.yaml for real, as deploy/README.md has a new user run
# it (docker-compose on podman's Docker-compatible API, the settings and
# base image of deploy/podman-setup.sh): three replicas, HAProxy and Redis,
# an event and a websocket through HAProxy, no token in HAProxy's log, and a
# quick `down` whose websocket client sees 1001.
#
#   bash tests/container/test_container.sh          (as root, from anywhere)
#
# Skips (exit 77) without podman or root. Everything it makes lives in one
# mktemp -d directory with its own podman storage and configuration (the
# machine's podman state is never touched) and is removed on exit, however
# the script ends. The whole run is bounded by TB_CT_BUDGET seconds (480).
#
# Environment (all optional):
#   TASKBUS_SOURCE_DIR      the source tree (default: the one holding this file)
#   TASKBUS_BIN             a built binary: also times its cold start on the host
#   TASKBUS_CONTAINER_CACHE a directory that keeps the debootstrapped base
#                           image tarball between runs (saves ~30 s a run)
#
# Last line on success: RESULT cold_start_ms=N host_cold_start_ms=N
#   image_mb=N stop_ms=N total_s=N compose_up_s=N compose_down_ms=N
#   (host_cold_start_ms=na without TASKBUS_BIN; compose=skipped without
#   docker-compose)
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${TASKBUS_SOURCE_DIR:-$(cd "$SCRIPT_DIR/../.." && pwd)}
BUDGET=${TB_CT_BUDGET:-480}
GRACEFUL_S=10 # TASKBUS_GRACEFUL_TIMEOUT given to the replicas
STOP_T=20     # podman stop -t: SIGKILL after this
PY=/usr/bin/python3
BASE_REF=docker.io/library/debian:bookworm-slim
IMAGE=localhost/taskbus:ctest
REDIS_IMAGE=localhost/taskbus-redis:ctest

log() { printf 'test_container: %s\n' "$*" >&2; }
skip() {
    log "SKIP: $*"
    exit 77
}

command -v podman >/dev/null 2>&1 ||
    skip "podman is not installed (bash .ci/dev.sh test installs it)"
((EUID == 0)) ||
    skip "needs root: podman's bridge networks and the tested settings are rootful"
for tool in curl debootstrap runc; do
    command -v "$tool" >/dev/null 2>&1 ||
        skip "$tool is not installed (bash .ci/dev.sh test installs it)"
done
"$PY" -c 'import websockets' 2>/dev/null ||
    skip "$PY has no websockets module (Debian package python3-websockets)"
[[ -f "$SRC/Dockerfile" ]] || {
    log "FAIL: no Dockerfile in $SRC"
    exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/taskbus-ctest.XXXXXX")
NET=tbct-$$
PIDS=()
FAILED=0

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    # Only ever on this run's own storage, never the machine's.
    if [[ "${CONTAINERS_STORAGE_CONF:-}" == "$TMP/storage.conf" ]]; then
        podman rm -a -f -t 0 >/dev/null 2>&1
        podman network rm -f "$NET" >/dev/null 2>&1
        podman network prune -f >/dev/null 2>&1 # compose's, after a failure
        podman rmi -a -f >/dev/null 2>&1
    fi
    # Anything podman left mounted under TMP (overlay layers, shm) would keep
    # rm -rf from deleting it.
    local m
    findmnt -rn -o TARGET | grep -F "$TMP/" | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 1' INT TERM

fail() {
    log "FAIL: $*"
    FAILED=1
}
die() {
    log "FAIL: $*"
    exit 1
}
ok() { log "ok: $*"; }
# expect GOOD BAD TEST...: ok GOOD if TEST... succeeds, else fail BAD.
expect() {
    local good=$1 bad=$2
    shift 2
    if "$@"; then ok "$good"; else fail "$bad"; fi
}

# bounded CMD...: runs CMD with what is left of the budget as its timeout.
bounded() {
    local left=$((BUDGET - SECONDS))
    ((left > 5)) || die "out of time (budget ${BUDGET} s) before: $*"
    timeout --foreground -k 5 "$left" "$@"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ws_listen URL OUT: deploy/ws-events.py (the README's client; the token
# from TASKBUS_TOKEN, if set, in its header) in the background, its lines
# in OUT: "open", each message, "closed CODE REASON". Sets WS_PID; 1 if it
# did not say open within 10 s.
ws_listen() {
    "$PY" "$SRC/deploy/ws-events.py" "$1" </dev/null >"$2" 2>&1 &
    WS_PID=$!
    PIDS+=("$WS_PID")
    for _ in $(seq 100); do
        grep -qx open "$2" && return 0
        sleep 0.1
    done
    return 1
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_status URL CODE SECONDS: polls until URL answers CODE; 1 on timeout.
wait_status() {
    local url=$1 want=$2 until=$(($(now_ms) + $3 * 1000)) got
    while (($(now_ms) < until)); do
        got=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null)
        [[ "$got" == "$want" ]] && return 0
        sleep 0.02
    done
    return 1
}

# ---- podman configuration: deploy/podman-setup.sh's settings (what a
# user's host gets), plus everything under TMP.
mkdir -p "$TMP/storage" "$TMP/run" "$TMP/tmp" "$TMP/networks" "$TMP/volumes"
cat >"$TMP/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$TMP/storage"
runroot = "$TMP/run"
EOF
bash "$SRC/deploy/podman-setup.sh" conf >"$TMP/setup.conf" ||
    die "deploy/podman-setup.sh conf failed"
awk -v tmp="$TMP" '
    { print }
    $0 == "[engine]" {
        print "events_logger = \"file\""
        print "events_logfile_path = \"" tmp "/events.log\""
        print "tmp_dir = \"" tmp "/tmp\""
        print "volume_path = \"" tmp "/volumes\""
    }
    $0 == "[network]" { print "network_config_dir = \"" tmp "/networks\"" }
' "$TMP/setup.conf" >"$TMP/containers.conf"
grep -q '^runtime = "runc"' "$TMP/containers.conf" ||
    die "podman-setup.sh conf has no runtime = \"runc\": $(cat "$TMP/setup.conf")"
export CONTAINERS_CONF=$TMP/containers.conf
export CONTAINERS_STORAGE_CONF=$TMP/storage.conf
export BUILDAH_ISOLATION=oci
# podman's own complaints (no systemd for healthcheck timers, no syslog) and
# progress go to podman.log, shown when something fails.
PLOG=$TMP/podman.log

# ---- the base image, made locally by deploy/podman-setup.sh base: no
# registry is needed or contacted.
make_base() {
    local cache=${TASKBUS_CONTAINER_CACHE:-} t=$SECONDS
    bounded env ${cache:+BASE_TARBALL="$cache/bookworm-slim.tar"} \
        TMPDIR="$TMP/tmp" bash "$SRC/deploy/podman-setup.sh" base \
        >"$TMP/base.log" 2>&1 ||
        die "deploy/podman-setup.sh base failed: $(tail -n 5 "$TMP/base.log")"
    log "base: $(tail -n 1 "$TMP/base.log") ($((SECONDS - t)) s)"
}

make_base

T=$SECONDS
log "build: podman build --format docker -t $IMAGE $SRC"
bounded podman build --format docker -t "$IMAGE" "$SRC" >"$TMP/build.log" 2>&1 ||
    die "podman build failed: $(tail -n 20 "$TMP/build.log")"
ok "image built in $((SECONDS - T)) s"
if grep -q 'HEALTHCHECK is not supported' "$TMP/build.log"; then
    fail "the build dropped HEALTHCHECK (OCI format)"
fi

T=$SECONDS
bounded podman build --format docker -t "$REDIS_IMAGE" "$SRC/deploy/redis" \
    >"$TMP/build-redis.log" 2>&1 ||
    die "redis image build failed: $(tail -n 20 "$TMP/build-redis.log")"
ok "redis image (deploy/redis/Dockerfile) built in $((SECONDS - T)) s"

# ---- what the image says about itself
SIZE_BYTES=$(podman image inspect --format '{{.Size}}' "$IMAGE")
IMAGE_MB=$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.1f", b / 1000000 }')
if ((SIZE_BYTES < 120000000)); then
    ok "image size ${IMAGE_MB} MB (< 120 MB)"
else
    fail "image size ${IMAGE_MB} MB (target < 120 MB)"
fi
HC=$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE")
if [[ "$HC" == *'"Test":["CMD","taskbus","healthcheck"]'* ]]; then
    ok "image HEALTHCHECK: $HC"
else
    fail "image HEALTHCHECK is not the exec form of taskbus healthcheck: $HC"
fi
CFG=$(podman image inspect --format \
    'user={{.Config.User}} entrypoint={{json .Config.Entrypoint}} cmd={{json .Config.Cmd}}' "$IMAGE")
case "$CFG" in
'user=10001:10001 entrypoint=["taskbus"] cmd='*) ok "image config: $CFG" ;;
*) fail "image config: $CFG (want user 10001:10001, exec-form entrypoint taskbus)" ;;
esac

# ---- Redis and two replicas on one bridge network, as compose runs them.
bounded podman network create "$NET" >/dev/null 2>>"$PLOG" ||
    die "podman network create failed: $(tail -n 5 "$PLOG")"
REDIS_PORT=$(free_port)
bounded podman run -d --name tbct-redis --network "$NET" \
    --network-alias redis -p "127.0.0.1:$REDIS_PORT:6379" "$REDIS_IMAGE" \
    >/dev/null 2>>"$PLOG" ||
    die "cannot start the redis container: $(tail -n 5 "$PLOG")"
for _ in $(seq 100); do
    [[ "$(podman exec tbct-redis redis-cli ping 2>/dev/null)" == PONG ]] && break
    sleep 0.1
done
[[ "$(podman exec tbct-redis redis-cli ping 2>/dev/null)" == PONG ]] ||
    die "redis did not answer PING: $(podman logs tbct-redis 2>&1 | tail -n 5)"
ok "redis up (host port $REDIS_PORT)"

PORT_A=$(free_port)
PORT_B=$(free_port)
# start_replica NAME PORT EXTRA...: prints ms from podman run to /readyz 200.
start_replica() {
    local name=$1 port=$2 t0
    shift 2
    t0=$(now_ms)
    bounded podman run -d --name "$name" --network "$NET" \
        -p "127.0.0.1:$port:8080" \
        -e TASKBUS_REDIS_URL=redis://redis:6379 \
        -e TASKBUS_GRACEFUL_TIMEOUT="$GRACEFUL_S" \
        "$@" "$IMAGE" >/dev/null 2>>"$PLOG" || return 1
    wait_status "http://127.0.0.1:$port/readyz" 200 30 || return 1
    echo $(($(now_ms) - t0))
}
# A runs with the restrictions deploy/k8s asks for: read-only root, no
# capabilities, no privilege gain.
COLD_A=$(start_replica tbct-a "$PORT_A" --read-only --cap-drop ALL \
    --security-opt no-new-privileges) ||
    die "replica A not ready within 30 s: $(podman logs tbct-a 2>&1 | tail -n 10)"
ok "replica A ready (read-only, no caps): ${COLD_A} ms from podman run to /readyz 200"
COLD_B=$(start_replica tbct-b "$PORT_B") ||
    die "replica B not ready within 30 s: $(podman logs tbct-b 2>&1 | tail -n 10)"
ok "replica B ready: ${COLD_B} ms from podman run to /readyz 200"

for p in "$PORT_A" "$PORT_B"; do
    code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$p/healthz")
    expect "/healthz on 127.0.0.1:$p: 200" \
        "/healthz on 127.0.0.1:$p answered $code" [ "$code" == 200 ]
done

WHO=$(podman exec tbct-a sh -c 'echo "uid=$(id -u) pid1=$(cat /proc/1/comm)"')
expect "in A: $WHO" "in A: $WHO (want uid=10001 pid1=taskbus)" \
    [ "$WHO" == "uid=10001 pid1=taskbus" ]

# ---- an event posted to A arrives on a websocket connected to B. The POST
# is repeated (each a new id) until one arrives, so that the moment B's
# subscription becomes active cannot make the check flaky; any delivered id
# must be one A accepted.
WS_CHECK='
import asyncio, json, sys, time, urllib.request
import websockets

ws_url, post_url, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
body = {"hello": "from A"}

async def main():
    deadline = time.monotonic() + budget
    ids = set()
    async with websockets.connect(ws_url, open_timeout=5) as ws:
        while time.monotonic() < deadline:
            req = urllib.request.Request(post_url, method="POST",
                                         data=json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status != 202:
                    print("POST answered", r.status); return 1
                ids.add(json.load(r)["id"])
            until = min(deadline, time.monotonic() + 1)
            while time.monotonic() < until:
                try:
                    msg = await asyncio.wait_for(ws.recv(),
                                                 until - time.monotonic())
                except asyncio.TimeoutError:
                    break
                ev = json.loads(msg)
                if ev.get("id") not in ids:
                    continue
                missing = {"id", "name", "data", "ts", "origin"} - ev.keys()
                if missing or ev["name"] != "ctest.cross" or ev["data"] != body:
                    print("bad event frame:", msg); return 1
                print("event %s from origin %s after %d POST(s)"
                      % (ev["id"], ev["origin"], len(ids)))
                return 0
    print(f"no event on B after {len(ids)} POST(s) to A"); return 1

sys.exit(asyncio.run(main()))
'
if out=$(bounded "$PY" -c "$WS_CHECK" \
    "ws://127.0.0.1:$PORT_B/ws?events=ctest.*" \
    "http://127.0.0.1:$PORT_A/events/ctest.cross" 15 2>&1); then
    ok "A -> Redis -> B websocket: $out"
else
    fail "websocket on B: $out"
fi

# ---- the image's HEALTHCHECK, run by podman as its timer would.
if bounded podman healthcheck run tbct-a >"$TMP/hc.out" 2>>"$PLOG"; then
    status=$(podman inspect --format '{{.State.Health.Status}}' tbct-a)
    expect "podman healthcheck run tbct-a: exit 0, health status $status" \
        "podman healthcheck run tbct-a: exit 0 but health status $status" \
        [ "$status" == healthy ]
    HC_NOTE=
elif ! podman exec tbct-a taskbus --help 2>&1 | grep -qw healthcheck; then
    log "NOTE: this binary has no 'taskbus healthcheck' yet: HEALTHCHECK" \
        "not exercised ($(tr '\n' ' ' <"$TMP/hc.out"))"
    HC_NOTE=" healthcheck=missing"
else
    fail "podman healthcheck run tbct-a: $(tr '\n' ' ' <"$TMP/hc.out")-" \
        "taskbus healthcheck in A says:" \
        "$(podman exec tbct-a taskbus healthcheck 2>&1 | tr '\n' ' ')"
    HC_NOTE=" healthcheck=failed"
fi

# ---- the bare binary on the host, for comparison: process start to /readyz.
HOST_COLD=na
if [[ -n "${TASKBUS_BIN:-}" && -x "${TASKBUS_BIN:-}" ]]; then
    HPORT=$(free_port)
    t0=$(now_ms)
    "$TASKBUS_BIN" --listen "127.0.0.1:$HPORT" \
        --redis-url "redis://127.0.0.1:$REDIS_PORT" --quiet --tick 0 \
        >"$TMP/host.log" 2>&1 &
    HOST_PID=$!
    PIDS+=("$HOST_PID")
    if wait_status "http://127.0.0.1:$HPORT/readyz" 200 15; then
        HOST_COLD=$(($(now_ms) - t0))
        ok "bare binary ready: ${HOST_COLD} ms from exec to /readyz 200"
    else
        fail "bare binary not ready in 15 s: $(tail -n 5 "$TMP/host.log")"
    fi
    kill -TERM "$HOST_PID"
    wait "$HOST_PID"
    rc=$?
    PIDS=()
    expect "bare binary: SIGTERM -> exit 0" \
        "bare binary exited $rc on SIGTERM" [ "$rc" == 0 ]
else
    log "TASKBUS_BIN not set: no host cold-start measurement"
fi

# ---- graceful stop of B while a websocket client is connected to it.
ws_listen "ws://127.0.0.1:$PORT_B/ws?events=ctest.*" "$TMP/hold.out"
HOLD_PID=$WS_PID
grep -q open "$TMP/hold.out" || fail "websocket to B did not open: $(cat "$TMP/hold.out")"
t0=$(now_ms)
bounded podman stop -t "$STOP_T" tbct-b >/dev/null 2>>"$PLOG"
STOP_MS=$(($(now_ms) - t0))
EXIT_B=$(podman inspect --format '{{.State.ExitCode}}' tbct-b)
if [[ "$EXIT_B" == 0 ]] && ((STOP_MS < GRACEFUL_S * 1000)); then
    ok "podman stop -t $STOP_T tbct-b: exit 0 after ${STOP_MS} ms" \
        "(graceful timeout ${GRACEFUL_S} s), websocket client: $(tr '\n' ' ' <"$TMP/hold.out")"
else
    fail "podman stop -t $STOP_T tbct-b: exit status $EXIT_B after ${STOP_MS} ms" \
        "(want 0 within ${GRACEFUL_S} s); log: $(podman logs tbct-b 2>&1 | tail -n 5)"
fi
kill -TERM "$HOLD_PID" 2>/dev/null
wait "$HOLD_PID" 2>/dev/null
PIDS=()

# A must be unaffected: still ready.
code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$PORT_A/readyz")
expect "A still ready after B stopped" \
    "A's /readyz answered $code after B stopped" [ "$code" == 200 ]

# ---- deploy/compose.yaml for real, as deploy/README.md has a new user run
# it: docker-compose against podman's Docker-compatible API, three
# replicas, HAProxy, Redis. An event posted through HAProxy reaches
# deploy/ws-events.py connected through HAProxy; HAProxy logs no token;
# `down` with that websocket open is quick, the client sees 1001, and the
# replica running a task says it cancels it.
COMPOSE_NOTE=" compose=skipped"
if ! command -v docker-compose >/dev/null 2>&1; then
    log "docker-compose not installed: the compose stack is not tried"
else
    SOCK=$TMP/podman.sock
    TMPDIR=$TMP/tmp podman system service --time=0 "unix://$SOCK" \
        >>"$PLOG" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        curl -s -m 1 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    export DOCKER_HOST=unix://$SOCK
    LB_PORT=$(free_port)
    TOKEN=$(openssl rand -hex 16)
    # Its own env file: never the deploy/.env a developer may have.
    printf 'TASKBUS_TOKEN=%s\nTASKBUS_PUBLISH=127.0.0.1:%s\n' "$TOKEN" \
        "$LB_PORT" >"$TMP/compose.env"
    DC=(docker-compose -p "tbct$$" --env-file "$TMP/compose.env"
        -f "$SRC/deploy/compose.yaml")
    LB=http://127.0.0.1:$LB_PORT
    AUTH=(-H "Authorization: Bearer $TOKEN")
    T=$SECONDS
    if ! bounded "${DC[@]}" up -d --build >"$TMP/compose-up.log" 2>&1; then
        fail "docker-compose up -d --build: $(tail -n 15 "$TMP/compose-up.log")"
    else
        ok "docker-compose up -d --build in $((SECONDS - T)) s"
        # Ready through HAProxy, and three instances on the bus.
        instances() {
            curl -s -m 2 "${AUTH[@]}" "$LB/instances" 2>/dev/null |
                "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)["instances"]))' 2>/dev/null
        }
        n=0
        until=$((SECONDS + 60))
        while ((SECONDS < until)); do
            n=$(instances)
            [[ "$n" == 3 ]] && wait_status "$LB/readyz" 200 1 && break
            sleep 0.5
        done
        UP_S=$((SECONDS - T))
        expect "three replicas listed by GET /instances through HAProxy, $UP_S s after up" \
            "GET /instances through HAProxy lists ${n:-no} instances, want 3" \
            [ "$n" == 3 ]

        # A websocket through HAProxy, token in the header (ws-events.py).
        TASKBUS_TOKEN=$TOKEN ws_listen \
            "ws://127.0.0.1:$LB_PORT/ws?events=ctest.*" "$TMP/ws-lb.out" ||
            fail "websocket through HAProxy did not open: $(cat "$TMP/ws-lb.out")"
        # POSTs through HAProxy (each may land on another replica) until one
        # arrives: the subscription's start cannot make this flaky.
        got=
        ids=()
        until=$((SECONDS + 20))
        while [[ -z "$got" ]] && ((SECONDS < until)); do
            id=$(curl -s -m 5 "${AUTH[@]}" -X POST --data '"via lb"' \
                "$LB/events/ctest.lb" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)
            [[ -n "$id" ]] && ids+=("$id")
            sleep 0.3
            for id in "${ids[@]}"; do
                grep -qF "\"id\":\"$id\"" "$TMP/ws-lb.out" && got=$id && break
            done
        done
        expect "an event posted through HAProxy reached the websocket through HAProxy ($got after ${#ids[@]} POST(s))" \
            "no event reached the websocket through HAProxy after ${#ids[@]} POST(s): $(head -c 300 "$TMP/ws-lb.out")" \
            [ -n "$got" ]

        # A running task, to be cancelled by down; and a ?token= request,
        # which HAProxy must log without its query string.
        code=$(curl -s -o "$TMP/task.json" -w '%{http_code}' -m 5 "${AUTH[@]}" \
            -X POST --data '{"kind":"sleep","name":"ct-nap","args":{"seconds":600}}' \
            "$LB/tasks")
        expect "POST /tasks through HAProxy: $code" \
            "POST /tasks through HAProxy: $code $(cat "$TMP/task.json")" \
            [ "$code" == 201 ]
        curl -s -o /dev/null -m 5 "$LB/metrics?token=$TOKEN" || true
        "${DC[@]}" logs --no-color lb >"$TMP/lb.log" 2>&1
        if grep -qF "$TOKEN" "$TMP/lb.log"; then
            fail "HAProxy's log holds the token: $(grep -F "$TOKEN" "$TMP/lb.log" | head -n 1)"
        elif grep -q 'GET /metrics HTTP' "$TMP/lb.log"; then
            ok "HAProxy logged GET /metrics without its ?token="
        else
            fail "HAProxy logged no GET /metrics line: $(tail -n 3 "$TMP/lb.log")"
        fi

        # down, the websocket open: follow the logs while it runs.
        "${DC[@]}" logs -f --no-color >"$TMP/compose-logs.txt" 2>&1 &
        LOGS_PID=$!
        PIDS+=("$LOGS_PID")
        sleep 1
        t0=$(now_ms)
        bounded "${DC[@]}" down >"$TMP/compose-down.log" 2>&1 ||
            fail "docker-compose down: $(tail -n 5 "$TMP/compose-down.log")"
        DOWN_MS=$(($(now_ms) - t0))
        for _ in $(seq 50); do
            grep -q '^closed' "$TMP/ws-lb.out" && break
            sleep 0.1
        done
        closed=$(grep '^closed' "$TMP/ws-lb.out")
        if ((DOWN_MS < 15000)); then
            ok "docker-compose down with a websocket open: ${DOWN_MS} ms"
        else
            fail "docker-compose down with a websocket open took ${DOWN_MS} ms" \
                "(want under 15 s)"
        fi
        expect "the websocket through HAProxy: $closed" \
            "the websocket through HAProxy ended: ${closed:-not closed} ($(tail -n 2 "$TMP/ws-lb.out" | tr '\n' ' ')), want closed 1001" \
            [ "${closed:0:11}" == "closed 1001" ]
        kill -TERM "$LOGS_PID" "$WS_PID" 2>/dev/null
        wait "$LOGS_PID" "$WS_PID" 2>/dev/null
        line=$(grep -o 'stopping: cancelling 1 task(s): "ct-nap" (sleep)' \
            "$TMP/compose-logs.txt" | head -n 1)
        expect "the replica running ct-nap logged: $line" \
            "no replica logged that it cancels ct-nap: $(grep -i 'cancel\|stopping' "$TMP/compose-logs.txt" | tail -n 5)" \
            [ -n "$line" ]
        COMPOSE_NOTE=" compose_up_s=$UP_S compose_down_ms=$DOWN_MS"
    fi
    "${DC[@]}" down -t 0 >/dev/null 2>&1
fi

if ((FAILED)); then
    log "replica A log (last lines):"
    podman logs tbct-a 2>&1 | tail -n 20 >&2
    log "podman's messages (last lines):"
    tail -n 10 "$PLOG" >&2
    log "FAILED after $SECONDS s"
    exit 1
fi
echo "RESULT cold_start_ms=$COLD_A host_cold_start_ms=$HOST_COLD" \
    "image_mb=$IMAGE_MB stop_ms=$STOP_MS total_s=$SECONDS$HC_NOTE$COMPOSE_NOTE"
