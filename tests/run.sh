#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root):
#   1. installs the test peers (QEMU 10, DPDK, trafgen, ...) if missing,
#   2. builds the test guest from Debian packages (cached),
#   3. runs every crate's tests, the end-to-end tests with real QEMU guests
#      and DPDK/trafgen peers, and the loom models of the ring.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup-host.sh
bash vm-images/build.sh

# One release build serves the unit, integration, stress and e2e tests
# (the stress test moves 10^7 items; the e2e tests use the daemon binary).
cargo build --release --workspace --bins
cargo test --release --workspace -- --test-threads=2

# The loom models of the ptr-ring stop/wake protocol, in their own target
# directory (cfg(loom) changes every atomic in the crate).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --release -p ptr-ring --test loom
