#!/usr/bin/env bash
# dev.sh - install what taskbus needs on Debian 12, then build and run it, or
# build and test it.
#
#   bash .ci/dev.sh run [ARGS...]  Release build in build/, then exec
#                                  build/taskbus ARGS... (stop with Ctrl-C)
#   bash .ci/dev.sh test           build/ (Release, -Werror) + ctest, then
#                                  build-shared/ (libtaskbus.so: examples,
#                                  the binary's service suite, install
#                                  test), then build-core/ (no HTTP, no
#                                  Redis, no JWT) + unit tests, then build-asan/
#                                  (Debug, ASan+UBSan) + ctest, then
#                                  build-tsan/ (Debug, TSan) + ctest,
#                                  then build-fuzz/ (clang, libFuzzer,
#                                  ASan+UBSan): each tests/fuzz/ target
#                                  replays its regressions and runs for
#                                  FUZZ_SECONDS (default 10) on a copy of
#                                  its corpus
#
# Needs root (or sudo) only when a package is missing. Safe to re-run: it
# installs nothing that is already there and rebuilds incrementally.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD_DEPS=(cmake make gcc libc6-dev pkg-config
    libevent-dev libhiredis-dev libcivetweb-dev libjansson-dev libwslay-dev
    libjwt-dev)
TEST_DEPS=(libcmocka-dev redis-server redis-tools redis-sentinel python3
    python3-websockets curl valgrind)
# Node and npm (Debian 12's own nodejs is 18; each directory's package.json
# says in "engines" which Node it needs, and node_check below holds node -v
# against it),
# then, from their committed lockfiles, the packages of a real EventSource
# client for tests/integration/sse_suite.py, the JavaScript client's
# test dependencies (clients/js: ws; Node 18 and 20 have no WebSocket)
# and the dashboard's browser test (tests/integration/browser:
# playwright-core, which drives Debian's chromium and never downloads a
# browser of its own).
NODE_DEPS=(nodejs npm)
NPM_DIRS=(tests/integration/sse_client clients/js tests/integration/browser
    tests/integration/browser_firefox)
# The last of NPM_DIRS is the dashboard's Firefox test: puppeteer-core,
# which drives Debian's firefox-esr over WebDriver BiDi and downloads no
# browser either.
BROWSER_DEPS=(chromium firefox-esr)
# The fuzz targets (tests/fuzz/): clang and its libFuzzer runtime.
FUZZ_DEPS=(clang libclang-rt-14-dev)
FUZZ_SECONDS=${FUZZ_SECONDS:-10}

# --- container and deploy checks (tests/container/) -------------------------
# podman and what it needs to build and run the Dockerfile without a Docker
# engine or a registry (see tests/container/test_container.sh), docker-compose
# to validate deploy/compose.yaml, python3-yaml to read deploy/k8s. Every
# package deploy/podman-setup.sh installs is here, and nothing a deployment
# needs that it leaves out (tests/container/test_deploy_files.sh checks).
CONTAINER_DEPS=(podman runc debootstrap iptables netavark aardvark-dns
    fuse-overlayfs slirp4netns uidmap curl docker-compose python3-yaml
    python3-websockets)
# ----------------------------------------------------------------------------

JOBS=$(nproc 2>/dev/null || echo 2)
CTEST_JOBS=2

log() {
    printf '==> %s\n' "$*" >&2
}

die() {
    printf 'dev.sh: %s\n' "$*" >&2
    exit 1
}

