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

/// Whether a process running as `nobody` (uid/gid 65534) with the
/// supplementary groups `groups` can connect to `socket`.
fn nobody_connects(socket: &std::path::Path, groups: &str) -> bool {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534"])
        .arg(if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!("--groups={groups}")
        })
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        ])
        .arg(socket)
        .output()
        .expect("setpriv runs");
    out.status.success()
}

/// `--socket-group G --socket-mode 0660`: from the first moment the socket
/// exists it has that group and mode (a watcher polls the path from before
/// the daemon starts), an unprivileged process reaches it only through the
/// group, and the daemon serves it as a frontend.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn socket_appears_with_its_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const GID: u32 = 4242;
    let dir = TempDir::new("p");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("vm.sock");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (socket, done) = (socket.clone(), done.clone());
        std::thread::spawn(move || {
            // Stop at the first sighting: (gid, mode) as it first appeared.
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&socket) {
                    return Some((m.gid(), m.mode() & 0o7777));
                }
                std::hint::spin_loop();
            }
            None
        })
    };
    let tap = unique_name("vtp");
    let _tap_guard = TapGuard(tap.clone());
    let log = dir.join("daemon.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["--socket", socket.to_str().unwrap(), "--tap", &tap])
        .args(["--socket-group", &GID.to_string(), "--socket-mode", "0660"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = Process::spawn(cmd, "vhost-tap");
    let first = watcher.join().unwrap();
    done.store(true, Ordering::Relaxed);
    assert_eq!(
        first,
        Some((GID, 0o660)),
        "the socket's (gid, mode) when it first appeared"
    );

    assert!(
        !nobody_connects(&socket, ""),
        "nobody without the group connected"
    );
    assert!(
        nobody_connects(&socket, &GID.to_string()),
        "nobody with the group was refused"
    );
    let served = testkit::wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("frontend connected (connection 1)"))
    });
    assert!(
        served.is_some(),
        "the daemon did not serve the group member"
    );
    assert!(daemon
        .stop(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
}
