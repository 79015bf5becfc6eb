//! Running under systemd: the unit in `dist/` verifies, and the daemon
//! speaks the notify protocol (`READY=1` once every socket listens, a
//! `STATUS=` line per frontend connect and disconnect, `STOPPING=1`) to a
//! notify socket the test provides, as systemd would with `Type=notify`.

mod common;

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::Process;

/// The next notification within `timeout`, as text.
fn next(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Notifications until one contains `needle` (all of them, in order).
fn until(sock: &UnixDatagram, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match next(sock, left) {
            Some(m) => {
                let done = m.contains(needle);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            None => break,
        }
    }
    panic!("no notification with {needle:?} within {timeout:?}; got {seen:?}");
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn notify_ready_status_and_stopping() {
    let dir = TempDir::new("n");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.join("vm.sock");
    let tap = unique_name("vtn");
    let _tap_guard = TapGuard(tap.clone());
    let mut cmd = Command::new(BIN);
    cmd.args(["--socket", socket.to_str().unwrap(), "--tap", &tap])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = Process::spawn(cmd, "vhost-tap");

    let ready = until(&notify, "READY=1", Duration::from_secs(10));
    // Ready means listening: a frontend can connect at once.
    assert!(
        UnixStream::connect(&socket).is_ok(),
        "READY=1 came before {} listened",
        socket.display()
    );
    assert!(
        ready
            .last()
            .unwrap()
            .contains("STATUS=1 device(s) listening, 0 frontend(s)"),
        "{ready:?}"
    );
    // That probe connection was a frontend that left at once.
    until(&notify, "0 frontend(s) connected", Duration::from_secs(5));

    let drv = vu_driver::Driver::connect(vu_driver::DriverConfig {
        socket: socket.clone(),
        ..vu_driver::DriverConfig::default()
    })
    .expect("frontend connects");
    until(
        &notify,
        "STATUS=1 device(s) listening, 1 frontend(s) connected",
        Duration::from_secs(5),
    );
    drop(drv);
    until(&notify, "0 frontend(s) connected", Duration::from_secs(5));

    daemon
        .stop(Duration::from_secs(5))
        .expect("daemon exits on SIGTERM");
    let end = until(&notify, "STOPPING=1", Duration::from_secs(2));
    assert!(!end.iter().any(|m| m.contains("READY=1")), "{end:?}");
}

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd package): run by tests/run.sh"]
fn the_unit_file_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dist/vhost-tap.service"
    ))
    .expect("dist/vhost-tap.service");
    assert!(
        unit.contains("Type=notify"),
        "the daemon notifies readiness"
    );
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = TempDir::new("u");
    let path = dir.join("vhost-tap.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/vhost-tap", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze runs");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
