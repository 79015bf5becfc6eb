//! VM lifecycle with a real QEMU 10 guest: the guest reboots inside the same
//! QEMU (the device is reset and set up again on the same vhost-user
//! connection), and the daemon is restarted under a running QEMU that
//! reconnects (`reconnect-ms`): every other time with SIGKILL (no cleanup,
//! a stale socket for the new daemon to replace). Traffic must resume
//! within 5 s each time.
//!
//! The same restart in client mode (QEMU listens, the daemon connects).
//!
//! Addresses: 198.18.120.0/24, 198.18.121.0/24 and 198.18.122.0/24.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{accept_timeout, host_pings, vm_lock, Guest, TcpBothWays, GUEST_FUNCS};
use testkit::{sh, wait_for, Daemon, ReportExt};

const BOOT: Duration = Duration::from_secs(120);
const RESUME: Duration = Duration::from_secs(5);
/// Daemon restarts in one run: each is a fresh vhost-user session with
/// QEMU's reconnect message order.
const RESTARTS: usize = 6;

/// Ping `ip` from the host until it answers; the time it took.
fn first_reply(ip: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_for(timeout, || host_pings(ip).then(|| t0.elapsed()))
}

/// The guest reboots (`reboot -f`, QEMU stays): QEMU resets the device and
/// the guest driver sets it up again over the same vhost-user connection.
/// Ping works within 5 s of the guest's `/init` being back, and a TCP
/// transfer each way checks the data after the rings were reset.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn guest_reboot_traffic_resumes() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&[]);
    let (h, gip) = ("198.18.120.1", "198.18.120.2");
    d.add_host_ip(&format!("{h}/24"));
    // The script runs at every boot; the host says what to do: reboot the
    // first time, move data the second.
    let ctl = TcpListener::bind((h, 0)).unwrap();
    let ctl_port = ctl.local_addr().unwrap().port();
    let ctl = std::thread::spawn(move || {
        for cmd in ["reboot", "stay"] {
            let Ok(mut s) = accept_timeout(&ctl, Duration::from_secs(240)) else {
                return;
            };
            let _ = writeln!(s, "{cmd}");
        }
    });
    let mut tcp = TcpBothWays::listen(h, 4 << 20, Duration::from_secs(240));
    let script = format!(
        r#"{GUEST_FUNCS}
ping -c 2 -W 3 {h} >/dev/null && echo GPING-OK
cmd=$(timeout 30 nc {h} {ctl_port} </dev/null)
echo "GCMD $cmd"
if [ "$cmd" = reboot ]; then
	echo GREBOOTING
	reboot -f
	sleep 30
fi
{}
echo GUEST-DONE
timeout 60 nc -l -p 7120 </dev/null
"#,
        tcp.guest_cmd(h)
    );
    let g = Guest::boot(
        &d.socket,
        &script,
        &[
            "--ip",
            &format!("{gip}/24"),
            "-m",
            "52:54:00:18:78:02",
            "--reboot",
        ],
    );
    g.expect_marker("GREBOOTING", BOOT, "first boot");
    let t_reboot = Instant::now();
    let booted = wait_for(BOOT, || {
        (g.markers("VT-GUEST: booted").len() >= 2).then(Instant::now)
    })
    .expect("the guest did not come back after its reboot");
    let resume = first_reply(gip, Duration::from_secs(30));
    let back = booted - t_reboot;
    eprintln!(
        "reboot: guest back (/init configured eth0) {:.1} s after `reboot -f`; host ping \
         answered {:?} after that",
        back.as_secs_f64(),
        resume
    );
    let resume = resume.expect("no ping reply after the reboot");
    assert!(resume <= RESUME, "traffic resumed only after {resume:?}");
    let r = tcp.finish(&g, Duration::from_secs(180));
    eprintln!(
        "after the reboot: 4 MiB guest → host {:.0} Mbit/s, host → guest {:.0} Mbit/s",
        r.to_host.mbit_s(),
        r.to_guest.mbit_s()
    );
    g.expect_marker("GUEST-DONE", Duration::from_secs(30), "guest");
    assert_eq!(g.markers("GCMD"), ["reboot", "stay"], "control answers");
    g.release(gip, 7120);
    let _ = ctl.join();
    let log = d.log_text();
    assert_eq!(
        log.matches("frontend connected").count(),
        1,
        "the reboot must not need a new vhost-user connection"
    );
    assert!(
        log.matches("guest acked features").count() >= 2,
        "the rebooted guest did not negotiate again"
    );
    let c = d.counters();
    assert_eq!(c.dropped(), 0, "{c:?}");
    eprintln!("guest reboot: wall {:.1} s", t0.elapsed().as_secs_f64());
}

