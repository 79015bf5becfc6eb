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
//! Also here: [`Ns`] children killed by PID on drop, ping RTT parsing and
//! percentiles, iperf3 `-J` per-stream figures (a small JSON reader: the
//! tests crate has no JSON dependency).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{stop, unique, wait_for, Daemon, TempDir};

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
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("vu-bridge");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p vu-driver --bins)",
        bin.display()
    );
    bin
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

/// A process started by a test, stopped by PID (SIGTERM, then SIGKILL) on drop.
pub struct Ns {
    pub child: Child,
    pub what: String,
}

impl Ns {
    pub fn spawn(mut cmd: Command, what: &str) -> Ns {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Ns {
            child,
            what: what.to_string(),
        }
    }

    /// Wait for the process to exit by itself; None on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(3));
    }
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
            netns: unique("vtns"),
            tap2: unique("vtb"),
            host_tap: d.tap.clone(),
            host_ip: format!("198.18.{x}.1"),
            guest_ip: format!("198.18.{x}.2"),
            log: dir.0.join("vu-bridge.log"),
            host_addr_added: false,
            netns_created: false,
            _dir: dir,
        };
        crate::sh(&format!("ip netns add {}", sg.netns));
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
        crate::sh(&format!(
            "ip addr add {}/24 dev {} && ip link set {} up",
            sg.host_ip, sg.host_tap, sg.host_tap
        ));
        sg.host_addr_added = true;
        let up = wait_for(Duration::from_secs(15), || {
            Command::new("ping")
                .args(["-c", "1", "-W", "1", "-n", "-q", &sg.guest_ip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
                .filter(|s| s.success())
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
        crate::sh(&format!("ip netns exec {} sh -c '{}'", self.netns, cmd))
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

    /// The bridge's counters now (SIGUSR1).
    pub fn counters(&mut self) -> HashMap<String, u64> {
        let before = self.log_text().matches("counters:").count();
        let pid = self.bridge.as_ref().expect("bridge").id() as i32;
        // SAFETY: kill(2) on our live child's PID.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let text = wait_for(Duration::from_secs(5), || {
            let t = self.log_text();
            (t.matches("counters:").count() > before && t.ends_with('\n')).then_some(t)
        })
        .unwrap_or_else(|| panic!("vu-bridge did not report counters:\n{}", self.log_text()));
        parse_kv_after(&text, "counters:")
    }

    /// Stops the bridge (SIGTERM) and returns its final counters.
    pub fn shutdown(&mut self) -> HashMap<String, u64> {
        if let Some(mut c) = self.bridge.take() {
            stop(&mut c, Duration::from_secs(15));
        }
        parse_kv_after(&self.log_text(), "counters:")
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

/// `k=v` integer pairs of the last line containing `marker`.
pub fn parse_kv_after(text: &str, marker: &str) -> HashMap<String, u64> {
    let Some(line) = text.lines().rev().find(|l| l.contains(marker)) else {
        return HashMap::new();
    };
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|n| (k.to_string(), n)))
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

/// Per-stream receiver throughput (bit/s) of an `iperf3 -J` client run
/// (`end.streams[i].receiver.bits_per_second`), and the iperf3 error if any.
pub fn iperf3_streams(json: &str) -> Result<Vec<f64>, String> {
    let v = Json::parse(json).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(Json::Str(e)) = v.get("error") {
        return Err(format!("iperf3: {e}"));
    }
    let streams = match v.get("end").and_then(|e| e.get("streams")) {
        Some(Json::Arr(a)) => a,
        _ => return Err("iperf3 JSON has no end.streams".into()),
    };
    streams
        .iter()
        .map(|s| {
            s.get("receiver")
                .and_then(|r| r.get("bits_per_second"))
                .and_then(Json::num)
                .ok_or_else(|| "stream without receiver.bits_per_second".to_string())
        })
        .collect()
}

/// A JSON value (enough of JSON for iperf3's output).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Result<Json, String> {
        let b = s.as_bytes();
        let mut i = 0;
        let v = Self::value(b, &mut i)?;
        Self::ws(b, &mut i);
        if i != b.len() {
            return Err(format!("trailing data at byte {i}"));
        }
        Ok(v)
    }

    fn ws(b: &[u8], i: &mut usize) {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }

    fn value(b: &[u8], i: &mut usize) -> Result<Json, String> {
        Self::ws(b, i);
        let Some(&c) = b.get(*i) else {
            return Err("unexpected end".into());
        };
        let lit = |i: &mut usize, word: &str, v: Json| {
            if b[*i..].starts_with(word.as_bytes()) {
                *i += word.len();
                Ok(v)
            } else {
                Err(format!("bad literal at byte {i}"))
            }
        };
        match c {
            b'{' => {
                *i += 1;
                let mut m = Vec::new();
                Self::ws(b, i);
                if b.get(*i) == Some(&b'}') {
                    *i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    Self::ws(b, i);
                    let Json::Str(k) = Self::value(b, i)? else {
                        return Err(format!("object key expected at byte {i}"));
                    };
                    Self::ws(b, i);
                    if b.get(*i) != Some(&b':') {
                        return Err(format!("':' expected at byte {i}"));
                    }
                    *i += 1;
                    let v = Self::value(b, i)?;
                    m.push((k, v));
                    Self::ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("',' or '}}' expected at byte {i}")),
                    }
                }
            }
            b'[' => {
                *i += 1;
                let mut a = Vec::new();
                Self::ws(b, i);
                if b.get(*i) == Some(&b']') {
                    *i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(Self::value(b, i)?);
                    Self::ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b']') => {
                            *i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("',' or ']' expected at byte {i}")),
                    }
                }
            }
            b'"' => {
                *i += 1;
                let mut out = Vec::new();
                while let Some(&c) = b.get(*i) {
                    *i += 1;
                    match c {
                        b'"' => return Ok(Json::Str(String::from_utf8_lossy(&out).into_owned())),
                        b'\\' => {
                            let e = *b.get(*i).ok_or("unexpected end in string")?;
                            *i += 1;
                            match e {
                                b'n' => out.push(b'\n'),
                                b't' => out.push(b'\t'),
                                b'r' => out.push(b'\r'),
                                b'b' => out.push(8),
                                b'f' => out.push(12),
                                b'u' => {
                                    let h =
                                        std::str::from_utf8(b.get(*i..*i + 4).ok_or("bad \\u")?)
                                            .map_err(|e| e.to_string())?;
                                    let cp =
                                        u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                    *i += 4;
                                    let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                    out.extend_from_slice(ch.to_string().as_bytes());
                                }
                                other => out.push(other),
                            }
                        }
                        _ => out.push(c),
                    }
                }
                Err("unterminated string".into())
            }
            b't' => lit(i, "true", Json::Bool(true)),
            b'f' => lit(i, "false", Json::Bool(false)),
            b'n' => lit(i, "null", Json::Null),
            _ => {
                let start = *i;
                while *i < b.len()
                    && matches!(b[*i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    *i += 1;
                }
                std::str::from_utf8(&b[start..*i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad value at byte {start}"))
            }
        }
    }
}

/// Counters that are levels, not totals: reported as they are, not as deltas.
pub fn is_gauge(k: &str) -> bool {
    k.ends_with("high_water") || k.contains("backlog") || k == "rx_aqm_flows"
}

/// Daemon counters summed over queue pairs (gauges: the highest).
pub fn summed(
    c: &[std::collections::HashMap<String, u64>],
) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for q in c {
        for (k, v) in q {
            if k == "queue" {
                continue;
            }
            let e = out.entry(k.clone()).or_insert(0u64);
            if is_gauge(k) {
                *e = (*e).max(*v);
            } else {
                *e += v;
            }
        }
    }
    out
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
    }

    #[test]
    fn kv_of_the_last_report() {
        let t = "vu-bridge: counters: rx_frames=1 refused=0\nx\nvu-bridge: counters: rx_frames=5 refused=0 held_at_exit=2\n";
        let m = parse_kv_after(t, "counters:");
        assert_eq!(m["rx_frames"], 5);
        assert_eq!(m["held_at_exit"], 2);
    }
}
