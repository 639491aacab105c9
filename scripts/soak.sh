#!/usr/bin/env bash
# Soak test for leaks: waves of pairs connect, exchange messages and leave; the relay's resident
# memory after the last wave must be within 10% of its level after the first (both reported).
#
# Usage: scripts/soak.sh [WAVES=10] [PAIRS_PER_WAVE=2000]   (default: 20,000 pairs in all)
#        CI runs a short variant: scripts/soak.sh 4 250
# Uses release binaries unless BIN is set. Connects only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
waves=${1:-10}
pairs=${2:-2000}
BIN=${BIN:-target/release}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ ! -x $BIN/intercessor || ! -x $BIN/intercessor-bench ]]; then
    cargo build --workspace --locked $([[ $BIN == target/release ]] && echo --release) >&2
fi
# Without resume: each live peer's replay window (--resume-queue-bytes) copies what it was last
# sent, and across waves that churn moves RSS by more than the 10% bound (31-38 MiB against a
# steady 22 MiB without it). The resume paths are checked for leaks by valgrind.sh, which runs
# the relay with its defaults.
start_relay soak --rate-limit 0 --max-connections-per-ip 0 --max-failed-attempts-per-minute 0 \
    --resume-window 0

first=""
for wave in $(seq "$waves"); do
    "$BIN/intercessor-bench" pingpong --url "ws://$RELAY_ADDR" --pairs "$pairs" --window 4 \
        --duration 1s --warmup 0s >"$TMP/wave.$wave.txt"
    sleep 1  # let the last sessions finish their closing handshakes
    rss=$(rss_kib "$RELAY_PID")
    echo "wave $wave: $pairs pairs, relay RSS ${rss} KiB"
    first=${first:-$rss}
done
last=$rss
limit=$(( first + first / 10 ))
echo "soak: RSS after wave 1: ${first} KiB, after wave ${waves}: ${last} KiB (limit ${limit} KiB)"
stop "$RELAY_PID"
if (( last > limit )); then
    echo "soak: FAIL: the relay's memory grew by more than 10% across waves" >&2
    exit 1
fi
echo "soak: ok"