/// The guest's script for the restart tests: ping the host every 0.2 s
/// until port 7121 is poked, logging each result.
fn pinging_guest(h: &str) -> String {
    format!(
        r#"
( timeout 200 nc -l -p 7121 </dev/null; touch /tmp/stop ) &
n=0
while [ ! -e /tmp/stop ] && [ $n -lt 1000 ]; do
	if ping -c 1 -W 1 {h} >/dev/null 2>&1; then echo "GPING-OK $n"
	else
		echo "GPING-FAIL $n"
		# The new TAP has a new MAC: forget the old one now rather than
		# after the neighbour entry's timers (not what this test measures).
		ip neigh flush dev eth0
	fi
	n=$((n+1))
	sleep 0.2
done
echo GUEST-DONE
"#
    )
}

/// Put the host address on the daemon's TAP and boot the pinging guest with
/// `extra` options of run-guest.sh (how QEMU meets the socket).
fn boot_pinging(d: &Daemon, (h, gip, gmac): (&str, &str, &str), extra: &[&str]) -> Guest {
    d.add_host_ip(&format!("{h}/24"));
    let ip = format!("{gip}/24");
    let mut args = vec!["--ip", &ip, "-m", gmac];
    args.extend_from_slice(extra);
    Guest::boot(&d.socket, &pinging_guest(h), &args)
}

