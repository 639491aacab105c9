#!/usr/bin/env bash
# Runs a short real scenario under valgrind's leak checker: the relay over TLS with generated
# certificates, pairs connecting, relaying and disconnecting (the generator's smoke scenario, over
# wss://), then SIGTERM and a graceful shutdown. Passes when valgrind reports
# "definitely lost: 0 bytes" (or no leaks at all) and no errors.
#
# Usage: scripts/valgrind.sh     (installs Debian's valgrind when missing and running as root)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if ! command -v valgrind >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    else
        echo "valgrind.sh needs valgrind (apt-get install valgrind)" >&2
        exit 2
    fi
fi
if [[ ! -x $BIN/intercessor || ! -x $BIN/intercessor-bench ]]; then
    cargo build --workspace --locked >&2
fi

"$BIN/intercessor" gen-certs --dir "$TMP/certs" >/dev/null
report=${VALGRIND_REPORT:-$TMP/valgrind.txt}
# --undef-value-errors=no: ring's hand-written AES-GCM assembly initialises ciphertext in ways
# memcheck cannot follow, so every TLS record written would be reported as "uninitialised"; leaks,
# invalid reads/writes and bad frees are still reported and fail the run.
RELAY_PREFIX=(valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --undef-value-errors=no --error-exitcode=99 --log-file="$report")
WAIT_SECONDS=60
start_relay valgrind --rate-limit 0 --max-connections-per-ip 0 --max-failed-attempts-per-minute 0 \
    --tls-cert "$TMP/certs/dev-cert.pem" --tls-key "$TMP/certs/dev-key.pem"
"$BIN/intercessor-bench" smoke --url "wss://localhost:${RELAY_ADDR##*:}" --ca "$TMP/certs/dev-ca.pem"
status=0
stop "$RELAY_PID" || status=$?
grep -E "definitely lost|ERROR SUMMARY|All heap blocks were freed" "$report" || true
if (( status != 0 )); then
    echo "valgrind.sh: FAIL: the relay under valgrind exited with $status (99: valgrind errors)" >&2
    cat "$report" >&2
    exit 1
fi
if ! grep -qE "definitely lost: 0 bytes|All heap blocks were freed" "$report"; then
    echo "valgrind.sh: FAIL: memory definitely lost" >&2
    cat "$report" >&2
    exit 1
fi
echo "valgrind: ok"
