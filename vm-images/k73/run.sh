#!/bin/bash
# Boot the Linux 7.3 test VM (vm-images/k73/build.sh) and run a script in it.
#
#   vm-images/k73/run.sh -S SCRIPT [options] [-- extra QEMU arguments]
#
# Options:
#   -S, --script FILE   shell script run by the VM's /init (fw_cfg opt/run),
#                       then the VM powers off; without it, a shell on the
#                       console (stdio)
#   -l, --log FILE      serial console to FILE (default: stdio)
#   -p, --pidfile FILE  QEMU writes its PID there
#   -w, --workdir DIR   where the boot initramfs is assembled (kept); run.sh
#                       then execs QEMU (its PID is run.sh's). Default: a
#                       temporary directory, removed when QEMU exits
#   -t, --timeout SECS  stop QEMU after SECS (SIGTERM, SIGKILL 5 s later), exit 124
#       --bin FILE      a binary to add at /usr/bin (with its ldd libraries);
#                       repeatable. Default: target/release/vhost-tap and
#                       target/release/vu-bridge
#   -c, --cpus N        vCPUs (2)
#   -M, --mem SIZE      memory (2G)
#       --append STR    extra kernel command line (e.g. vt.shell=1)
#       --image-dir DIR kernel and cached initramfs (vm-images/out/k73)
#
# QEMU: -accel tcg,thread=multi -cpu max, console on ttyS0, no NIC, no disk.
# The initramfs QEMU boots is three gzip'd cpio archives, concatenated (the
# kernel unpacks them in order, later files win): the test guest's, the 7.3
# layer (both cached by build.sh), and the binaries (built here, per boot).
# Exit status: QEMU's (0 after the VM's poweroff), 124 on timeout. The
# script's own status is the `VT-GUEST: exit=N` console line.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCRIPT= LOG= PIDFILE= WORKDIR= TIMEOUT= CPUS=2 MEM=2G APPEND=
IMAGE_DIR=${VT_K73_OUT:-$HERE/../out/k73}
BINS=()
die() { echo "k73/run.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
	case "$1" in
	-S | --script) need "$@"; SCRIPT=$2; shift ;;
	-l | --log) need "$@"; LOG=$2; shift ;;
	-p | --pidfile) need "$@"; PIDFILE=$2; shift ;;
	-w | --workdir) need "$@"; WORKDIR=$2; shift ;;
	-t | --timeout) need "$@"; TIMEOUT=$2; shift ;;
	--bin) need "$@"; BINS+=("$2"); shift ;;
	-c | --cpus) need "$@"; CPUS=$2; shift ;;
	-M | --mem) need "$@"; MEM=$2; shift ;;
	--append) need "$@"; APPEND=$2; shift ;;
	--image-dir) need "$@"; IMAGE_DIR=$2; shift ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
	--) shift; break ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done
[ ${#BINS[@]} -gt 0 ] || BINS=("$REPO/target/release/vhost-tap" "$REPO/target/release/vu-bridge")
for f in "$IMAGE_DIR/vmlinuz" "$IMAGE_DIR/initramfs.cpio.gz"; do
	[ -s "$f" ] || die "$f missing: run vm-images/k73/build.sh"
done
[ -z "$SCRIPT" ] || [ -r "$SCRIPT" ] || die "script $SCRIPT not readable"

KEEP=1
if [ -z "$WORKDIR" ]; then
	WORKDIR=$(mktemp -d /tmp/k73-run.XXXXXX)
	KEEP=0
	trap 'rm -rf "$WORKDIR"' EXIT
fi
mkdir -p "$WORKDIR"

# The binaries' archive: each binary and its libraries (the guest's /lib and
# /lib64 are links into /usr).
ST=$WORKDIR/bins
rm -rf "$ST"
mkdir -p "$ST/usr/bin"
for b in "${BINS[@]}"; do
	[ -x "$b" ] || die "binary $b missing (cargo build --release -p vhost-tap -p vu-driver)"
	cp -L "$b" "$ST/usr/bin/"
	for l in $(ldd "$b" | grep -o '/[^ ]*'); do
		d=$ST/usr${l#/usr}
		mkdir -p "$(dirname "$d")"
		[ -e "$d" ] || cp -L "$l" "$d"
	done
done
(cd "$ST" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 -n >"$WORKDIR/bins.cpio.gz"
cat "$IMAGE_DIR/initramfs.cpio.gz" "$WORKDIR/bins.cpio.gz" >"$WORKDIR/initramfs.cpio.gz"
rm -rf "$ST" "$WORKDIR/bins.cpio.gz"

ARGS=(
	-accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEM"
	-machine q35 -nodefaults -nographic -no-reboot -monitor none
	-kernel "$IMAGE_DIR/vmlinuz" -initrd "$WORKDIR/initramfs.cpio.gz"
	-append "console=ttyS0 quiet panic=-1 $APPEND"
)
if [ -n "$LOG" ]; then ARGS+=(-serial "file:$LOG"); else ARGS+=(-serial mon:stdio); fi
[ -z "$SCRIPT" ] || ARGS+=(-fw_cfg "name=opt/run,file=$SCRIPT")
[ -z "$PIDFILE" ] || ARGS+=(-pidfile "$PIDFILE")
QEMU=(qemu-system-x86_64 "${ARGS[@]}" "$@")
[ -z "$TIMEOUT" ] || QEMU=(timeout -k 5 "$TIMEOUT" "${QEMU[@]}")
if [ $KEEP = 1 ]; then
	exec "${QEMU[@]}"
fi
"${QEMU[@]}"
