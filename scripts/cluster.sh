#!/usr/bin/env bash
# A two-instance cluster on this machine, to try cluster mode: one redis-server (no persistence),
# relays `a` and `b` sharing its join codes with `--cluster-routing fly-replay` (or pubsub), and
# intercessor-fly-proxy in front of them, standing in for Fly.io's proxy. Everything listens on
# 127.0.0.1. Open the printed URL in two browser windows, host in one and join in the other: the
# proxy sends each new connection to the next instance in turn, so about half the joins land on
# the instance that does not hold the room, get `307` with `fly-replay`, and are replayed to the
# one that does. The proxy prints one line per connection, replays included.
#
# Usage: scripts/cluster.sh        (PORT=8080: the proxy's port, 0 for any free one;
#                                   FIRST_HOP=round-robin, or a or b to send every connection there;
#                                   ROUTING=fly-replay, or pubsub: the instances forward frames to
#                                   the room's owner over Redis, and the proxy replays nothing;
#                                   PROFILE=debug, or release)
#
# Ctrl-C (or SIGTERM) stops exactly the processes it started, by PID, newest first.
#
# It builds a debug binary by default: that takes about half as long as a release build (whose
# optimised link alone takes minutes on two cores), and a handful of browsers is no load for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}
FIRST_HOP=${FIRST_HOP:-round-robin}
ROUTING=${ROUTING:-fly-replay}
PROFILE=${PROFILE:-debug}
# Where cargo puts them: a relative CARGO_TARGET_DIR is read from here, the repository root.
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE

case $PROFILE in
    debug) profile_flag=() ;;
    release) profile_flag=(--release) ;;
    *) echo "cluster.sh: PROFILE must be debug or release, not $PROFILE" >&2; exit 2 ;;
esac
command -v redis-server >/dev/null || {
    echo "cluster.sh: needs redis-server (apt-get install redis-server)" >&2
    exit 1
}

echo "cluster.sh: building the relay and the proxy ($PROFILE)" >&2
cargo build --locked "${profile_flag[@]}" -p intercessor -p intercessor-bench \
    --bin intercessor --bin intercessor-fly-proxy >&2

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# The EXIT trap (lib.sh) does the cleaning; these make Ctrl-C and SIGTERM reach it.
trap 'exit 130' INT
trap 'exit 143' TERM

# start_redis: starts redis-server on a free loopback port; sets REDIS_PORT. A port taken between
# choosing and binding makes it exit at once, and then another port is tried.
start_redis() {
    local log=$TMP/redis.log pid
    for _ in 1 2 3 4 5; do
        REDIS_PORT=$(( 20000 + RANDOM % 40000 ))
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no >"$log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        if wait_for_address "$log" "$pid" '.*(Ready to accept connections).*' >/dev/null 2>&1; then
            return 0
        fi
    done
    echo "cluster.sh: redis-server did not start; its last log:" >&2
    cat "$log" >&2
    return 1
}

start_redis
REDIS_URL=redis://127.0.0.1:$REDIS_PORT

declare -A ADDR
for id in a b; do
    start_relay "$id" --cluster-redis-url "$REDIS_URL" --cluster-routing "$ROUTING" \
        --instance-id "$id"
    ADDR[$id]=$RELAY_ADDR
done

"$BIN/intercessor-fly-proxy" --listen "127.0.0.1:$PORT" --first-hop "$FIRST_HOP" \
    --instance "a=${ADDR[a]}" --instance "b=${ADDR[b]}" >"$TMP/proxy.log" 2>&1 &
PROXY_PID=$!
STARTED+=("$PROXY_PID")
PROXY_ADDR=$(wait_for_address "$TMP/proxy.log" "$PROXY_PID" \
    '^fly proxy listening on ([^:]+:[0-9]+): .*')

cat <<EOF
cluster.sh: redis-server on $REDIS_URL, relay a on ${ADDR[a]}, relay b on ${ADDR[b]} ($ROUTING)
cluster.sh: relay logs in $TMP/relay.a.log and $TMP/relay.b.log (JSON)

    open http://$PROXY_ADDR/ in two browser windows: host in one, join in the other
    peers: ws://$PROXY_ADDR/server and ws://$PROXY_ADDR/client/CODE

cluster.sh: the proxy's lines follow ("-> b 307, replayed -> a 101" is a replay); Ctrl-C stops all
EOF
# The proxy's output as it comes, until the proxy ends or Ctrl-C; tail goes with the rest.
tail -n +1 -f "$TMP/proxy.log" &
STARTED+=("$!")
wait "$PROXY_PID"
