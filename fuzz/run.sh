#!/usr/bin/env bash
# Build the fuzz targets once and run each for a bounded time from its
# checked-in corpus (copied to a scratch directory: a run never changes the
# tree). Prints executions, exec/s and coverage per target; fails on the
# first target that crashes, naming the saved input and how to replay it.
#
#   fuzz/run.sh [TARGET...]        every target when none is named
#   FUZZ_SECONDS=300 fuzz/run.sh   time per target (default 40)
#
# Needs the nightly toolchain and cargo-fuzz (tests/setup-host.sh installs
# cargo-fuzz). Builds into fuzz/target (ASan, debug assertions); a crash
# input is kept in fuzz/artifacts/TARGET/. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-40}
all=(vhost_user_messages descriptor_chains rx_tx_paths vnet_header config_parser fq_codel_classifier)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

step="checking the tools"
trap 'echo "fuzz/run.sh: failed while $step (exit $?)" >&2' ERR
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing (bash tests/setup-host.sh installs it)" >&2
    exit 1
fi

step="building the fuzz targets (cargo +nightly fuzz build -O -a)"
start=$(date +%s)
(cd .. && cargo +nightly fuzz build -O -a)
built=$(date +%s)
echo "fuzz/run.sh: built in $((built - start)) s; running ${#targets[@]} target(s) for $seconds s each"

bin_dir=target/x86_64-unknown-linux-gnu/release
scratch=$(mktemp -d "${TMPDIR:-/tmp}/vhost-tap-fuzz.XXXXXX")
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT

summary=()
for t in "${targets[@]}"; do
    step="running $t"
    [ -x "$bin_dir/$t" ] || { echo "fuzz/run.sh: no target $t (have: ${all[*]})" >&2; exit 1; }
    mkdir -p "$scratch/$t/corpus" "$scratch/$t/artifacts"
    cp -r "corpus/$t/." "$scratch/$t/corpus/"
    log="$scratch/$t/log"
    rc=0
    # -timeout: one input taking 10 s is a hang; the outer timeout is a
    # backstop for a target that stops answering libFuzzer altogether.
    timeout --kill-after=10 $((seconds + 120)) "$bin_dir/$t" "$scratch/$t/corpus" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$scratch/$t/artifacts/" \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # The last status line (INITED, NEW, REDUCE, pulse or DONE) has the final coverage.
    last=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    line=$(printf '%-20s %10s execs %7s exec/s  cov %5s  ft %6s  corpus %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    echo "fuzz/run.sh: $line"
    summary+=("$line")
    if [ "$rc" -ne 0 ]; then
        mkdir -p "artifacts/$t"
        saved=()
        for a in "$scratch/$t/artifacts"/*; do
            [ -e "$a" ] || continue
            cp "$a" "artifacts/$t/"
            saved+=("fuzz/artifacts/$t/$(basename "$a")")
        done
        grep -E -m1 -A3 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" >&2 || tail -20 "$log" >&2
        echo "fuzz/run.sh: $t crashed (exit $rc); input saved as ${saved[*]:-<none>}" >&2
        echo "fuzz/run.sh: replay with: fuzz/$bin_dir/$t ${saved[0]:-<input>}" >&2
        trap - ERR
        exit 1
    fi
done
echo "fuzz/run.sh: all ${#targets[@]} target(s) ran $seconds s without a crash ($(($(date +%s) - start)) s with the build):"
printf '  %s\n' "${summary[@]}"
