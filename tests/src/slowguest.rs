//! A slow guest with a real TCP stack: network namespaces, a second TAP and
//! the vu-bridge process that forwards between the daemon and it.
//!
//! ```text
//!  host stack ─► daemon's TAP ─► vhost-tap ─► vu-bridge (guest, rate-limited) ─► TAP2 ─► netns stack
//!  198.18.N.1                                                                      198.18.N.2
//! ```
//!
//! [`SlowGuest::start`] creates the namespace `vtns<unique>`, starts
//! `vu-bridge` (which creates TAP2 `vtb<unique>`, moves it into the namespace
//! and addresses it), puts the host address on the daemon's TAP and waits
//! until the namespace answers a ping. On drop — also when the test failed —
//! it stops the bridge by PID, deletes the namespace and TAP2, and removes
//! the host address; on failure it prints the bridge's log.
//!
//! Also here: the bridge's JSON counter reports, ping RTT parsing and
//! percentiles, iperf3 `-J` figures (with serde_json).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use testkit::{sh, stop, unique_name, wait_for, workspace_binary, Daemon, TempDir};

/// What the slow guest looks like.
#[derive(Debug, Clone)]
pub struct SlowGuestConfig {
    /// Host → guest forwarding rate (Ethernet frame bytes), Mbit/s.
    pub rate_mbit: f64,
    /// RX buffers the guest owns (its own FIFO, which no qdisc manages:
    /// `rx_buffers × 1514 B` at the rate is latency the daemon cannot remove).
    pub rx_buffers: usize,
}

impl Default for SlowGuestConfig {
    fn default() -> Self {
        SlowGuestConfig {
            rate_mbit: 50.0,
            rx_buffers: 32,
        }
    }
}

/// The vu-bridge binary built beside this test binary (target/<profile>/vu-bridge).
pub fn bridge_binary() -> PathBuf {
    workspace_binary("vu-bridge", "vu-driver")
}

static SUBNET_SEQ: AtomicU32 = AtomicU32::new(0);

/// A free 198.18.X.0/24 (X from 200 up): no address of this host and no route in it.
fn free_subnet() -> u32 {
    let addrs = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for _ in 0..50 {
        let x = 200 + SUBNET_SEQ.fetch_add(1, Ordering::Relaxed) % 50;
        let p = format!("198.18.{x}.");
        if !addrs.contains(&p) && !routes.contains(&p) {
            return x;
        }
    }
    panic!("no free 198.18.200-249.0/24 subnet on this host");
}

/// The slow guest: netns + TAP2 + vu-bridge connected to a [`Daemon`].
pub struct SlowGuest {
    bridge: Option<Child>,
    /// Network namespace `vtns<unique>`.
    pub netns: String,
    /// TAP2, in `netns`.
    pub tap2: String,
    /// The daemon's TAP (host side).
    pub host_tap: String,
    /// 198.18.X.1 on the daemon's TAP.
    pub host_ip: String,
    /// 198.18.X.2 on TAP2 in the namespace.
    pub guest_ip: String,
    /// vu-bridge's stderr.
    pub log: PathBuf,
    /// Whether we added `host_ip` to the host TAP (to remove it on drop).
    host_addr_added: bool,
    netns_created: bool,
    _dir: TempDir,
}

