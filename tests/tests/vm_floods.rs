//! Floods through a real QEMU guest (TCG here: it sinks and sources some
//! 20–60 kpps): host trafgen → TAP → daemon → guest XDP drop, and guest
//! pktgen → daemon → TAP. The daemon must lose nothing it took: every frame
//! it read from the TAP reaches the guest, every frame it took from the
//! guest is written to the TAP. What the path cannot take waits — in the
//! tun driver's ring (tail-dropped there on kernels without
//! IFF_BACKPRESSURE) or in the guest's own TX ring and qdisc.
//!
//! Addresses: 198.18.110.0/24 – 198.18.112.0/24.

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{vm_lock, Guest, ETHTOOL_STATS_SED};
use testkit::{stop, wait_for, Daemon, DeviceReport, ReportExt, TempDir};

const BOOT: Duration = Duration::from_secs(120);

/// `name: value` lines printed by the guest with a prefix.
fn stats(g: &Guest, key: &str) -> HashMap<String, u64> {
    g.markers(key)
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// trafgen on the host floods the TAP (64 source ports, through the
/// qdisc, ~100 kpps for 10 s: more than a TCG guest takes); the guest drops
/// everything with `xdp-bench drop`, at its own pace. No `*_dropped_*`
/// counter of the daemon moves, and every frame it read from the TAP reached
/// the guest — or, in fq-codel mode, was dropped by the AQM on purpose
/// (counted in `rx_aqm_*`). `mode`: `--mode` for the daemon, or the default.
fn xdp_flood(mode: Option<&str>, net: u8) {
    let t0 = Instant::now();
    let mut args = Vec::new();
    if let Some(m) = mode {
        args = vec!["--mode", m];
    }
    let mut d = Daemon::start_args(&args);
    let (h, gip) = (format!("198.18.{net}.1"), format!("198.18.{net}.2"));
    let (h, gip) = (h.as_str(), gip.as_str());
    let gmac = format!("52:54:00:18:{net:02x}:02");
    let sync_port = 7000 + u16::from(net);
    d.add_host_ip(&format!("{h}/24"));
    let dir = TempDir::new("x");
    let conf = dir.join("udp.trafgen");
    fs::write(
        &conf,
        format!(
            "{{ eth(da={gmac}, sa={}, type=0x0800), ipv4(saddr={h}, daddr={gip}), \
             udp(sp=dinc(1024,1087), dp=9), fill(0x41, 18) }}\n",
            d.tap_mac()
        ),
    )
    .unwrap();
    let script = r#"
# Foreground: a background job of a non-interactive shell ignores SIGINT.
( i=0
  while ! /sbin/ip link show dev eth0 | grep -q xdp && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  echo GXDP-READY ) &
timeout -s INT 14 xdp-bench drop -i 2 eth0
wait
ip link set dev eth0 xdp off 2>/dev/null
ethtool -S eth0 | GUEST_STATS | grep -E '^rx0_xdp_(drops|packets):' | sed 's/^/GSTAT /'
echo GUEST-DONE
timeout 60 nc -l -p SYNC_PORT </dev/null
"#
    .replace("SYNC_PORT", &sync_port.to_string())
    .replace("GUEST_STATS", ETHTOOL_STATS_SED);
    let g = Guest::boot(
        &d.socket,
        &script,
        &["--ip", &format!("{gip}/24"), "-m", &gmac],
    );
    g.expect_marker("GXDP-READY", BOOT, "xdp-bench");
    let tx0 = d.tap_stat("tx_packets");
    let drop0 = d.tap_stat("tx_dropped");
    let rx0 = d.counters().at(0, "rx_frames");
    let sent = 1_000_000u64;
    let mut tg = Command::new("trafgen")
        .args(["--dev", &d.tap, "--conf", conf.to_str().unwrap()])
        .args(["-P", "1", "--no-sock-mem", "-q", "-n", &sent.to_string()])
        .args(["-b", "100000pps"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("trafgen (install with tests/setup-host.sh)");
    let st = wait_for(Duration::from_secs(30), || tg.try_wait().ok().flatten());
    let st = st.or_else(|| stop(&mut tg, Duration::from_secs(2)));
    assert!(st.is_some_and(|s| s.success()), "trafgen failed: {st:?}");
    g.expect_marker("GUEST-DONE", Duration::from_secs(60), "guest");
    // The guest is idle now: what the daemon read from the TAP, it delivered
    // (or its AQM dropped).
    let aqm = |c: &DeviceReport| {
        c.queues[0].get("rx_aqm_codel_drops") + c.queues[0].get("rx_aqm_overlimit_drops")
    };
    let c = wait_for(Duration::from_secs(10), || {
        let c = d.counters();
        (c.at(0, "rx_frames") - rx0 + aqm(&c) == d.tap_stat("tx_packets") - tx0).then_some(c)
    });
    let c = c.unwrap_or_else(|| d.counters());
    let read = d.tap_stat("tx_packets") - tx0;
    let tail = d.tap_stat("tx_dropped") - drop0;
    let delivered = c.at(0, "rx_frames") - rx0;
    let xdp = stats(&g, "GSTAT");
    let avg: u64 = g
        .markers("Average packets/s")
        .pop()
        .and_then(|l| l.trim_start_matches(':').trim().parse().ok())
        .unwrap_or(0);
    let rates: Vec<String> = g
        .markers("Summary")
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let aqm_drops = aqm(&c);
    eprintln!(
        "[mode {}] XDP drop in the guest: {avg} pps average (xdp-bench, per 2 s: {rates:?}), \
         rx0_xdp_drops {:?}; trafgen offered {sent} at 100 kpps; the daemon read {read}, \
         delivered {delivered}, AQM-dropped {aqm_drops}; tun tail-dropped {tail}; reader \
         stops {}, ring high water {}; wall {:.1} s",
        mode.unwrap_or("default"),
        xdp.get("rx0_xdp_drops"),
        c.at(0, "rx_reader_stops"),
        c.at(0, "rx_ring_high_water"),
        t0.elapsed().as_secs_f64()
    );
    assert!(avg > 0, "xdp-bench reported no packets");
    assert!(
        xdp.get("rx0_xdp_drops").copied().unwrap_or(0) > 0,
        "{xdp:?}"
    );
    assert_eq!(c.dropped(), 0, "{c:?}");
    assert_eq!(
        delivered + aqm_drops,
        read,
        "frames the daemon read from the TAP but neither delivered nor AQM-dropped"
    );
    assert!(
        read + tail >= sent,
        "trafgen frames unaccounted for: read {read} + tail-dropped {tail} < {sent}"
    );
    if mode == Some("backpressure") {
        assert_eq!(aqm_drops, 0, "AQM drops in backpressure mode: {c:?}");
        assert!(
            c.at(0, "rx_reader_stops") > 0,
            "the slow guest never stopped the reader: {c:?}"
        );
    }
    g.release(gip, sync_port);
}

/// The flood with the daemon's default mode (`auto`: fq-codel on kernels
/// without IFF_BACKPRESSURE, like these).
#[test]
#[ignore = "needs root, QEMU 10 with the test guest and trafgen: run by tests/run.sh"]
fn host_trafgen_flood_into_guest_xdp_drop() {
    let _l = vm_lock();
    xdp_flood(None, 110);
}

/// The flood in backpressure mode: the reader stops when its ring is full,
/// the daemon drops nothing at all, the excess waits (and is tail-dropped)
/// in the tun driver.
#[test]
#[ignore = "needs root, QEMU 10 with the test guest and trafgen: run by tests/run.sh"]
fn host_trafgen_flood_into_guest_xdp_drop_backpressure_mode() {
    let _l = vm_lock();
    xdp_flood(Some("backpressure"), 112);
}

/// pktgen in the guest floods the host for ~5 s, first straight into the
/// driver (`xmit_mode start_xmit`, pktgen's default: a full ring makes it
/// spin), then through the guest's qdisc (`xmit_mode queue_xmit`): the TX
/// ring fills faster than the daemon drains it on these shared cores, the
/// driver stops the queue, and the qdisc requeues and holds a backlog. The
/// daemon drops nothing, and every frame it took is on the TAP.
#[test]
#[ignore = "needs root, QEMU 10 with the test guest and trafgen: run by tests/run.sh"]
fn guest_pktgen_flood_reaches_the_tap_without_daemon_drops() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&[]);
    let (h, gip) = ("198.18.111.1", "198.18.111.2");
    d.add_host_ip(&format!("{h}/24"));
    let script = format!(
        r#"
PG=/proc/net/pktgen
pg() {{ echo "$1" > $PG/eth0 || echo "GPGSET-FAILED $1"; }}
echo "rem_device_all" > $PG/kpktgend_0
echo "add_device eth0" > $PG/kpktgend_0
pg "count 0"; pg "pkt_size 60"; pg "dst {h}"; pg "dst_mac {hmac}"
pg "udp_src_min 1024"; pg "udp_src_max 1087"; pg "udp_dst_min 9"; pg "udp_dst_max 9"
qstat() {{
	tc -s qdisc show dev eth0 | awk -v p="$1" '/^ Sent/ {{ print p "-SENT", $4, $7, $11; exit }}'
}}
flood() {{
	qstat "$1-BEFORE"
	( for i in $(seq 10); do tc -s qdisc show dev eth0 | awk -v p="$1" '/^ backlog/ {{ print p "-BACKLOG", $3; exit }}'; sleep 0.5; done ) &
	timeout -s INT 5 sh -c "echo start > $PG/pgctrl"
	wait
	grep -A1 '^Result' $PG/eth0 | tr '\n' ' ' | sed "s/^/$1-RESULT /"; echo
	qstat "$1-AFTER"
}}
flood GPG1
pg "xmit_mode queue_xmit"
flood GPG2
echo GUEST-DONE
timeout 60 nc -l -p 7111 </dev/null
"#,
        hmac = d.tap_mac()
    );
    let rx0 = d.tap_stat("rx_packets");
    let g = Guest::boot(
        &d.socket,
        &script,
        &["--ip", &format!("{gip}/24"), "-m", "52:54:00:18:6f:02"],
    );
    g.expect_marker("GUEST-DONE", Duration::from_secs(150), "pktgen floods");
    assert!(
        g.markers("GPGSET-FAILED").is_empty(),
        "pktgen settings refused"
    );
    let c = wait_for(Duration::from_secs(10), || {
        let c = d.counters();
        (c.at(0, "tx_frames") == d.tap_stat("rx_packets") - rx0).then_some(c)
    });
    let c = c.unwrap_or_else(|| d.counters());
    let on_tap = d.tap_stat("rx_packets") - rx0;
    // "Result: OK: 4951614(c..+d..) usec, 321874 (60byte,0frags)  65003pps 31Mb/sec ... errors: 0"
    let result = |k: &str| -> (u64, u64, u64) {
        let r = g.markers(&format!("{k}-RESULT")).pop().unwrap_or_default();
        let w: Vec<&str> = r.split_whitespace().collect();
        let num = |i: Option<usize>| -> u64 {
            i.and_then(|i| w.get(i))
                .and_then(|s| {
                    s.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let pkts = num(w.iter().position(|s| s.starts_with("usec,")).map(|i| i + 1));
        let pps = num(w.iter().position(|s| s.ends_with("pps")));
        let errors = num(w.iter().position(|s| *s == "errors:").map(|i| i + 1));
        (pkts, pps, errors)
    };
    // "<pkts> <dropped>, <requeues>)" from " Sent B bytes P pkt (dropped D, overlimits O requeues R)"
    let qstat = |k: &str| -> (u64, u64, u64) {
        let v: Vec<u64> = g
            .markers(k)
            .pop()
            .unwrap_or_default()
            .split_whitespace()
            .map(|s| {
                s.trim_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(0)
            })
            .collect();
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
            v.get(2).copied().unwrap_or(0),
        )
    };
    let backlog_max = |p: &str| -> u64 {
        g.markers(&format!("{p}-BACKLOG"))
            .iter()
            .filter_map(|s| s.trim_end_matches('p').parse().ok())
            .max()
            .unwrap_or(0)
    };
    let (p1, pps1, e1) = result("GPG1");
    let (p2, pps2, e2) = result("GPG2");
    let q2b = qstat("GPG2-BEFORE-SENT");
    let q2a = qstat("GPG2-AFTER-SENT");
    eprintln!(
        "pktgen start_xmit: {p1} frames, {pps1} pps, errors {e1}; queue_xmit: {p2} frames, \
         {pps2} pps, errors {e2}; guest qdisc during queue_xmit: sent {}, dropped {}, requeues {}, \
         backlog up to {} frames; daemon tx {} frames = TAP rx {on_tap}; tx_tap_full {}; wall {:.1} s",
        q2a.0 - q2b.0,
        q2a.1 - q2b.1,
        q2a.2 - q2b.2,
        backlog_max("GPG2"),
        c.at(0, "tx_frames"),
        c.at(0, "tx_tap_full"),
        t0.elapsed().as_secs_f64()
    );
    assert!(p1 > 0 && p2 > 0, "pktgen sent nothing");
    assert_eq!(c.dropped(), 0, "{c:?}");
    assert_eq!(
        c.at(0, "tx_frames"),
        on_tap,
        "frames the daemon took but the TAP did not get"
    );
    // start_xmit frames all went to the driver; of the queue_xmit ones, what
    // the guest's qdisc sent (fq_codel's own CoDel drops stay in the guest).
    let qsent = q2a.0 - q2b.0;
    assert!(
        on_tap >= p1 + qsent,
        "TAP got {on_tap} < pktgen's {p1} + the qdisc's {qsent}"
    );
    assert!(
        q2a.2 > q2b.2 || backlog_max("GPG2") > 0,
        "the guest's queue never stopped under the queue_xmit flood"
    );
    g.release(gip, 7111);
}
