//! Real QEMU 10 guests (TCG here, KVM where it works) moving real traffic
//! through the daemon: neighbour discovery, TCP transfers checked end to end
//! with and without offloads, the ring layouts (MRG_RXBUF, EVENT_IDX on and
//! off), and two queue pairs.
//!
//! One guest at a time (`vm_lock`): a TCG guest keeps both cores busy.
//! Addresses: 198.18.100.0/24 – 198.18.107.0/24 and 2001:db8:100::/64.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{
    accept_timeout, feature_bits, vm_lock, vnet, Guest, TcpBothWays, ETHTOOL_STATS_SED, GUEST_FUNCS,
};
use testkit::{sh, wait_for, Daemon, DeviceReport, ReportExt};

const BOOT: Duration = Duration::from_secs(120);

fn host_ping(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ping")
        .args(["-c", "3", "-W", "3", "-i", "0.3"])
        .args(args)
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `ip neigh` lines as (address, lladdr, state).
fn neighbours(lines: &[String]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let ll = w.iter().position(|x| *x == "lladdr")?;
            Some((
                w.first()?.to_string(),
                w.get(ll + 1)?.to_lowercase(),
                w.last()?.to_string(),
            ))
        })
        .collect()
}

/// `addr` was resolved to `mac`, and the entry is usable (not FAILED/INCOMPLETE).
fn assert_resolved(side: &str, n: &[(String, String, String)], addr: &str, mac: &str) {
    let e = n.iter().find(|(a, _, _)| a == addr);
    let Some((_, ll, state)) = e else {
        panic!("{side}: no neighbour entry for {addr}: {n:?}");
    };
    assert_eq!(ll, mac, "{side}: {addr} resolved to the wrong MAC: {n:?}");
    assert!(
        ["REACHABLE", "STALE", "DELAY", "PROBE"].contains(&state.as_str()),
        "{side}: {addr} is {state}: {n:?}"
    );
    eprintln!("{side}: {addr} lladdr {ll} {state}");
}

/// ARP and IPv6 neighbour discovery: the guest resolves the host and the
/// host resolves the guest (IPv4, IPv6 global, IPv6 link-local), and ping
/// works both ways over each.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn arp_and_ipv6_neighbour_discovery_both_ways() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let d = Daemon::start_args(&[]);
    let (h4, g4) = ("198.18.100.1", "198.18.100.2");
    let (h6, g6) = ("2001:db8:100::1", "2001:db8:100::2");
    let gmac = "52:54:00:18:64:02";
    d.add_host_ip(&format!("{h4}/24"));
    sh(&format!("ip -6 addr add {h6}/64 dev {} nodad", d.tap));
    let hmac = d.tap_mac();
    let hll = wait_for(Duration::from_secs(10), || {
        let o = sh(&format!("ip -6 -o addr show dev {} scope link", d.tap));
        let a = o.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
        Some(a.split('/').next()?.to_string())
    })
    .expect("the TAP has no IPv6 link-local address");
    let sync_port = 7100;
    let script = format!(
        r#"
ip -6 addr add {g6}/64 dev eth0 nodad
i=0
# Until the link-local address exists and no address is tentative (the
# link-local one comes a moment after the link is up).
while {{ ! ip -6 addr show dev eth0 scope link | grep -q inet6 || ip -6 addr show dev eth0 tentative | grep -q inet6; }} && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-LL $(ip -6 -o addr show dev eth0 scope link | awk '{{print $4}}' | cut -d/ -f1)"
ping -c 3 -W 3 {h4} && echo "GPING4-OK"
ping6 -c 3 -W 3 {h6} && echo "GPING6-OK"
ping6 -c 3 -W 3 -I eth0 {hll} && echo "GPING6LL-OK"
echo "GUEST-PINGED"
# The host pings us, then connects here to say it is done.
timeout 90 nc -l -p {sync_port} </dev/null
ip neigh show dev eth0 | sed 's/^/GNEIGH /'
"#
    );
    let g = Guest::boot(
        &d.socket,
        &script,
        &["--ip", &format!("{g4}/24"), "-m", gmac],
    );
    g.expect_marker("GUEST-PINGED", BOOT, "guest pings");
    for m in ["GPING4-OK", "GPING6-OK", "GPING6LL-OK"] {
        assert!(g.has_line(m), "guest: {m} missing (see the console)");
    }
    let gll = g.markers("GUEST-LL").pop().expect("guest link-local");
    assert!(gll.starts_with("fe80::"), "guest link-local: {gll}");
    // Host → guest, over each address.
    host_ping(&[g4]).expect("host → guest IPv4 ping");
    host_ping(&["-6", g6]).expect("host → guest IPv6 ping");
    host_ping(&["-6", &format!("{gll}%{}", d.tap)]).expect("host → guest link-local ping");
    let hn = sh(&format!("ip neigh show dev {}", d.tap));
    let hn: Vec<String> = hn.lines().map(str::to_string).collect();
    let hn = neighbours(&hn);
    for a in [g4, g6, gll.as_str()] {
        assert_resolved("host", &hn, a, gmac);
    }
    // Let the guest print its table.
    g.release(g4, sync_port);
    let gn = neighbours(&g.markers("GNEIGH"));
    for a in [h4, h6, hll.as_str()] {
        assert_resolved("guest", &gn, a, &hmac);
    }
    drop(g);
    let mut d = d;
    let c = d.counters();
    assert_eq!(c.dropped(), 0, "{c:?}");
    eprintln!("neighbour discovery: {:.1} s", t0.elapsed().as_secs_f64());
}

