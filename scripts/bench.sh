#!/usr/bin/env bash
# Benchmarks the relay against the bare echo server over loopback, target on core 0 and generator
# on core 1, and prints a table of medians over RUNS runs.
#
# Environment:
#   RUNS=3        runs of the whole set (medians are taken over them)
#   SLICES=5      pingpong slices per run, relay and echo alternating
#   DURATION=2s   measured interval of each pingpong slice (plus a 1 s warm-up)
#   QUICK=1       a short version: 1 run, 1 slice of 3 s, 500 connect pairs, 1000 idle pairs,
#                 fan-out to 200 clients for 50 rounds (the full set holds 4000 and then 9000
#                 idle pairs)
#   FANOUT_CLIENTS=1000 FANOUT_ROUNDS=200   the fan-out step's room size and measured rounds
#   MANY_PAIRS=1000   pairs of the second pingpong step, where per-pair costs show
#
# At $MANY_PAIRS pairs each slice also drives the echo server's forwarding floor (`/pair/KEY`:
# two connections, every frame read on one written on the other by one task): it touches two
# sockets per message as the relay does, so relay / forward is the relay's own cost at that size.
# The relay and the echo server both run during the pingpong step, both pinned to core 0, but only
# one of them is driven at a time; the idle one costs nothing. It runs at $PAIRS pairs and again at
# $MANY_PAIRS, where what grows with the number of peers (tables, timers, cache misses) shows.
# Over wss it runs again at $PAIRS pairs, the relay and the echo server on the same certificate
# and the same rustls configuration, so that the floor pays the same TLS cost per message.
# The step alternates the two in slices (relay, echo, relay, echo...), so that the machine's
# noise, which comes and goes over seconds, falls on both alike, and each relay/echo ratio is
# taken within one slice pair. Every
# measurement block starts a fresh relay: pingpong+connect, connect-cold, fairness, fan-out, idle
# over ws, pingpong over wss, connect over wss, idle over wss.
# Connect sets up all its pairs, holds them, then tears them all down, and reports the relay's CPU
# per pair for each phase. It runs over ws and over wss (dev certificates from gen-certs); the
# difference between the two set-up figures is what the relay spends on the TLS handshakes, two
# per pair. One unmeasured round of the same pairs goes first: a relay's heap grows the first time
# it holds that many peers, once per high-water mark. The connect-cold step measures that first
# round on a fresh relay (--warmup-rounds 0). Against the echo server a pair is two bare upgrades
# and closes: the floor of accepting, upgrading and closing two sockets on the same stack.
# Fairness: $QUIET_PAIRS quiet pairs (window 1) alone, then next to one flooder pair whose client
# sends as fast as the relay takes it; the quiet pairs' RTT p99 should grow less than 5x.
# Fan-out: one server peer sends a 512-byte message to each of $FANOUT_CLIENTS clients per round,
# each round waiting for every delivery; a round over $FANOUT_STALL_MS ms counts as stalled. The
# relay's per-server client limit is raised to the room's size for it.
# Needs taskset (util-linux) and jq. Connects only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNS=${RUNS:-1}
    SLICES=${SLICES:-1}
    DURATION=${DURATION:-3s}
    CONNECT_PAIRS=500
    IDLE_SIZES=(1000)
    FANOUT_CLIENTS=${FANOUT_CLIENTS:-200}
    FANOUT_ROUNDS=${FANOUT_ROUNDS:-50}
else
    RUNS=${RUNS:-3}
    SLICES=${SLICES:-5}
    DURATION=${DURATION:-2s}
    CONNECT_PAIRS=2000
    IDLE_SIZES=(4000 9000)
    FANOUT_CLIENTS=${FANOUT_CLIENTS:-1000}
    FANOUT_ROUNDS=${FANOUT_ROUNDS:-200}
fi
if [[ ! $DURATION =~ ^[0-9]+s$ ]]; then
    echo "DURATION must be whole seconds, such as 2s (got $DURATION)" >&2
    exit 2
