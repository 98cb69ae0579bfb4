#!/usr/bin/env bash
# podman-setup.sh - makes a bare Debian 12 host ready for deploy/compose.yaml
# with podman instead of a Docker engine: the packages, the containers.conf
# settings podman's defaults lack on many hosts, the Docker-compatible API
# socket docker-compose talks to, and (where no registry is reachable) the
# debian:bookworm-slim base image made locally. Run as root.
#
#   bash deploy/podman-setup.sh          install, configure, service (all)
#   bash deploy/podman-setup.sh install  the Debian packages only
#   bash deploy/podman-setup.sh configure
#                                        writes CONF_FILE (below)
#   bash deploy/podman-setup.sh service  starts the API socket, prints the
#                                        DOCKER_HOST to export
#   bash deploy/podman-setup.sh base     debian:bookworm-slim from debootstrap
#                                        (no registry needed; about 30 s)
#   bash deploy/podman-setup.sh conf     prints the settings (for a file of
#                                        your own named by CONTAINERS_CONF)
#   bash deploy/podman-setup.sh packages prints the Debian packages, one a
#                                        line
#
# Environment (optional):
#   CONF_FILE    where `configure` writes
#                (/etc/containers/containers.conf.d/50-taskbus.conf)
#   PODMAN_SOCK  the API socket (/run/podman/podman.sock)
#   PODMAN_LOG   where the API service started without systemd logs
#                (/var/log/podman-service.log)
#   BASE_TARBALL `base` keeps the base image's root file system here as a
#                tarball, and imports an existing one instead of running
#                debootstrap again
#
# Safe to re-run. deploy/README.md says why each setting is there.
set -euo pipefail

CONF_FILE=${CONF_FILE:-/etc/containers/containers.conf.d/50-taskbus.conf}
PODMAN_SOCK=${PODMAN_SOCK:-/run/podman/podman.sock}
PODMAN_LOG=${PODMAN_LOG:-/var/log/podman-service.log}
BASE_REF=docker.io/library/debian:bookworm-slim
# netavark and aardvark-dns explicitly: without them apt may pick the CNI
# plugins, whose networks have no container DNS (the replicas would not
# find "redis"). runc explicitly: crun fails on hosts with hybrid cgroups.
# iptables explicitly: Debian 12's netavark (1.4) has no nftables driver and
# runs the iptables binary for every network; it is only a recommendation,
# so without it a minimal host fails `compose up`. .ci/dev.sh installs this
# list for the container tests (tests/container/test_deploy_files.sh checks).
PACKAGES=(podman netavark aardvark-dns runc iptables docker-compose
    python3-websockets curl)

log() { printf 'podman-setup: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
need_root() {
    ((EUID == 0)) || die "run it as root (podman's networks are rootful here)"
}

has_systemd() { [[ -d /run/systemd/system ]]; }

# The settings. default_ulimits: podman's default asks for more open files
# than many hosts allow a process (`error setting rlimit type 7: operation
# not permitted`), so containers get the host's hard limit instead.
# runtime: runc (see PACKAGES). cgroup_manager: systemd's only where
# systemd runs, else cgroupfs.
print_conf() {
    local nofile
    nofile=$(ulimit -Hn)
    [[ "$nofile" == unlimited ]] && nofile=1048576
    local manager=cgroupfs
    has_systemd && manager=systemd
    cat <<EOF
# Written by deploy/podman-setup.sh for taskbus's compose stack.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "$manager"

[network]
network_backend = "netavark"
EOF
}

cmd_install() {
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

cmd_configure() {
    need_root
    mkdir -p "$(dirname "$CONF_FILE")"
    print_conf >"$CONF_FILE.tmp"
    mv "$CONF_FILE.tmp" "$CONF_FILE"
    log "wrote $CONF_FILE"
    if [[ -n "${CONTAINERS_CONF:-}" && "$CONTAINERS_CONF" != "$CONF_FILE" ]]; then
        log "note: CONTAINERS_CONF=$CONTAINERS_CONF is set: podman reads that" \
            "file instead; add these settings there (bash $0 conf)"
    fi
    podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Host.NetworkBackend}}' ||
        die "podman info fails with these settings"
}

