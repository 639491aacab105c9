#!/usr/bin/env bash
# Benchmarks a two-instance cluster (one redis-server, relays a and b sharing it) against a single
# relay, and prints a table of medians. Targets (Redis included) run on core 0, the generator on
# core 1. Every server it starts listens on 127.0.0.1 and is stopped by PID on exit.
#
# Steps, in this order, each run:
#   size      the release binary as shipped (`cargo build --release`, the root package only: a
#             workspace build unifies the bench crate's features into the relay's dependencies)
#   pingpong  (pubsub cluster) slices alternating: a single relay; server and client on instance a;
#             server on a and client on b, so every message crosses Redis pub/sub. CPU per relayed
#             message is summed over both relays and redis-server, and divided by the single
#             relay's figure of the slice pair next to it
#   connect   (fly-replay cluster) pairs set up and torn down: server on a, client through the
#             replaying proxy (in the generator process) sent first to b, which answers 307 and
#             fly-replay, so the proxy replays it to a; against the same proxy sent first to a
#             (no replay), and a single relay direct. Redis commands per set-up are counted with
#             INFO commandstats, each script once
#   idle      (fly-replay and pubsub clusters) 0, 1,000 and 10,000 rooms (lone server peers, half
#             on each instance, one generator process per instance), then Redis commands per
#             second over IDLE_WINDOW of nothing happening; in pubsub also rooms whose one client
#             is on the other instance (pubsub-cross: forwarded sessions)
#
# Environment:
#   RUNS=3          runs of the whole set (medians are taken over them)
#   SLICES=3        pingpong slices per run of each of the three targets
#   DURATION=3s     measured interval of each pingpong slice (plus a 1 s warm-up)
#   IDLE_WINDOW=30s how long idle Redis commands are counted
#   ROOMS="0 1000 10000"
#   STEPS="pingpong connect idle"   a subset to run
#   QUICK=1         1 run, 1 slice of 2 s, 500 connect pairs, rooms "0 1000", a 10 s window
#   RESULTS_DIR=DIR keep every step's JSON line there (NAME.RUN.json) rather than in a temporary
#                   directory removed on exit
# Needs taskset (util-linux), jq and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNS=${RUNS:-1}
    SLICES=${SLICES:-1}
    DURATION=${DURATION:-2s}
    IDLE_WINDOW=${IDLE_WINDOW:-10s}
    ROOMS=${ROOMS:-0 1000}
    CONNECT_PAIRS=500
else
    RUNS=${RUNS:-3}
    SLICES=${SLICES:-3}
    DURATION=${DURATION:-3s}
    IDLE_WINDOW=${IDLE_WINDOW:-30s}
    ROOMS=${ROOMS:-0 1000 10000}
    CONNECT_PAIRS=2000
fi
STEPS=${STEPS:-pingpong connect idle}
WARMUP=1s
PAIRS=100
SIZE=512
WINDOW=1
CONCURRENCY=50
LEASE_TTL=15s
# Binary size budget (bytes) for the stripped release binary.
SIZE_BUDGET=6500000

for tool in taskset jq redis-server; do
    if ! command -v "$tool" >/dev/null; then
        echo "cluster-bench.sh needs $tool (apt-get install util-linux jq redis-server)" >&2
        exit 2
    fi
done
if ! taskset -c 1 true 2>/dev/null; then
    echo "cluster-bench.sh needs two cores (0 for the targets, 1 for the generator)" >&2
    exit 2
fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

echo "== building release binaries" >&2
cargo build --release --workspace >&2
# Last, so target/release/intercessor is the binary as shipped, without the bench's features.
cargo build --release >&2
BIN=${CARGO_TARGET_DIR:-target}/release
BINARY_BYTES=$(stat -c %s "$BIN/intercessor")

