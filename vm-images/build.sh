#!/bin/bash
# Build the vhost-tap test guest (kernel + initramfs) from Debian packages.
#
#   vm-images/build.sh [--force]
#
# Outputs (vm-images/out/, gitignored):
#   vmlinuz             Debian linux-image-*-amd64 kernel
#   initramfs.cpio.gz   busybox-static + modules + iproute2/ethtool/iperf3/
#                       bpftool/xdp-tools + XDP programs + /init (init.sh)
#   xdp/*.o             the XDP programs (also inside the image, /usr/lib/vt-xdp)
#   manifest.txt        kernel release, package versions, sizes
#   stamp               hash of the inputs; a matching stamp = nothing to do
#
# Environment:
#   VT_KERNEL_PKG   concrete kernel package (e.g. linux-image-6.1.0-56-amd64);
#                   default: what linux-image-amd64 from bookworm-backports
#                   depends on, else the default candidate's.
#   VT_OUT          output directory (default: vm-images/out)
#
# Needs root on Debian 12 (installs what it lacks with apt-get).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${VT_OUT:-$HERE/out}
FORCE=0
for a in "$@"; do
	case "$a" in
	--force | -f) FORCE=1 ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) echo "build.sh: unknown argument $a" >&2; exit 2 ;;
	esac
done

log() { echo "build.sh: $*" >&2; }
# shellcheck source=vm-images/stamp.sh
. "$HERE/stamp.sh"
T0=$(date +%s.%N)

# Modules loaded at boot (with their dependencies; virtio_pci is a module,
# not built in, in Debian 12 kernels such as 6.1.0-57), and modules only shipped
# (loadable in the guest with `modprobe NAME`).
BOOT_MODULES="virtio_pci virtio_net qemu_fw_cfg pktgen"
EXTRA_MODULES="sch_netem sch_prio sch_fq sch_sfq sch_codel sch_cake sch_ingress cls_bpf cls_u32 act_gact act_mirred ifb veth tun"

# Host-side binaries copied into the guest: "host path:guest path".
TOOLS="
/usr/sbin/ip:/usr/sbin/ip
/usr/sbin/tc:/usr/sbin/tc
/usr/bin/ss:/usr/bin/ss
/usr/bin/nstat:/usr/bin/nstat
/usr/sbin/ethtool:/usr/sbin/ethtool
/usr/bin/iperf3:/usr/bin/iperf3
/usr/sbin/bpftool:/usr/sbin/bpftool
/usr/sbin/xdp-bench:/usr/sbin/xdp-bench
/usr/sbin/xdp-loader:/usr/sbin/xdp-loader
"
HOST_PKGS="busybox-static iproute2 ethtool iperf3 bpftool xdp-tools libxdp1 clang llvm libbpf-dev linux-libc-dev cpio kmod xz-utils gzip"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # concurrent builds (parallel tests) wait for each other

# ---- host packages -------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
	if [ $APT_UPDATED = 0 ]; then
		log "apt-get update"
		apt-get update -qq >&2
		APT_UPDATED=1
	fi
}
missing=()
for p in $HOST_PKGS; do
	dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { log "missing packages ${missing[*]} and not root"; exit 1; }
	log "installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
	fi
fi

# ---- kernel package choice -----------------------------------------------
deps_of() { apt-cache show "$1" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -1; }
pick_kernel() {
	if [ -n "${VT_KERNEL_PKG:-}" ]; then echo "$VT_KERNEL_PKG"; return; fi
	local k
	k=$(deps_of linux-image-amd64/bookworm-backports)
	[ -n "$k" ] || k=$(deps_of linux-image-amd64)
	echo "$k"
}
KPKG=$(pick_kernel)
if [ -z "$KPKG" ]; then
	apt_update_once
	KPKG=$(pick_kernel)
