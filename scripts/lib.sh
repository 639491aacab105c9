# Shared by the scripts that start relays: process bookkeeping and reading the listening address.
# Source it after `set -euo pipefail`; it sets TMP (a scratch directory) and an EXIT trap that
# stops only the processes started through it, by PID, newest first (so a relay still finds the
# Redis it was started on while it drains).

TMP=$(mktemp -d)
STARTED=()

cleanup() {
    local i pid
    for (( i = ${#STARTED[@]} - 1; i >= 0; i-- )); do
        pid=${STARTED[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# wait_for_address LOG PID PATTERN: prints the first capture of the sed -E PATTERN found in LOG,
# waiting up to WAIT_SECONDS (default 10, longer under valgrind) while process PID lives.
wait_for_address() {
    local log=$1 pid=$2 pattern=$3 address="" tries=$(( ${WAIT_SECONDS:-10} * 10 ))
    for _ in $(seq "$tries"); do
        address=$(sed -nE "s/$pattern/\\1/p" "$log" 2>/dev/null | head -n1)
        if [[ -n $address ]]; then
            echo "$address"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited; its log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "no listening address in $log after ${WAIT_SECONDS:-10} s" >&2
    return 1
}

# start_relay NAME [ARG...]: starts "${RELAY_PREFIX[@]}" "$BIN/intercessor" on 127.0.0.1 with JSON
# logs in $TMP/relay.NAME.log; sets RELAY_PID and RELAY_ADDR (host:port).
RELAY_PREFIX=()
start_relay() {
    local log=$TMP/relay.$1.log
    shift
    "${RELAY_PREFIX[@]}" "$BIN/intercessor" --listen 127.0.0.1:0 --log-format json "$@" 2>"$log" &
    RELAY_PID=$!
    STARTED+=("$RELAY_PID")
    RELAY_ADDR=$(wait_for_address "$log" "$RELAY_PID" \
        '.*"message":"relay listening","listen":"([^"]+)".*')
}

# stop PID: SIGTERM, then wait; returns the process's exit status.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    local status=0
    wait "$1" 2>/dev/null || status=$?
    return "$status"
}

# rss_kib PID: resident memory of a process in KiB.
rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}
