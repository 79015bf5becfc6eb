#!/bin/sh
# /init of the vhost-tap test guest (busybox sh; built into the initramfs by
# vm-images/build.sh). Markers on the serial console, one per line, for the
# host to parse:
#   VT-GUEST: kernel <release>
#   VT-GUEST: insmod <module> failed           (only on failure)
#   VT-GUEST: eth0 mac=<mac> driver=virtio_net (or "VT-GUEST: no eth0")
#   VT-GUEST: booted uptime=<seconds>
#   VT-GUEST: script start                     (test script from fw_cfg opt/run)
#   VT-GUEST: exit=<code>                      (its exit status)
#   VT-GUEST: poweroff
# Kernel command line options read here:
#   vt.ip=ADDR/PREFIX   configure eth0 with this address
#   vt.gw=ADDR          default route via ADDR
#   vt.mtu=N            eth0 MTU
#   vt.ipv6=0           no IPv6 on eth0 (no router solicitations / MLD noise)
#   vt.shell=1          always drop to a shell after the script (debugging)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=linux

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
exec </dev/console >/dev/console 2>&1

KREL=$(uname -r)
echo "VT-GUEST: kernel $KREL"

# Modules, in dependency order (computed on the host by modprobe --show-depends).
while read -r mod; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$KREL/$mod" || echo "VT-GUEST: insmod $mod failed"
done </etc/vt-modules

# Command line options.
VT_IP= VT_GW= VT_MTU= VT_SHELL= VT_IPV6=1
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vt.ip=*) VT_IP=${arg#vt.ip=} ;;
	vt.gw=*) VT_GW=${arg#vt.gw=} ;;
	vt.mtu=*) VT_MTU=${arg#vt.mtu=} ;;
	vt.shell=*) VT_SHELL=${arg#vt.shell=} ;;
	vt.ipv6=*) VT_IPV6=${arg#vt.ipv6=} ;;
	esac
done

hostname vt-guest
/sbin/ip link set lo up

# virtio_net binds synchronously during insmod; allow a short grace anyway,
# but only if there is a virtio-net PCI function (1af4:1000 or 1af4:1041).
has_nic=0
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] || continue
	case "$(cat "$d/device")" in 0x1000 | 0x1041) has_nic=1 ;; esac
done
i=0
while [ $has_nic = 1 ] && [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
if [ -e /sys/class/net/eth0 ]; then
	[ "$VT_IPV6" = 0 ] && echo 1 >/proc/sys/net/ipv6/conf/eth0/disable_ipv6
	[ -n "$VT_MTU" ] && /sbin/ip link set dev eth0 mtu "$VT_MTU"
	/sbin/ip link set dev eth0 up
	[ -n "$VT_IP" ] && /sbin/ip addr add "$VT_IP" dev eth0
	[ -n "$VT_GW" ] && /sbin/ip route add default via "$VT_GW"
	drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)" 2>/dev/null)
	echo "VT-GUEST: eth0 mac=$(cat /sys/class/net/eth0/address) driver=$drv queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
else
	echo "VT-GUEST: no eth0"
fi

read -r up _ </proc/uptime
echo "VT-GUEST: booted uptime=$up"

RUN=/sys/firmware/qemu_fw_cfg/by_name/opt/run/raw
if [ -r "$RUN" ]; then
	cat "$RUN" >/run/vt-test.sh
	echo "VT-GUEST: script start"
	# /etc/vt-env.sh defines ip()/tc() wrappers so that the script gets
	# iproute2, not busybox's applets. The script runs in its own shell:
	# `exit N` ends it with status N.
	sh -c '. /etc/vt-env.sh; . /run/vt-test.sh' </dev/null
	rc=$?
	echo "VT-GUEST: exit=$rc"
	if [ "$VT_SHELL" = 1 ]; then
		setsid cttyhack sh -l
	fi
else
	echo "VT-GUEST: no test script (fw_cfg opt/run); starting a shell, 'poweroff -f' to quit"
	setsid cttyhack sh -l
fi
sync
echo "VT-GUEST: poweroff"
poweroff -f
# Not reached; if it were, PID 1 exiting panics and panic=-1 + -no-reboot
# make QEMU exit.
sleep 5
