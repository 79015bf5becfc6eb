# Scenarios for the Linux 7.3 test VM: shell functions, sourced by a test
# script that runs inside the VM (busybox sh; tests/tests/kernel73.rs puts
# this file in front of its own calls). Everything runs in the VM, as on a
# 7.3 host:
#
#   root ns: host stack ─► vt0 (TAP, qdisc) ─► vhost-tap ─► vu-bridge ─► vtb0 ─► netns vtns
#            198.18.200.1                                 (rate-limited)        198.18.200.2
#
# Results go to the console, one per line, for the host to parse:
#   K73: <scenario> <key> <value...>
#   K73-BEGIN <scenario> <name>     a file (daemon log, ping output, iperf3 JSON, ...)
#   ...
#   K73-END <scenario> <name>
# A scenario's processes are stopped by PID at its end; the VM powers off
# after the script, so nothing outlives a failure.

K73_SOCK=/tmp/vt.sock
K73_TAP=vt0
K73_NS=vtns
K73_TAP2=vtb0
K73_HOST_IP=198.18.200.1
K73_GUEST_IP=198.18.200.2
K73_SC=none
K73_DPID=
K73_BPID=
K73_NO_GSO=

k73() { echo "K73: $K73_SC $*"; }
k73_t() { read -r _up _ </proc/uptime; echo "K73: $K73_SC t=$_up $*"; }
k73_file() { # NAME FILE: the file between markers
	echo "K73-BEGIN $K73_SC $1"
	cat "$2" 2>/dev/null
	echo
	echo "K73-END $K73_SC $1"
}

# Poll every 0.1 s until the command succeeds; fail once SECS have passed
# (by /proc/uptime: the command itself may take a while, e.g. ping -W 1).
k73_now() { read -r _up _ </proc/uptime && echo "${_up%.*}"; }
k73_until() {
	_end=$(($(k73_now) + $1))
	shift
	while ! "$@" >/dev/null 2>&1; do
		[ "$(k73_now)" -lt $_end ] || return 1
		sleep 0.1
	done
}

# Stop PID (SIGTERM, SIGKILL after SECS) and reap it.
k73_stop() { # PID SECS
	[ -n "$1" ] || return 0
	kill "$1" 2>/dev/null
	(
		sleep "$2"
		kill -9 "$1" 2>/dev/null
	) &
	_w=$!
	wait "$1" 2>/dev/null
	kill "$_w" 2>/dev/null
	wait "$_w" 2>/dev/null
}

k73_tun_flags() { cat /sys/class/net/$K73_TAP/tun_flags 2>/dev/null || echo none; }
k73_stat() { cat /sys/class/net/$K73_TAP/statistics/$1; }
k73_socket() { [ -S $K73_SOCK ]; }
# Frames sent by the qdisc (its `tc -s` text in $1), not tail-dropped and
# not yet written into TAP2 by the bridge.
k73_fifo() {
	_sent=$(echo "$1" | sed -n 's/^ *Sent [0-9]* bytes \([0-9]*\) pkt.*/\1/p' | head -1)
	_rx2=$(/usr/sbin/ip netns exec $K73_NS cat /sys/class/net/$K73_TAP2/statistics/rx_packets)
	echo $((_sent - $(k73_stat tx_dropped) - _rx2))
}

# Start the daemon on vt0 for scenario NAME: k73_daemon NAME ARGS...
k73_daemon() {
	K73_SC=$1
	shift
	rm -f $K73_SOCK
	k73 daemon-args "$*"
	vhost-tap --socket $K73_SOCK --tap $K73_TAP "$@" >/tmp/$K73_SC.daemon.log 2>&1 &
	K73_DPID=$!
	if ! k73_until 30 k73_socket; then
		k73 error "the daemon did not listen on $K73_SOCK"
		return 1
	fi
	k73_t listening
	k73 tun_flags_listening "$(k73_tun_flags)"
	k73 qdisc_listening "$(/usr/sbin/tc qdisc show dev $K73_TAP | head -1)"
}

