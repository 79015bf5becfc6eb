//! The Linux 7.3 test VM (`vm-images/k73/`): boot it once with a script of
//! scenarios (`vm-images/k73/scenarios.sh` + the caller's calls), and read
//! the results the script prints on the serial console.
//!
//! ```text
//!  K73: <scenario> <key> <value...>     one result
//!  K73-BEGIN <scenario> <name>          a file: the daemon's log, ping's output, iperf3's JSON, ...
//!  K73-END <scenario> <name>
//! ```
//!
//! QEMU is `vm-images/k73/run.sh`, which execs it: the child's PID is
//! QEMU's, stopped by PID when [`K73Vm`] drops (also when the test failed,
//! then printing the console's tail); the boot's files live in a [`TempDir`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{daemon_binary, Process, TempDir};

use crate::repo;
use crate::slowguest::bridge_binary;

/// The in-VM scenario functions, put in front of every script.
pub const SCENARIOS_SH: &str = include_str!("../../vm-images/k73/scenarios.sh");

/// Build (or find up to date) the VM's kernel and cached initramfs.
pub fn build_image() {
    let st = Command::new("bash")
        .arg(repo().join("vm-images/k73/build.sh"))
        .status()
        .expect("vm-images/k73/build.sh");
    assert!(st.success(), "vm-images/k73/build.sh failed: {st}");
}

/// One boot of the 7.3 VM running a script.
pub struct K73Vm {
    qemu: Option<Process>,
    pub console: PathBuf,
    started: Instant,
    _dir: TempDir,
}

impl K73Vm {
    /// Boots the VM with `calls` after the scenario functions as its script,
    /// and with this build's daemon and vu-bridge.
    pub fn boot(calls: &str) -> K73Vm {
        let dir = TempDir::new("k73");
        let script = dir.join("run.sh");
        fs::write(
            &script,
            format!("{SCENARIOS_SH}\n# ---- the test's calls\n{calls}"),
        )
        .expect("script");
        let console = dir.join("console.log");
        let mut cmd = Command::new(repo().join("vm-images/k73/run.sh"));
        cmd.arg("-S")
            .arg(&script)
            .arg("-l")
            .arg(&console)
            .arg("-w")
            .arg(dir.join("boot"))
            .arg("--bin")
            .arg(daemon_binary())
            .arg("--bin")
            .arg(bridge_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("qemu.err")).expect("qemu.err"));
        K73Vm {
            qemu: Some(Process::spawn(cmd, "QEMU (k73/run.sh)")),
            console,
            started: Instant::now(),
            _dir: dir,
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).replace('\r', "")
    }

    /// Waits until the script has ended and QEMU has exited (the VM powers
    /// off after the script), at most `timeout`; the console text, or what
    /// went wrong with the console's tail (QEMU is then stopped).
    pub fn finish(&mut self, timeout: Duration) -> Result<String, String> {
        let qemu = self.qemu.as_mut().expect("QEMU");
        let st = qemu.wait(timeout);
        let text = self.console_text();
        if st.is_none() || !text.contains("VT-GUEST: exit=") {
            if let Some(mut q) = self.qemu.take() {
                q.stop(Duration::from_secs(5));
            }
            return Err(format!(
                "the 7.3 VM did not finish its script in {timeout:?} (QEMU exit {st:?}); console tail:\n{}\nqemu stderr:\n{}",
                tail(&text, 60),
                fs::read_to_string(self._dir.join("qemu.err")).unwrap_or_default()
            ));
        }
        self.qemu = None;
        Ok(text)
    }

    /// Seconds since the boot started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for K73Vm {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            q.stop(Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!(
                "---- 7.3 VM console (tail) ----\n{}",
                tail(&self.console_text(), 80)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// What one scenario printed: its `K73:` values in order and its files.
#[derive(Debug, Clone, Default)]
pub struct ScenarioOut {
    pub values: Vec<(String, String)>,
    pub files: BTreeMap<String, String>,
}