fi
WARMUP=1s
# The fairness step runs as long as one run's pingpong slices of one target together.
FAIR_DURATION=$(( ${DURATION%s} * SLICES ))s
PAIRS=100
MANY_PAIRS=${MANY_PAIRS:-1000}
SIZE=512
WINDOW=1
CONCURRENCY=50
QUIET_PAIRS=50
FANOUT_WARMUP=10
FANOUT_STALL_MS=50

for tool in taskset jq; do
    if ! command -v "$tool" >/dev/null; then
        echo "bench.sh needs $tool (taskset is in util-linux, jq in jq): apt-get install util-linux jq" >&2
        exit 2
    fi
done
if ! taskset -c 1 true 2>/dev/null; then
    echo "bench.sh needs two cores (0 for the target, 1 for the generator)" >&2
    exit 2
fi

echo "== building release binaries" >&2
cargo build --release --workspace >&2
BIN=target/release

# The load comes from one address: lift the relay's per-address bounds where it has them, as
# --rate-limit 0 lifts the per-peer message rate.
RELAY_FLAGS=(--rate-limit 0)
RELAY_HELP=$("$BIN/intercessor" --help)
for flag in --max-connections-per-ip --max-failed-attempts-per-minute; do
    if grep -q -- "$flag" <<<"$RELAY_HELP"; then
        RELAY_FLAGS+=("$flag" 0)
    fi
done

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
RESULTS=$TMP/results
mkdir -p "$RESULTS"
RELAY_PREFIX=(taskset -c 0)

# start_echo NAME [ARG...]: starts the echo server on core 0; sets ECHO_PID and ECHO_ADDR.
start_echo() {
    local log=$TMP/echo.$1.log
    shift
    taskset -c 0 "$BIN/intercessor-echo" --listen 127.0.0.1:0 "$@" 2>"$log" &
    ECHO_PID=$!
    STARTED+=("$ECHO_PID")
    ECHO_ADDR=$(wait_for_address "$log" "$ECHO_PID" '.*listening on ([^ ]+).*')
}

FAILED=0
# Runs the generator on core 1 and keeps its JSON line as $RESULTS/NAME.RUN.json.
generate() {
    local name=$1 run=$2
    shift 2
    local out=$TMP/$name.$run.out status=0
    taskset -c 1 "$BIN/intercessor-bench" --json "$@" >"$out" || status=$?
    sed '$d' "$out" >&2
    tail -n1 "$out" >"$RESULTS/$name.$run.json"
    if [[ $status == 1 ]]; then
        echo "!! $name run $run FAILED a correctness check" >&2
        FAILED=1
    elif [[ $status != 0 ]]; then
        echo "!! $name run $run could not run (exit $status)" >&2
        exit 2
    fi
}

CERTS=$TMP/certs
TLS=1
if ! "$BIN/intercessor" gen-certs --dir "$CERTS" >/dev/null 2>&1; then
    echo "note: gen-certs failed; skipping the wss connect and idle runs" >&2
    TLS=0
fi

