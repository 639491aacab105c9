#!/usr/bin/env bash
# A quick end-to-end check of built binaries: starts relays over ws:// and over wss:// (with fresh
# development certificates, trusted by the generator through the generated CA only) and runs the
# load generator's `smoke` scenario against each. Fails only on lost, reordered or corrupted
# messages or failed set-ups, never on timing. CI runs it; so can you, after building.
#
# Usage: scripts/smoke.sh [ws|wss|both]     (BIN=target/release to use release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
mode=${1:-both}

if [[ ! -x $BIN/intercessor || ! -x $BIN/intercessor-bench ]]; then
    cargo build --workspace --locked $([[ $BIN == target/release ]] && echo --release) >&2
fi
# One address makes all the load: lift the per-address bounds and the message rate.
FLAGS=(--rate-limit 0 --max-connections-per-ip 0 --max-failed-attempts-per-minute 0)

if [[ $mode == ws || $mode == both ]]; then
    start_relay ws "${FLAGS[@]}"
    "$BIN/intercessor-bench" smoke --url "ws://$RELAY_ADDR"
    stop "$RELAY_PID"
fi
if [[ $mode == wss || $mode == both ]]; then
    "$BIN/intercessor" gen-certs --dir "$TMP/certs" >/dev/null
    start_relay wss "${FLAGS[@]}" --tls-cert "$TMP/certs/dev-cert.pem" --tls-key "$TMP/certs/dev-key.pem"
    "$BIN/intercessor-bench" smoke --url "wss://localhost:${RELAY_ADDR##*:}" --ca "$TMP/certs/dev-ca.pem"
    stop "$RELAY_PID"
fi
echo "smoke: ok"
