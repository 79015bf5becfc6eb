#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root):
#   1. installs the test peers (QEMU 10, DPDK, trafgen, ...) if missing,
#   2. builds the test guest and the Linux 7.3 test VM from Debian
#      packages (cached),
#   3. runs every crate's tests — the pure ones and those marked
#      #[ignore = "needs root ..."] (real TAPs, QEMU guests, DPDK/trafgen
#      peers), the data-path and relay tests again under AddressSanitizer,
#      and the loom models of the ring,
#   4. runs each fuzz target for a bounded time (fuzz/run.sh; FUZZ_SECONDS,
#      default 40 s per target).
# Plain `cargo test` (no root needed) runs only the pure tests; see README.
set -euo pipefail
cd "$(dirname "$0")/.."

step="starting"
trap 'echo "run.sh: failed while $step (exit $?)" >&2' ERR

if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: the whole suite needs root (TAP devices, QEMU, DPDK); plain 'cargo test' runs the pure tests" >&2
    exit 1
fi

step="setting up the host (tests/setup-host.sh)"
bash tests/setup-host.sh
step="building the test guest (vm-images/build.sh)"
bash vm-images/build.sh
step="building the Linux 7.3 test VM (vm-images/k73/build.sh)"
bash vm-images/k73/build.sh

# One release build serves the unit, integration, stress and e2e tests
# (the stress test moves 10^7 items; the e2e tests use the daemon binary).
step="building the workspace (cargo build --release)"
cargo build --release --workspace --bins
step="running the tests (cargo test --release -- --include-ignored)"
cargo test --release --workspace -- --include-ignored --test-threads=2

# The unsafe code (guest memory, iovecs, the TAP's readv/writev, the SIGBUS
# handler, the relay's descriptor passing) under AddressSanitizer: the data
# path's and the relay's unit tests, and the real-TAP tests that drive the
# daemon binary (built with ASan too). Not the RSS-flatness test: ASan's
# quarantine keeps freed memory on purpose.
step="running the data-path and relay tests under AddressSanitizer (cargo +nightly, -Zsanitizer=address)"
cargo +nightly --version >/dev/null 2>&1 || {
    echo "run.sh: the AddressSanitizer step needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
}
CARGO_TARGET_DIR=target/asan RUSTFLAGS="-Zsanitizer=address" \
    cargo +nightly test --release --target x86_64-unknown-linux-gnu -p vhost-tap \
    --lib --test datapath --test untrusted --test hostile --test faults \
    -- --include-ignored --test-threads=2 --skip fds_and_memory_stay_flat

# The loom models of the ptr-ring stop/wake protocol, in their own target
# directory (cfg(loom) changes every atomic in the crate).
step="running the loom models (cargo test -p ptr-ring --test loom, cfg(loom))"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p ptr-ring --test loom

# The fuzz targets (fuzz/README.md), each from its checked-in corpus for a
# bounded time, built with the nightly toolchain into fuzz/target.
step="running the fuzz targets (fuzz/run.sh, ${FUZZ_SECONDS:-40} s each)"
bash fuzz/run.sh
echo "run.sh: all tests passed"
