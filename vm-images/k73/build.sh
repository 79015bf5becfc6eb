#!/bin/bash
# Build the Linux 7.3 test VM ("a 7.3 host in a VM") from Debian packages.
#
#   vm-images/k73/build.sh [--force] [--update]
#
# The kernel is the newest 7.x cloud kernel of Debian's trixie-backports
# (7.3+ has the tun driver's IFF_BACKPRESSURE and fq_codel as the default
# qdisc), fetched with a private apt configuration: its own lists, cache and
# one deb822 source for trixie-backports on the mirror the host's
# /etc/apt/sources.list.d/*.sources already uses. The host's apt sources
# are never touched.
#
# The userland is the test guest's (vm-images/build.sh, run first: busybox,
# iproute2 ip/tc/ss, iperf3, ... and its /init, which runs the script passed
# as fw_cfg opt/run and powers off). This script adds a layer on top:
# the 7.3 modules (tun, tap, vhost_iotlb, vhost, vhost_net, qemu_fw_cfg,
# decompressed for busybox insmod, in /etc/vt-modules order) and iputils
# ping. The project's binaries are not in here: run.sh adds them at boot
# as a third archive, so this cache does not depend on daemon rebuilds.
#
# Outputs (vm-images/out/k73/, gitignored):
#   vmlinuz             the 7.x kernel (linux-binary-VER usr/lib/modules/VER/vmlinuz)
#   initramfs.cpio.gz   the test guest's initramfs + the 7.x layer (concatenated)
#   manifest.txt        kernel release, packages, sizes
#   stamp               hash of the inputs; a matching stamp = nothing to do
#   apt/                the private apt configuration, lists and cache
#   cache/              downloaded .debs and the extracted kernel
#
# Environment:
#   VT_K73_ABI     kernel ABI to use (e.g. 7.3.4+deb13-cloud-amd64); default:
#                  the newest linux-binary-7.*-cloud-amd64 of trixie-backports
#   VT_K73_OUT     output directory (default: vm-images/out/k73)
#   --update       refresh the private package lists (else only when they are
#                  missing or the wanted package is not in them)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGES=$(cd "$HERE/.." && pwd)
OUT=${VT_K73_OUT:-$IMAGES/out/k73}
BASE_OUT=${VT_OUT:-$IMAGES/out}
FORCE=0 UPDATE=0
for a in "$@"; do
	case "$a" in
	--force | -f) FORCE=1 ;;
	--update) UPDATE=1 ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) echo "k73/build.sh: unknown argument $a" >&2; exit 2 ;;
	esac
done

log() { echo "k73/build.sh: $*" >&2; }
# shellcheck source=vm-images/stamp.sh
. "$IMAGES/stamp.sh"
T0=$(date +%s.%N)

# Modules loaded at boot, with their dependencies (modprobe --show-depends).
BOOT_MODULES="tun tap vhost_net qemu_fw_cfg"
# Host binaries added to the test guest's userland: "host path:guest path".
TOOLS="/usr/bin/ping:/usr/bin/ping"

# The test guest's userland first (cached; installs the host packages it needs).
VT_OUT=$BASE_OUT bash "$IMAGES/build.sh"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # concurrent builds wait for each other

