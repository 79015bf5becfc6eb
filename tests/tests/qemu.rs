//! A real QEMU 10 guest (TCG here, KVM where it works) against the daemon.

use std::time::Duration;

use e2e::Guest;
use testkit::{sh, Daemon, ReportExt};

/// Addresses of one test: host side on the TAP, guest on eth0 (198.18.0.0/15, benchmarking range).
fn addrs(n: u8) -> (String, String) {
    (format!("198.18.{n}.1"), format!("198.18.{n}.2"))
}

fn host_side(d: &Daemon, host_ip: &str) {
    sh(&format!("ip addr add {host_ip}/24 dev {}", d.tap));
    sh(&format!(
        "sysctl -qw net.ipv6.conf.{}.disable_ipv6=0",
        d.tap
    ));
}

/// The guest pings the host, the host pings the guest; QEMU's real message
/// order (SET_VRING_ENABLE before SET_FEATURES) went through the relay.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn guest_pings_host_and_back() {
    let mut d = Daemon::start_args(&[]);
    let (host, guest) = addrs(31);
    host_side(&d, &host);
    // The guest pings, then stays up long enough for the host to ping it.
    let script = format!("ping -c 3 -W 3 {host} && echo GUEST-PING-OK\nsleep 60\n");
    let g = Guest::boot(&d.socket, &script, &["--ip", &format!("{guest}/24")]);
    assert!(
        g.wait_console("GUEST-PING-OK", Duration::from_secs(120)),
        "guest could not ping the host"
    );
    // Host → guest while the guest is up.
    let out = std::process::Command::new("ping")
        .args(["-c", "3", "-W", "3", &guest])
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "host could not ping the guest: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(g);
    let log = d.log_text();
    assert!(
        log.contains("before SET_FEATURES"),
        "QEMU did not send SET_VRING_ENABLE early; the relay path was not exercised:\n{log}"
    );
    let c = d.counters();
    assert!(
        c.at(0, "rx_frames") >= 3 && c.at(0, "tx_frames") >= 3,
        "{c:?}"
    );
    assert_eq!(c.dropped(), 0, "{c:?}");
}

/// QEMU killed, then a new QEMU on the same socket: the daemon serves it
/// without a restart.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn qemu_killed_and_restarted_against_the_same_socket() {
    let mut d = Daemon::start_args(&[]);
    let (host, guest) = addrs(32);
    host_side(&d, &host);
    let script = format!("ping -c 2 -W 3 {host} && echo GUEST-PING-OK\nsleep 600\n");
    let g = Guest::boot(&d.socket, &script, &["--ip", &format!("{guest}/24")]);
    assert!(g.wait_console("GUEST-PING-OK", Duration::from_secs(120)));
    g.kill();
    let pid = d.pid;
    assert!(
        testkit::wait_for(Duration::from_secs(10), || d
            .log_text()
            .contains("listening again")
            .then_some(()))
        .is_some(),
        "daemon did not go back to listening"
    );
    let script = format!("ping -c 2 -W 3 {host} && echo GUEST-PING-OK\n");
    let g2 = Guest::boot(&d.socket, &script, &["--ip", &format!("{guest}/24")]);
    assert!(
        g2.wait_console("GUEST-PING-OK", Duration::from_secs(120)),
        "second guest could not ping the host"
    );
    assert_eq!(d.pid, pid);
    assert!(d.alive(), "daemon exited");
    assert_eq!(d.counters().dropped(), 0);
}