impl SlowGuest {
    /// Creates the namespace, starts vu-bridge against the daemon's socket,
    /// addresses both sides and waits until the namespace answers a ping.
    pub fn start(d: &Daemon, cfg: &SlowGuestConfig) -> SlowGuest {
        let dir = TempDir::new("sg");
        let x = free_subnet();
        let mut sg = SlowGuest {
            bridge: None,
            netns: unique_name("vtns"),
            tap2: unique_name("vtb"),
            host_tap: d.tap.clone(),
            host_ip: format!("198.18.{x}.1"),
            guest_ip: format!("198.18.{x}.2"),
            log: dir.join("vu-bridge.log"),
            host_addr_added: false,
            netns_created: false,
            _dir: dir,
        };
        sh(&format!("ip netns add {}", sg.netns));
        sg.netns_created = true;
        // No IPv6 chatter (DAD, router solicitations) in the measurement.
        sg.ns_sh(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
        );
        let child = Command::new(bridge_binary())
            .args(["--socket", d.socket.to_str().unwrap()])
            .args(["--tap", &sg.tap2, "--netns", &sg.netns])
            .args(["--addr", &format!("{}/24", sg.guest_ip)])
            .args(["--rate-mbit", &cfg.rate_mbit.to_string()])
            .args(["--rx-buffers", &cfg.rx_buffers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&sg.log).expect("bridge log"))
            .spawn()
            .expect("spawn vu-bridge");
        sg.bridge = Some(child);
        let ready = wait_for(Duration::from_secs(15), || {
            if sg.log_text().contains("vu-bridge: ready") {
                return Some(true);
            }
            let exited = sg.bridge.as_mut().unwrap().try_wait().ok().flatten();
            exited.map(|_| false)
        });
        assert_eq!(
            ready,
            Some(true),
            "vu-bridge did not start:\n{}",
            sg.log_text()
        );

        // Host side: the host TAP's own IPv6 is none of our business, but
        // keep it quiet too; then the address and the link.
        let _ = Command::new("sysctl")
            .args([
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", sg.host_tap),
            ])
            .status();
        sh(&format!(
            "ip addr add {}/24 dev {} && ip link set {} up",
            sg.host_ip, sg.host_tap, sg.host_tap
        ));
        sg.host_addr_added = true;
        let up = wait_for(Duration::from_secs(15), || {
            crate::host_pings(&sg.guest_ip).then_some(())
        });
        assert!(
            up.is_some(),
            "{} does not answer through the daemon and vu-bridge:\n{}",
            sg.guest_ip,
            sg.log_text()
        );
        sg
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command run inside the namespace (`ip netns exec NS prog`; iproute2
    /// execs the program, so the child's PID is the program's).
    pub fn ns_cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, prog]);
        c
    }

    /// A shell command inside the namespace; panics with its output on failure.
    pub fn ns_sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{}'", self.netns, cmd))
    }

    /// A statistics counter of TAP2 (in the namespace).
    pub fn tap2_stat(&self, counter: &str) -> u64 {
        self.ns_sh(&format!(
            "cat /sys/class/net/{}/statistics/{counter}",
            self.tap2
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    }

    /// The bridge's JSON counter reports so far.
    pub fn reports(&self) -> Vec<BridgeReport> {
        bridge_reports(&self.log_text())
    }

    /// The bridge's counters now (SIGUSR1, then its new report).
    pub fn counters(&mut self) -> BridgeReport {
        let before = self.reports().len();
        let bridge = self.bridge.as_ref().expect("bridge");
        testkit::signal(bridge, libc::SIGUSR1);
        wait_for(Duration::from_secs(5), || {
            let mut r = self.reports();
            (r.len() > before).then(|| r.pop()).flatten()
        })
        .unwrap_or_else(|| panic!("vu-bridge did not report counters:\n{}", self.log_text()))
    }

    /// Stops the bridge (SIGTERM) and returns its final counters (its exit
    /// report; empty if it wrote none).
    pub fn shutdown(&mut self) -> BridgeReport {
        if let Some(mut c) = self.bridge.take() {
            stop(&mut c, Duration::from_secs(15));
        }
        self.reports()
            .into_iter()
            .rev()
            .find(|r| r.event == "exit")
            .unwrap_or_default()
    }
}

impl Drop for SlowGuest {
    fn drop(&mut self) {
        if let Some(mut c) = self.bridge.take() {
            stop(&mut c, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("---- vu-bridge log ----\n{}", self.log_text());
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if self.netns_created {
            // Any process of ours still in it was stopped above; the
            // namespace's devices go with it.
            quiet(&["netns", "del", &self.netns]);
        }
        // TAP2 dies with the bridge's fd; if it was never moved, or came
        // back to this namespace, remove it here.
        quiet(&["link", "del", &self.tap2]);
        if self.host_addr_added {
            quiet(&[
                "addr",
                "del",
                &format!("{}/24", self.host_ip),
                "dev",
                &self.host_tap,
            ]);
        }
    }
}

/// The marker in front of vu-bridge's JSON counter report.
pub const BRIDGE_JSON_TAG: &str = "vu-bridge: counters-json ";

/// One vu-bridge counter report: `event` ("signal" or "exit") and every
/// integer counter by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeReport {
    pub event: String,
    pub counters: BTreeMap<String, u64>,
}

impl BridgeReport {
    /// A counter by name, `None` if the report has none of that name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }
}

/// Every JSON counter report in a vu-bridge log, in order; lines that do
/// not parse (cut off by a crash) are skipped.
pub fn bridge_reports(log: &str) -> Vec<BridgeReport> {
    log.lines()
        .filter_map(|l| {
            let at = l.find(BRIDGE_JSON_TAG)?;
            let v: serde_json::Map<String, Value> =
                serde_json::from_str(&l[at + BRIDGE_JSON_TAG.len()..]).ok()?;
            Some(BridgeReport {
                event: v.get("event")?.as_str()?.to_string(),
                counters: v
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect(),
            })
        })
        .collect()
}

/// RTTs (ms) of `ping` output lines (`... time=0.123 ms`), and (transmitted, received).
pub fn parse_ping(out: &str) -> (Vec<f64>, u64, u64) {
    let rtts = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    let mut tx = 0;
    let mut rx = 0;
    if let Some(l) = out.lines().find(|l| l.contains("packets transmitted")) {
        let nums: Vec<u64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if nums.len() >= 2 {
            tx = nums[0];
            rx = nums[1];
        }
    }
    (rtts, tx, rx)
}

/// The `p`-th percentile (0..=100, nearest rank) of `v`; NaN if empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// max/min − 1 of per-flow throughputs (infinite if a flow got nothing).
pub fn spread(flows: &[f64]) -> f64 {
    let max = flows.iter().cloned().fold(f64::MIN, f64::max);
    let min = flows.iter().cloned().fold(f64::MAX, f64::min);
    if min <= 0.0 {
        f64::INFINITY
    } else {
        max / min - 1.0
    }
}

/// Per cent of `tx` pings left unanswered (NaN if none were sent).
pub fn loss_pct(tx: u64, rx: u64) -> f64 {
    if tx == 0 {
        return f64::NAN;
    }
    100.0 * (tx - rx.min(tx)) as f64 / tx as f64
}

/// Per-stream receiver throughput (bit/s) of an `iperf3 -J` client run
/// (`end.streams[i].receiver.bits_per_second`), and the iperf3 error if any.
pub fn iperf3_streams(json: &str) -> Result<Vec<f64>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {e}"));
    }
    let Some(streams) = v.pointer("/end/streams").and_then(Value::as_array) else {
        return Err("iperf3 JSON has no end.streams".into());
    };
    streams
        .iter()
        .map(|s| {
            s.pointer("/receiver/bits_per_second")
                .and_then(Value::as_f64)
                .ok_or_else(|| "stream without receiver.bits_per_second".to_string())
        })
        .collect()
}

