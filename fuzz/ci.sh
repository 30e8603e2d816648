#!/usr/bin/env bash
# The fuzz step of .ci/run: every target in fuzz/ for a few seconds, seeded with its
# committed corpus and regression inputs, the whole step (cargo-fuzz install and build
# included) within a budget of ~6 minutes. A failed property, a panic or a timeout fails
# it (the input is left in fuzz/artifacts/TARGET/). Without a nightly toolchain it says
# so loudly and does nothing: the corpus is still replayed by `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${FUZZ_BUDGET_SECONDS:-340}
per_target=${FUZZ_SECONDS:-10}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "!!!!! SKIPPING FUZZING: no nightly toolchain (rustup toolchain install nightly)."
    echo "!!!!! The committed corpus was replayed by cargo test; nothing new was tried."
    exit 0
fi
start=$SECONDS
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# No sanitizer: the code under test is safe Rust, and without ASan a second of fuzzing
# tries ~3x the inputs. Optimised, with debug assertions and overflow checks.
cargo +nightly fuzz build -s none -O -a
targets=$(cargo +nightly fuzz list)
left_targets=$(echo "$targets" | wc -w)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $targets; do
    secs=$(( (budget - (SECONDS - start)) / left_targets ))
    left_targets=$((left_targets - 1))
    (( secs > per_target )) && secs=$per_target
    if (( secs < 2 )); then
        echo "!!!!! fuzz budget spent after the build: $t and the targets after it not fuzzed"
        break
    fi
    seeds=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    mkdir -p "$work/$t"
    # New inputs go to the scratch directory (first), not into the committed corpus.
    if ! cargo +nightly fuzz run -s none -O -a "$t" "$work/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "FUZZ FAILURE: $t (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    echo "$t: ${secs}s, $(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$work/$t.log" | grep -oE '[0-9]+$') executions, $(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | grep -oE 'cov: [0-9]+ ft: [0-9]+')"
done
echo "fuzz step: $((SECONDS - start)) s"
