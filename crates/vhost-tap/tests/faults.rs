//! Faults injected under a daemon serving two devices, with traffic
//! running on both: the faulty device gets a precise log line and a
//! counter, then recovers or stops cleanly; the other device's traffic
//! never stops (a background exchange checks it the whole time).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use vu_driver::{Driver, DriverConfig};

/// A daemon with devices A (faulted) and B (bystander) from a config file.
struct Two {
    d: Daemon,
    a: (std::path::PathBuf, String),
    b: (std::path::PathBuf, String),
}

fn two_devices() -> Two {
    let (d, devs) = config_daemon("it", &["", ""]);
    Two {
        d,
        a: devs[0].clone(),
        b: devs[1].clone(),
    }
}

fn driver(sock: &std::path::Path) -> Driver {
    Driver::connect(DriverConfig {
        socket: sock.to_path_buf(),
        ..DriverConfig::default()
    })
    .expect("driver connect")
}

/// B's traffic, both ways, one frame each way per round, until stopped;
/// any frame lost fails the round (and the test, at `finish`).
struct Bystander {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<(), String>>,
}

impl Bystander {
    fn start(sock: &std::path::Path, tap: &str) -> Bystander {
        let mut drv = driver(sock);
        let tap = tap.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = thread::spawn(move || {
            let sock = PacketSock::open(&tap, false);
            let tag = fresh_tag();
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                let f = test_frame(GUEST_MAC, HOST_MAC, tag, seq, 200);
                guest_send(&mut drv, 0, &[0; 12], &f);
                let got = sock.recv_matching(1, Duration::from_secs(5), |x| {
                    test_frame_id(x) == Some((tag, seq))
                });
                if got.len() != 1 {
                    return Err(format!("B: guest→host frame {seq} lost"));
                }
                let h = test_frame(HOST_MAC, GUEST_MAC, tag, seq + 1, 300);
                sock.send(&h);
                let got = guest_recv(&mut drv, 0, 1, 2048, Duration::from_secs(5), |x| {
                    test_frame_id(&x.data) == Some((tag, seq + 1))
                });
                if got.len() != 1 {
                    return Err(format!("B: host→guest frame {} lost", seq + 1));
                }
                seq += 2;
                r.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Bystander {
            stop,
            rounds,
            handle,
        }
    }

    /// Wait until B completes `n` more rounds (it keeps its traffic).
    fn keeps_going(&self, n: u64, what: &str) {
        let start = self.rounds.load(Ordering::Relaxed);
        let ok = wait_for(Duration::from_secs(20), || {
            (self.rounds.load(Ordering::Relaxed) >= start + n).then_some(())
        });
        assert!(ok.is_some(), "B stopped carrying traffic {what}");
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap().unwrap();
        self.rounds.load(Ordering::Relaxed)
    }
}

fn ip(args: &str) {
    let st = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip");
    assert!(st.success(), "ip {args}");
}

/// The frontend shrinks the memfd behind guest memory while the daemon
/// uses it: the SIGBUS is contained (the daemon lives, every device
/// serves), A's queues stop with one precise line and a counter, and a new
/// connection on A works.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_shrunk_guest_memory_file_stops_only_its_connection() {
    let mut t = two_devices();
    let b = Bystander::start(&t.b.0, &t.b.1);
    let mut a = driver(&t.a.0);
    check_both_ways(&t.d, &mut a, 0);
    a.post_rx(0, usize::MAX, 2048);
    b.keeps_going(3, "before the fault");
    // Shrink the file under the daemon, then give it work on A.
    a.memory_file().expect("a memfd").set_len(4096).unwrap();
    let sock = PacketSock::open(&t.a.1, false);
    let tag = fresh_tag();
    for seq in 0..8 {
        sock.send(&test_frame(HOST_MAC, GUEST_MAC, tag, seq, 100));
    }
    let line = t.d.wait_log(
        &["shrank the file behind guest memory"],
        Duration::from_secs(10),
    );
    assert!(
        line.is_some(),
        "no line about the shrunk file:\n{}",
        t.d.log_text()
    );
    assert!(t.d.alive(), "the daemon died:\n{}", t.d.log_text());
    let c = t.d.counters_of(&t.a.1);
    assert_eq!(c.at(0, "guest_memory_faults"), 1, "{c:?}");
    b.keeps_going(3, "after A's memory fault");
    // Forget A's driver without touching its memory (it faults for us too),
    // and connect afresh: A serves again.
    drop(a);
    let again = wait_for(Duration::from_secs(10), || {
        (t.d.log_text().matches("listening again").count() >= 1).then_some(())
    });
    assert!(again.is_some(), "A did not listen again");
    let mut a2 = driver(&t.a.0);
    check_both_ways(&t.d, &mut a2, 0);
    let rounds = b.finish();
    eprintln!("B: {rounds} rounds both ways during the test, none lost");
    t.d.assert_no_panic();
}

/// The TAP is set down under a connected device: the guest's frames are
/// dropped and counted as `tx_dropped_link_down` with one line; set up
/// again, traffic resumes. B never notices.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_tap_set_down_counts_its_drops_and_recovers() {
    let mut t = two_devices();
    let b = Bystander::start(&t.b.0, &t.b.1);
    let mut a = driver(&t.a.0);
    check_both_ways(&t.d, &mut a, 0);
    ip(&format!("link set {} down", t.a.1));
    let done = a.tx_completed(0);
    let tag = fresh_tag();
    for seq in 0..5 {
        guest_send(
            &mut a,
            0,
            &[0; 12],
            &test_frame(GUEST_MAC, HOST_MAC, tag, seq, 100),
        );
    }
    // Returned to the guest (dropped, not held: the link is down).
    assert_eq!(a.tx_wait(0, done + 5, Duration::from_secs(5)), done + 5);
    let line = t.d.wait_log(&[&t.a.1, "is down"], Duration::from_secs(10));
    assert!(
        line.is_some(),
        "no line about the TAP being down:\n{}",
        t.d.log_text()
    );
    let c = t.d.counters_of(&t.a.1);
    assert_eq!(c.at(0, "tx_dropped_link_down"), 5, "{c:?}");
    b.keeps_going(3, "while A's TAP was down");
    ip(&format!("link set {} up", t.a.1));
    check_both_ways(&t.d, &mut a, 0);
    b.finish();
}