/// Restart the daemon `restarts` times under the running guest; after each,
/// the guest's pings must get through again within 5 s of the new daemon
/// starting. Then checks the host → guest direction and the counters (the
/// caller releases the guest).
fn restarts_resume(d: &mut Daemon, g: &Guest, (h, gip, gmac): (&str, &str, &str), restarts: usize) {
    assert!(
        wait_for(BOOT, || (g.markers("GPING-OK").len() >= 3).then_some(())).is_some(),
        "the guest's pings did not get through before the restart"
    );
    for k in 1..=restarts {
        let old_mac = d.tap_mac();
        let t_stop = Instant::now();
        // Every other restart is a SIGKILL: no cleanup, a stale socket left
        // for the new daemon to replace. (Client mode: SIGTERM only.)
        let killed = k % 2 == 0 && !d.client();
        let st = if killed {
            d.kill_and_restart()
        } else {
            d.restart()
        };
        let t_new = Instant::now();
        // A ping answered from here on went through the new daemon.
        let before = g.console_text().len();
        d.add_host_ip(&format!("{h}/24"));
        // The host keeps sending to the guest meanwhile (as a busy VM's
        // peers would): its pings wait in the TAP and the daemon's ring
        // while QEMU reconnects, and go to the guest as soon as its RX ring
        // is up. (A static neighbour entry, so that they do not wait for ARP.)
        sh(&format!(
            "ip neigh replace {gip} lladdr {gmac} dev {} nud permanent",
            d.tap
        ));
        let mut pinger = Command::new("ping")
            .args(["-q", "-i", "0.05", "-w", "15", gip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let ok_after = |g: &Guest| {
            let t = g.console_text();
            t.get(before..)
                .is_some_and(|s| s.lines().any(|l| l.trim_start().starts_with("GPING-OK")))
        };
        let resumed = wait_for(Duration::from_secs(20), || {
            ok_after(g).then(|| t_new.elapsed())
        });
        let fails = g.console_text()[before..].matches("GPING-FAIL").count();
        testkit::stop(&mut pinger, Duration::from_secs(1));
        eprintln!(
            "daemon restart {k} ({}): old daemon exited {st:?} after {:.2} s; TAP MAC {old_mac} → {}; \
             guest ping answered again {resumed:?} after the new daemon started ({fails} \
             pings failed meanwhile)",
            if killed { "SIGKILL" } else { "SIGTERM" },
            (t_new - t_stop).as_secs_f64(),
            d.tap_mac()
        );
        if killed {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.and_then(|s| s.signal()), Some(9), "{st:?}");
        } else {
            assert!(
                st.is_some_and(|s| s.success()),
                "the old daemon did not exit cleanly: {st:?}"
            );
        }
        let Some(resumed) = resumed else {
            let c = d.counters();
            panic!(
                "restart {k}: the guest's pings never got through again (reconnected: {}); \
                 rx_frames {} rx_interrupts {} tx_frames {} tx_interrupts {}",
                d.log_text().matches("frontend connected").count() > k,
                c.at(0, "rx_frames"),
                c.at(0, "rx_interrupts"),
                c.at(0, "tx_frames"),
                c.at(0, "tx_interrupts")
            );
        };
        assert!(
            resumed <= RESUME,
            "restart {k}: traffic resumed only after {resumed:?}"
        );
    }
    let log = d.log_text();
    assert!(
        log.matches("frontend connected").count() > restarts,
        "no new vhost-user session after each restart"
    );
    assert!(
        first_reply(gip, Duration::from_secs(10)).is_some(),
        "host → guest ping"
    );
    let c = d.counters();
    assert!(
        c.at(0, "tx_frames") > 0 && c.at(0, "rx_frames") > 0,
        "{c:?}"
    );
    assert_eq!(c.dropped(), 0, "{c:?}");
}

/// The daemon is stopped (SIGTERM by PID, or SIGKILL every other time) and started again on the same
/// socket and TAP name while QEMU runs with `reconnect-ms=1000`, six times.
/// The guest pings the host in a loop; its pings succeed again within 5 s of
/// each new daemon listening (the new daemon creates the TAP anew: the host
/// address is added again).
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn daemon_restart_under_a_running_qemu_traffic_resumes() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&[]);
    let addrs = ("198.18.121.1", "198.18.121.2", "52:54:00:18:79:02");
    let g = boot_pinging(&d, addrs, &["--reconnect", "1000"]);
    restarts_resume(&mut d, &g, addrs, RESTARTS);
    g.release(addrs.1, 7121);
    eprintln!("daemon restart: wall {:.1} s", t0.elapsed().as_secs_f64());
}

/// Client mode, the way Open vSwitch recommends it: QEMU listens
/// (`-chardev socket,server=on,wait=off`) and the daemon (`--client`)
/// connects, and reconnects with backoff, so either side may restart. The
/// daemon starts before QEMU's socket exists (it waits), then is restarted
/// three times under the running guest: traffic resumes within 5 s each time.
#[test]
#[ignore = "needs root and QEMU 10 with the test guest: run by tests/run.sh"]
fn client_mode_daemon_restart_traffic_resumes() {
    let _l = vm_lock();
    let t0 = Instant::now();
    let mut d = Daemon::start_args(&["--client"]);
    d.wait_log(
        &["waiting for the frontend's socket"],
        Duration::from_secs(5),
    )
    .expect("the client-mode daemon did not wait for QEMU's socket");
    let addrs = ("198.18.122.1", "198.18.122.2", "52:54:00:18:7a:02");
    let g = boot_pinging(&d, addrs, &["--server"]);
    restarts_resume(&mut d, &g, addrs, 3);
    assert!(
        d.socket.exists(),
        "a daemon removed QEMU's socket (in client mode it is not the daemon's)"
    );
    g.release(addrs.1, 7121);
    eprintln!(
        "client mode restarts: wall {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
