//! SIGHUP reloads `--config`: devices added and removed while the others
//! keep their traffic and their frontend; a changed device restarts at once
//! when idle and only after its frontend leaves when one is connected; a
//! file that does not check is rejected and changes nothing.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use vu_driver::{Driver, DriverConfig};

struct Dev {
    socket: PathBuf,
    tap: String,
    /// Extra `key = value` lines.
    extra: String,
}

fn write_config(path: &std::path::Path, devs: &[&Dev]) {
    let mut s = String::new();
    for d in devs {
        s += &format!(
            "[[device]]\nsocket = {:?}\ntap = {:?}\n{}\n",
            d.socket.display().to_string(),
            d.tap,
            d.extra
        );
    }
    fs::write(path, s).unwrap();
}

fn connect(socket: &std::path::Path) -> Driver {
    Driver::connect(DriverConfig {
        socket: socket.to_path_buf(),
        ..DriverConfig::default()
    })
    .expect("frontend connects")
}

/// Three devices A, B (and C later); A has a frontend with traffic.
fn setup() -> (Daemon, PathBuf, [Dev; 3], Vec<TapGuard>) {
    let dir = TempDir::new("rl");
    let devs = ["a", "b", "c"].map(|n| Dev {
        socket: dir.join(format!("{n}.sock")),
        tap: unique_name("vtr"),
        extra: String::new(),
    });
    let guards = devs.iter().map(|d| TapGuard(d.tap.clone())).collect();
    let config = dir.join("devices.toml");
    write_config(&config, &[&devs[0], &devs[1]]);
    let list = [&devs[0], &devs[1]]
        .iter()
        .map(|d| (d.socket.clone(), d.tap.clone()))
        .collect();
    let d = Daemon::start_config(Some(BIN.into()), dir, &config, list);
    (d, config, devs, guards)
}

/// Send SIGHUP and wait for the reload's last line (or its rejection).
fn reload(d: &Daemon, marker: &str) {
    let before = d.log_text().matches(marker).count();
    d.signal(libc::SIGHUP);
    let done = wait_for(Duration::from_secs(10), || {
        (d.log_text().matches(marker).count() > before).then_some(())
    });
    assert!(
        done.is_some(),
        "no {marker:?} after SIGHUP; log:\n{}",
        d.log_text()
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn reload_adds_and_removes_devices_while_the_others_keep_their_frontend() {
    let (d, config, devs, _guards) = setup();
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);

    write_config(&config, &[&devs[0], &devs[2]]);
    reload(&d, "reload of");
    assert!(!devs[1].socket.exists(), "removed device B left its socket");
    assert!(
        wait_for(Duration::from_secs(2), || (!tap_exists(&devs[1].tap))
            .then_some(()))
        .is_some(),
        "removed device B left its TAP"
    );
    assert!(tap_exists(&devs[2].tap), "added device C has no TAP");
    let _c = connect(&devs[2].socket);
    // A kept its frontend (same connection, traffic both ways).
    check_both_ways(&d, &mut drv, 0);
    let log = d.log_text();
    assert!(
        !log.contains(&format!("{}: frontend gone", devs[0].tap)),
        "A's frontend was cut by the reload; log:\n{log}"
    );
    d.assert_no_panic();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_changed_device_restarts_when_its_frontend_leaves() {
    let (d, config, mut devs, _guards) = setup();
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);

    // Both change; A has a frontend, B has none.
    devs[0].extra = "mtu = 1400\n".into();
    devs[1].extra = "mtu = 1400\n".into();
    write_config(&config, &[&devs[0], &devs[1]]);
    reload(&d, "reload of");
    d.wait_log(
        &[&devs[1].tap, "restarted with the changed configuration"],
        Duration::from_secs(5),
    )
    .expect("idle B was not restarted at once");
    d.wait_log(
        &[
            &devs[0].tap,
            "the change applies when the connected frontend leaves",
        ],
        Duration::from_secs(5),
    )
    .expect("A's change did not wait for its frontend");
    // A still serves its frontend with the old settings.
    check_both_ways(&d, &mut drv, 0);
    let mtu = |tap: &str| fs::read_to_string(format!("/sys/class/net/{tap}/mtu")).unwrap();
    assert_eq!(mtu(&devs[0].tap).trim(), "1500");
    assert_eq!(mtu(&devs[1].tap).trim(), "1400");

    drop(drv);
    d.wait_log(
        &[&devs[0].tap, "restarted with the changed configuration"],
        Duration::from_secs(5),
    )
    .expect("A was not restarted after its frontend left");
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    assert_eq!(mtu(&devs[0].tap).trim(), "1400");
    d.assert_no_panic();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_config_that_does_not_check_is_rejected_and_changes_nothing() {
    let (d, config, devs, _guards) = setup();
    let mut drv = d.connect();
    fs::write(
        &config,
        format!(
            "[[device]]\nsocket = {:?}\ntap = {:?}\nqueue_size = 1000\n",
            devs[0].socket.display().to_string(),
            devs[0].tap
        ),
    )
    .unwrap();
    reload(&d, "the running devices are left as they are");
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "{}:4: queue_size: 1000 is not a power of two",
            config.display()
        )),
        "the rejection does not name file:line:key; log:\n{log}"
    );
    assert!(devs[1].socket.exists(), "B's socket went away");
    let _b = connect(&devs[1].socket);
    check_both_ways(&d, &mut drv, 0);
    d.assert_no_panic();
}

