#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (fuzz/fuzz_targets/) with cargo-fuzz and libFuzzer, for
# SECONDS_PER_TARGET seconds each (default 20); exits non-zero if any target crashes, leaving the
# input in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
# Needs only stable Rust and a C++ compiler (libfuzzer-sys builds libFuzzer); installs cargo-fuzz.
# The first build takes several minutes: the sanitizer build recompiles every dependency.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
if [[ ! "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sancov passes); this lets stable
# rustc accept them, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null && ! command -v clang++ >/dev/null; then
    echo "fuzz: libfuzzer-sys needs a C++ compiler (apt-get install g++)" >&2
    exit 1
fi

# Debug assertions and overflow checks on, so arithmetic slips crash too, not only panics.
# FUZZ_BUILD adds cargo-fuzz build options; CI uses "--sanitizer none --dev" to skip the
# AddressSanitizer rebuild of every dependency (the relay forbids unsafe code) and still fuzzes
# with coverage guidance.
read -r -a extra <<<"${FUZZ_BUILD:-}"
flags=(--debug-assertions "${extra[@]}")
cargo fuzz build "${flags[@]}"

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
for target in $(cargo fuzz list); do
    # The first corpus directory collects what libFuzzer finds (git-ignored); seeds are read only.
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    options=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
    if [[ -f "fuzz/dicts/$target.dict" ]]; then
        options+=(-dict="fuzz/dicts/$target.dict")
    fi
    echo "== fuzz $target for ${seconds}s"
    if cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- "${options[@]}" >"$logs/$target.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' \
            "$logs/$target.log" || true
    else
        # libFuzzer's report: the panic, its backtrace and where the input was written.
        sed -n '/panicked at\|ERROR: libFuzzer\|ERROR: AddressSanitizer/,$p' "$logs/$target.log" |
            grep -v '^ *at /rustc/' | head -80
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/, logs in $logs/)" >&2
    exit 1
fi
echo "fuzz: no crash in $(cargo fuzz list | wc -l) targets"
