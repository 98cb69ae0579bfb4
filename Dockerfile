# Dockerfile - builds taskbus on Debian 12 and ships the service binary in a
# slim runtime image.
#
#   podman build -t localhost/taskbus .   (or docker build)
#   podman run --rm -p 8080:8080 localhost/taskbus

# ---- build: compile a Release build and install it into a staging tree
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake make gcc libc6-dev pkg-config \
        libevent-dev libhiredis-dev libcivetweb-dev libjansson-dev libwslay-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the library and the binary are built from (no tests: they need
# cmocka and are run by .ci/dev.sh test, not here).
COPY CMakeLists.txt ./
COPY include/ include/
COPY service/ service/
COPY adapters/ adapters/
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX=/usr/local \
    && cmake --build /build --parallel "$(nproc)" \
    && DESTDIR=/staging cmake --install /build

# ---- runtime: the binary and the shared libraries it needs, nothing else
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libevent-core-2.1-7 libevent-pthreads-2.1-7 libhiredis0.14 \
        libcivetweb1 libjansson4 libwslay1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin taskbus
COPY --from=build /staging/usr/local/bin/taskbus /usr/local/bin/taskbus
# Fail the build here, not at start-up, if a shared library is missing.
RUN ! ldd /usr/local/bin/taskbus | grep 'not found'
USER taskbus
# Inside a container the API must be reachable through the published port.
ENV TASKBUS_LISTEN=0.0.0.0:8080
EXPOSE 8080
CMD ["taskbus"]
