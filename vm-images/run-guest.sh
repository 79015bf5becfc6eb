#!/bin/bash
# Boot the vhost-tap test guest with QEMU against a vhost-user socket.
#
#   vm-images/run-guest.sh [options] [-- extra QEMU arguments]
#
# Options (each has an environment variable; the option wins):
#   -s, --socket PATH      vhost-user socket                [VT_SOCK]
#       --server           QEMU listens on PATH (server=on,wait=off) instead of
#                          connecting to it                 [VT_SOCK_SERVER=1]
#       --reconnect MS     chardev reconnect-ms=MS (client) [VT_RECONNECT_MS]
#       --no-net           no NIC at all (boot test)        [VT_NO_NET=1]
#       --reboot           let a guest reboot (`reboot -f`) restart it in the
#                          same QEMU, without -no-reboot; a kernel panic then
#                          reboots too, and fw_cfg's script runs again
#                          [VT_REBOOT=1]
#   -m, --mac MAC          guest MAC (52:54:00:12:34:56)    [VT_MAC]
#   -q, --queues N         queue pairs (1); the NIC gets mq=on,vectors=2N+2
#                          [VT_QUEUES]
#   -d, --dev-opts OPTS    extra virtio-net-pci options, comma separated,
#                          e.g. mrg_rxbuf=off,rx_queue_size=1024 [VT_DEV_OPTS]
#   -M, --mem SIZE         guest memory (512M)              [VT_MEM]
#   -c, --cpus N           vCPUs (2)                        [VT_CPUS]
#   -S, --script FILE      test script, run by the guest's /init (fw_cfg
#                          opt/run); the guest powers off afterwards [VT_SCRIPT]
#       --ip ADDR/PFX      address for eth0 (kernel cmdline vt.ip=) [VT_GUEST_IP]
#       --append STR       extra kernel command line        [VT_APPEND]
#   -l, --log FILE         serial console to FILE (default: stdio) [VT_LOG]
#   -p, --pidfile FILE     QEMU writes its PID there        [VT_PIDFILE]
#   -b, --background       start QEMU in the background, print its PID on
#                          stdout and return at once        [VT_BACKGROUND=1]
#   -t, --timeout SECS     foreground only: stop QEMU after SECS (SIGTERM,
#                          SIGKILL 5 s later), exit 124      [VT_TIMEOUT]
#   -a, --accel MODE       auto | tcg | kvm (auto)          [VT_ACCEL]
#       --image-dir DIR    where vmlinuz/initramfs.cpio.gz are (vm-images/out)
#                          [VT_IMAGE_DIR]
#       --dry-run          print the QEMU command line and exit
#
# Foreground: exits with QEMU's status (0 after the guest's poweroff), or 124
# on --timeout. The test script's own status is the `VT-GUEST: exit=N` line
# in the console output.
#
# accel auto: KVM only if /dev/kvm is usable, the CPU shows vmx/svm and the
# host's KVM is not PVM (/sys/module/kvm_pvm: a stock guest kernel hangs
# there); else TCG (-cpu max, thread=multi with more than one vCPU).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOCK=${VT_SOCK:-}
SERVER=${VT_SOCK_SERVER:-0}
RECONNECT=${VT_RECONNECT_MS:-}
NO_NET=${VT_NO_NET:-0}
REBOOT=${VT_REBOOT:-0}
MAC=${VT_MAC:-52:54:00:12:34:56}
QUEUES=${VT_QUEUES:-1}
DEV_OPTS=${VT_DEV_OPTS:-}
MEM=${VT_MEM:-512M}
CPUS=${VT_CPUS:-2}
SCRIPT=${VT_SCRIPT:-}
GUEST_IP=${VT_GUEST_IP:-}
APPEND=${VT_APPEND:-}
LOG=${VT_LOG:-}
PIDFILE=${VT_PIDFILE:-}
BACKGROUND=${VT_BACKGROUND:-0}
TIMEOUT=${VT_TIMEOUT:-}
ACCEL=${VT_ACCEL:-auto}
IMAGE_DIR=${VT_IMAGE_DIR:-$HERE/out}
DRY=0
QEMU=${VT_QEMU:-qemu-system-x86_64}

die() { echo "run-guest.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
	case "$1" in
	-s | --socket) need "$@"; SOCK=$2; shift ;;
	--server) SERVER=1 ;;
	--reconnect) need "$@"; RECONNECT=$2; shift ;;
	--no-net) NO_NET=1 ;;
	--reboot) REBOOT=1 ;;
	-m | --mac) need "$@"; MAC=$2; shift ;;
	-q | --queues) need "$@"; QUEUES=$2; shift ;;
	-d | --dev-opts) need "$@"; DEV_OPTS=$2; shift ;;
	-M | --mem) need "$@"; MEM=$2; shift ;;
	-c | --cpus) need "$@"; CPUS=$2; shift ;;
	-S | --script) need "$@"; SCRIPT=$2; shift ;;
	--ip) need "$@"; GUEST_IP=$2; shift ;;
	--append) need "$@"; APPEND=$2; shift ;;
	-l | --log) need "$@"; LOG=$2; shift ;;
	-p | --pidfile) need "$@"; PIDFILE=$2; shift ;;
	-b | --background) BACKGROUND=1 ;;
	-t | --timeout) need "$@"; TIMEOUT=$2; shift ;;
	-a | --accel) need "$@"; ACCEL=$2; shift ;;
	--image-dir) need "$@"; IMAGE_DIR=$2; shift ;;
	--dry-run) DRY=1 ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
	--) shift; break ;;
	*) die "unknown argument $1 (--help)" ;;
	esac
	shift
