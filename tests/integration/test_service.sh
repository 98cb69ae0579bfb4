#!/bin/bash
# test_service.sh - the taskbus binary as an operator uses it: flags and
# TASKBUS_* variables, bad values, the start log line and its secrets, log
# formats and levels, the client commands, and graceful shutdown on
# SIGTERM/SIGINT (with a throwaway redis-server for the cases that need
# one). Runs service_suite.py with Debian's python3 and python3-websockets.
# CTest runs it from the build directory with TASKBUS_BIN and
# TASKBUS_SOURCE_DIR set; by hand:
#   TASKBUS_BIN=build/taskbus TASKBUS_SOURCE_DIR=. bash tests/integration/test_service.sh [WORD...]
set -eu
: "${TASKBUS_BIN:?TASKBUS_BIN must name the taskbus binary}"
src="${TASKBUS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
exec /usr/bin/python3 "$src/tests/integration/service_suite.py" "$@"
