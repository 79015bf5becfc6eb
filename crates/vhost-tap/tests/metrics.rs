//! The Prometheus endpoint: a scrape taken during traffic passes `promtool
//! check metrics` and counts exactly the frames sent; the unix-socket form
//! answers the same; and a real Prometheus server (Debian's package, started
//! here on private ports) scrapes the daemon and reports, through its HTTP
//! API, a frame rate that matches the rate the test sent.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::Process;

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET over `stream`; the body if the status is 200.
fn get<S: Read + Write>(mut stream: S, host: &str, path: &str) -> Result<String, String> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    stream
        .read_to_string(&mut resp)
        .map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

fn scrape(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint answers");
    get(s, "127.0.0.1", "/metrics").expect("GET /metrics")
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Send `n` guest → host frames on queue 0.
fn send_frames(drv: &mut vu_driver::Driver, tag: u32, n: u32) {
    for seq in 0..n {
        guest_send(drv, 0, &[0; 12], &udp_frame(tag, seq, 1024, 64));
    }
}

#[test]
#[ignore = "needs root, /dev/net/tun and promtool (Debian's prometheus package): run by tests/run.sh"]
fn a_scrape_during_traffic_checks_and_counts_what_was_sent() {
    let port = free_port();
    let dir = TempDir::new("m");
    let unix = dir.join("metrics.sock");
    let d = Daemon::start(Opts {
        extra: vec!["--metrics".into(), format!("127.0.0.1:{port}")],
        ..opts()
    });
    d.wait_log(&["metrics: http://127.0.0.1"], Duration::from_secs(5))
        .expect("the daemon did not start its metrics endpoint");
    let mut drv = d.connect();
    let tag = fresh_tag();
    send_frames(&mut drv, tag, 300);
    let line = format!(
        "vhost_tap_frames_total{{device=\"{}\",queue=\"0\",direction=\"tx\"}}",
        d.tap
    );
    let sent = wait_for(Duration::from_secs(5), || {
        let t = scrape(port);
        (sample(&t, &line)? >= 300.0).then_some(t)
    })
    .unwrap_or_else(|| panic!("{line} never reached 300; last scrape:\n{}", scrape(port)));
    assert_eq!(
        sample(&sent, &line),
        Some(300.0),
        "counted more frames than sent"
    );

    // promtool on a scrape taken while frames flow.
    send_frames(&mut drv, tag, 100);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape(port).as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "vhost_tap_dropped_frames_total{",
        "vhost_tap_device{",
        "vhost_tap_frontend_connected{",
        "vhost_tap_qdisc_backlog_frames{",
        "vhost_tap_reader_stops_total{",
    ] {
        assert!(scrape(port).contains(family), "no {family} in the scrape");
    }
    assert_eq!(
        sample(
            &scrape(port),
            &format!("vhost_tap_frontend_connected{{device=\"{}\"}}", d.tap)
        ),
        Some(1.0)
    );
    drop(d);

    // The same endpoint on a unix socket.
    let d = Daemon::start(Opts {
        extra: vec!["--metrics".into(), format!("unix:{}", unix.display())],
        ..opts()
    });
    let body = wait_for(Duration::from_secs(5), || {
        get(UnixStream::connect(&unix).ok()?, "localhost", "/metrics").ok()
    })
    .expect("GET /metrics over the unix socket");
    assert!(
        body.contains(&format!("vhost_tap_device{{device=\"{}\"", d.tap)),
        "{body}"
    );
    let s = UnixStream::connect(&unix).unwrap();
    assert!(get(s, "localhost", "/other").unwrap_err().contains("404"));
}

#[test]
#[ignore = "needs root, /dev/net/tun and Debian's prometheus package: run by tests/run.sh"]
fn a_real_prometheus_scrapes_the_rate_that_was_sent() {
    const RATE: f64 = 400.0; // frames per second, guest → host
    let (port, prom_port) = (free_port(), free_port());
    let dir = TempDir::new("prom");
    let d = Daemon::start(Opts {
        extra: vec!["--metrics".into(), format!("127.0.0.1:{port}")],
        ..opts()
    });
    fs_write(
        &dir.join("prometheus.yml"),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vhost-tap\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    );
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap());
    let _prom = Process::spawn(cmd, "prometheus");
    let query = |q: &str, at: Option<f64>| -> Option<serde_json::Value> {
        let s = TcpStream::connect(("127.0.0.1", prom_port)).ok()?;
        let mut path = format!("/api/v1/query?query={}", urlencode(q));
        if let Some(t) = at {
            path += &format!("&time={t:.3}");
        }
        serde_json::from_str(&get(s, "127.0.0.1", &path).ok()?).ok()
    };
    wait_for(Duration::from_secs(20), || query("up", None).map(|_| ())).unwrap_or_else(|| {
        panic!(
            "prometheus did not answer; log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    });

    // RATE frames/s for 12 s, paced in 20 ms steps.
    let mut drv = d.connect();
    let tag = fresh_tag();
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(12) {
        let due = (start.elapsed().as_secs_f64() * RATE) as u32;
        if due > sent {
            send_frames(&mut drv, tag, due - sent);
            sent = due;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Evaluate 2 s before the end, so the 5 s window lies inside the
    // traffic; wait until Prometheus has scraped past that moment.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 2.0;
    std::thread::sleep(Duration::from_secs(3));
    let q = format!(
        "rate(vhost_tap_frames_total{{device=\"{}\",direction=\"tx\"}}[5s])",
        d.tap
    );
    let v = query(&q, Some(at)).expect("query answered");
    let rate: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {v}"));
    eprintln!("prometheus: {q} = {rate:.1} frames/s (sent {RATE})");
    assert!(
        (rate - RATE).abs() <= RATE * 0.15,
        "Prometheus says {rate:.1} frames/s, the test sent {RATE} frames/s ({v})"
    );
}

fn fs_write(p: &std::path::Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

/// Percent-encode a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `vhost-tap status` and `status --json` show what the endpoint serves:
/// the device, its mode, the connected frontend and the frames sent.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn status_shows_devices_and_queues() {
    let port = free_port();
    let mut d = Daemon::start(Opts {
        extra: vec!["--metrics".into(), format!("127.0.0.1:{port}")],
        ..opts()
    });
    d.wait_log(&["metrics: http://127.0.0.1"], Duration::from_secs(5))
        .expect("no metrics endpoint");
    let mut drv = d.connect();
    send_frames(&mut drv, fresh_tag(), 25);
    let addr = format!("127.0.0.1:{port}");
    let counted = wait_for(Duration::from_secs(5), || {
        let out = Command::new(BIN)
            .args(["status", "--json", "--metrics", &addr])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[0]["queues"][0]["tx_frames"] == 25).then_some(v)
    })
    .expect("status --json never showed the 25 frames sent");
    assert_eq!(counted[0]["device"], d.tap.as_str());
    assert_eq!(counted[0]["frontend_connected"], true);
    let mode = d.counters().mode;
    assert!(!mode.is_empty());
    assert_eq!(counted[0]["mode"], mode.as_str());
    let out = Command::new(BIN)
        .args(["status", "--metrics", &addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!(
            "{}: TAP {}, mode fq-codel, frontend connected",
            d.tap, d.tap
        )) && text.contains("guest->host 25 frames"),
        "{text}"
    );
    // Nothing listening: exit status 1 and a message naming the address.
    let gone = format!("127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["status", "--metrics", &gone])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&gone));
}
