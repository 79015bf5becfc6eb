#!/usr/bin/env bash
# Install what the test suite and the benchmarks need on a Debian 12 host:
# QEMU 10 from bookworm-backports, DPDK (testpmd), netsniff-ng (trafgen),
# iproute2, and the packages vm-images/build.sh uses; and cargo-fuzz for
# the fuzz step (fuzz/run.sh, on the nightly toolchain). Idempotent: does
# nothing when everything is present. Needs root to install.
#
# Says in one line what it does; on failure, which step failed and why.
# Reads apt's sources in either format (classic sources.list, deb822
# *.sources, or both) through tests/apt-sources.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/apt-sources.sh
. "$here/apt-sources.sh"
ETC_APT=${ETC_APT:-/etc/apt}

step="checking what is installed"
trap 'echo "setup-host: failed while $step (exit $?)" >&2' ERR

need=()    # packages to install
missing=() # what is missing, for the message
have() { command -v "$1" >/dev/null 2>&1; }
qemu_version() {
    have qemu-system-x86_64 || return 0
    qemu-system-x86_64 --version | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' | head -1
}
qv=$(qemu_version)
if [ "${qv%%.*}" -ge 10 ] 2>/dev/null; then
    :
else
    need+=(qemu-system-x86)
    missing+=("qemu-system-x86_64 >= 10 (have ${qv:-none})")
fi
check() { # COMMAND-OR-PATH PACKAGE...
    local what=$1
    shift
    if [ "${what#/}" != "$what" ]; then [ -x "$what" ] && return 0; else have "$what" && return 0; fi
    need+=("$@")
    missing+=("$what")
}
check dpdk-testpmd dpdk dpdk-dev
check trafgen netsniff-ng
check ip iproute2
check ethtool ethtool
check iperf3 iperf3
check ping iputils-ping
check cpio cpio
check /bin/busybox busybox-static
# The metrics tests: promtool checks a scrape, a real Prometheus scrapes the
# daemon (started by the test on a private port; see below for the service).
check promtool prometheus
check systemd-analyze systemd
check setpriv util-linux

# The fuzz step: cargo-fuzz, built with the nightly toolchain it drives.
step="checking the fuzz tools (cargo +nightly, cargo-fuzz)"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "setup-host: the fuzz step needs the nightly toolchain, which is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "setup-host: installing cargo-fuzz (cargo install cargo-fuzz --locked) — missing: cargo fuzz"
    step="installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install --quiet cargo-fuzz --locked
fi

if [ ${#need[@]} -eq 0 ]; then
    echo "setup-host: all packages present (qemu-system-x86_64 $qv, dpdk-testpmd, trafgen, ip, ethtool, iperf3, ping, cpio, busybox, prometheus, systemd-analyze, setpriv, cargo-fuzz)"
    exit 0
fi

plan=()
for p in "${need[@]}"; do
    if [ "$p" = qemu-system-x86 ]; then plan+=("qemu-system-x86 (10.x from bookworm-backports)"); else plan+=("$p"); fi
done
echo "setup-host: installing ${plan[*]} — missing: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: need root to install: ${need[*]}" >&2
    exit 1
fi

# bookworm-backports, from the mirror already configured for bookworm.
step="reading the apt sources in $ETC_APT"
if [[ " ${need[*]} " == *" qemu-system-x86 "* ]] && ! apt_has_backports "$ETC_APT"; then
    if ! mirror=$(apt_mirror "$ETC_APT"); then
        echo "setup-host: cannot add bookworm-backports: the mirror was not found (see above)" >&2
        exit 1
    fi
    src="$ETC_APT/sources.list.d/bookworm-backports.sources"
    step="writing $src (bookworm-backports from $mirror)"
    echo "setup-host: adding bookworm-backports from $mirror in $src"
    cat > "$src" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
step="running apt-get update"
apt-get update -q
rest=()
for p in "${need[@]}"; do
    if [ "$p" = qemu-system-x86 ]; then
        step="installing qemu-system-x86 from bookworm-backports (apt-get install -t bookworm-backports)"
        apt-get install -y -q -t bookworm-backports qemu-system-x86
    else
        rest+=("$p")
    fi
done
if [ ${#rest[@]} -gt 0 ]; then
    step="installing ${rest[*]} (apt-get install)"
    # Debian's prometheus package starts (and enables) a server on port
    # 9090 when installed; the tests run their own. A policy-rc.d that says
    # 101 keeps it from starting now; it stays disabled.
    policy=""
    if [[ " ${rest[*]} " == *" prometheus "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
    fi
    if ! apt-get install -y -q "${rest[@]}"; then
        [ -z "$policy" ] || rm -f "$policy"
        echo "setup-host: failed while $step" >&2
        exit 1
    fi
    if [ -n "$policy" ]; then
        rm -f "$policy"
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
        fi
    fi
fi
echo "setup-host: installed ${need[*]}"