/// The TAP is deleted under a connected device: one line, a counter, and
/// the device stops cleanly — its frontend is let go, its socket removed —
/// while B keeps its traffic and the daemon keeps running.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_deleted_tap_stops_only_its_device() {
    let mut t = two_devices();
    let b = Bystander::start(&t.b.0, &t.b.1);
    let mut a = driver(&t.a.0);
    check_both_ways(&t.d, &mut a, 0);
    ip(&format!("link del {}", t.a.1));
    let tag = fresh_tag();
    for seq in 0..3 {
        let _ = a.send(0, &[0; 12], &test_frame(GUEST_MAC, HOST_MAC, tag, seq, 100));
    }
    let line =
        t.d.wait_log(&[&t.a.1, "the TAP is gone"], Duration::from_secs(10));
    assert!(
        line.is_some(),
        "no line about the TAP being gone:\n{}",
        t.d.log_text()
    );
    // The daemon stops the device: socket removed, frontend let go.
    let stopped = wait_for(Duration::from_secs(10), || (!t.a.0.exists()).then_some(()));
    assert!(
        stopped.is_some(),
        "A's socket is still there:\n{}",
        t.d.log_text()
    );
    assert!(t
        .d
        .log_text()
        .contains("the device stops (its frontend is let go"));
    let gone = testkit::reports_of(&t.d.log_text(), &t.a.1)
        .into_iter()
        .next_back()
        .expect("A's final report");
    assert_eq!(gone.at(0, "tap_gone"), 1, "{gone:?}");
    assert_eq!(gone.at(0, "tx_dropped_tap_gone"), 3, "{gone:?}");
    b.keeps_going(3, "after A's TAP was deleted");
    assert!(t.d.alive(), "the daemon ended:\n{}", t.d.log_text());
    // A reload brings A back with a new TAP; a frontend is served again.
    drop(a);
    t.d.signal(libc::SIGHUP);
    let back = wait_for(Duration::from_secs(10), || t.a.0.exists().then_some(()));
    assert!(
        back.is_some(),
        "SIGHUP did not start A again:\n{}",
        t.d.log_text()
    );
    let mut a2 = driver(&t.a.0);
    check_both_ways(&t.d, &mut a2, 0);
    b.finish();
}

/// A frontend killed mid-message (its socket closes with half a header, or
/// with a header whose payload never comes): A ends that connection with a
/// line and listens again, a new frontend is served, B never notices.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn a_frontend_killed_mid_message_ends_only_its_connection() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let mut t = two_devices();
    let b = Bystander::start(&t.b.0, &t.b.1);
    // SET_OWNER (1), flags 1 (version), size 0: a whole header is 12 bytes.
    let owner: [u8; 12] = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    // SET_FEATURES (2) claiming an 8-byte payload.
    let features: [u8; 12] = [2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0];
    let cuts: [(&[u8], &str); 2] = [
        (&owner[..6], "connection closed in the middle of a message"),
        (
            &features[..],
            "connection closed between header and payload",
        ),
    ];
    for (k, (cut, why)) in cuts.into_iter().enumerate() {
        let mut s = UnixStream::connect(&t.a.0).expect("connect to A");
        if k == 1 {
            s.write_all(&owner).unwrap();
        }
        s.write_all(cut).unwrap();
        drop(s); // what SIGKILL does to the frontend's end
        let n = k + 1;
        let said = t.d.wait_log(
            &[&format!("{}: connection {n}: relay", t.a.1), why],
            Duration::from_secs(10),
        );
        assert!(
            said.is_some(),
            "no line saying {why:?}:\n{}",
            t.d.log_text()
        );
        let ended = t.d.wait_log(
            &[&format!("frontend gone (connection {n})")],
            Duration::from_secs(10),
        );
        assert!(
            ended.is_some(),
            "connection {n} did not end:\n{}",
            t.d.log_text()
        );
        b.keeps_going(2, "while A's frontend died mid-message");
    }
    let c = t.d.counters_of(&t.a.1);
    assert_eq!(c.at(0, "connection_errors"), 2, "{c:?}");
    let mut a = driver(&t.a.0);
    check_both_ways(&t.d, &mut a, 0);
    t.d.assert_no_panic();
    b.finish();
}