# Anything else running skews both CPU figures and latencies: say so next to the results.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# pingpong_slices STEP PAIRS RUN SCHEME [ARG...]: one run's pingpong slices of one step ("",
# -many or -wss) at PAIRS pairs over SCHEME (ws or wss): relay, echo, relay, echo... Each ARG
# (such as --ca FILE) goes to the generator for both.
pingpong_slices() {
    local step=$1 pairs=$2 run=$3 scheme=$4 slice
    shift 4
    for slice in $(seq "$SLICES"); do
        generate "pingpong-relay$step" "$run.$slice" pingpong --url "$scheme://$RELAY_ADDR" "$@" \
            --pid "$RELAY_PID" --pairs "$pairs" --size $SIZE --window $WINDOW \
            --duration "$DURATION" --warmup $WARMUP --target relay
        generate "pingpong-echo$step" "$run.$slice" pingpong --url "$scheme://$ECHO_ADDR" "$@" \
            --pid "$ECHO_PID" --pairs "$pairs" --size $SIZE --window $WINDOW \
            --duration "$DURATION" --warmup $WARMUP --target echo
        if [[ $step == -many ]]; then
            generate "pingpong-forward$step" "$run.$slice" pingpong --url "$scheme://$ECHO_ADDR" \
                "$@" --pid "$ECHO_PID" --pairs "$pairs" --size $SIZE --window $WINDOW \
                --duration "$DURATION" --warmup $WARMUP --target forward
        fi
    done
}

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS" >&2
    start_relay "main.$run" "${RELAY_FLAGS[@]}"
    start_echo "$run"
    pingpong_slices "" $PAIRS "$run" ws
    pingpong_slices -many "$MANY_PAIRS" "$run" ws
    generate connect "$run" connect --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
        --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
    generate connect-echo "$run" connect --url "ws://$ECHO_ADDR" --pid "$ECHO_PID" \
        --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY --target echo
    stop "$ECHO_PID" || true
    stop "$RELAY_PID" || true

    start_relay "cold.$run" "${RELAY_FLAGS[@]}"
    generate connect-cold "$run" connect --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
        --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY --warmup-rounds 0
    stop "$RELAY_PID" || true

    start_relay "fair.$run" "${RELAY_FLAGS[@]}"
    generate fair-quiet "$run" pingpong --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
        --pairs $QUIET_PAIRS --size $SIZE --window 1 --duration "$FAIR_DURATION" --warmup $WARMUP \
        --target relay
    generate fair-flood "$run" pingpong --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
        --pairs $QUIET_PAIRS --size $SIZE --window 1 --duration "$FAIR_DURATION" --warmup $WARMUP \
        --target relay --flooders 1
    stop "$RELAY_PID" || true

    start_relay "fanout.$run" "${RELAY_FLAGS[@]}" --max-clients-per-server "$FANOUT_CLIENTS" \
        --max-connections $((FANOUT_CLIENTS + 100))
    generate fanout "$run" fanout --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
        --clients "$FANOUT_CLIENTS" --rounds "$FANOUT_ROUNDS" --warmup-rounds $FANOUT_WARMUP \
        --stall-threshold ${FANOUT_STALL_MS}ms --concurrency $CONCURRENCY --size $SIZE
    stop "$RELAY_PID" || true

    for pairs in "${IDLE_SIZES[@]}"; do
        start_relay "idle-ws-$pairs.$run" "${RELAY_FLAGS[@]}" --max-connections $((2 * pairs + 100))
        generate "idle-ws-$pairs" "$run" idle --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
            --pairs "$pairs" --base-rss-after-warmup
        stop "$RELAY_PID" || true
    done

    if [[ $TLS == 1 ]]; then
        start_relay "pingpong-wss.$run" "${RELAY_FLAGS[@]}" --tls-cert "$CERTS/dev-cert.pem" --tls-key "$CERTS/dev-key.pem"
        start_echo "wss.$run" --tls-cert "$CERTS/dev-cert.pem" --tls-key "$CERTS/dev-key.pem"
        pingpong_slices -wss $PAIRS "$run" wss --ca "$CERTS/dev-ca.pem"
        stop "$ECHO_PID" || true
        stop "$RELAY_PID" || true

        start_relay "connect-wss.$run" "${RELAY_FLAGS[@]}" --tls-cert "$CERTS/dev-cert.pem" --tls-key "$CERTS/dev-key.pem"
        generate connect-wss "$run" connect --url "wss://$RELAY_ADDR" --ca "$CERTS/dev-ca.pem" \
            --pid "$RELAY_PID" --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
        stop "$RELAY_PID" || true

        for pairs in "${IDLE_SIZES[@]}"; do
            start_relay "idle-wss-$pairs.$run" "${RELAY_FLAGS[@]}" --max-connections $((2 * pairs + 100)) \
                --tls-cert "$CERTS/dev-cert.pem" --tls-key "$CERTS/dev-key.pem"
            generate "idle-wss-$pairs" "$run" idle --url "wss://$RELAY_ADDR" --ca "$CERTS/dev-ca.pem" \
                --pid "$RELAY_PID" --pairs "$pairs" --base-rss-after-warmup
            stop "$RELAY_PID" || true
        done
    fi