impl ScenarioOut {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` as a number.
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key)?.trim().parse().ok()
    }

    /// A file the scenario printed ("" if none).
    pub fn file(&self, name: &str) -> &str {
        self.files.get(name).map(String::as_str).unwrap_or("")
    }

    /// Every `error` the scenario reported.
    pub fn errors(&self) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| k == "error")
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The scenarios on a console, by name.
pub fn parse_console(text: &str) -> BTreeMap<String, ScenarioOut> {
    let mut out: BTreeMap<String, ScenarioOut> = BTreeMap::new();
    let mut block: Option<(String, String, String)> = None; // scenario, name, text
    for line in text.lines() {
        if let Some((sc, name, buf)) = block.as_mut() {
            if line.starts_with(&format!("K73-END {sc} {name}")) {
                let (sc, name, buf) = block.take().unwrap();
                out.entry(sc).or_default().files.insert(name, buf);
            } else {
                buf.push_str(line);
                buf.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.split_once("K73-BEGIN ").map(|(_, r)| r) {
            let mut w = rest.split_whitespace();
            if let (Some(sc), Some(name)) = (w.next(), w.next()) {
                block = Some((sc.to_string(), name.to_string(), String::new()));
            }
            continue;
        }
        if let Some(rest) = line.split_once("K73: ").map(|(_, r)| r) {
            let mut w = rest.splitn(3, ' ');
            if let (Some(sc), Some(key)) = (w.next(), w.next()) {
                let v = w.next().unwrap_or("").trim().to_string();
                // `t=UPTIME event` lines: key t, value "UPTIME event".
                let (key, v) = match key.strip_prefix("t=") {
                    Some(up) => ("t".to_string(), format!("{up} {v}")),
                    None => (key.to_string(), v),
                };
                out.entry(sc.to_string()).or_default().values.push((key, v));
            }
        }
    }
    out
}

/// Figures of `tc -s qdisc show` (the root qdisc, the first one listed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QdiscStats {
    pub sent_pkts: u64,
    pub dropped: u64,
    pub overlimits: u64,
    pub requeues: u64,
    pub backlog_bytes: u64,
    pub backlog_pkts: u64,
    pub ecn_mark: u64,
    pub drop_overlimit: u64,
}

/// The number after `key` in `text` (`key` then optional spaces).
fn num_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The root qdisc's statistics in `tc -s qdisc show dev X` output.
pub fn parse_qdisc(text: &str) -> QdiscStats {
    // The root qdisc's block: up to the next "qdisc " line.
    let block: String = {
        let mut lines = text.lines();
        let mut b = String::new();
        if let Some(first) = lines.next() {
            b.push_str(first);
            b.push('\n');
        }
        for l in lines.take_while(|l| !l.starts_with("qdisc ")) {
            b.push_str(l);
            b.push('\n');
        }
        b
    };
    QdiscStats {
        sent_pkts: num_after(&block, "bytes").unwrap_or(0),
        dropped: num_after(&block, "(dropped").unwrap_or(0),
        overlimits: num_after(&block, "overlimits").unwrap_or(0),
        requeues: num_after(&block, "requeues").unwrap_or(0),
        backlog_bytes: num_after(&block, "backlog").unwrap_or(0),
        backlog_pkts: block
            .split("backlog ")
            .nth(1)
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.trim_end_matches('p').parse().ok())
            .unwrap_or(0),
        ecn_mark: num_after(&block, "ecn_mark").unwrap_or(0),
        drop_overlimit: num_after(&block, "drop_overlimit").unwrap_or(0),
    }
}

/// The highest backlog (packets, bytes) among `backlog Xb Yp` sample lines.
pub fn max_backlog(samples: &str) -> (u64, u64) {
    samples
        .lines()
        .map(|l| {
            let q = parse_qdisc(&format!("x\n{l}"));
            (q.backlog_pkts, q.backlog_bytes)
        })
        .fold((0, 0), |(p, b), (p1, b1)| (p.max(p1), b.max(b1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_scenarios_values_and_files() {
        let t = "SeaBIOS\nK73: a t=12.5 listening\nK73: a tail_drops 0\n\
            K73-BEGIN a ping\nPING x\n64 bytes time=1.0 ms\n\nK73-END a ping\n\
            [ 3.1] kernel noise K73: b error it broke here\nK73: a tail_drops 7\n";
        let s = parse_console(t);
        assert_eq!(s["a"].num("tail_drops"), Some(7));
        assert_eq!(s["a"].get("t"), Some("12.5 listening"));
        assert_eq!(s["a"].file("ping"), "PING x\n64 bytes time=1.0 ms\n\n");
        assert_eq!(s["b"].errors(), vec!["it broke here"]);
        assert_eq!(s["a"].file("none"), "");
    }

    #[test]
    fn qdisc_figures() {
        let t = "qdisc fq_codel 8001: root refcnt 2 limit 10240p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 32Mb ecn drop_batch 64 \n \
            Sent 51799840 bytes 34251 pkt (dropped 17, overlimits 3 requeues 66) \n \
            backlog 45420b 30p requeues 66\n  \
            maxpacket 22710 drop_overlimit 2 new_flow_count 112 ecn_mark 5\n  \
            new_flows_len 0 old_flows_len 0\n\
            qdisc fq_codel 0: parent :1 limit 10240p\n Sent 9 bytes 1 pkt (dropped 99, overlimits 0 requeues 0)\n";
        let q = parse_qdisc(t);
        assert_eq!(
            q,
            QdiscStats {
                sent_pkts: 34251,
                dropped: 17,
                overlimits: 3,
                requeues: 66,
                backlog_bytes: 45420,
                backlog_pkts: 30,
                ecn_mark: 5,
                drop_overlimit: 2,
            }
        );
        assert_eq!(
            max_backlog(" backlog 0b 0p requeues 0\n backlog 3028b 2p requeues 1\n backlog 1514b 1p requeues 1\n"),
            (2, 3028)
        );
    }
}