# The slow guest: netns, vu-bridge at RATE Mbit/s, addresses, vt0 up with
# root qdisc QDISC (empty: leave it), until the namespace answers a ping
# (not with a third argument `noping`).
k73_bridge() { # RATE QDISC [noping]
	/usr/sbin/ip netns add $K73_NS
	/usr/sbin/ip netns exec $K73_NS sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6'
	echo 1 >/proc/sys/net/ipv6/conf/$K73_TAP/disable_ipv6
	vu-bridge --socket $K73_SOCK --tap $K73_TAP2 --netns $K73_NS \
		--addr $K73_GUEST_IP/24 --rate-mbit "$1" >/tmp/$K73_SC.bridge.log 2>&1 &
	K73_BPID=$!
	if ! k73_until 60 grep -q "vu-bridge: ready" /tmp/$K73_SC.bridge.log; then
		k73 error "vu-bridge did not get ready"
		return 1
	fi
	k73_t bridge-ready
	/usr/sbin/ip addr add $K73_HOST_IP/24 dev $K73_TAP
	/usr/sbin/ip link set $K73_TAP up
	[ -z "$K73_NO_GSO" ] || /usr/sbin/ethtool -K $K73_TAP gso off tso off >/dev/null 2>&1 || k73 error "ethtool -K $K73_TAP gso off failed"
	[ -z "$2" ] || /usr/sbin/tc qdisc replace dev $K73_TAP root "$2"
	k73 qdisc_connected "$(/usr/sbin/tc qdisc show dev $K73_TAP | head -1)"
	k73 tun_flags_connected "$(k73_tun_flags)"
	[ "$3" != noping ] || return 0
	if ! k73_until 60 /usr/bin/ping -n -c 1 -W 1 $K73_GUEST_IP; then
		k73 error "$K73_GUEST_IP does not answer through the daemon and vu-bridge"
		return 1
	fi
	k73_t answers
}

# 4 bulk TCP flows (iperf3 -P FLOWS -C cubic) from the root ns into the
# netns for WARM + SECS s, and a ping every 50 ms from WARM s until 1 s
# before the end; the qdisc's backlog sampled every second meanwhile.
k73_load() { # SECS WARM FLOWS
	/usr/sbin/ip netns exec $K73_NS iperf3 -s -p 5201 -B $K73_GUEST_IP >/dev/null 2>&1 &
	_srv=$!
	if ! k73_until 20 sh -c "/usr/sbin/ip netns exec $K73_NS ss -Hltn sport = :5201 | grep -q 5201"; then
		k73 error "iperf3 -s does not listen"
		k73_stop $_srv 3
		return 1
	fi
	/usr/sbin/tc -s qdisc show dev $K73_TAP >/tmp/$K73_SC.qdisc-before
	_d0=$(k73_stat tx_dropped)
	_t0=$(k73_stat tx_packets)
	_fifo0=$(k73_fifo "$(/usr/sbin/tc -s qdisc show dev $K73_TAP)")
	iperf3 -c $K73_GUEST_IP -p 5201 -J -C cubic -P "$3" -t "$1" -O "$2" -i 0 \
		>/tmp/$K73_SC.iperf3.json 2>&1 &
	_cli=$!
	k73_t load
	sleep "$2" # the warm-up iperf3 leaves out (slow start): a schedule, not a wait for a state
	/usr/bin/ping -n -i 0.05 -W 2 -c $((($1 - 1) * 20)) $K73_GUEST_IP >/tmp/$K73_SC.ping 2>&1 &
	_ping=$!
	# The bytes tun handed to the daemon over the ping's run (inside the
	# iperf3 run): sampled with their uptime at the start and at every
	# second while the ping still runs.
	read -r _u0 _ </proc/uptime
	_b0=$(k73_stat tx_bytes)
	_u1=$_u0 _b1=$_b0
	: >/tmp/$K73_SC.samples
	: >/tmp/$K73_SC.fifo
	# Every second until ping has exited (a zombie until `wait`: state Z):
	# the qdisc's backlog, and the frames between the qdisc and the netns
	# (tun ring + daemon ring + the bridge's buffers): the frames the qdisc
	# sent (GSO packets count per segment) less the tun driver's tail drops
	# less what the bridge has written into TAP2 (vtb0's rx_packets). vt0's
	# tx_packets would not do: tun counts them when the daemon reads.
	while [ -e /proc/$_ping ] && ! grep -q ') Z' /proc/$_ping/stat 2>/dev/null; do
		_q=$(/usr/sbin/tc -s qdisc show dev $K73_TAP)
		echo "$_q" | grep -m1 backlog >>/tmp/$K73_SC.samples
		echo $(($(k73_fifo "$_q") - _fifo0)) >>/tmp/$K73_SC.fifo
		read -r _u1 _ </proc/uptime
		_b1=$(k73_stat tx_bytes)
		sleep 1
	done
	k73 window_bytes $((_b1 - _b0)) $_u0 $_u1
	wait $_ping
	wait $_cli
	k73 tail_drops $(($(k73_stat tx_dropped) - _d0))
	k73 tap_tx_packets $(($(k73_stat tx_packets) - _t0))
	/usr/sbin/tc -s qdisc show dev $K73_TAP >/tmp/$K73_SC.qdisc-after
	k73_stop $_srv 5
	k73_file qdisc-before /tmp/$K73_SC.qdisc-before
	k73_file qdisc-after /tmp/$K73_SC.qdisc-after
	k73_file qdisc-samples /tmp/$K73_SC.samples
	k73_file fifo-samples /tmp/$K73_SC.fifo
	k73_file ping /tmp/$K73_SC.ping
	k73_file iperf3 /tmp/$K73_SC.iperf3.json
}

