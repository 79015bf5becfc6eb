//! Process life: clean shutdown on SIGTERM, and precise configuration errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::ReportEvent;
use vu_driver::{Driver, DriverConfig, RawDesc};

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn sigterm_cleans_up_a_created_tap() {
    let mut d = start_queues(1);
    let drv = d.connect();
    let st = d
        .terminate(Duration::from_secs(5))
        .expect("daemon still running 5 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(
        !d.socket.exists(),
        "socket {} left behind",
        d.socket.display()
    );
    assert!(
        wait_for(Duration::from_secs(2), || (!tap_exists(&d.tap))
            .then_some(()))
        .is_some(),
        "TAP {} still exists after the daemon exited",
        d.tap
    );
    assert!(
        d.reports().iter().any(|r| r.event == ReportEvent::Exit),
        "no final counters (exit report) in the log"
    );
    drop(drv);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn sigterm_leaves_a_preexisting_tap() {
    let name = unique_name("vti");
    let out = ip(&["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"]);
    assert!(out.status.success(), "ip tuntap add: {out:?}");
    let _guard = TapGuard(name.clone());
    let mut d = Daemon::start(Opts {
        tap: Some(name.clone()),
        ..opts()
    });
    d.wait_log(&[&format!("TAP {name} attached")], Duration::from_secs(5))
        .expect("daemon did not say it attached");
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    let st = d
        .terminate(Duration::from_secs(5))
        .expect("daemon still running 5 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(!d.socket.exists(), "socket left behind");
    assert!(tap_exists(&name), "the pre-existing TAP {name} was removed");
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running vhost-tap");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Pure: every error is caught before a TAP is opened (no root needed).
#[test]
fn config_errors_are_precise() {
    let dir = TempDir::new("it");
    let file = dir.join("vt.toml");
    let f = file.display().to_string();

    std::fs::write(
        &file,
        "[[device]]\nsocket = \"/tmp/x.sock\"\ntap = \"vtix0\"\nqueus = 2\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "unknown key accepted: {err}");
    assert!(err.contains(&format!("{f}:4:")), "no file:line in: {err}");
    assert!(err.contains("queus"), "key not named in: {err}");

    std::fs::write(&file, "[[device]]\nsocket = \"/tmp/x.sock\"\n").unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "missing tap accepted: {err}");
    assert!(err.contains(&format!("{f}:1:")), "no file:line in: {err}");
    assert!(err.contains("tap"), "key not named in: {err}");

    std::fs::write(
        &file,
        "[[device]]\nsocket = \"/tmp/x.sock\"\ntap = \"vtix0\"\nqueue_size = 1000\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "bad queue_size accepted: {err}");
    assert!(
        err.contains(&format!("{f}:4:")) && err.contains("queue_size"),
        "{err}"
    );

    let (code, err) = run(&["--config", &dir.join("missing.toml").display().to_string()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("missing.toml"), "file not named: {err}");

    let (code, err) = run(&["--socket", "/tmp/x.sock"]);
    assert_ne!(code, Some(0), "--socket without --tap accepted: {err}");
    assert!(err.contains("--tap"), "error does not name --tap: {err}");

    let (code, err) = run(&["--socket", "/tmp/x.sock", "--tap", "vtix0", "--queues", "0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--queues"), "{err}");
    assert!(!tap_exists("vtix0"), "a TAP was created despite the error");
}

/// One daemon, two devices from a config file: a guest that breaks device
/// A's TX queue leaves device B untouched, and both listen again after their
/// frontends leave.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn two_devices_from_a_config_file_are_independent() {
    let dir = TempDir::new("it");
    let (tap_a, tap_b) = (unique_name("vti"), unique_name("vti"));
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let cfg = dir.join("vhost-tap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nsocket = \"{}\"\ntap = \"{tap_a}\"\n\n[[device]]\nsocket = \"{}\"\ntap = \"{tap_b}\"\nmode = \"backpressure\"\n",
            sock_a.display(),
            sock_b.display()
        ),
    )
    .unwrap();
    // Both sockets exist once it starts (or it panics with the log).
    let mut d = Daemon::start_config(
        Some(BIN.into()),
        dir,
        &cfg,
        vec![
            (sock_a.clone(), tap_a.clone()),
            (sock_b.clone(), tap_b.clone()),
        ],
    );
    let cfg_a = DriverConfig {
        socket: sock_a.clone(),
        ..DriverConfig::default()
    };
    let mut a = Driver::connect(cfg_a).expect("device A");
    let mut b = Driver::connect(DriverConfig {
        socket: sock_b.clone(),
        ..DriverConfig::default()
    })
    .expect("device B");
    // Break A's TX queue: a descriptor outside guest memory.
    let bad = RawDesc {
        addr: a.guest_mem_size() + 4096,
        len: 100,
        flags: 0,
        next: 0,
    };
    a.raw_post(1, &[bad], &[0]);
    let broken = d.wait_log(
        &[&format!("{tap_a} queue 0"), "broken"],
        Duration::from_secs(5),
    );
    assert!(broken.is_some(), "A's queue not reported broken");
    // B carries traffic both ways.
    let sock = PacketSock::open(&tap_b, false);
    let tag = fresh_tag();
    let f = test_frame(GUEST_MAC, HOST_MAC, tag, 0, 200);
    guest_send(&mut b, 0, &[0; 12], &f);
    let got = sock.recv_matching(1, Duration::from_secs(5), |x| has_tag(x, tag));
    assert_eq!(got.len(), 1, "B: guest→host frame lost");
    assert_eq!(got[0].1, f);
    let h = test_frame(HOST_MAC, GUEST_MAC, tag, 1, 300);
    sock.send(&h);
    let got = guest_recv(&mut b, 0, 1, 2048, Duration::from_secs(5), |x| {
        has_tag(&x.data, tag)
    });
    assert_eq!(got.len(), 1, "B: host→guest frame lost");
    assert_eq!(got[0].data, h);
    // Both frontends leave; both devices listen again.
    drop(a);
    drop(b);
    let again = wait_for(Duration::from_secs(5), || {
        (d.log_text().matches("listening again").count() >= 2).then_some(())
    });
    assert!(again.is_some(), "both devices should listen again");
    let mut b2 = Driver::connect(DriverConfig {
        socket: sock_b.clone(),
        ..DriverConfig::default()
    })
    .expect("device B again");
    let f = test_frame(GUEST_MAC, HOST_MAC, tag, 2, 200);
    guest_send(&mut b2, 0, &[0; 12], &f);
    let got = sock.recv_matching(1, Duration::from_secs(5), |x| has_tag(x, tag));
    assert_eq!(got.len(), 1, "B after reconnect: frame lost");
    assert!(
        !d.log_text().contains("panicked"),
        "a daemon thread panicked"
    );
    drop(b2);
    let st = d.terminate(Duration::from_secs(5));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit after SIGTERM: {st:?}"
    );
}

/// A TAP the daemon creates gets the same host-side MAC at every start, so
/// neighbour caches survive a daemon restart.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn created_tap_keeps_its_mac_across_restarts() {
    let name = unique_name("vti");
    let mac_of = |n: &str| std::fs::read_to_string(format!("/sys/class/net/{n}/address")).unwrap();
    let mut d = Daemon::start(Opts {
        tap: Some(name.clone()),
        ..opts()
    });
    let first = mac_of(&name);
    assert!(first.starts_with("fe:54:00:"), "{first}");
    d.terminate(Duration::from_secs(5)).expect("stopped");
    let _d2 = Daemon::start(Opts {
        tap: Some(name.clone()),
        ..opts()
    });
    assert!(_d2.log_text().contains(&format!("TAP {name} created")));
    assert_eq!(mac_of(&name), first);
}
