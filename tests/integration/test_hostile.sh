#!/bin/bash
# test_hostile.sh - hostile clients (issue 9): deep JSON, HTTP framing
# tricks, broken websocket frames, resets, abandoned long polls, a relay
# cycle and a cancel racing a spawn, against the real taskbus binary with
# the in-process bus and with a throwaway redis-server. Runs
# hostile_suite.py with Debian's python3.
# CTest runs it from the build directory with TASKBUS_BIN and
# TASKBUS_SOURCE_DIR set; by hand:
#   TASKBUS_BIN=build/taskbus TASKBUS_SOURCE_DIR=. bash tests/integration/test_hostile.sh [WORD...]
set -eu
: "${TASKBUS_BIN:?TASKBUS_BIN must name the taskbus binary}"
src="${TASKBUS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
exec /usr/bin/python3 "$src/tests/integration/hostile_suite.py" "$@"