done

# jq: the median of an array of numbers (the mean of the middle two when even), null if empty.
JQ_MEDIAN='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;'

# The median of a jq expression over every run of one step, to three decimals.
median() {
    local name=$1 expr=$2
    cat "$RESULTS/$name".*.json 2>/dev/null | jq -s "$JQ_MEDIAN map($expr) | map(select(. != null)) |
        median | if . == null then null else . * 1000 | round / 1000 end"
}

# "min–max" of a jq expression over the runs, to show the spread next to the median.
spread() {
    local name=$1 expr=$2
    cat "$RESULTS/$name".*.json 2>/dev/null | jq -rs "map($expr) | map(select(. != null)) |
        if length == 0 then \"-\" else \"\\(min)–\\(max)\" end"
}

ratio() {
    jq -n --argjson a "$1" --argjson b "$2" 'if $a == null or $b == null or $b == 0 then null
        else ($a / $b * 100 | round) / 100 end'
}

# wss minus ws, two decimals.
difference() {
    jq -n --argjson a "$1" --argjson b "$2" 'if $a == null or $b == null then null
        else (($a - $b) * 100 | round) / 100 end'
}

# The ratios of a pingpong figure in one step ("" or -many), NUMERATOR (default relay) to FLOOR
# (default echo), one per slice (the two measured back to back), as "median<TAB>min–max<TAB>every
# ratio in order": the tail moves with the machine's noise, so a ratio is taken within a slice and
# the median of those is the figure.
paired_ratio() {
    local step=$1 expr=$2 top=${3:-relay} floor=${4:-echo} measured suffix
    for measured in "$RESULTS/pingpong-$top$step".*.json; do
        suffix=${measured#"$RESULTS/pingpong-$top$step."}
        jq -n --slurpfile r "$measured" --slurpfile e "$RESULTS/pingpong-$floor$step.$suffix" \
            "(\$r[0] | $expr) as \$a | (\$e[0] | $expr) as \$b |
             if \$a == null or \$b == null or \$b == 0 then null else \$a / \$b end"
    done | jq -rs "$JQ_MEDIAN"'map(select(. != null)) | map(. * 100 | round / 100) as $all |
        if $all == [] then "-\t-\t-" else
        "\($all | median * 100 | round / 100)\t\($all | min)–\($all | max)\t\($all | map(tostring) | join(" "))" end'
}

row() {
    printf '%-56s %16s   %s\n' "$1" "$2" "$3"
}

# "UNANSWERED of CLOSES" over every run of one connect step.
unanswered() {
    cat "$RESULTS/$1".*.json | jq -rs '"\(map(.close_unanswered) | add) of \(map(.set_up * 2) | add)"'
}

RELAY_MPS=$(median pingpong-relay .messages_per_s)
ECHO_MPS=$(median pingpong-echo .messages_per_s)
RELAY_CPU=$(median pingpong-relay .cpu.us_per_message)
ECHO_CPU=$(median pingpong-echo .cpu.us_per_message)
RELAY_P99=$(median pingpong-relay .rtt.p99_us)
ECHO_P99=$(median pingpong-echo .rtt.p99_us)
RELAY_P50=$(median pingpong-relay .rtt.p50_us)
ECHO_P50=$(median pingpong-echo .rtt.p50_us)
QUIET_P99=$(median fair-quiet .rtt.p99_us)
FLOODED_P99=$(median fair-flood .rtt.p99_us)
FLOOD_RATIO=$(ratio "$FLOODED_P99" "$QUIET_P99")
IFS=$'\t' read -r CPU_RATIO CPU_RATIO_SPREAD _ < <(paired_ratio "" .cpu.us_per_message)
IFS=$'\t' read -r P50_RATIO P50_RATIO_SPREAD _ < <(paired_ratio "" .rtt.p50_us)
IFS=$'\t' read -r P99_RATIO P99_RATIO_SPREAD P99_RATIOS < <(paired_ratio "" .rtt.p99_us)
IFS=$'\t' read -r MANY_CPU_RATIO MANY_CPU_RATIO_SPREAD _ < <(paired_ratio -many .cpu.us_per_message)
WS_SETUP=$(median connect .cpu.us_per_setup)
FLOOR_SETUP=$(median connect-echo .cpu.us_per_setup)
WS_TEARDOWN=$(median connect .cpu.us_per_teardown)
FLOOR_TEARDOWN=$(median connect-echo .cpu.us_per_teardown)

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then DIRTY=" (dirty tree)"; else DIRTY=""; fi

echo
echo "intercessor bench: commit $COMMIT$DIRTY, $(nproc) cores, $(uname -r), runs: $RUNS"
echo "pingpong: $PAIRS pairs and then $MANY_PAIRS (and over wss at $PAIRS), $SIZE B payload, window $WINDOW, $SLICES" \
    "slices per run of $DURATION after $WARMUP warm-up, relay and echo alternating;" \
    "connect: $CONNECT_PAIRS pairs set up $CONCURRENCY at a time and held, then torn down" \
    "$CONCURRENCY at a time, after a warm-up round of the same;" \
    "idle: ${IDLE_SIZES[*]} pairs (base RSS after a warm-up batch)"
echo "fairness: $QUIET_PAIRS quiet pairs, window 1, alone and next to 1 flooder pair (target: p99" \
    "with / without within 5x)"
echo "fan-out: 1 server, $FANOUT_CLIENTS clients, $SIZE B payload, $FANOUT_ROUNDS rounds after" \
    "$FANOUT_WARMUP warm-up, each round waiting for all deliveries, the server writing each" \
    "frame on its own"
echo "target pinned to core 0, generator to core 1; medians (min–max) over runs, and over" \
    "pingpong slices: relay / echo ratios are taken within each slice pair, then the median"
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the" \
    "machine skews every figure)"