/// The guest's offload flags (`ethtool -k eth0`) from `GOFFLOAD name: on|off` lines.
fn guest_offloads(g: &Guest) -> HashMap<String, String> {
    g.markers("GOFFLOAD")
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((
                k.trim().to_string(),
                v.split_whitespace().next()?.to_string(),
            ))
        })
        .collect()
}

const PRINT_FEATURES: &str = r#"
echo "GFEATURES $(cat /sys/class/net/eth0/device/features)"
ethtool -k eth0 | grep -E '^(tcp-segmentation-offload|tx-checksumming|rx-checksumming|generic-segmentation-offload|generic-receive-offload):' | sed 's/^/GOFFLOAD /'
"#;

struct Run {
    daemon: Daemon,
    guest: Guest,
    counters: DeviceReport,
    /// Counters after guest → host, before host → guest.
    mid: Option<DeviceReport>,
    features: u64,
}

impl Run {
    /// Average frame size (bytes) and frames in the daemon's counters:
    /// guest → host during the guest → host transfer, host → guest during
    /// the host → guest one (the data, not the other side's ACKs).
    fn avg_frames(&self) -> (u64, u64, u64, u64) {
        let (m, e) = (self.mid.as_ref().expect("mid counters"), &self.counters);
        let tx = (m.at(0, "tx_bytes"), m.at(0, "tx_frames"));
        let rx = (
            e.at(0, "rx_bytes") - m.at(0, "rx_bytes"),
            e.at(0, "rx_frames") - m.at(0, "rx_frames"),
        );
        (tx.0 / tx.1.max(1), tx.1, rx.0 / rx.1.max(1), rx.1)
    }
}