# Installs the packages given that are not installed yet; runs apt-get update
# only when something is missing.
ensure_packages() {
    local missing=() pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all ${#} present"
        return 0
    fi
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 ||
            die "missing packages (${missing[*]}): run as root or install them"
        sudo=(sudo)
    fi
    log "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local try
    for try in 1 2 3; do
        if "${sudo[@]}" apt-get update -q </dev/null &&
            "${sudo[@]}" apt-get install -y -q --no-install-recommends \
                "${missing[@]}" </dev/null; then
            return 0
        fi
        log "apt-get failed (attempt $try of 3)"
        sleep $((try * 5))
    done
    die "could not install: ${missing[*]}"
}

# Says which of NPM_DIRS this node is too old for (their package.json's
# "engines": {"node": ">=N"}): their tests would fail on it. Stops when it
# is too old for every one of them.
node_check() {
    local have major dir want ok=0
    have=$(node -v 2>/dev/null) || die "node -v failed: reinstall nodejs"
    major=${have#v}
    major=${major%%.*}
    [[ "$major" =~ ^[0-9]+$ ]] || die "node -v says '$have', not vN.N.N"
    for dir in "${NPM_DIRS[@]}"; do
        want=$(sed -n 's/.*"node": *">=\([0-9]*\).*/\1/p' "$dir/package.json")
        if [[ -z "$want" || "$major" -ge "$want" ]]; then
            ok=1
            continue
        fi
        log "WARNING: node is $have; $dir needs Node $want or newer" \
            "(its package.json \"engines\"): its tests will fail on this" \
            "node; install Node $want or newer"
    done
    ((ok)) || die "node $have is too old for every test that uses it"
}

# Installs the npm packages of each of NPM_DIRS (npm ci: exactly the
# lockfile's versions) unless its node_modules already matches the lockfile.
ensure_npm_packages() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        ensure_packages "${NODE_DEPS[@]}"
    fi
    local dir stamp try
    node_check
    for dir in "${NPM_DIRS[@]}"; do
        stamp="$dir/node_modules/.package-lock.json"
        if [[ -f "$stamp" && "$stamp" -nt "$dir/package-lock.json" ]]; then
            log "npm: $dir/node_modules up to date"
            continue
        fi
        log "npm: npm ci in $dir"
        for try in 1 2 3; do
            if (cd "$dir" &&
                npm ci --no-audit --no-fund --loglevel=error </dev/null); then
                break
            fi
            ((try < 3)) || die "could not install the npm packages of $dir"
            log "npm ci failed (attempt $try of 3)"
            sleep $((try * 5))
        done
    done
}

# configure DIR CMAKE_ARGS...: (re)configures DIR with every option that
# matters given explicitly, so that switching between run and test or
# re-running leaves no stale setting behind.
configure() {
    local dir=$1
    shift
    # A build directory copied from another checkout cannot be reused.
    if [[ -f "$dir/CMakeCache.txt" ]] &&
        ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT" "$dir/CMakeCache.txt"; then
        log "$dir was configured for another source tree: removing it"
        rm -rf "$dir"
    fi
    log "configure $dir: $*"
    # Every adapter unless the caller says otherwise (a later -D wins).
    cmake -S "$ROOT" -B "$dir" -DTB_WITH_HTTP=ON -DTB_WITH_REDIS=ON \
        -DTB_WITH_JWT=ON "$@"
}

# build DIR [TARGET...]: builds the targets given, or everything.
build() {
    local dir=$1
    shift
    local args=(--parallel "$JOBS")
    if (($# > 0)); then
        args+=(--target "$@")
    fi
    log "build $dir${*:+ (targets: $*)}"
    cmake --build "$dir" "${args[@]}"
}

# run_ctest DIR [CTEST_ARGS...]: runs the tests (those CTEST_ARGS select),
# prints ctest's summary, returns its status and adds its counts to
# TOTAL_PASSED / TOTAL_FAILED.
TOTAL_PASSED=0
TOTAL_FAILED=0
run_ctest() {
    local dir=$1 out rc=0
    shift
    out="$dir/ctest-output.log"
    log "ctest $dir (-j$CTEST_JOBS${*:+ $*})"
    ctest --test-dir "$dir" --output-on-failure --no-tests=error \
        --parallel "$CTEST_JOBS" "$@" </dev/null 2>&1 | tee "$out" || rc=$?
    local line
    line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' \
        "$out" | tail -n 1 || true)
    if [[ -n "$line" ]]; then
        local failed total
        failed=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")
        total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
        TOTAL_PASSED=$((TOTAL_PASSED + total - failed))
        TOTAL_FAILED=$((TOTAL_FAILED + failed))
    fi
    return "$rc"
}

cmd_run() {
    ensure_packages "${BUILD_DEPS[@]}"
    configure build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DTB_WERROR=OFF -DTB_ASAN=OFF -DTB_UBSAN=OFF -DTB_TSAN=OFF
    build build
    [[ -x build/taskbus ]] || die "build/taskbus was not built"
    log "exec build/taskbus${*:+ $*} (Ctrl-C or SIGTERM stops it)"
    exec ./build/taskbus "$@"
}

cmd_test() {
    local start=$SECONDS t rc_release=0 rc_shared=0 rc_core=0 rc_asan=0
    local rc_tsan=0 rc_fuzz=0
    ensure_packages "${BUILD_DEPS[@]}" "${TEST_DEPS[@]}" "${FUZZ_DEPS[@]}"
    ensure_packages "${CONTAINER_DEPS[@]}" # tests/container/ (block above)
    ensure_packages "${BROWSER_DEPS[@]}" # tests/integration/dashboard*_suite.py
    ensure_npm_packages

    t=$SECONDS
    configure build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
        -DTB_WERROR=ON -DTB_ASAN=OFF -DTB_UBSAN=OFF -DTB_TSAN=OFF
    build build
    # Its browser test rewrites docs/dashboard.png (the README's picture)
    # too; the other trees' runs, and a plain ctest, write to their build
    # directory only.
    TASKBUS_UPDATE_SCREENSHOT=1 run_ctest build || rc_release=$?
    log "release build + tests: $((SECONDS - t)) s"

    # libtaskbus.so: the examples and the service binary linked against it
    # (the binary uses the public API only), the install test (pkg-config
    # and find_package against a shared install), and the service suite on
    # that binary. Only those targets: the rest is the static trees' job.
    t=$SECONDS
    local shared_targets=(taskbus taskbus_bin) example
    for example in tests/examples/*.c; do
        example=${example##*/}
        example=${example%.c}
        shared_targets+=("example_${example#example_}")
    done
    configure build-shared -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
        -DBUILD_SHARED_LIBS=ON -DTB_WERROR=ON -DTB_ASAN=OFF -DTB_UBSAN=OFF \
        -DTB_TSAN=OFF
    build build-shared "${shared_targets[@]}"
    run_ctest build-shared \
        -R '^(example_.*|install_.*|integration_service)$' || rc_shared=$?
    log "shared library build + examples, service + install tests:" \
        "$((SECONDS - t)) s"

    # The library without its optional adapters (no civetweb, wslay,
    # hiredis or libjwt): it must build, and its unit tests pass (such a
    # build registers no others: the rest drives the HTTP server and Redis).
    t=$SECONDS
    configure build-core -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
        -DTB_WERROR=ON -DTB_ASAN=OFF -DTB_UBSAN=OFF -DTB_TSAN=OFF \
        -DTB_WITH_HTTP=OFF -DTB_WITH_REDIS=OFF -DTB_WITH_JWT=OFF
    build build-core
    run_ctest build-core || rc_core=$?
    log "core-only build + unit tests: $((SECONDS - t)) s"

    t=$SECONDS
    configure build-asan -DCMAKE_BUILD_TYPE=Debug -DBUILD_TESTING=ON \
        -DTB_WERROR=ON -DTB_ASAN=ON -DTB_UBSAN=ON -DTB_TSAN=OFF
    build build-asan
    run_ctest build-asan || rc_asan=$?
    log "asan+ubsan build + tests: $((SECONDS - t)) s"

    # Workers, the registry and the buses are shared between threads: a
    # ThreadSanitizer pass keeps them honest (coro.c tells it about fibers).
    t=$SECONDS
    configure build-tsan -DCMAKE_BUILD_TYPE=Debug -DBUILD_TESTING=ON \
        -DTB_WERROR=ON -DTB_ASAN=OFF -DTB_UBSAN=OFF -DTB_TSAN=ON
    build build-tsan
    run_ctest build-tsan || rc_tsan=$?
    log "tsan build + tests: $((SECONDS - t)) s"

    # libFuzzer targets, one per parser of outside input (docs/FUZZING.md):
    # a short bounded run of each on a throwaway copy of its seed corpus,
    # after replaying the inputs of defects found before. The compiler is
    # part of a build tree's cache: only a fresh tree can switch to clang.
    t=$SECONDS
    if [[ -f build-fuzz/CMakeCache.txt ]] &&
        ! grep -q '^CMAKE_C_COMPILER:.*clang' build-fuzz/CMakeCache.txt; then
        log "build-fuzz was configured with another compiler: removing it"
        rm -rf build-fuzz
    fi
    CC=clang configure build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DBUILD_TESTING=OFF -DTB_WERROR=ON -DTB_ASAN=OFF -DTB_UBSAN=OFF \
        -DTB_TSAN=OFF -DTB_FUZZ=ON
    build build-fuzz fuzz_targets
    bash tests/fuzz/run.sh build-fuzz "$FUZZ_SECONDS" </dev/null || rc_fuzz=$?
    log "fuzz build + ${FUZZ_SECONDS} s per target: $((SECONDS - t)) s"

    log "release: $( ((rc_release == 0)) && echo ok || echo FAILED )," \
        "shared: $( ((rc_shared == 0)) && echo ok || echo FAILED )," \
        "core-only: $( ((rc_core == 0)) && echo ok || echo FAILED )," \
        "asan+ubsan: $( ((rc_asan == 0)) && echo ok || echo FAILED )," \
        "tsan: $( ((rc_tsan == 0)) && echo ok || echo FAILED )," \
        "fuzz: $( ((rc_fuzz == 0)) && echo ok || echo FAILED )," \
        "total $((SECONDS - start)) s"
    echo "ctest: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
    ((rc_release == 0 && rc_shared == 0 && rc_core == 0 && rc_asan == 0 &&
        rc_tsan == 0 && rc_fuzz == 0))
}

case "${1:-}" in
run)
    shift
    cmd_run "$@"
    ;;
test)
    shift
    (($# == 0)) || die "test takes no arguments"
    cmd_test
    ;;
*)
    die "usage: bash .ci/dev.sh run [ARGS...] | bash .ci/dev.sh test"
    ;;
esac