echo "relay flags: ${RELAY_FLAGS[*]}"
echo
row "figure" "median" "spread"
row "relay: relayed messages/s (2 per round trip)" "$RELAY_MPS" "$(spread pingpong-relay .messages_per_s)"
row "echo: echoes/s (1 per round trip)" "$ECHO_MPS" "$(spread pingpong-echo .messages_per_s)"
row "relay: CPU-µs per relayed message" "$RELAY_CPU" "$(spread pingpong-relay .cpu.us_per_message)"
row "echo: CPU-µs per echo" "$ECHO_CPU" "$(spread pingpong-echo .cpu.us_per_message)"
row "CPU per message, relay / echo" "$CPU_RATIO" \
    "$CPU_RATIO_SPREAD; ratio of medians $(ratio "$RELAY_CPU" "$ECHO_CPU")"
row "relay at $MANY_PAIRS pairs: CPU-µs per relayed message" \
    "$(median pingpong-relay-many .cpu.us_per_message)" "$(spread pingpong-relay-many .cpu.us_per_message)"
row "echo at $MANY_PAIRS pairs: CPU-µs per echo" "$(median pingpong-echo-many .cpu.us_per_message)" \
    "$(spread pingpong-echo-many .cpu.us_per_message)"
row "CPU per message at $MANY_PAIRS pairs, relay / echo" "$MANY_CPU_RATIO" "$MANY_CPU_RATIO_SPREAD"
IFS=$'\t' read -r FORWARD_RATIO FORWARD_RATIO_SPREAD _ < <(paired_ratio -many .cpu.us_per_message forward)
IFS=$'\t' read -r OVER_FORWARD OVER_FORWARD_SPREAD _ < <(paired_ratio -many .cpu.us_per_message relay forward)
row "forward at $MANY_PAIRS pairs: CPU-µs per forwarded message" \
    "$(median pingpong-forward-many .cpu.us_per_message)" \
    "$(spread pingpong-forward-many .cpu.us_per_message)"