/// TCP retransmits of the senders of an `iperf3 -J` client run
/// (`end.sum_sent.retransmits`).
pub fn iperf3_retransmits(json: &str) -> Option<u64> {
    serde_json::from_str::<Value>(json)
        .ok()?
        .pointer("/end/sum_sent/retransmits")?
        .as_f64()
        .map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_iperf3_shape() {
        let j = r#"{"start":{"x":[1,2.5e3,-3]},"end":{"streams":[
            {"sender":{"bits_per_second":2e7},"receiver":{"bits_per_second":1.25E7,"s":"a\"b\u00e9"}},
            {"receiver":{"bits_per_second":12000000}}], "ok": true, "n": null}}"#;
        assert_eq!(iperf3_streams(j).unwrap(), vec![1.25e7, 1.2e7]);
        assert_eq!(
            iperf3_streams(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect"}"#)
                .unwrap_err(),
            "iperf3: unable to connect"
        );
    }

    #[test]
    fn ping_and_percentiles() {
        let out = "PING 198.18.200.2 (198.18.200.2) 56(84) bytes of data.\n\
            64 bytes from 198.18.200.2: icmp_seq=1 ttl=64 time=0.512 ms\n\
            64 bytes from 198.18.200.2: icmp_seq=2 ttl=64 time=12.0 ms\n\n\
            --- 198.18.200.2 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 101ms\n";
        let (r, tx, rx) = parse_ping(out);
        assert_eq!(r, vec![0.512, 12.0]);
        assert_eq!((tx, rx), (3, 2));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(spread(&[10.0, 11.0, 10.5]), 0.10000000000000009);
        assert_eq!(spread(&[10.0, 0.0]), f64::INFINITY);
        assert_eq!(loss_pct(4, 3), 25.0);
        assert!(loss_pct(0, 0).is_nan());
    }

    #[test]
    fn iperf3_retransmits_of_the_senders() {
        let j = r#"{"end":{"sum_sent":{"bytes":10,"retransmits":42},"streams":[]}}"#;
        assert_eq!(iperf3_retransmits(j), Some(42));
        assert_eq!(iperf3_retransmits(r#"{"end":{}}"#), None);
    }

    #[test]
    fn bridge_reports_in_order_json_only() {
        let t = "vu-bridge: counters: rx_frames=1 refused=0\n\
            vu-bridge: counters-json {\"event\":\"signal\",\"rx_frames\":1,\"refused\":0,\"held\":3}\n\
            x\n\
            vu-bridge: counters: rx_frames=5 refused=0 held_at_exit=2\n\
            vu-bridge: counters-json {\"event\":\"exit\",\"rx_frames\":5,\"refused\":0,\"held_at_exit\":2}\n\
            vu-bridge: counters-json {\"event\":\"sig";
        let r = bridge_reports(t);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].event.as_str(), r[0].get("held")), ("signal", Some(3)));
        assert_eq!(r[1].event, "exit");
        assert_eq!(r[1].get("rx_frames"), Some(5));
        assert_eq!(r[1].get("held_at_exit"), Some(2));
        assert_eq!(r[1].get("held"), None);
    }
}
