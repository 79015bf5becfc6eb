#!/usr/bin/env bash
# Install what the test suite and the benchmarks need on a Debian 12 host:
# QEMU 10 from bookworm-backports, DPDK (testpmd), netsniff-ng (trafgen),
# iproute2, and the packages vm-images/build.sh uses. Idempotent: does nothing
# when everything is present. Needs root.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
qemu_ok() {
    have qemu-system-x86_64 || return 1
    local v
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
    [ "${v:-0}" -ge 10 ]
}

qemu_ok || need+=(qemu-system-x86)
have dpdk-testpmd || need+=(dpdk dpdk-dev)
have trafgen || need+=(netsniff-ng)
have ip || need+=(iproute2)
have ethtool || need+=(ethtool)
have iperf3 || need+=(iperf3)
have ping || need+=(iputils-ping)
have cpio || need+=(cpio)
[ -x /bin/busybox ] || need+=(busybox-static)

if [ ${#need[@]} -eq 0 ]; then
    echo "setup-host: all packages present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: need root to install: ${need[*]}" >&2
    exit 1
fi

# bookworm-backports, from the mirror already configured for bookworm.
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -v security | head -1 | tr -d ' ')
    if [ -z "$mirror" ]; then
        echo "setup-host: no Debian mirror found in the apt sources to add bookworm-backports from" >&2
        exit 1
    fi
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
rest=()
for p in "${need[@]}"; do
    if [ "$p" = qemu-system-x86 ]; then
        apt-get install -y -q -t bookworm-backports qemu-system-x86
    else
        rest+=("$p")
    fi
done
if [ ${#rest[@]} -gt 0 ]; then
    apt-get install -y -q "${rest[@]}"
fi
echo "setup-host: installed ${need[*]}"
