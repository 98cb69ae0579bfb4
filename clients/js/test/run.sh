#!/usr/bin/env bash
# run.sh - the JavaScript client's tests (ctest integration_jsclient): node
# --test on test/*.test.js against $TASKBUS_BIN and a throwaway
# redis-server. Needs node and node_modules (npm ci here: bash .ci/dev.sh
# test does it); without them the test is skipped (exit 77), or fails
# under CI=true.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=""
if ! command -v node >/dev/null 2>&1; then
    missing="no node"
elif [[ ! -d node_modules/ws ]]; then
    missing="no $PWD/node_modules/ws"
fi
if [[ -n "$missing" ]]; then
    echo "jsclient: $missing: run bash .ci/dev.sh test, or npm ci in $PWD" >&2
    if [[ "${CI:-}" == "true" ]]; then
        exit 1
    fi
    exit 77
fi
exec node --test --test-concurrency=1 --test-reporter=spec test/*.test.js
