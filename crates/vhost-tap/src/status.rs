//! `vhost-tap status [--json]`: what a running daemon reports, read from its
//! metrics endpoint (the same figures Prometheus scrapes), as one line per
//! device and per queue for a person, or as JSON for a script.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::MetricsAddr;

/// `GET /metrics` from `addr`; the body.
pub fn fetch(addr: &MetricsAddr) -> io::Result<String> {
    let timeout = Some(Duration::from_secs(5));
    let mut resp = String::new();
    let req = b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    match addr {
        MetricsAddr::Tcp(a) => {
            let mut s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
            s.set_read_timeout(timeout)?;
            s.write_all(req)?;
            s.read_to_string(&mut resp)?;
        }
        MetricsAddr::Unix(p) => {
            let mut s = UnixStream::connect(p)?;
            s.set_read_timeout(timeout)?;
            s.write_all(req)?;
            s.read_to_string(&mut resp)?;
        }
    }
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(io::Error::other(format!("the endpoint answered {status}")));
    }
    Ok(body.to_string())
}

/// One sample of the exposition: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text format as this daemon writes it (no
/// timestamps; label values escape `\`, `"` and newlines).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut v = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.insert(key, v);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// One device as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceStatus {
    pub device: String,
    pub tap: String,
    pub mode: String,
    pub reason: String,
    pub frontend_connected: bool,
    /// Frames lost by place (`daemon`, `aqm`, `tun`, `qdisc`).
    pub dropped: BTreeMap<String, u64>,
    pub qdisc: Option<String>,
    pub qdisc_backlog_frames: u64,
    pub queues: Vec<QueueStatus>,
}

/// One queue pair as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueStatus {
    pub queue: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub dropped: u64,
    pub aqm_backlog_frames: u64,
}

/// The devices in a scrape, in the order of their names.
pub fn summarize(samples: &[Sample]) -> Vec<DeviceStatus> {
    let mut devs: BTreeMap<String, DeviceStatus> = BTreeMap::new();
    let mut queues: BTreeMap<(String, usize), QueueStatus> = BTreeMap::new();
    for s in samples {
        let Some(name) = s.labels.get("device") else {
            continue;
        };
        let d = devs.entry(name.clone()).or_insert_with(|| DeviceStatus {
            device: name.clone(),
            ..DeviceStatus::default()
        });
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let v = s.value as u64;
        let q = s
            .labels
            .get("queue")
            .and_then(|q| q.parse::<usize>().ok())
            .map(|i| {
                queues
                    .entry((name.clone(), i))
                    .or_insert_with(|| QueueStatus {
                        queue: i,
                        ..QueueStatus::default()
                    })
            });
        match (s.name.as_str(), label("direction").as_str(), q) {
            ("vhost_tap_device", _, _) => {
                d.tap = label("tap");
                d.mode = label("mode");
                d.reason = label("reason");
            }
            ("vhost_tap_frontend_connected", _, _) => d.frontend_connected = v == 1,
            ("vhost_tap_frames_total", "rx", Some(q)) => q.rx_frames = v,
            ("vhost_tap_frames_total", "tx", Some(q)) => q.tx_frames = v,
            ("vhost_tap_bytes_total", "rx", Some(q)) => q.rx_bytes = v,
            ("vhost_tap_bytes_total", "tx", Some(q)) => q.tx_bytes = v,
            ("vhost_tap_aqm_backlog_frames", _, Some(q)) => q.aqm_backlog_frames = v,
            ("vhost_tap_dropped_frames_total", _, q) => {
                *d.dropped.entry(label("place")).or_default() += v;
                if label("place") == "qdisc" {
                    d.qdisc = Some(label("reason"));
                }
                if let Some(q) = q {
                    q.dropped += v;
                }
            }
            ("vhost_tap_qdisc_backlog_frames", _, _) => d.qdisc_backlog_frames = v,
            _ => {}
        }
    }
    // In (device, queue) order.
    for ((dev, _), q) in queues {
        if let Some(d) = devs.get_mut(&dev) {
            d.queues.push(q);
        }
    }
    devs.into_values().collect()
}

/// The report for a person.
pub fn human(devs: &[DeviceStatus]) -> String {
    let mut out = String::new();
    for d in devs {
        let drops: Vec<String> = d.dropped.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let _ = writeln!(
            out,
            "{}: TAP {}, mode {}, frontend {}; dropped: {}; qdisc {} backlog {} frames",
            d.device,
            d.tap,
            d.mode,
            if d.frontend_connected {
                "connected"
            } else {
                "none"
            },
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(", ")
            },
            d.qdisc.as_deref().unwrap_or("?"),
            d.qdisc_backlog_frames,
        );
        let _ = writeln!(out, "  why: {}", d.reason);
        for q in &d.queues {
            let _ = writeln!(
                out,
                "  queue {}: host->guest {} frames {} bytes, guest->host {} frames {} bytes, dropped {}, AQM backlog {}",
                q.queue, q.rx_frames, q.rx_bytes, q.tx_frames, q.tx_bytes, q.dropped, q.aqm_backlog_frames
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_summarizes_an_exposition() {
        let text = r#"# HELP vhost_tap_device x
# TYPE vhost_tap_device gauge
vhost_tap_device{device="vt0",tap="vt0",mode="fq-codel",datapath="userspace",reason="auto: \"x\", y"} 1
vhost_tap_frames_total{device="vt0",queue="1",direction="rx"} 12
vhost_tap_frames_total{device="vt0",queue="0",direction="tx"} 5
vhost_tap_dropped_frames_total{device="vt0",queue="0",direction="rx",reason="codel",place="aqm"} 3
vhost_tap_dropped_frames_total{device="vt0",direction="rx",reason="ring_full",place="tun"} 2
vhost_tap_dropped_frames_total{device="vt0",direction="rx",reason="fq_codel",place="qdisc"} 0
vhost_tap_frontend_connected{device="vt0"} 1
"#;
        let s = parse(text);
        assert_eq!(s.len(), 7);
        assert_eq!(s[0].labels["reason"], "auto: \"x\", y");
        let d = summarize(&s);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].mode.as_str(), d[0].frontend_connected),
            ("fq-codel", true)
        );
        assert_eq!(d[0].queues.len(), 2);
        assert_eq!(
            (d[0].queues[1].rx_frames, d[0].queues[0].tx_frames),
            (12, 5)
        );
        assert_eq!(d[0].dropped["aqm"], 3);
        assert_eq!(d[0].dropped["tun"], 2);
        assert_eq!(d[0].qdisc.as_deref(), Some("fq_codel"));
        assert!(human(&d).contains(
            "vt0: TAP vt0, mode fq-codel, frontend connected; dropped: aqm 3, qdisc 0, tun 2"
        ));
    }
}