cmd_service() {
    need_root
    if has_systemd && [[ "$PODMAN_SOCK" == /run/podman/podman.sock ]]; then
        systemctl enable --now podman.socket
    elif ! curl -s -m 2 --unix-socket "$PODMAN_SOCK" http://d/_ping >/dev/null 2>&1; then
        mkdir -p "$(dirname "$PODMAN_SOCK")"
        # Not a child of this shell's terminal: it outlives the script and
        # never stops on tty output.
        setsid nohup podman system service --time=0 "unix://$PODMAN_SOCK" \
            </dev/null >>"$PODMAN_LOG" 2>&1 &
        local i
        for i in $(seq 50); do
            curl -s -m 1 --unix-socket "$PODMAN_SOCK" http://d/_ping \
                >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
    curl -s -m 2 --unix-socket "$PODMAN_SOCK" http://d/_ping >/dev/null ||
        die "the podman API does not answer on $PODMAN_SOCK (see $PODMAN_LOG)"
    log "podman API on $PODMAN_SOCK; now run:"
    echo "export DOCKER_HOST=unix://$PODMAN_SOCK"
}

# debian:bookworm-slim without a registry: debootstrap from the host's own
# apt mirror, slimmed as the real image is, imported under the name the
# Dockerfiles use (so their FROM never contacts a registry).
cmd_base() {
    need_root
    if podman image exists "$BASE_REF"; then
        log "$BASE_REF is there already"
        return 0
    fi
    if [[ -n "${BASE_TARBALL:-}" && -s "$BASE_TARBALL" ]]; then
        podman import --change 'CMD ["bash"]' "$BASE_TARBALL" "$BASE_REF" \
            >/dev/null || die "podman import of $BASE_TARBALL failed"
        log "made $BASE_REF from $BASE_TARBALL"
        return 0
    fi
    command -v debootstrap >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends debootstrap
    local sources=/etc/apt/sources.list.d/debian.sources mirror
    mirror=$(awk '$1 == "URIs:" { print $2; exit }' "$sources" 2>/dev/null || true)
    [[ -n "$mirror" ]] || die "no URIs: line in $sources to debootstrap from"
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/taskbus-base.XXXXXX")
    BASE_TMP=$tmp
    trap 'rm -rf "$BASE_TMP"' EXIT
    local rootfs=$tmp/rootfs
    log "debootstrap --variant=minbase bookworm (from $sources)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
        >"$tmp/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $(tail -n 5 "$tmp/debootstrap.log")"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/etc/apt/sources.list
    find "$rootfs/var/log" -type f -delete
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cp "$sources" "$rootfs/etc/apt/sources.list.d/"
    tar --numeric-owner -C "$rootfs" -cf "$tmp/base.tar" . ||
        die "cannot pack the root file system"
    podman import --change 'CMD ["bash"]' "$tmp/base.tar" "$BASE_REF" \
        >/dev/null || die "podman import failed"
    if [[ -n "${BASE_TARBALL:-}" ]] && mkdir -p "$(dirname "$BASE_TARBALL")" &&
        cp "$tmp/base.tar" "$BASE_TARBALL.part"; then
        mv "$BASE_TARBALL.part" "$BASE_TARBALL"
    fi
    log "made $BASE_REF"
}

case "${1:-all}" in
all)
    cmd_install
    cmd_configure
    cmd_service
    ;;
install) cmd_install ;;
configure) cmd_configure ;;
service) cmd_service ;;
base) cmd_base ;;
conf) print_conf ;;
packages) printf '%s\n' "${PACKAGES[@]}" ;;
*) die "usage: bash $0 [all|install|configure|service|base|conf|packages]" ;;
esac