row "CPU per message at $MANY_PAIRS pairs, forward / echo" "$FORWARD_RATIO" "$FORWARD_RATIO_SPREAD"
row "CPU per message at $MANY_PAIRS pairs, relay / forward" "$OVER_FORWARD" "$OVER_FORWARD_SPREAD"
if [[ $TLS == 1 ]]; then
    WSS_RELAY_CPU=$(median pingpong-relay-wss .cpu.us_per_message)
    WSS_ECHO_CPU=$(median pingpong-echo-wss .cpu.us_per_message)
    IFS=$'\t' read -r WSS_CPU_RATIO WSS_CPU_RATIO_SPREAD _ < <(paired_ratio -wss .cpu.us_per_message)
    row "relay over wss: CPU-µs per relayed message" "$WSS_RELAY_CPU" \
        "$(spread pingpong-relay-wss .cpu.us_per_message)"
    row "echo over wss (same TLS config): CPU-µs per echo" "$WSS_ECHO_CPU" \
        "$(spread pingpong-echo-wss .cpu.us_per_message)"
    row "CPU per message over wss, relay / echo" "$WSS_CPU_RATIO" \
        "$WSS_CPU_RATIO_SPREAD; ratio of medians $(ratio "$WSS_RELAY_CPU" "$WSS_ECHO_CPU")"
fi
row "relay: RTT p50 µs" "$RELAY_P50" "$(spread pingpong-relay .rtt.p50_us)"
row "echo: RTT p50 µs" "$ECHO_P50" "$(spread pingpong-echo .rtt.p50_us)"
row "relay: RTT p99 µs" "$RELAY_P99" "$(spread pingpong-relay .rtt.p99_us)"
row "echo: RTT p99 µs" "$ECHO_P99" "$(spread pingpong-echo .rtt.p99_us)"
row "RTT p50, relay / echo" "$P50_RATIO" \
    "$P50_RATIO_SPREAD; ratio of medians $(ratio "$RELAY_P50" "$ECHO_P50")"
row "RTT p99, relay / echo" "$P99_RATIO" \
    "$P99_RATIO_SPREAD; ratio of medians $(ratio "$RELAY_P99" "$ECHO_P99")"
row "relay: CPU share of core 0 during pingpong" "$(median pingpong-relay .cpu.core_share)" \
    "$(spread pingpong-relay .cpu.core_share)"
row "echo: CPU share of core 0 during pingpong" "$(median pingpong-echo .cpu.core_share)" \
    "$(spread pingpong-echo .cpu.core_share)"
row "fairness: quiet RTT p99 µs, no flooder" "$QUIET_P99" "$(spread fair-quiet .rtt.p99_us)"
row "fairness: quiet RTT p99 µs, 1 flooder" "$FLOODED_P99" "$(spread fair-flood .rtt.p99_us)"
row "fairness: p99 with / without flooder" "$FLOOD_RATIO" \
    "$(jq -rn --argjson r "${FLOOD_RATIO:-null}" 'if $r == null then "-" elif $r <= 5 then "within 5x" else "OVER 5x" end')"
row "fairness: quiet RTT p50 µs, no / 1 flooder" \
    "$(median fair-quiet .rtt.p50_us) / $(median fair-flood .rtt.p50_us)" ""
row "fairness: flooder msgs/s delivered" "$(median fair-flood .flooder_msgs_per_sec)" \
    "$(spread fair-flood .flooder_msgs_per_sec)"
row "fan-out: deliveries/s" "$(median fanout .deliveries_per_s)" "$(spread fanout .deliveries_per_s)"
for q in p50 p99 max; do
    row "fan-out: delivery latency $q µs" "$(median fanout ".delivery_latency.${q}_us")" \
        "$(spread fanout ".delivery_latency.${q}_us")"
done
for q in p50 p99 max; do
    row "fan-out: round duration $q µs" "$(median fanout ".round_duration.${q}_us")" \
        "$(spread fanout ".round_duration.${q}_us")"
done
row "fan-out: stalled rounds (over $FANOUT_STALL_MS ms) of $FANOUT_ROUNDS" "$(median fanout .stalled_rounds)" \
    "$(spread fanout .stalled_rounds)"
row "fan-out: slowest round µs" "$(median fanout .slowest_round.us)" "$(spread fanout .slowest_round.us)"
row "fan-out: relay CPU-µs per delivery" "$(median fanout .cpu.us_per_delivery)" \
    "$(spread fanout .cpu.us_per_delivery)"