done
EXTRA=("$@")

[ -s "$IMAGE_DIR/vmlinuz" ] && [ -s "$IMAGE_DIR/initramfs.cpio.gz" ] ||
	die "no image in $IMAGE_DIR: run vm-images/build.sh first"
[ "$NO_NET" = 1 ] || [ -n "$SOCK" ] || die "--socket PATH (or --no-net) is required"
[ -z "$SCRIPT" ] || [ -r "$SCRIPT" ] || die "cannot read script $SCRIPT"
command -v "$QEMU" >/dev/null || die "$QEMU not found (apt-get install -t bookworm-backports qemu-system-x86)"

kvm_usable() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
	[ ! -e /sys/module/kvm_pvm ] || return 1
	grep -q -w -E 'vmx|svm' /proc/cpuinfo
}
case "$ACCEL" in
auto) if kvm_usable; then ACCEL=kvm; else ACCEL=tcg; fi ;;
kvm | tcg) ;;
*) die "--accel must be auto, tcg or kvm" ;;
esac
if [ "$ACCEL" = kvm ]; then
	ACCEL_ARGS=(-accel kvm -cpu host)
elif [ "$CPUS" -gt 1 ]; then
	ACCEL_ARGS=(-accel tcg,thread=multi -cpu max)
else
	ACCEL_ARGS=(-accel tcg -cpu max)
fi

CMDLINE="console=ttyS0 quiet panic=-1"
[ -z "$GUEST_IP" ] || CMDLINE="$CMDLINE vt.ip=$GUEST_IP"
[ -z "$APPEND" ] || CMDLINE="$CMDLINE $APPEND"

ARGS=(
	-name vt-guest
	"${ACCEL_ARGS[@]}"
	-smp "$CPUS"
	-m "$MEM"
	-object "memory-backend-memfd,id=mem,size=$MEM,share=on"
	-machine q35,memory-backend=mem
	-kernel "$IMAGE_DIR/vmlinuz"
	-initrd "$IMAGE_DIR/initramfs.cpio.gz"
	-append "$CMDLINE"
	-nographic -nodefaults
)
# -no-reboot: a guest reboot (or a panic, with panic=-1) ends QEMU.
[ "$REBOOT" = 1 ] || ARGS+=(-no-reboot)
# -nodefaults drops the default NIC and VGA; the serial port comes back here.
if [ -n "$LOG" ]; then
	ARGS+=(-serial "file:$LOG" -monitor none)
else
	ARGS+=(-serial mon:stdio)
fi
if [ "$NO_NET" != 1 ]; then
	chardev="socket,id=c0,path=$SOCK"
	if [ "$SERVER" = 1 ]; then
		chardev="$chardev,server=on,wait=off"
	elif [ -n "$RECONNECT" ]; then
		chardev="$chardev,reconnect-ms=$RECONNECT"
	fi
	# romfile= : no iPXE option ROM (we boot with -kernel; saves boot time)
	dev="virtio-net-pci,netdev=n0,mac=$MAC,mq=on,vectors=$((2 * QUEUES + 2)),romfile="
	[ -z "$DEV_OPTS" ] || dev="$dev,$DEV_OPTS"
	ARGS+=(-chardev "$chardev" -netdev "vhost-user,id=n0,chardev=c0,queues=$QUEUES" -device "$dev")
fi
[ -z "$SCRIPT" ] || ARGS+=(-fw_cfg "name=opt/run,file=$SCRIPT")
[ -z "$PIDFILE" ] || ARGS+=(-pidfile "$PIDFILE")
ARGS+=("${EXTRA[@]}")

if [ "$DRY" = 1 ]; then
	printf '%q ' "$QEMU" "${ARGS[@]}"
	echo
	exit 0
fi

if [ "$BACKGROUND" = 1 ]; then
	# Serial to stdio makes no sense in the background: default to a log file.
	if [ -z "$LOG" ]; then
		die "--background needs --log FILE"
	fi
	"$QEMU" "${ARGS[@]}" </dev/null >>"$LOG.qemu" 2>&1 &
	echo $!
	exit 0
fi

if [ -n "$TIMEOUT" ]; then
	# QEMU runs as timeout's child: use --pidfile to learn its PID.
	exec timeout --foreground -k 5 "$TIMEOUT" "$QEMU" "${ARGS[@]}"
fi
echo "run-guest.sh: qemu pid $$" >&2
exec "$QEMU" "${ARGS[@]}"
