//! fq-codel mode under a steady UDP flood into the TCG guest: no tun tail
//! drops and a low ping p99, run after run, on a 2-core host.
//!
//! The daemon runs in `--mode fq-codel` (the default on every kernel
//! without `IFF_BACKPRESSURE`). trafgen sends 60-byte UDP frames from 64
//! source ports (`udp(sp=dinc(1024,1087),dp=9)`) through the TAP's qdisc
//! (`-q`) at 100 kpps for 20 s, far below what the daemon can read, but
//! more than the TCG guest takes (some 40 kpps): the backlog forms in the
//! daemon's FQ-CoDel, which drops the surplus at the head. From 1 s into
//! the flood until 1 s before its end the host pings the guest 20 times a
//! second (a sparse flow: FQ-CoDel serves it first).
//!
//! What can still go wrong is the tun ring (txqueuelen frames, 10 ms at
//! 100 kpps with the kernel's 1000): the daemon drains it eagerly, but if
//! its reader waits for a core longer than the ring lasts, the tun driver
//! tail-drops (`tx_dropped`). Asserted: `tx_dropped` does not grow, the
//! ping p99 is at most 25 ms, the daemon drops nothing except by AQM
//! decision. The figures are printed either way.
//!
//! Status (2026-12-06, this 2-core host): the test **fails** at the daemon
//! of `09cdbe1` (tail drops 33–60 k/s, ping p99 57–151 ms, loss 2–9 % over
//! 20 s). `skb:kfree_skb` (reason FULL_RING) against `sched_waking` /
//! `sched_switch` showed every tail drop landing while the worker had been
//! woken but waited for a core (waits of 1.6–10 ms, 700–3 200 drops each):
//! trafgen busy-waits per frame and, preempted, catches up in bursts far
//! above 100 kpps. Only with the worker at `SCHED_FIFO` and a 16–20 k tun
//! ring did runs reach 0 drops (5 of 6 runs), with p99 26–147 ms tracking
//! how fast the TCG guest took frames (11–51 kpps); the same `SCHED_FIFO`
//! worker starves testpmd in the fast-guest benchmark (h2g-64: 0.002 Mpps),
//! so the daemon does not do it.
//!
//! Addresses: 198.18.220.1/24 (host, on the daemon's TAP), .2 (guest).
//!
//! Knobs for measurements (defaults are the test): `VT_FQF_SECS` (flood
//! seconds), `VT_FQF_PPS` (offered rate), `VT_FQF_ARGS` (extra daemon
//! options, space separated), `VT_FQF_RUNS` (runs in a row, each asserted).
//!
//! Not in the suite while it fails (`tests/Cargo.toml`: feature
//! `known-failing`). Run (as root, after `tests/setup-host.sh` and
//! `vm-images/build.sh`):
//! `cargo build --release -p vhost-tap && cargo test --release -p e2e --features known-failing --test fq_flood -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::slowguest::{loss_pct, parse_ping, percentile};
use e2e::{host_pings, vm_lock, Guest};
use testkit::{sh, stop, tap_stat, wait_for, Daemon, ReportExt, TempDir};

const HOST_IP: &str = "198.18.220.1";
const GUEST_IP: &str = "198.18.220.2";
const GUEST_MAC: &str = "52:54:00:c6:dc:02";
const BOOT: Duration = Duration::from_secs(150);
/// Ping interval, seconds (20 a second).
const PING_INTERVAL: f64 = 0.05;
/// The targets.
const MAX_TAIL_DROPS: u64 = 0;
const MAX_P99_MS: f64 = 25.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one flood showed.
#[derive(Debug)]
struct Flood {
    tail_drops: u64,
    /// Frames the daemon read from the TAP (its `tx_packets`).
    read: u64,
    p50: f64,
    p99: f64,
    max: f64,
    ping_tx: u64,
    ping_rx: u64,
    /// The daemon's counters over the flood.
    daemon: BTreeMap<String, u64>,
    daemon_drops: u64,
}

impl Flood {
    fn c(&self, k: &str) -> u64 {
        self.daemon.get(k).copied().unwrap_or(0)
    }
}