row "connect ws: pairs/s (set up + torn down)" "$(median connect .pairs_per_s)" "$(spread connect .pairs_per_s)"
row "connect ws: set-up latency p50 µs" "$(median connect .setup_latency.p50_us)" \
    "$(spread connect .setup_latency.p50_us)"
row "connect ws: set-up latency p99 µs" "$(median connect .setup_latency.p99_us)" \
    "$(spread connect .setup_latency.p99_us)"
row "connect ws: relay CPU-µs per pair set-up" "$WS_SETUP" "$(spread connect .cpu.us_per_setup)"
row "connect ws: relay CPU-µs per pair tear-down" "$WS_TEARDOWN" "$(spread connect .cpu.us_per_teardown)"
row "connect floor (echo: 2 upgrades): CPU-µs per set-up" "$FLOOR_SETUP" "$(spread connect-echo .cpu.us_per_setup)"
row "connect floor (echo: 2 closes): CPU-µs per tear-down" "$FLOOR_TEARDOWN" \
    "$(spread connect-echo .cpu.us_per_teardown)"
row "connect set-up, relay / floor" "$(ratio "$WS_SETUP" "$FLOOR_SETUP")" ""
row "connect tear-down, relay / floor" "$(ratio "$WS_TEARDOWN" "$FLOOR_TEARDOWN")" ""
row "connect ws, fresh relay's first round: CPU-µs per set-up" "$(median connect-cold .cpu.us_per_setup)" \
    "$(spread connect-cold .cpu.us_per_setup)"
if [[ $TLS == 1 ]]; then
    WSS_SETUP=$(median connect-wss .cpu.us_per_setup)
    TLS_PER_PAIR=$(difference "$WSS_SETUP" "$WS_SETUP")
    row "connect wss: relay CPU-µs per pair set-up" "$WSS_SETUP" "$(spread connect-wss .cpu.us_per_setup)"
    row "connect wss: relay CPU-µs per pair tear-down" "$(median connect-wss .cpu.us_per_teardown)" \
        "$(spread connect-wss .cpu.us_per_teardown)"
    row "TLS handshakes: relay CPU-µs per pair (wss − ws set-up)" "$TLS_PER_PAIR" \
        "$(jq -rn --argjson d "${TLS_PER_PAIR:-null}" 'if $d == null then "-"
            else "\(($d / 2 * 100 | round) / 100) per handshake (2 per pair)" end')"
fi
for pairs in "${IDLE_SIZES[@]}"; do
    row "idle ws, $pairs pairs: relay RSS bytes per peer" "$(median "idle-ws-$pairs" .bytes_per_peer)" \
        "$(spread "idle-ws-$pairs" .bytes_per_peer)"
    if [[ $TLS == 1 ]]; then
        row "idle wss, $pairs pairs: relay RSS bytes per peer" "$(median "idle-wss-$pairs" .bytes_per_peer)" \
            "$(spread "idle-wss-$pairs" .bytes_per_peer)"
    fi
done
echo
echo "RTT p99, relay / echo, each slice pair in order: $P99_RATIOS"
echo "closes the relay left unanswered (connect ws, all runs): $(unanswered connect)"
if [[ $TLS == 1 ]]; then
    echo "closes the relay left unanswered (connect wss, all runs): $(unanswered connect-wss)"
fi
echo "fan-out: TCP counters' growth over the measured rounds, machine-wide, median of runs" \
    "(null: not in this kernel): $(cat "$RESULTS"/fanout.*.json | jq -cs "$JQ_MEDIAN"'
        (.[0].tcp | keys_unsorted) as $names | [.[] | .tcp] as $all |
        reduce $names[] as $n ({}; .[$n] = ($all | map(.[$n]) | map(select(. != null)) | median))')"
if [[ $FAILED == 1 ]]; then
    echo "RESULT: FAIL (a correctness check failed; see the output above)"
    exit 1
fi
echo "RESULT: PASS (no lost, reordered or corrupted message, no failed set-up, no dropped connection)"
