#!/usr/bin/env bash
# test_install.sh - installs libtaskbus to a temporary prefix, moves the
# installed tree elsewhere, and builds and runs an example against it as an
# embedder would: once with pkg-config, once with a CMake project that calls
# find_package(taskbus) and links taskbus::taskbus.
#
# What it checks:
#   - `cmake --install --component library` installs the header, the library
#     (static, or shared with its soname link), taskbus.pc and the CMake
#     package (with TaskbusDependencies.cmake), and not the service binary;
#   - no installed pkg-config or CMake file names the install prefix, the
#     build tree or the source tree (so the install is relocatable);
#   - from the moved tree, pkg-config reports the version and a prefix inside
#     the moved tree, and `cc example.c $(pkg-config --cflags --libs taskbus)`
#     builds with -Wall -Wextra -Werror;
#   - find_package(taskbus VERSION EXACT) finds the moved tree's package, and
#     a target linking taskbus::taskbus builds the same way;
#   - each binary runs and exits 0 (the example checks its own output), and
#     is linked with the moved tree's libtaskbus.so in a shared build and with
#     no libtaskbus.so in a static one.
#
# CTest runs it (test install_test_install) from the build tree, with:
#   TASKBUS_BUILD_DIR     the build tree, built (the library at least)
#   TASKBUS_SOURCE_DIR    the source tree
#   TASKBUS_CONFIG        the build configuration (Release, Debug, ...)
#   TASKBUS_LIBDIR        CMAKE_INSTALL_LIBDIR, relative to the prefix
#   TASKBUS_LIBRARY_TYPE  STATIC_LIBRARY or SHARED_LIBRARY
#   TASKBUS_VERSION       the project version
#   TASKBUS_CMAKE         the cmake of the build
#   TASKBUS_CC            the C compiler of the build
#   TASKBUS_CFLAGS        compile and link flags the build's objects need
#                         (its sanitizers), possibly empty
#   TASKBUS_EXAMPLE       the example (default tests/examples/list_tasks.c)
# By hand: ctest --test-dir build -R install_ --output-on-failure
set -euo pipefail

BUILD=${TASKBUS_BUILD_DIR:?TASKBUS_BUILD_DIR must name the build tree}
SRC=${TASKBUS_SOURCE_DIR:?TASKBUS_SOURCE_DIR must name the source tree}
CONFIG=${TASKBUS_CONFIG:?TASKBUS_CONFIG must name the build configuration}
LIBDIR=${TASKBUS_LIBDIR:?TASKBUS_LIBDIR must be CMAKE_INSTALL_LIBDIR}
TYPE=${TASKBUS_LIBRARY_TYPE:?TASKBUS_LIBRARY_TYPE must be STATIC_LIBRARY or SHARED_LIBRARY}
VERSION=${TASKBUS_VERSION:?TASKBUS_VERSION must be the project version}
CMAKE=${TASKBUS_CMAKE:-cmake}
CC=${TASKBUS_CC:-cc}
read -r -a EXTRA_FLAGS <<<"${TASKBUS_CFLAGS:-}"
EXAMPLE=${TASKBUS_EXAMPLE:-$SRC/tests/examples/list_tasks.c}
[[ -f "$EXAMPLE" ]] || { echo "test_install: no example $EXAMPLE" >&2; exit 1; }
BUILD=$(cd "$BUILD" && pwd -P)
SRC=$(cd "$SRC" && pwd -P)
EXAMPLE=$(cd "$(dirname "$EXAMPLE")" && pwd -P)/$(basename "$EXAMPLE")
WARN_FLAGS=(-Wall -Wextra -Werror)

log() { printf 'test_install: %s\n' "$*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

case "$TYPE" in
STATIC_LIBRARY | SHARED_LIBRARY) ;;
*) fail "TASKBUS_LIBRARY_TYPE is '$TYPE', not STATIC_LIBRARY or SHARED_LIBRARY" ;;
esac
command -v pkg-config >/dev/null || fail "no pkg-config (Debian package pkg-config)"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
STAGE="$TMP/stage"
PREFIX="$TMP/moved"

# ---- install, and look at what was installed
log "installing the library component of $BUILD to $STAGE"
"$CMAKE" --install "$BUILD" --config "$CONFIG" --prefix "$STAGE" \
    --component library >"$TMP/install.log" 2>&1 ||
    { cat "$TMP/install.log" >&2; fail "cmake --install failed"; }

expect=("include/taskbus/taskbus.h"
    "$LIBDIR/pkgconfig/taskbus.pc"
    "$LIBDIR/cmake/taskbus/taskbusConfig.cmake"
    "$LIBDIR/cmake/taskbus/taskbusConfigVersion.cmake"
    "$LIBDIR/cmake/taskbus/taskbusTargets.cmake"
    "$LIBDIR/cmake/taskbus/TaskbusDependencies.cmake")
if [[ "$TYPE" == SHARED_LIBRARY ]]; then
    expect+=("$LIBDIR/libtaskbus.so" "$LIBDIR/libtaskbus.so.${VERSION%%.*}")
else
    expect+=("$LIBDIR/libtaskbus.a")