/// Threads of process `pid` (`Threads:` in /proc/PID/status).
fn threads(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Reloads that remove, add and change devices while frontends keep
/// connecting to every socket and leaving at once: the accept loop, the
/// connections' ends and the stops race. Every change applies, no
/// connection thread is left over, and the daemon exits cleanly with no
/// socket behind.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn reloads_while_frontends_come_and_go_leave_nothing_behind() {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (mut d, config, mut devs, _guards) = setup();
    let idle_threads = threads(d.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let knocker = {
        let stop = stop.clone();
        let sockets: Vec<PathBuf> = devs.iter().map(|d| d.socket.clone()).collect();
        std::thread::spawn(move || {
            let mut knocks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for s in &sockets {
                    if UnixStream::connect(s).is_ok() {
                        knocks += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            knocks
        })
    };
    for round in 0..8 {
        // A changes every round; B and C come and go.
        devs[0].extra = if round % 2 == 1 {
            "mtu = 1400\n".into()
        } else {
            String::new()
        };
        let set: Vec<&Dev> = match round % 3 {
            0 => vec![&devs[0], &devs[2]],
            1 => vec![&devs[0], &devs[1]],
            _ => devs.iter().collect(),
        };
        write_config(&config, &set);
        reload(&d, "reload of");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let knocks = knocker.join().unwrap();
    assert!(knocks > 0, "no frontend ever connected");

    // The last round: A with MTU 1400, B, no C. A change that waited for a
    // knocking frontend applies once it has left (within a second or so).
    let mtu =
        |tap: &str| fs::read_to_string(format!("/sys/class/net/{tap}/mtu")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(5), || (mtu(&devs[0].tap).trim()
            == "1400")
            .then_some(()))
        .is_some(),
        "A's last change did not apply (MTU {}); log:\n{}",
        mtu(&devs[0].tap).trim(),
        d.log_text()
    );
    assert!(!devs[2].socket.exists(), "removed device C left its socket");
    let settled = wait_for(Duration::from_secs(5), || {
        (threads(d.pid) <= idle_threads).then_some(())
    });
    assert!(
        settled.is_some(),
        "{} threads after the frontends left ({idle_threads} before)",
        threads(d.pid)
    );
    let mut a = connect(&devs[0].socket);
    check_both_ways(&d, &mut a, 0);
    drop(a);
    let _b = connect(&devs[1].socket);
    d.assert_no_panic();
    let st = d.terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "exit {st:?}");
    assert!(
        devs.iter().all(|d| !d.socket.exists()),
        "sockets left behind after exit"
    );
    // Lines that would show the accept loop and a stop out of step: a
    // listener re-armed after its removal, or removed twice.
    let log = d.log_text();
    for bad in [
        "back to the accept loop",
        "cannot remove a listener",
        "accepting a frontend failed",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    println!("{knocks} frontends came and went during 8 reloads");
}