# Stop the bridge and the daemon (their exit reports go to their logs), print
# the logs, remove the namespace and the TAP.
k73_end() {
	k73_stop "$K73_BPID" 15
	k73_stop "$K73_DPID" 15
	K73_BPID= K73_DPID=
	k73_file daemon-log /tmp/$K73_SC.daemon.log
	k73_file bridge-log /tmp/$K73_SC.bridge.log
	/usr/sbin/ip netns del $K73_NS 2>/dev/null
	/usr/sbin/ip link del $K73_TAP 2>/dev/null
	rm -f $K73_SOCK
	k73_t end
}

# One measured scenario: k73_measured NAME RATE SECS WARM FLOWS DAEMON-ARGS...
k73_measured() {
	_name=$1 _rate=$2 _secs=$3 _warm=$4 _flows=$5
	shift 5
	k73_daemon "$_name" "$@" && k73_bridge "$_rate" fq_codel && k73_load "$_secs" "$_warm" "$_flows"
	k73_end
}

# `auto` where the daemon creates the TAP (7.3's default qdisc: fq_codel),
# then a frontend connects.
k73_auto_created() { # RATE
	k73_daemon auto-created --mode auto && k73_bridge "$1" fq_codel
	k73_end
}

# `auto` on a TAP whose root qdisc is noqueue at start (created beforehand,
# as an administrator would), then fq_codel set before the frontend connects
# (the daemon re-evaluates `auto` on connect).
k73_auto_noqueue() { # RATE
	K73_SC=auto-noqueue
	/usr/sbin/ip tuntap add dev $K73_TAP mode tap vnet_hdr
	/usr/sbin/ip link set $K73_TAP up
	/usr/sbin/tc qdisc replace dev $K73_TAP root noqueue
	k73 qdisc_before_start "$(/usr/sbin/tc qdisc show dev $K73_TAP | head -1)"
	if k73_daemon auto-noqueue --mode auto; then
		/usr/sbin/tc qdisc replace dev $K73_TAP root fq_codel
		k73_bridge "$1" ""
	fi
	k73_end
}

# `auto` on a TAP the daemon created (fq_codel), then noqueue set before the
# frontend connects.
k73_auto_to_noqueue() { # RATE
	if k73_daemon auto-to-noqueue --mode auto; then
		/usr/sbin/ip link set $K73_TAP up
		/usr/sbin/tc qdisc replace dev $K73_TAP root noqueue
		k73_bridge "$1" ""
	fi
	k73_end
}

# Two queue pairs, `auto`: the TAP is multi-queue (root qdisc mq with
# fq_codel children); every queue's TUNSETIFF must carry IFF_BACKPRESSURE
# (tun_flags is the last attach's). vu-bridge drives one queue pair: a flow
# hashed to the second would wait there, so no traffic, only the connect.
k73_two_queues() { # RATE
	k73_daemon two-queues --mode auto --queues 2 && k73_bridge "$1" "" noping
	k73_end
}
