# Dockerfile - builds taskbus on Debian 12 and ships the service binary in a
# slim runtime image.
#
#   podman build --format docker -t localhost/taskbus .   (or docker build)
#   podman run --rm -p 8080:8080 localhost/taskbus
#
# --format docker: the OCI image format has no HEALTHCHECK, and podman's
# default (OCI) build drops it with a warning. docker build needs no flag.
# deploy/README.md shows how to run three replicas on Redis (compose,
# Kubernetes); tests/container/test_container.sh builds and checks this
# image with podman.

# ---- build: compile a Release build and install it into a staging tree
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake make gcc libc6-dev pkg-config \
        libevent-dev libhiredis-dev libcivetweb-dev libjansson-dev libwslay-dev \
        libjwt-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the library and the binary are built from (no tests: they need
# cmocka and are run by .ci/dev.sh test, not here).
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY include/ include/
COPY service/ service/
COPY adapters/ adapters/
# The JavaScript client, built into the dashboard as /ui/taskbus.js.
COPY clients/js/src/ clients/js/src/
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX=/usr/local \
    && cmake --build /build --parallel "$(nproc)" \
    && DESTDIR=/staging cmake --install /build --strip

# ---- runtime: the binary and the shared libraries it needs, nothing else
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libevent-core-2.1-7 libevent-pthreads-2.1-7 libhiredis0.14 \
        libcivetweb1 libjansson4 libwslay1 libjwt0 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt \
        /var/log/dpkg.log \
    && groupadd --gid 10001 taskbus \
    && useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin taskbus
COPY --from=build /staging/usr/local/bin/taskbus /usr/local/bin/taskbus
# Fail the build here, not at start-up, if a shared library is missing.
RUN ! ldd /usr/local/bin/taskbus | grep 'not found'
# Numeric, so that Kubernetes' runAsNonRoot can verify it without runAsUser.
USER 10001:10001
# Inside a container the API must be reachable through the published port.
ENV TASKBUS_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Exec form throughout: taskbus is PID 1 and gets SIGTERM itself (no shell in
# between); it stops gracefully and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["taskbus", "healthcheck"]
ENTRYPOINT ["taskbus"]
# Operators want a quiet log: no line per event, no demo ticker. Arguments
# given to `run IMAGE ...` (or a pod's args) replace these.
CMD ["--quiet", "--tick", "0"]
