# syntax=docker/dockerfile:1
#
# Intercessor's container image: the static relay binary alone, on `scratch`.
#
#   docker build -t intercessor .
#   docker run --rm -p 8080:8080 -e INTERCESSOR_PASSPHRASE=... intercessor
#
# Two stages: `builder` compiles, the final stage copies one file out of it. A named build context
# called `builder` replaces that stage (BuildKit and buildah both do this), so the same file also
# packages a binary built elsewhere, without pulling the Rust image:
#
#   podman build --build-context builder=DIR .          # DIR/intercessor; see scripts/container.sh
#   docker buildx build --build-context builder=DIR .
#
# tests/deploy.rs checks this file against the relay's defaults and against fly.toml.

# ---- builder: the toolchain the workspace is developed and tested with (rustc 1.95). ----
FROM docker.io/library/rust:1.95.0-slim-bookworm AS builder
WORKDIR /src
COPY . .
# A fully static binary, so the final image needs no libc. There is no musl target here; glibc
# linked statically is fine for this program: the one host name it resolves, the cluster's Redis
# (`--cluster-redis-url`), goes through glibc's `files` and `dns` lookups, which are part of libc
# itself since glibc 2.34 (no NSS module to load) and read the /etc/hosts and /etc/resolv.conf that
# Docker, podman and Fly.io give every container (checked in a chroot holding only the binary,
# those two files and /dev/urandom: it reached Redis by a name a DNS server answered). x86_64
# only: Fly machines are amd64 (on an arm64 host add `--platform linux/amd64`). `--target` must
# be explicit with +crt-static, or build scripts and proc macros would be linked statically too
# and fail. RUSTFLAGS replaces .cargo/config.toml's flags, so RELR is asked for again here.
#
# The cargo registry and target directory are BuildKit cache mounts, so rebuilds reuse downloaded
# crates and compiled dependencies. (No separate dependency-only layer: the cache mounts already
# do that job, and a stub layer would have to fake both workspace members and the compiled-in
# demo files.) The binary is copied out of the cache mount, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --release --locked -p intercessor --target x86_64-unknown-linux-gnu \
    && cp target/x86_64-unknown-linux-gnu/release/intercessor /intercessor

# ---- the image: one static binary, nothing else. ----
# No CA bundle: the relay makes no outbound TLS connections. No shell, no passwd file.
FROM scratch
COPY --from=builder /intercessor /intercessor
# Non-root, numeric because scratch has no /etc/passwd (65532 is the usual "nonroot" id). The relay
# writes no files when TLS is terminated at the edge; `--dev-tls` (which writes certs/) is for
# development machines, not this image.
USER 65532:65532
# Plain HTTP and WebSockets: the edge (Fly's proxy, or your reverse proxy) terminates TLS.
# Metrics, /healthz and /readyz are also served on 9091, deliberately not EXPOSEd: `docker run -P`
# must not publish them; scrapers reach the port over the private network.
ENV INTERCESSOR_LISTEN=0.0.0.0:8080 \
    INTERCESSOR_METRICS_LISTEN=0.0.0.0:9091 \
    INTERCESSOR_LOG_FORMAT=json
EXPOSE 8080
# The relay drains on SIGTERM (and SIGINT): it stops accepting, /readyz answers 503, every peer
# gets close 1001, and it exits 0 within --shutdown-timeout (10 s) plus about 1 s of close grace.
# Give it that long before SIGKILL (`docker stop -t 15`; fly.toml's kill_timeout).
STOPSIGNAL SIGTERM
# No HEALTHCHECK: scratch has no shell or curl to run one, and the binary has no self-check mode.
# Orchestrators check over HTTP instead: GET /healthz on 8080 (fly.toml's [[http_service.checks]]).
ENTRYPOINT ["/intercessor"]