fi
for f in "${expect[@]}"; do
    [[ -e "$STAGE/$f" ]] || fail "the install has no $f"
done
[[ ! -e "$STAGE/bin/taskbus" ]] ||
    fail "the library component installed the service binary"

# A file that names where it was installed (or built) breaks once moved.
for path in "$STAGE" "$BUILD" "$SRC"; do
    if leaks=$(grep -rlF "$path" "$STAGE/$LIBDIR/pkgconfig" \
        "$STAGE/$LIBDIR/cmake"); then
        fail "installed files name $path: $leaks"
    fi
done

mv "$STAGE" "$PREFIX"
PREFIX_REAL=$(cd "$PREFIX" && pwd -P)
log "moved the install to $PREFIX"

# check_binary NAME BINARY: runs BINARY (it must exit 0) and checks which
# libtaskbus it is linked with.
check_binary() {
    local name=$1 bin=$2 lib rc=0
    lib=$(ldd "$bin" | awk '/libtaskbus\.so/ { print $3 }')
    if [[ "$TYPE" == SHARED_LIBRARY ]]; then
        [[ -n "$lib" ]] || fail "$name: not linked with libtaskbus.so"
        lib=$(readlink -f "$lib")
        [[ "$lib" == "$PREFIX_REAL/$LIBDIR/"* ]] ||
            fail "$name: uses $lib, not the one in $PREFIX_REAL/$LIBDIR"
    else
        [[ -z "$lib" ]] ||
            fail "$name: the library is static, yet it loads $lib"
    fi
    timeout 60 "$bin" >"$TMP/$name.out" 2>&1 || rc=$?
    if ((rc != 0)); then
        cat "$TMP/$name.out" >&2
        fail "$name: exited with $rc"
    fi
    log "$name: built, ran, exit 0${lib:+, with $lib}"
}

# ---- pkg-config
export PKG_CONFIG_PATH="$PREFIX/$LIBDIR/pkgconfig"
got=$(pkg-config --modversion taskbus) ||
    fail "pkg-config cannot read taskbus.pc from $PKG_CONFIG_PATH"
[[ "$got" == "$VERSION" ]] || fail "pkg-config says version $got, not $VERSION"
pc_prefix=$(pkg-config --variable=prefix taskbus)
[[ -d "$pc_prefix" && "$(cd "$pc_prefix" && pwd -P)" == "$PREFIX_REAL" ]] ||
    fail "taskbus.pc's prefix is '$pc_prefix', not the moved tree $PREFIX"
read -r -a pc_flags <<<"$(pkg-config --cflags --libs taskbus)"
rpath=()
if [[ "$TYPE" == SHARED_LIBRARY ]]; then
    rpath=("-Wl,-rpath,$(pkg-config --variable=libdir taskbus)")
fi
mkdir "$TMP/pc"
"$CC" "${WARN_FLAGS[@]}" "${EXTRA_FLAGS[@]}" -o "$TMP/pc/example" \
    "$EXAMPLE" "${pc_flags[@]}" "${rpath[@]}" >"$TMP/pc.log" 2>&1 ||
    {
        cat "$TMP/pc.log" >&2
        fail "pkg-config: cc $EXAMPLE ${pc_flags[*]} failed"
    }
check_binary pkg-config "$TMP/pc/example"
unset PKG_CONFIG_PATH

# ---- find_package(taskbus)
mkdir "$TMP/consumer"
cat >"$TMP/consumer/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(taskbus_consumer LANGUAGES C)
find_package(taskbus "${TASKBUS_VERSION}" EXACT REQUIRED)
add_executable(example "${EXAMPLE}")
target_link_libraries(example PRIVATE taskbus::taskbus)
file(WRITE "${CMAKE_BINARY_DIR}/taskbus_dir.txt" "${taskbus_DIR}")
EOF
"$CMAKE" -S "$TMP/consumer" -B "$TMP/consumer/build" \
    -DCMAKE_BUILD_TYPE="$CONFIG" \
    -DCMAKE_C_COMPILER="$CC" \
    -DCMAKE_C_FLAGS="${WARN_FLAGS[*]} ${EXTRA_FLAGS[*]}" \
    -DCMAKE_EXE_LINKER_FLAGS="${EXTRA_FLAGS[*]}" \
    -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF \
    -DTASKBUS_VERSION="$VERSION" \
    -DEXAMPLE="$EXAMPLE" >"$TMP/consumer.log" 2>&1 ||
    { cat "$TMP/consumer.log" >&2; fail "find_package: configure failed"; }
found=$(cat "$TMP/consumer/build/taskbus_dir.txt")
[[ "$(cd "$found" && pwd -P)" == "$PREFIX_REAL/$LIBDIR/cmake/taskbus" ]] ||
    fail "find_package found $found, not the moved tree $PREFIX"
"$CMAKE" --build "$TMP/consumer/build" >>"$TMP/consumer.log" 2>&1 ||
    { cat "$TMP/consumer.log" >&2; fail "find_package: build failed"; }
check_binary find_package "$TMP/consumer/build/example"

log "ok: $TYPE install, moved, used through pkg-config and find_package"
