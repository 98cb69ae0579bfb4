#!/bin/bash
# test_ws.sh - the websocket endpoint (GET /ws) end to end: runs
# ws_suite.py (Debian's python3 and python3-websockets) against the real
# taskbus binary, and a throwaway redis-server for the two-instance cases.
# CTest runs it from the build directory with TASKBUS_BIN and
# TASKBUS_SOURCE_DIR set; by hand:
#   TASKBUS_BIN=build/taskbus TASKBUS_SOURCE_DIR=. bash tests/integration/test_ws.sh
set -eu
: "${TASKBUS_BIN:?TASKBUS_BIN must name the taskbus binary}"
src="${TASKBUS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
exec /usr/bin/python3 "$src/tests/integration/ws_suite.py" "$@"