fi
[ -n "$KPKG" ] || { log "cannot resolve a linux-image-*-amd64 package"; exit 1; }
KVER=$(apt-cache show "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)
[ -n "$KVER" ] || { log "no version for $KPKG"; exit 1; }

# ---- cache check ---------------------------------------------------------
pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@"; }
inputs() {
	echo "kernel $KPKG=$KVER"
	echo "boot-modules $BOOT_MODULES"
	echo "extra-modules $EXTRA_MODULES"
	pkgver $HOST_PKGS 2>/dev/null || true
	sha256sum "$HERE/build.sh" "$HERE/init.sh" "$HERE/stamp.sh" "$HERE"/xdp/*.c | sed "s|$HERE/||"
	# the exact binaries and libraries that go into the image
	hash_image_files "$TOOLS" /bin/busybox /usr/lib/x86_64-linux-gnu/bpf/*.o
}
HASH=$(inputs | sha256sum | cut -d' ' -f1)
exit_if_up_to_date "$OUT" "$HASH"

# ---- kernel: download, extract, depmod (cached per package version) ------
CACHE=$OUT/cache
mkdir -p "$CACHE/debs"
KDEB=$(ls "$CACHE/debs/${KPKG}_"*"_amd64.deb" 2>/dev/null | head -1 || true)
KDIR=$CACHE/kernel-$KPKG-$KVER
if [ ! -f "$KDIR/.done" ]; then
	if [ -z "$KDEB" ] || [ "$(dpkg-deb -f "$KDEB" Version)" != "$KVER" ]; then
		rm -f "$CACHE/debs/${KPKG}_"*.deb
		log "downloading $KPKG=$KVER"
		(cd "$CACHE/debs" && apt-get download -q "$KPKG=$KVER" 2>&1 | grep -v -e 'unsandboxed' >&2 || true)
		KDEB=$(ls "$CACHE/debs/${KPKG}_"*"_amd64.deb" 2>/dev/null | head -1 || true)
		[ -n "$KDEB" ] || { log "download of $KPKG failed"; exit 1; }
	fi
	rm -rf "$CACHE"/kernel-*
	log "extracting $(basename "$KDEB")"
	mkdir -p "$KDIR.tmp"
	dpkg-deb -x "$KDEB" "$KDIR.tmp"
	KREL=$(ls "$KDIR.tmp/lib/modules" | head -1)
	log "depmod $KREL"
	depmod -b "$KDIR.tmp" "$KREL"
	echo "$KREL" >"$KDIR.tmp/.done"
	mv "$KDIR.tmp" "$KDIR"
fi
KREL=$(cat "$KDIR/.done")
KMOD=$KDIR/lib/modules/$KREL

# ---- staging tree --------------------------------------------------------
ST=$OUT/.staging
rm -rf "$ST"
mkdir -p "$ST"/usr/{bin,sbin,lib/x86_64-linux-gnu,lib64} "$ST"/{dev,proc,sys,tmp,run,root,etc,mnt,var}
ln -s usr/bin "$ST/bin"
ln -s usr/sbin "$ST/sbin"
ln -s usr/lib "$ST/lib"
ln -s usr/lib64 "$ST/lib64"
mknod -m 600 "$ST/dev/console" c 5 1
mknod -m 666 "$ST/dev/null" c 1 3
chmod 1777 "$ST/tmp"

# Modules: boot ones in insmod order, plus extras; decompressed (.ko).
: >"$ST/etc/vt-modules"
copy_mod() { # absolute path of a module in $KMOD -> relative path in the guest
	local src=$1 rel=${1#"$KMOD"/}
	rel=${rel%.xz}; rel=${rel%.zst}; rel=${rel%.gz}
	if [ ! -f "$ST/lib/modules/$KREL/$rel" ]; then
		mkdir -p "$(dirname "$ST/lib/modules/$KREL/$rel")"
		case "$src" in
		*.xz) xz -dc "$src" >"$ST/lib/modules/$KREL/$rel" ;;
		*.zst) zstd -qdc "$src" >"$ST/lib/modules/$KREL/$rel" ;;
		*.gz) gzip -dc "$src" >"$ST/lib/modules/$KREL/$rel" ;;
		*) cp "$src" "$ST/lib/modules/$KREL/$rel" ;;
		esac
	fi
	echo "$rel"
}
for m in $BOOT_MODULES; do
	out=$(modprobe -d "$KDIR" -S "$KREL" --show-depends "$m") || { log "module $m not found"; exit 1; }
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue # "builtin X" needs nothing
		rel=$(copy_mod "$path")
		grep -qxF "$rel" "$ST/etc/vt-modules" || echo "$rel" >>"$ST/etc/vt-modules"
	done <<<"$out"
done
for m in $EXTRA_MODULES; do
	out=$(modprobe -d "$KDIR" -S "$KREL" --show-depends "$m" 2>/dev/null) || { log "note: extra module $m not in $KREL"; continue; }
	while read -r kind path _; do
		[ "$kind" = insmod ] && copy_mod "$path" >/dev/null
	done <<<"$out"
done
cp "$KMOD"/modules.builtin "$KMOD"/modules.builtin.modinfo "$KMOD"/modules.order "$ST/lib/modules/$KREL/" 2>/dev/null || true
depmod -b "$ST" "$KREL"

# Binaries and their libraries.
copy_lib() {
	local l=$1
	[ -e "$ST$l" ] && return 0
	mkdir -p "$(dirname "$ST$l")"
	cp -L "$l" "$ST$l"
}
for t in $TOOLS; do
	src=${t%%:*} dst=${t#*:}
	[ -x "$src" ] || { log "missing tool $src"; exit 1; }
	cp -L "$src" "$ST$dst"
	for l in $(ldd "$src" | grep -o '/[^ ]*'); do copy_lib "$l"; done
done
# libxdp's BPF objects (xdp-dispatcher.o, ...), used by xdp-loader/xdp-bench.
mkdir -p "$ST/usr/lib/x86_64-linux-gnu/bpf"
cp /usr/lib/x86_64-linux-gnu/bpf/*.o "$ST/usr/lib/x86_64-linux-gnu/bpf/"
mkdir -p "$ST/etc/iproute2"
cp -r /etc/iproute2/. "$ST/etc/iproute2/" 2>/dev/null || true

# busybox-static and its applet links (never over a real tool: ip, tc stay iproute2).
cp /bin/busybox "$ST/usr/bin/busybox"
for a in $(/bin/busybox --list-full); do
	[ -e "$ST/$a" ] || [ -L "$ST/$a" ] || ln -s /usr/bin/busybox "$ST/$a"
done

# XDP programs.
mkdir -p "$ST/usr/lib/vt-xdp" "$OUT/xdp.tmp"
for c in "$HERE"/xdp/*.c; do
	o=$(basename "${c%.c}").o
	clang -O2 -g -Wall -target bpf -I/usr/include/x86_64-linux-gnu -c "$c" -o "$OUT/xdp.tmp/$o"
	cp "$OUT/xdp.tmp/$o" "$ST/usr/lib/vt-xdp/$o"
done
rm -rf "$OUT/xdp" && mv "$OUT/xdp.tmp" "$OUT/xdp"

# /init and /etc.
install -m 755 "$HERE/init.sh" "$ST/init"
cat >"$ST/etc/vt-env.sh" <<'EOF'
# Sourced before the test script and by login shells. busybox's shell runs
# its own applets before $PATH: make ip and tc mean iproute2.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }
VT_XDP_DIR=/usr/lib/vt-xdp
EOF
cat >"$ST/etc/profile" <<'EOF'
. /etc/vt-env.sh
PS1='vt-guest# '
EOF
echo 'root:x:0:0:root:/root:/bin/sh' >"$ST/etc/passwd"
echo 'root:x:0:' >"$ST/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ST/etc/hosts"
echo vt-guest >"$ST/etc/hostname"

# ---- pack ----------------------------------------------------------------
(cd "$ST" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 -n >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$KDIR/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
{
	echo "kernel-release $KREL"
	echo "kernel-package $KPKG=$KVER"
	echo "initramfs-bytes $(stat -c %s "$OUT/initramfs.cpio.gz")"
	echo "initramfs-unpacked-kb $(du -sk "$ST" | cut -f1)"
	echo "vmlinuz-bytes $(stat -c %s "$OUT/vmlinuz")"
	echo "boot-modules $(tr '\n' ' ' <"$ST/etc/vt-modules")"
	pkgver $HOST_PKGS | sed 's/^/package /'
} >"$OUT/manifest.txt"
rm -rf "$ST"
echo "$HASH" >"$OUT/stamp"
log "built $OUT/vmlinuz ($KREL) and initramfs.cpio.gz ($(($(stat -c %s "$OUT/initramfs.cpio.gz") / 1024)) KiB) in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