RELAY_FLAGS=(--rate-limit 0 --max-connections-per-ip 0 --max-failed-attempts-per-minute 0)
# Every step's JSON line, one file per step and run; kept after the run when RESULTS_DIR is set.
RESULTS=${RESULTS_DIR:-$TMP/results}
mkdir -p "$RESULTS"
FAILED=0
PUBSUB=1
RELAY_PREFIX=(taskset -c 0)

# A loopback port free right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_redis: a fresh redis-server without persistence on core 0; sets REDIS_PID and REDIS_URL.
start_redis() {
    local port
    port=$(free_port)
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no >"$TMP/redis.$port.log" 2>&1 &
    REDIS_PID=$!
    STARTED+=("$REDIS_PID")
    REDIS_URL=redis://127.0.0.1:$port
    for _ in $(seq 50); do
        if [[ $(redis-cli -p "$port" PING 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "redis-server on port $port did not answer PING" >&2
    exit 2
}

# start_cluster ROUTING NAME [ARG...]: redis-server and instances a and b routing with ROUTING;
# sets A_PID A_ADDR B_PID B_ADDR (and REDIS_*). Fails (status 1) if an instance refuses to start.
start_cluster() {
    local routing=$1 name=$2
    shift 2
    start_redis
    local id
    for id in a b; do
        if ! start_relay "$name-$id" "${RELAY_FLAGS[@]}" --cluster-redis-url "$REDIS_URL" \
            --cluster-routing "$routing" --instance-id "$id" --cluster-lease-ttl "$LEASE_TTL" "$@"; then
            stop "$RELAY_PID" || true
            if [[ $id == b ]]; then stop "$A_PID" || true; fi
            stop "$REDIS_PID" || true
            return 1
        fi
        if [[ $id == a ]]; then A_PID=$RELAY_PID A_ADDR=$RELAY_ADDR; else B_PID=$RELAY_PID B_ADDR=$RELAY_ADDR; fi
    done
}

stop_cluster() {
    stop "$A_PID" || true
    stop "$B_PID" || true
    stop "$REDIS_PID" || true
}

# generate NAME RUN ARG...: runs the generator on core 1, keeps its JSON line in
# $RESULTS/NAME.RUN.json and its table on stderr.
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

# hold_rooms ROUTING ROOMS RUN [cross]: a fresh cluster with ROOMS rooms, half registered on each
# instance (one generator process per instance), then the Redis commands over IDLE_WINDOW. The
# rooms are lone server peers, or with `cross` each has one client on the other instance.
hold_rooms() {
    local routing=$1 rooms=$2 run=$3 shape=${4:-lone} gens=() clients=() id addr other log
    local name=idle-$routing-$rooms
    if [[ $shape == cross ]]; then name=idle-$routing-cross-$rooms; fi
    start_cluster "$routing" "$name.$run" --max-connections $(( rooms + 1000 )) || return 1
    # Long enough to cover the settling pause and the window even if one generator took 10 s
    # longer than the other to open its rooms.
    local hold=$(( ${IDLE_WINDOW%s} + ${LEASE_TTL%s} / 3 + 10 ))s
    if (( rooms > 0 )); then
        for id in a b; do
            if [[ $id == a ]]; then addr=$A_ADDR other=$B_ADDR; else addr=$B_ADDR other=$A_ADDR; fi
            log=$TMP/$name.$run.$id.gen
            if [[ $shape == cross ]]; then
                clients=(--client-url "ws://$other")
            else
                clients=(--servers-only)
            fi
            taskset -c 1 "$BIN/intercessor-bench" --json idle --url "ws://$addr" "${clients[@]}" \
                --pairs $(( rooms / 2 )) --hold "$hold" >"$log.out" 2>"$log.err" &
            gens+=("$!")
            STARTED+=("$!")
        done
        local i=0
        for id in a b; do
            WAIT_SECONDS=60 wait_for_address "$TMP/$name.$run.$id.gen.err" "${gens[$i]}" \
                '^idle: (holding) for.*' >/dev/null
            i=$(( i + 1 ))
        done
    fi
    # One renewal period, so that the window starts in the steady state.
    sleep $(( ${LEASE_TTL%s} / 3 ))
    generate "$name" "$run" redis-commands --redis-url "$REDIS_URL" --duration "$IDLE_WINDOW" \
        --label "$rooms idle rooms ($shape) on 2 instances, $routing"
    local pid
    for pid in "${gens[@]}"; do
        if ! wait "$pid"; then
            echo "!! a room generator of $name run $run failed" >&2
            FAILED=1
        fi
    done
    stop_cluster
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS" >&2
    if [[ " $STEPS " == *" pingpong "* && $PUBSUB == 1 ]]; then
        if start_cluster pubsub "pubsub.$run"; then
            start_relay "single.$run" "${RELAY_FLAGS[@]}"
            SINGLE_PID=$RELAY_PID SINGLE_ADDR=$RELAY_ADDR
            common=(--pairs "$PAIRS" --size "$SIZE" --window "$WINDOW" --duration "$DURATION" --warmup "$WARMUP")
            for slice in $(seq "$SLICES"); do
                generate pp-single "$run.$slice" pingpong --url "ws://$SINGLE_ADDR" --pid "$SINGLE_PID" \
                    "${common[@]}"
                generate pp-local "$run.$slice" pingpong --url "ws://$A_ADDR" --pid "$A_PID" \
                    --pid "$B_PID" --pid "$REDIS_PID" --redis-url "$REDIS_URL" "${common[@]}"
                generate pp-cross "$run.$slice" pingpong --url "ws://$A_ADDR" --client-url "ws://$B_ADDR" \
                    --pid "$A_PID" --pid "$B_PID" --pid "$REDIS_PID" --redis-url "$REDIS_URL" "${common[@]}"
            done
            stop "$SINGLE_PID" || true
            stop_cluster
        else
            echo "note: the relay refused --cluster-routing pubsub; pingpong across instances skipped" >&2
            PUBSUB=0
        fi
    fi

    if [[ " $STEPS " == *" connect "* ]]; then
        start_relay "connect-single.$run" "${RELAY_FLAGS[@]}"
        generate connect-single "$run" connect --url "ws://$RELAY_ADDR" --pid "$RELAY_PID" \
            --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
        stop "$RELAY_PID" || true
        start_cluster fly-replay "replay.$run"
        proxy=(--fly-proxy "a=$A_ADDR" --fly-proxy "b=$B_ADDR")
        watched=(--pid "$A_PID" --pid "$B_PID" --pid "$REDIS_PID" --redis-url "$REDIS_URL")
        generate connect-proxy "$run" connect --url "ws://$A_ADDR" "${proxy[@]}" --first-hop a \
            "${watched[@]}" --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
        generate connect-replay "$run" connect --url "ws://$A_ADDR" "${proxy[@]}" --first-hop b \
            "${watched[@]}" --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
        stop_cluster
        if [[ $PUBSUB == 1 ]] && start_cluster pubsub "connect-pubsub.$run"; then
            generate connect-pubsub "$run" connect --url "ws://$A_ADDR" --client-url "ws://$B_ADDR" \
                --pid "$A_PID" --pid "$B_PID" --pid "$REDIS_PID" --redis-url "$REDIS_URL" \
                --pairs $CONNECT_PAIRS --concurrency $CONCURRENCY
            stop_cluster
        fi
    fi

    if [[ " $STEPS " == *" idle "* ]]; then
        for routing in fly-replay pubsub; do
            if [[ $routing == pubsub && $PUBSUB == 0 ]]; then continue; fi
            for rooms in $ROOMS; do
                hold_rooms "$routing" "$rooms" "$run" || {
                    echo "note: no $routing cluster; its idle step skipped" >&2
                    [[ $routing == pubsub ]] && PUBSUB=0
                    break
                }
            done
        done
        # Pubsub rooms whose client is on the other instance: forwarded sessions add a lease
        # check per renewal, which must not grow with their number either.
        if [[ $PUBSUB == 1 ]]; then
            for rooms in $ROOMS; do
                if (( rooms > 0 )); then hold_rooms pubsub "$rooms" "$run" cross; fi
            done
        fi
    fi
done

JQ_MEDIAN='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;'

# median NAME EXPR: the median of a jq expression over every run of one step, three decimals.
median() {
    cat "$RESULTS/$1".*.json 2>/dev/null | jq -s "$JQ_MEDIAN map($2) | map(select(. != null)) |
        median | if . == null then null else . * 1000 | round / 1000 end"
}

# count NAME: how many results a step has.
count() {
    find "$RESULTS" -name "$1.*.json" | wc -l
}

spread() {
    cat "$RESULTS/$1".*.json 2>/dev/null | jq -rs "map($2) | map(select(. != null)) |
        if length == 0 then \"-\" else \"\\(min)–\\(max)\" end"
}

# paired_ratio NAME BASE EXPR: median of NAME's EXPR / BASE's, each ratio taken within one run
# (and slice), with the spread.
paired_ratio() {
    local name=$1 base=$2 expr=$3 file suffix
    for file in "$RESULTS/$name".*.json; do
        [[ -e $file ]] || continue
        suffix=${file#"$RESULTS/$name".}
        jq -n --slurpfile r "$file" --slurpfile s "$RESULTS/$base.$suffix" \
            "(\$r[0] | $expr) as \$a | (\$s[0] | $expr) as \$b |
             if \$a == null or \$b == null or \$b == 0 then null else \$a / \$b end"
    done | jq -rs "$JQ_MEDIAN"'map(select(. != null)) | map(. * 100 | round / 100) as $all |
        if $all == [] then "-\t-" else "\($all | median * 100 | round / 100)\t\($all | min)–\($all | max)" end'
}

ratio() {
    jq -n --argjson a "$1" --argjson b "$2" 'if $a == null or $b == null or $b == 0 then null
        else ($a / $b * 100 | round) / 100 end'
}

row() {
    printf '%-64s %12s   %s\n' "$1" "$2" "$3"
}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then DIRTY=" (dirty tree)"; else DIRTY=""; fi
echo
echo "intercessor cluster bench: commit $COMMIT$DIRTY, $(nproc) cores, $(uname -r), runs: $RUNS"
echo "targets (relays, redis-server $(redis-server --version | sed -nE 's/.*v=([^ ]+).*/\1/p')) on core 0," \
    "generator on core 1; medians (min–max) over runs; n = results per figure"
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "relay flags: ${RELAY_FLAGS[*]}; cluster: 2 instances, --cluster-lease-ttl $LEASE_TTL"
echo
row "figure" "median" "spread, n"
row "(d) release binary bytes (budget $SIZE_BUDGET)" "$BINARY_BYTES" \
    "$(if (( BINARY_BYTES <= SIZE_BUDGET )); then echo within; else echo OVER; fi)"
if [[ " $STEPS " == *" pingpong "* ]]; then
    if [[ $PUBSUB == 1 ]]; then
        for step in pp-single pp-local pp-cross; do
            row "(a) $step: CPU-µs per relayed message (all PIDs)" "$(median $step .cpu.us_per_message)" \
                "$(spread $step .cpu.us_per_message), n=$(count $step)"
        done
        IFS=$'\t' read -r LOCAL_RATIO LOCAL_SPREAD < <(paired_ratio pp-local pp-single .cpu.us_per_message)
        IFS=$'\t' read -r CROSS_RATIO CROSS_SPREAD < <(paired_ratio pp-cross pp-single .cpu.us_per_message)
        row "(a) CPU per message, same instance / single (paired)" "$LOCAL_RATIO" "$LOCAL_SPREAD"
        row "(a) CPU per message, across instances / single (target ≤ 3)" "$CROSS_RATIO" "$CROSS_SPREAD"
        for i in 0 1 2; do
            row "(a) pp-cross: of which PID #$((i + 1)) (a, b, redis) µs/message" \
                "$(median pp-cross "(.cpu.by_pid[$i].ns / 1000 / (.messages + .flooder_messages))")" ""
        done
        row "(a) pp-cross: Redis commands sent per relayed message" \
            "$(median pp-cross .redis_commands.sent_per_unit)" "$(spread pp-cross .redis_commands.sent_per_unit)"
        for step in pp-single pp-local pp-cross; do
            row "(a) $step: relayed messages/s; RTT p50 / p99 µs" "$(median $step .messages_per_s)" \
                "$(median $step .rtt.p50_us) / $(median $step .rtt.p99_us)"
        done
    else
        row "(a) pingpong across instances (pubsub)" "skipped" "the relay refused --cluster-routing pubsub"
    fi
fi
if [[ " $STEPS " == *" connect "* ]]; then
    for step in connect-single connect-proxy connect-replay connect-pubsub; do
        [[ $(count $step) == 0 ]] && continue
        row "(b) $step: pairs/s (set-up phase)" "$(median $step .setup_pairs_per_s)" \
            "$(spread $step .setup_pairs_per_s), n=$(count $step)"
        row "(b) $step: set-up latency p50 / p99 µs" "$(median $step .setup_latency.p50_us)" \
            "$(median $step .setup_latency.p99_us)"
        row "(b) $step: CPU-µs per set-up (all PIDs)" "$(median $step .cpu.us_per_setup)" \
            "$(spread $step .cpu.us_per_setup)"
        if [[ $step != connect-single ]]; then
            row "(b) $step: Redis commands sent per set-up / tear-down" \
                "$(median $step .redis_commands.setup.sent_per_unit)" \
                "$(median $step .redis_commands.teardown.sent_per_unit) per tear-down"
        fi
        if [[ $step == connect-proxy || $step == connect-replay ]]; then
            row "(b) $step: proxy replays per set-up" "$(median $step .replays.per_setup)" ""
        fi
    done
    IFS=$'\t' read -r REPLAY_RATIO REPLAY_SPREAD < <(paired_ratio connect-replay connect-proxy .setup_pairs_per_s)
    row "(b) pairs/s, replayed / proxy without replay (paired by run)" "$REPLAY_RATIO" \
        "$REPLAY_SPREAD; ratio of medians $(ratio "$(median connect-replay .setup_pairs_per_s)" \
            "$(median connect-proxy .setup_pairs_per_s)")"
    row "(b) Redis commands a join adds (replayed − proxy, per set-up)" \
        "$(jq -n --argjson a "$(median connect-replay .redis_commands.setup.sent_per_unit)" \
            --argjson b "$(median connect-proxy .redis_commands.setup.sent_per_unit)" \
            'if $a == null or $b == null then null else (($a - $b) * 1000 | round) / 1000 end')" "target ≤ 2"
fi
if [[ " $STEPS " == *" idle "* ]]; then
    for routing in fly-replay pubsub pubsub-cross; do
        for rooms in $ROOMS; do
            step=idle-$routing-$rooms
            [[ $(count "$step") == 0 ]] && continue
            row "(c) $routing, $rooms idle rooms: Redis commands sent/s" "$(median "$step" .sent_per_s)" \
                "$(spread "$step" .sent_per_s), n=$(count "$step"); run/s $(median "$step" .total_per_s)"
        done
    done
fi
echo
if [[ $FAILED == 1 ]]; then
    echo "RESULT: FAIL (a correctness check failed; see the output above)"
    exit 1
fi
echo "RESULT: PASS (no lost, reordered or corrupted message, no failed set-up)"