/// Boot a guest with `dev_opts`, move `bytes` each way by TCP (checksums
/// compared at both ends) and ping both ways.
fn tcp_run(net: u8, bytes: u64, dev_opts: &str) -> Run {
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&[]);
    let (h, gip) = (format!("198.18.{net}.1"), format!("198.18.{net}.2"));
    d.add_host_ip(&format!("{h}/24"));
    let mut tcp = TcpBothWays::listen(&h, bytes, Duration::from_secs(240)).pause_at(&gip, 7103);
    let script = format!(
        "{GUEST_FUNCS}{PRINT_FEATURES}\nping -c 2 -W 3 {h} >/dev/null && echo GPING-OK\n{}\n\
         echo GUEST-DONE\ntimeout 60 nc -l -p 7101 </dev/null\n",
        tcp.guest_cmd(&h)
    );
    let mac = format!("52:54:00:18:{net:02x}:02");
    let mut args = vec!["--ip".to_string(), format!("{gip}/24"), "-m".into(), mac];
    if !dev_opts.is_empty() {
        args.push("-d".into());
        args.push(dev_opts.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = Guest::boot(&d.socket, &script, &args);
    // The daemon's counters between the two directions.
    let mut mid = None;
    let r = tcp.finish_with(&g, Duration::from_secs(300), || mid = Some(d.counters()));
    g.expect_marker("GUEST-DONE", Duration::from_secs(30), "guest");
    host_ping(&[&gip]).expect("host → guest ping");
    assert!(g.has_line("GPING-OK"), "guest → host ping failed");
    g.release(&gip, 7101);
    let features = feature_bits(&g.expect_marker("GFEATURES", BOOT, "features"));
    let counters = d.counters();
    eprintln!(
        "[{dev_opts}] {} MiB guest → host {:.0} Mbit/s ({:.1} s), host → guest {:.0} Mbit/s \
         ({:.1} s); guest features {features:#x}; daemon acked {:#x}; wall {:.1} s",
        bytes >> 20,
        r.to_host.mbit_s(),
        r.to_host.time.as_secs_f64(),
        r.to_guest.mbit_s(),
        r.to_guest.time.as_secs_f64(),
        d.acked_features().unwrap_or(0),
        t0.elapsed().as_secs_f64()
    );
    eprintln!("counters: {counters:?}");
    assert_eq!(counters.dropped(), 0, "{counters:?}");
    let q = &counters.queues[0];
    assert!(
        counters.at(0, "tx_bytes") >= bytes && counters.at(0, "rx_bytes") >= bytes,
        "{q:?}"
    );
    Run {
        daemon: d,
        guest: g,
        counters,
        mid,
        features,
    }
}

/// 64 MiB each way by TCP with the default offloads: checksum and TSO
/// negotiated, so GSO frames (up to 64 KiB) cross the TAP with the vnet
/// header in both directions.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn tcp_64mib_each_way_with_guest_offloads() {
    let _l = vm_lock();
    let r = tcp_run(101, 64 << 20, "");
    let acked = r
        .daemon
        .acked_features()
        .expect("acked features in the log");
    for (bit, name) in [
        (vnet::CSUM, "CSUM"),
        (vnet::GUEST_CSUM, "GUEST_CSUM"),
        (vnet::HOST_TSO4, "HOST_TSO4"),
        (vnet::GUEST_TSO4, "GUEST_TSO4"),
        (vnet::MRG_RXBUF, "MRG_RXBUF"),
    ] {
        assert!(acked & bit != 0, "{name} not acked: {acked:#x}");
        assert!(
            r.features & bit != 0,
            "{name} not in the guest: {:#x}",
            r.features
        );
    }
    assert!(
        r.daemon.log_text().contains("TAP offloads 0xf,"),
        "the TAP did not get csum + TSO4/6 + ECN offloads"
    );
    let off = guest_offloads(&r.guest);
    assert_eq!(
        off.get("tcp-segmentation-offload").map(String::as_str),
        Some("on"),
        "{off:?}"
    );
    assert_eq!(
        off.get("tx-checksumming").map(String::as_str),
        Some("on"),
        "{off:?}"
    );
    // Frames larger than the MTU crossed the TAP: GSO both ways. (Not the
    // average frame: a TCG guest under load sends many segments smaller
    // than a full GSO frame, and the average then hovers around the MTU.)
    let (tx, txn, rx, rxn) = r.avg_frames();
    let (txmax, rxmax) = (
        r.counters.at(0, "tx_frame_bytes_high_water"),
        r.counters.at(0, "rx_frame_bytes_high_water"),
    );
    eprintln!(
        "frames: guest → host average {tx} B, largest {txmax} B ({txn} frames); \
         host → guest average {rx} B, largest {rxmax} B ({rxn} frames)"
    );
    assert!(txmax > 1514, "no GSO from the guest: {:?}", r.counters);
    assert!(rxmax > 1514, "no GSO to the guest: {:?}", r.counters);
}

/// Every offload feature off on the device: QEMU then does not offer them,
/// so the guest computes checksums and segments itself, the daemon sets the
/// TAP's offloads to 0 and the host kernel hands it only finished frames.
/// (Chosen over `ethtool -K eth0 tso off` in the guest, which only changes
/// the guest's TX side: this also exercises the daemon's feature → TAP
/// offload mapping with nothing acked, and host → guest without GSO.)
const NO_OFFLOADS: &str = "csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,\
host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";

