#!/usr/bin/env bash
# Side-by-side benchmarks: vhost-tap (each queue mode it offers), DPDK testpmd
# as a peer backend, and the bare one-syscall-per-frame TAP loops, driven by
# testpmd's net_virtio_user and by bench's vu-guest as frontends.
#
#   bash bench/run.sh                 # every scenario, 3 × 10 s each
#   bash bench/run.sh --quick         # 1 × 3 s each
#   bash bench/run.sh --profile       # short run with `perf record` of the daemon
#   bash bench/run.sh --micro         # divan micro-benchmarks only
#   bash bench/run.sh --reps 5 --duration 20 --scenarios h2g-64,g2h-64 --systems vhost-tap,bare
#   bash bench/run.sh --scenarios h2g-64,g2h-64 --placements fair,unpinned  # own cores vs the old shared harness
#
# Placement (bench.py --placements, default fair): the guest on CPU 1, the
# system under test (daemon, bare-tap, the DPDK peer's forwarding lcore) on
# CPU 0, host->guest trafgen with the guest; see bench/README.md.
#
# Installs what it needs (tests/setup-host.sh: DPDK, netsniff-ng, ...; plus
# python3-matplotlib and linux-perf), builds release binaries into
# $CARGO_TARGET_DIR (default /work/target-bench), and writes
# bench/results/<timestamp>/ (runs.jsonl, runs.csv, summary.json,
# summary.md, *.png, logs/). Needs root. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
micro=0
profile=0
args=()
for a in "$@"; do
    case "$a" in
        --micro) micro=1 ;;
        --profile) profile=1 ;;
        *) args+=("$a") ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: run as root (TAP devices, DPDK, perf)" >&2
    exit 1
fi

bash tests/setup-host.sh
extra=()
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || extra+=(python3-matplotlib)
command -v perf >/dev/null 2>&1 || extra+=(linux-perf)
command -v taskset >/dev/null 2>&1 || extra+=(util-linux)
command -v tc >/dev/null 2>&1 || extra+=(iproute2)
if [ ${#extra[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${extra[@]}"
fi

if [ $micro -eq 1 ]; then
    # Own target dir: benches build the package's binaries too, with other
    # features (dev-dependencies), which must not replace the release binaries.
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/micro" cargo bench -p ptr-ring --bench ring
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/micro" cargo bench -p vhost-tap --bench copy
    exit 0
fi

cargo build --release -p vhost-tap -p bench -p vu-driver --bins

echo "bench: load before: $(uptime)"
if [ $profile -eq 1 ]; then
    exec /usr/bin/python3 bench/bench.py --quick --perf --scenarios h2g-64,g2h-64,g2h-gso64k \
        --systems vhost-tap,bare --bin "$CARGO_TARGET_DIR/release" \
        --command "bash bench/run.sh --profile ${args[*]:-}" "${args[@]}"
fi
exec /usr/bin/python3 bench/bench.py --bin "$CARGO_TARGET_DIR/release" \
    --command "bash bench/run.sh ${args[*]:-}" "${args[@]}"
