//! Independent peers against the daemon: DPDK testpmd's `net_virtio_user`
//! as a fast userspace guest, trafgen as the host-side generator.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{stop, unique_name, wait_for, Daemon, DeviceReport, ReportExt, TempDir};

struct Testpmd {
    child: Child,
    log: std::path::PathBuf,
    prefix: String,
}

impl Testpmd {
    fn start(socket: &std::path::Path, mode: &str, dir: &TempDir) -> Testpmd {
        let prefix = unique_name("tp");
        let log = dir.join(format!("testpmd-{mode}.log"));
        // Line-buffered: its stdout is a file, and fully buffered stats
        // reached it in 4 KiB blocks, seconds late (the RX count the test
        // waits for could still sit in testpmd's buffer after 5 s).
        let child = Command::new("stdbuf")
            .args(["-oL", "dpdk-testpmd"])
            .args(["-l", "0,1", "--no-pci", "--no-huge", "-m", "512"])
            .args(["--file-prefix", &prefix])
            .arg("--vdev")
            .arg(format!(
                "net_virtio_user0,path={},queues=1,queue_size=1024",
                socket.display()
            ))
            .args(["--", "--total-num-mbufs=16384", "--stats-period", "1"])
            .arg(format!("--forward-mode={mode}"))
            .args(["--txpkts=64"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("dpdk-testpmd (install with tests/setup-host.sh)");
        Testpmd { child, log, prefix }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last "<what>-packets: N" figure of the port statistics.
    fn last(&self, what: &str) -> u64 {
        let key = format!("{what}-packets:");
        self.text()
            .rsplit(&key)
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // testpmd prints its totals and leaves cleanly on SIGINT.
        testkit::signal(&self.child, libc::SIGINT);
        if wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            stop(&mut self.child, Duration::from_secs(2));
        }
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
        if std::thread::panicking() {
            eprintln!("---- testpmd ----\n{}", self.text());
        }
    }
}

/// host → guest: trafgen floods the TAP through its qdisc, testpmd (rxonly)
/// receives; the daemon loses nothing without a reason. In backpressure mode
/// the kernel's tun may tail-drop what the guest cannot take (the baseline on
/// a kernel without IFF_BACKPRESSURE); in fq-codel mode the daemon's AQM
/// drops at the head instead, and counts it.
#[test]
#[ignore = "needs root, DPDK testpmd and trafgen: run by tests/run.sh"]
fn testpmd_rxonly_receives_a_trafgen_flood_without_daemon_drops() {
    for mode in ["backpressure", "fq-codel"] {
        rxonly_flood(mode);
    }
}

fn rxonly_flood(mode: &str) {
    let mut d = Daemon::start_args(&["--mode", mode]);
    let dir = TempDir::new("p");
    let pmd = Testpmd::start(&d.socket, "rxonly", &dir);
    assert!(
        wait_for(Duration::from_secs(20), || d
            .log_text()
            .contains("guest acked features")
            .then_some(()))
        .is_some(),
        "testpmd did not connect"
    );
    let conf = dir.join("udp.trafgen");
    fs::write(
        &conf,
        "{ eth(da=52:54:00:00:00:02, sa=02:00:00:00:00:01, type=0x0800), \
           ipv4(saddr=198.18.40.1, daddr=198.18.40.2), \
           udp(sp=dinc(1024,1087), dp=9), fill(0x41, 18) }\n",
    )
    .unwrap();
    let sent = 200_000u64;
    let st = Command::new("trafgen")
        .args(["--dev", &d.tap, "--conf", conf.to_str().unwrap()])
        .args(["-P", "1", "--no-sock-mem", "-q", "-n", &sent.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("trafgen (install with tests/setup-host.sh)");
    assert!(st.success(), "trafgen failed");
    // Everything the kernel did not tail-drop reaches testpmd.
    let tail_drops = d.tap_stat("tx_dropped");
    let expect = sent - tail_drops;
    let aqm = |c: &DeviceReport| c.at(0, "rx_aqm_codel_drops") + c.at(0, "rx_aqm_overlimit_drops");
    let c = wait_for(Duration::from_secs(20), || {
        let c = d.counters();
        (c.at(0, "rx_frames") + aqm(&c) >= expect).then_some(c)
    });
    let c = c.unwrap_or_else(|| d.counters());
    let delivered = c.at(0, "rx_frames");
    assert!(
        delivered + aqm(&c) >= expect,
        "{mode}: daemon delivered {delivered} and its AQM dropped {} of {expect} frames: {c:?}",
        aqm(&c)
    );
    assert_eq!(c.dropped(), 0, "{c:?}");
    if mode == "backpressure" {
        assert_eq!(aqm(&c), 0, "no AQM in backpressure mode");
    }
    let got = wait_for(Duration::from_secs(5), || {
        let n = pmd.last("RX");
        (n >= delivered).then_some(n)
    });
    assert!(
        got.is_some(),
        "testpmd saw {} of {delivered}",
        pmd.last("RX")
    );
    eprintln!(
        "{mode}: sent {sent}, tun tail drops {tail_drops}, AQM drops {}, delivered {delivered}",
        aqm(&c)
    );
}

/// guest → host: testpmd (txonly) floods; the TAP receives, and the daemon
/// drops nothing (a full TAP leaves chains in the guest's ring).
#[test]
#[ignore = "needs root, DPDK testpmd and trafgen: run by tests/run.sh"]
fn testpmd_txonly_flood_reaches_the_tap_without_daemon_drops() {
    let mut d = Daemon::start_args(&[]);
    let dir = TempDir::new("p");
    let rx_before = d.tap_stat("rx_packets");
    let pmd = Testpmd::start(&d.socket, "txonly", &dir);
    let c = wait_for(Duration::from_secs(30), || {
        let c = d.counters();
        (c.at(0, "tx_frames") >= 100_000).then_some(c)
    })
    .expect("testpmd's frames did not reach the TAP");
    drop(pmd);
    let rx = d.tap_stat("rx_packets");
    assert!(
        rx - rx_before >= c.at(0, "tx_frames"),
        "TAP rx {rx} vs daemon tx {c:?}"
    );
    assert_eq!(d.counters().dropped(), 0);
}