/// 64 MiB each way by TCP with every offload off: MTU-sized frames only.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn tcp_64mib_each_way_without_offloads() {
    let _l = vm_lock();
    let r = tcp_run(102, 64 << 20, NO_OFFLOADS);
    let acked = r
        .daemon
        .acked_features()
        .expect("acked features in the log");
    let offl = vnet::CSUM
        | vnet::GUEST_CSUM
        | vnet::HOST_TSO4
        | vnet::HOST_TSO6
        | vnet::GUEST_TSO4
        | vnet::GUEST_TSO6;
    assert_eq!(acked & offl, 0, "offloads acked: {acked:#x}");
    assert_eq!(
        r.features & offl,
        0,
        "offloads in the guest: {:#x}",
        r.features
    );
    assert!(
        r.daemon.log_text().contains("TAP offloads 0x0,"),
        "the TAP kept offloads"
    );
    let off = guest_offloads(&r.guest);
    assert_eq!(
        off.get("tcp-segmentation-offload").map(String::as_str),
        Some("off"),
        "{off:?}"
    );
    assert_eq!(
        off.get("tx-checksumming").map(String::as_str),
        Some("off"),
        "{off:?}"
    );
    let (tx, txn, rx, rxn) = r.avg_frames();
    eprintln!(
        "average frame: guest → host {tx} B ({txn} frames), host → guest {rx} B ({rxn} frames)"
    );
    assert!(tx <= 1514 && rx <= 1514, "{:?}", r.counters);
    // Not one frame above the MTU, either way.
    let largest = |k| r.counters.at(0, k);
    assert!(
        largest("tx_frame_bytes_high_water") <= 1514
            && largest("rx_frame_bytes_high_water") <= 1514,
        "{:?}",
        r.counters
    );
    // 64 MiB in ≤ 1448-byte segments: at least 46341 frames each way.
    assert!(txn > 46_000 && rxn > 46_000, "{:?}", r.counters);
}

/// The four ring layouts: MRG_RXBUF and EVENT_IDX each on and off, as
/// negotiated by the guest; 16 MiB by TCP each way and ping in each.
fn ring_layout(net: u8, mrg: bool, event_idx: bool) {
    let onoff = |b: bool| if b { "on" } else { "off" };
    let opts = format!("mrg_rxbuf={},event_idx={}", onoff(mrg), onoff(event_idx));
    let r = tcp_run(net, 16 << 20, &opts);
    let acked = r.daemon.acked_features().expect("acked features");
    for (bit, name, want) in [
        (vnet::MRG_RXBUF, "MRG_RXBUF", mrg),
        (vnet::EVENT_IDX, "EVENT_IDX", event_idx),
    ] {
        assert_eq!(
            r.features & bit != 0,
            want,
            "guest {name}: {:#x}",
            r.features
        );
        assert_eq!(acked & bit != 0, want, "daemon {name}: {acked:#x}");
    }
}

#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn ring_layout_mrg_rxbuf_on_event_idx_on() {
    let _l = vm_lock();
    ring_layout(103, true, true);
}

#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn ring_layout_mrg_rxbuf_off_event_idx_off() {
    let _l = vm_lock();
    ring_layout(104, false, false);
}

#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn ring_layout_mrg_rxbuf_on_event_idx_off() {
    let _l = vm_lock();
    ring_layout(105, true, false);
}

#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn ring_layout_mrg_rxbuf_off_event_idx_on() {
    let _l = vm_lock();
    ring_layout(106, false, true);
}

/// Accept `n` connections and read each to EOF; total bytes.
fn discard_sink(l: TcpListener, n: usize) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..n {
            let Ok(mut s) = accept_timeout(&l, Duration::from_secs(200)) else {
                break;
            };
            hs.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                std::io::copy(&mut s, &mut std::io::sink()).unwrap_or(0)
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    })
}