# ---- private apt configuration --------------------------------------------
# The mirror: the Debian archive the host's apt sources already use, in
# either format (classic sources.list or deb822 *.sources), through
# tests/apt-sources.sh (its fixture tests: tests/tests/setup_host.rs). Read,
# never written.
# shellcheck source=tests/apt-sources.sh
. "$IMAGES/../tests/apt-sources.sh"
APT=$OUT/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sources"
URI=$(apt_mirror "${ETC_APT:-/etc/apt}") || { log "cannot fetch the 7.3 kernel: no Debian mirror in the apt sources (see above)"; exit 1; }
SRC="Types: deb
URIs: $URI
Suites: trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [ "$(cat "$APT/sources/trixie-backports.sources" 2>/dev/null)" != "$SRC" ]; then
	printf '%s\n' "$SRC" >"$APT/sources/trixie-backports.sources"
	rm -rf "$APT/lists"/*_Packages* "$APT/lists"/*Release*
fi
APT_OPTS=(
	-o "Dir::State::Lists=$APT/lists"
	-o "Dir::Cache=$APT/cache"
	-o "Dir::Etc::SourceList=/dev/null"
	-o "Dir::Etc::SourceParts=$APT/sources"
	-o "Dir::State::status=/dev/null"
	-o "APT::Sandbox::User=root"
)
papt_update() {
	log "apt-get update (private: trixie-backports)"
	apt-get "${APT_OPTS[@]}" update -qq >&2
}
if [ $UPDATE = 1 ] || ! ls "$APT/lists"/*trixie-backports*Packages* >/dev/null 2>&1; then
	papt_update
fi

# ---- kernel choice --------------------------------------------------------
pick_abi() {
	if [ -n "${VT_K73_ABI:-}" ]; then echo "$VT_K73_ABI"; return; fi
	apt-cache "${APT_OPTS[@]}" pkgnames linux-binary-7. 2>/dev/null |
		sed -n 's/^linux-binary-\(7\.[0-9.]*+[a-z0-9]*-cloud-amd64\)$/\1/p' | sort -V | tail -1
}
pkg_version() { apt-cache "${APT_OPTS[@]}" show "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1; }
ABI=$(pick_abi)
if [ -z "$ABI" ] || [ -z "$(pkg_version "linux-binary-$ABI")" ]; then
	[ $UPDATE = 1 ] || { papt_update; ABI=$(pick_abi); }
fi
[ -n "$ABI" ] || { log "no linux-binary-7.*-cloud-amd64 in trixie-backports"; exit 1; }
KVER=$(pkg_version "linux-binary-$ABI")
[ -n "$KVER" ] || { log "linux-binary-$ABI is not in trixie-backports"; exit 1; }
case "$ABI" in
7.[0-2].* | 7.[0-2]+*) log "newest 7.x kernel is $ABI: IFF_BACKPRESSURE needs 7.3 or later"; exit 1 ;;
esac
PKGS="linux-binary-$ABI linux-modules-$ABI linux-base-$ABI"

# ---- cache check ----------------------------------------------------------
inputs() {
	echo "kernel $ABI=$KVER"
	echo "boot-modules $BOOT_MODULES"
	echo "base $(cat "$BASE_OUT/stamp")"
	sha256sum "$HERE/build.sh" "$IMAGES/stamp.sh" | sed "s|$IMAGES/||"
	hash_image_files "$TOOLS"
}
HASH=$(inputs | sha256sum | cut -d' ' -f1)
exit_if_up_to_date "$OUT" "$HASH"

# ---- kernel: download, extract, depmod (cached per version) --------------
CACHE=$OUT/cache
KDIR=$CACHE/kernel-$ABI-$KVER
if [ "$(cat "$KDIR/.done" 2>/dev/null)" != "$PKGS" ]; then # .done lists what was extracted
	mkdir -p "$CACHE/debs"
	for p in $PKGS; do
		deb=$(ls "$CACHE/debs/${p}_"*"_amd64.deb" 2>/dev/null | head -1 || true)
		if [ -z "$deb" ] || [ "$(dpkg-deb -f "$deb" Version)" != "$KVER" ]; then
			rm -f "$CACHE/debs/${p}_"*.deb
			log "downloading $p=$KVER"
			(cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download -q "$p=$KVER" >&2)
		fi
	done
	rm -rf "$CACHE"/kernel-*
	mkdir -p "$KDIR.tmp"
	for p in $PKGS; do
		log "extracting $p"
		dpkg-deb -x "$(ls "$CACHE/debs/${p}_"*"_amd64.deb" | head -1)" "$KDIR.tmp"
	done
	[ -s "$KDIR.tmp/usr/lib/modules/$ABI/vmlinuz" ] || { log "no usr/lib/modules/$ABI/vmlinuz in linux-binary-$ABI"; exit 1; }
	log "depmod $ABI"
	depmod -b "$KDIR.tmp/usr" "$ABI"
	echo "$PKGS" >"$KDIR.tmp/.done"
	mv "$KDIR.tmp" "$KDIR"
fi
KMOD=$KDIR/usr/lib/modules/$ABI

# ---- the 7.x layer --------------------------------------------------------
ST=$OUT/.staging
rm -rf "$ST"
mkdir -p "$ST/usr/lib/modules/$ABI" "$ST/etc"
: >"$ST/etc/vt-modules"
for m in $BOOT_MODULES; do
	deps=$(modprobe -d "$KDIR/usr" -S "$ABI" --show-depends "$m") || { log "module $m not in $ABI"; exit 1; }
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue # "builtin X" needs nothing
		rel=${path#"$KMOD"/}
		rel=${rel%.xz}
		grep -qxF "$rel" "$ST/etc/vt-modules" && continue
		mkdir -p "$(dirname "$ST/usr/lib/modules/$ABI/$rel")"
		case "$path" in
		*.xz) xz -dc "$path" >"$ST/usr/lib/modules/$ABI/$rel" ;;
		*) cp "$path" "$ST/usr/lib/modules/$ABI/$rel" ;;
		esac
		echo "$rel" >>"$ST/etc/vt-modules"
	done <<<"$deps"
done
cp "$KMOD"/modules.builtin "$KMOD"/modules.builtin.modinfo "$KMOD"/modules.order "$ST/usr/lib/modules/$ABI/"
depmod -b "$ST/usr" "$ABI"
for t in $TOOLS; do
	src=${t%%:*} dst=${t#*:}
	[ -x "$src" ] || { log "missing tool $src"; exit 1; }
	mkdir -p "$(dirname "$ST$dst")"
	cp -L "$src" "$ST$dst"
	for l in $(ldd "$src" | grep -o '/[^ ]*'); do
		d=$ST/usr${l#/usr} # /lib and /lib64 are links into /usr in the guest
		mkdir -p "$(dirname "$d")"
		[ -e "$d" ] || cp -L "$l" "$d"
	done
done
echo "$ABI" >"$ST/etc/vt-k73"

# ---- pack: the test guest's initramfs, then this layer (later files win) --
(cd "$ST" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 -n >"$OUT/layer.cpio.gz"
cat "$BASE_OUT/initramfs.cpio.gz" "$OUT/layer.cpio.gz" >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
rm -f "$OUT/layer.cpio.gz"
cp "$KMOD/vmlinuz" "$OUT/vmlinuz"
{
	echo "kernel-release $ABI"
	for p in $PKGS; do echo "kernel-package $p=$KVER"; done
	echo "initramfs-bytes $(stat -c %s "$OUT/initramfs.cpio.gz")"
	echo "vmlinuz-bytes $(stat -c %s "$OUT/vmlinuz")"
	echo "boot-modules $(tr '\n' ' ' <"$ST/etc/vt-modules")"
	echo "base-stamp $(cat "$BASE_OUT/stamp")"
} >"$OUT/manifest.txt"
rm -rf "$ST"
echo "$HASH" >"$OUT/stamp"
log "built $OUT/vmlinuz ($ABI) and initramfs.cpio.gz ($(($(stat -c %s "$OUT/initramfs.cpio.gz") / 1024)) KiB) in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