fn flood(secs: u64, pps: u64, extra: &[String]) -> Flood {
    let mut args: Vec<&str> = vec!["--mode", "fq-codel"];
    args.extend(extra.iter().map(String::as_str));
    let mut d = Daemon::start_args(&args);
    d.assert_mode("fq-codel");
    sh(&format!(
        "sysctl -qw net.ipv6.conf.{t}.disable_ipv6=1 && ip addr add {HOST_IP}/24 dev {t} && ip link set {t} up",
        t = d.tap
    ));
    let dir = TempDir::new("fqf");
    let conf = dir.join("udp.trafgen");
    fs::write(
        &conf,
        format!(
            "{{ eth(da={GUEST_MAC}, sa={}, type=0x0800), ipv4(saddr={HOST_IP}, daddr={GUEST_IP}), \
             udp(sp=dinc(1024,1087), dp=9), fill(0x41, 18) }}\n",
            d.tap_mac()
        ),
    )
    .unwrap();
    let script = format!("echo FQF-READY\nsleep {}\n", secs + 60);
    let g = Guest::boot(
        &d.socket,
        &script,
        &[
            "--ip",
            &format!("{GUEST_IP}/24"),
            "--append",
            "vt.ipv6=0",
            "-m",
            GUEST_MAC,
        ],
    );
    g.expect_marker("FQF-READY", BOOT, "guest");
    let reachable = wait_for(Duration::from_secs(20), || {
        host_pings(GUEST_IP).then_some(())
    });
    assert!(reachable.is_some(), "the host cannot ping the guest");

    let c0 = d.counters();
    let drops0 = tap_stat(&d.tap, "tx_dropped");
    let read0 = tap_stat(&d.tap, "tx_packets");
    let mut tg = Command::new("trafgen")
        .args(["--dev", &d.tap, "--conf", conf.to_str().unwrap()])
        .args(["-P", "1", "--no-sock-mem", "-q"])
        .args(["-n", &(pps * secs).to_string(), "-b", &format!("{pps}pps")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("trafgen (install with tests/setup-host.sh)");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let count = ((secs.saturating_sub(2)) as f64 / PING_INTERVAL) as u64;
    let ping = Command::new("ping")
        .args(["-n", "-i", &PING_INTERVAL.to_string(), "-W", "2"])
        .args(["-c", &count.max(1).to_string(), GUEST_IP])
        .stdin(Stdio::null())
        .output()
        .expect("ping");
    let st = wait_for(Duration::from_secs(secs + 15), || {
        tg.try_wait().ok().flatten()
    });
    let st = st.or_else(|| stop(&mut tg, Duration::from_secs(2)));
    let wall = t0.elapsed().as_secs_f64();
    assert!(st.is_some_and(|s| s.success()), "trafgen failed: {st:?}");
    let tail_drops = tap_stat(&d.tap, "tx_dropped") - drops0;
    let read = tap_stat(&d.tap, "tx_packets") - read0;
    let c1 = d.counters();
    let (rtts, ping_tx, ping_rx) = parse_ping(&String::from_utf8_lossy(&ping.stdout));
    let f = Flood {
        tail_drops,
        read,
        p50: percentile(&rtts, 50.0),
        p99: percentile(&rtts, 99.0),
        max: percentile(&rtts, 100.0),
        ping_tx,
        ping_rx,
        daemon: c1.since(&c0),
        daemon_drops: c1.dropped().saturating_sub(c0.dropped()),
    };
    eprintln!(
        "fq_flood: {pps} pps × {secs} s (trafgen took {wall:.1} s), daemon args {extra:?}: \
         tun tail drops {} ({:.1}/s); ping p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, loss {:.1} % \
         ({}/{}); daemon read {} ({:.1} kpps), delivered {} ({:.1} kpps), codel drops {}, \
         overlimit drops {}, other daemon drops {}, ring high water {}, reader stops {}, \
         no guest buffers {}, AQM backlog now {} frames",
        f.tail_drops,
        f.tail_drops as f64 / wall,
        f.p50,
        f.p99,
        f.max,
        loss_pct(f.ping_tx, f.ping_rx),
        f.ping_rx,
        f.ping_tx,
        f.read,
        f.read as f64 / wall / 1e3,
        f.c("rx_frames"),
        f.c("rx_frames") as f64 / wall / 1e3,
        f.c("rx_aqm_codel_drops"),
        f.c("rx_aqm_overlimit_drops"),
        f.daemon_drops,
        f.c("rx_ring_high_water"),
        f.c("rx_reader_stops"),
        f.c("rx_no_guest_buffers"),
        f.c("rx_aqm_backlog_frames"),
    );
    drop(g);
    d.terminate(Duration::from_secs(10));
    f
}

#[test]
#[ignore = "needs root, QEMU 10 with the test guest and trafgen: run by tests/run.sh"]
fn fq_codel_mode_udp_flood_into_tcg_guest_no_tail_drops_low_p99() {
    let _l = vm_lock();
    let secs = env_u64("VT_FQF_SECS", 20);
    let pps = env_u64("VT_FQF_PPS", 100_000);
    let runs = env_u64("VT_FQF_RUNS", 1);
    let extra: Vec<String> = std::env::var("VT_FQF_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut fails = Vec::new();
    for run in 1..=runs {
        let f = flood(secs, pps, &extra);
        if f.tail_drops > MAX_TAIL_DROPS {
            fails.push(format!(
                "run {run}: the tun driver tail-dropped {} frames",
                f.tail_drops
            ));
        }
        if f.p99.is_nan() || f.p99 > MAX_P99_MS {
            fails.push(format!(
                "run {run}: ping p99 {:.1} ms > {MAX_P99_MS} ms",
                f.p99
            ));
        }
        if f.daemon_drops != 0 {
            fails.push(format!(
                "run {run}: the daemon dropped {} frames other than by AQM decision: {:?}",
                f.daemon_drops, f.daemon
            ));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("; "));
}