/// Two vCPUs, two queue pairs: both RX and both TX queues carry traffic,
/// in the daemon's per-queue counters and in the guest (TX kicks per queue,
/// interrupts per RX queue).
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn two_queue_pairs_both_carry_traffic() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&["--queues", "2"]);
    let (h, gip) = ("198.18.107.1", "198.18.107.2");
    d.add_host_ip(&format!("{h}/24"));
    let dir = testkit::TempDir::new("mq");
    let file = dir.join("data");
    e2e::random_file(&file, 4 << 20);
    let lsrc = TcpListener::bind((h, 0)).unwrap();
    let psrc = lsrc.local_addr().unwrap().port();
    let lsink = TcpListener::bind((h, 0)).unwrap();
    let psink = lsink.local_addr().unwrap().port();
    // Host → guest: four connections, opened from each vCPU in turn (the tun
    // driver steers a flow's host → guest frames to the queue its guest →
    // host frames came from, and the guest transmits on its CPU's queue).
    let source = e2e::tcp_source(lsrc, file, 4, Duration::from_secs(200));
    let sink = discard_sink(lsink, 2);
    let script = format!(
        r#"
ethtool -L eth0 combined 2
echo "GCHANNELS $(ethtool -l eth0 | awk '/^Combined/ {{print $2}}' | tr '\n' ' ')"
head -c 4194304 /dev/urandom > /tmp/f
for cpu in 1 2 1 2; do taskset $cpu timeout 150 nc {h} {psrc} </dev/null >/dev/null & done
for cpu in 1 2; do taskset $cpu timeout 150 nc {h} {psink} </tmp/f & done
for cpu in 1 2; do taskset $cpu ping -c 5 -i 0.2 -W 3 {h} >/dev/null && echo "GPING-OK $cpu"; done
wait
ethtool -S eth0 | {ETHTOOL_STATS_SED} | grep -E '^(tx|rx)[0-9]+_kicks:' | sed 's/^/GSTAT /'
grep -E 'virtio[0-9]+-(input|output)' /proc/interrupts | awk '{{s=0; for (i=2; i<NF; i++) if ($i ~ /^[0-9]+$/) s+=$i; print "GIRQ", $NF, s}}'
echo GUEST-DONE
timeout 60 nc -l -p 7102 </dev/null
"#
    );
    let g = Guest::boot(
        &d.socket,
        &script,
        &[
            "--ip",
            &format!("{gip}/24"),
            "-m",
            "52:54:00:18:6b:02",
            "-q",
            "2",
            "-c",
            "2",
        ],
    );
    g.expect_marker("GUEST-DONE", Duration::from_secs(300), "guest traffic");
    let sent = source.join().unwrap().expect("host → guest");
    let got = sink.join().unwrap();
    assert_eq!(sent.bytes, 4 * (4 << 20), "host → guest bytes");
    assert_eq!(got, 2 * (4 << 20), "guest → host bytes");
    host_ping(&[gip]).expect("host → guest ping");
    g.release(gip, 7102);
    assert_eq!(
        g.markers("GPING-OK").len(),
        2,
        "guest pings from both vCPUs"
    );
    assert_eq!(
        g.markers("GCHANNELS").pop().as_deref(),
        Some("2 2"),
        "guest channels (max, current)"
    );
    let stats: HashMap<String, u64> = g
        .markers("GSTAT")
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let irqs: HashMap<String, u64> = g
        .markers("GIRQ")
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let c = d.counters();
    eprintln!("guest: {stats:?} {irqs:?}\ndaemon: {c:?}");
    assert_eq!(c.queues.len(), 2, "daemon queues: {c:?}");
    for (i, q) in c.queues.iter().enumerate() {
        assert!(
            c.at(i, "rx_frames") > 0 && c.at(i, "tx_frames") > 0,
            "daemon queue {i} idle: {q:?}"
        );
        assert!(stats[&format!("tx{i}_kicks")] > 0, "guest tx{i}: {stats:?}");
        let input = irqs
            .iter()
            .find(|(k, _)| k.ends_with(&format!("-input.{i}")))
            .map(|(_, v)| *v);
        assert!(
            input.unwrap_or(0) > 0,
            "guest RX queue {i} interrupts: {irqs:?}"
        );
    }
    assert_eq!(c.dropped(), 0, "{c:?}");
    eprintln!(
        "two queue pairs: rx {} / {} frames, tx {} / {} frames; wall {:.1} s",
        c.at(0, "rx_frames"),
        c.at(1, "rx_frames"),
        c.at(0, "tx_frames"),
        c.at(1, "tx_frames"),
        t0.elapsed().as_secs_f64()
    );
}
