//! Soak: one daemon, two devices of 2 queue pairs each — one in
//! backpressure mode with a short ring (the reader stops and wakes all the
//! time), one in fq-codel mode — with traffic both ways on every queue,
//! guests that stall their RX at random, and frontends that connect and
//! disconnect every few seconds. Checked: no queue left stopped (after the
//! last guest drains, every reader stop has its wake and the rings are
//! empty), every session moved frames on every queue, open descriptors and
//! RSS flat (sampled every 10 s), zero frames dropped inside the daemon.
//!
//! `VT_SOAK_SECS` sets the length (default 180 s, the test command's
//! version; an hour for the long run); `VT_SOAK_CSV=FILE` writes the
//! samples (`tests/soak-plot.py` plots them).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vu_driver::{Driver, DriverConfig};

const QUEUES: usize = 2;
/// Host → guest frames per second per device (UDP, 16 flows over the queues).
const HOST_FPS: u64 = 4000;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// A small deterministic generator (no crate): sessions, stalls, sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Frames a guest session moved on each queue pair: (rx, tx).
type Moved = [(u64, u64); QUEUES];

/// One guest session: connect, then until `until` exchange frames on both
/// pairs, stalling RX at random (no buffers posted, nothing read, for
/// 50–500 ms); then disconnect (cleanly or by dropping the socket).
fn session(sock: &std::path::Path, until: Instant, rng: &mut Rng) -> Moved {
    let mut drv = Driver::connect(DriverConfig {
        socket: sock.to_path_buf(),
        queue_pairs: QUEUES,
        ..DriverConfig::default()
    })
    .expect("soak guest connect");
    let mut moved: Moved = [(0, 0); QUEUES];
    let tag = fresh_tag();
    let mut seq = 0u32;
    while Instant::now() < until {
        if rng.below(100) < 3 {
            thread::sleep(Duration::from_millis(50 + rng.below(450)));
        }
        for (p, m) in moved.iter_mut().enumerate() {
            drv.post_rx(p, usize::MAX, 2048);
            m.0 += drv.recv(p).len() as u64;
            for _ in 0..4 {
                let len = 60 + rng.below(1400) as usize;
                match drv.send(p, &[0; 12], &test_frame(GUEST_MAC, HOST_MAC, tag, seq, len)) {
                    Ok(()) => {
                        seq += 1;
                        m.1 += 1;
                    }
                    Err(vu_driver::Error::QueueFull) => break,
                    Err(e) => panic!("soak guest send: {e}"),
                }
            }
            drv.tx_completed(p);
        }
        thread::sleep(Duration::from_millis(1));
    }
    if rng.below(2) == 0 {
        let _ = drv.disconnect();
    }
    moved
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    fds: usize,
    rss_kib: u64,
    sessions: u64,
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn soak_stalls_reconnects_two_queue_pairs() {
    let secs: u64 = std::env::var("VT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let (mut d, devs) = config_daemon(
        "soak",
        &[
            &format!("queues = {QUEUES}\nmode = \"backpressure\"\nring_size = 64"),
            &format!("queues = {QUEUES}\nmode = \"fq-codel\""),
        ],
    );
    let [(sock_bp, tap_bp), (sock_fq, tap_fq)] = [devs[0].clone(), devs[1].clone()];
    let pid = d.pid;
    let end = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let senders = [&tap_bp, &tap_fq].map(|tap| {
        paced_udp(
            tap.clone(),
            HOST_FPS,
            (2000, 16),
            |n| 100 + (n % 1200) as usize,
            stop.clone(),
        )
    });
    // One guest per device: sessions of 2–6 s back to back until the end.
    let guests: Vec<_> = [(sock_bp.clone(), 1u64), (sock_fq.clone(), 2u64)]
        .into_iter()
        .map(|(sock, seed)| {
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
                let mut sessions = Vec::new();
                // Sessions of at least a second: a shorter one at the very
                // end could end before its first frame.
                while end.saturating_duration_since(Instant::now()) > Duration::from_secs(1) {
                    let until =
                        (Instant::now() + Duration::from_millis(2000 + rng.below(4000))).min(end);
                    sessions.push(session(&sock, until, &mut rng));
                }
                sessions
            })
        })
        .collect();
    // Sample descriptors and RSS every 10 s, from 10 s on (the first
    // sessions are up by then).
    let t0 = Instant::now();
    let mut samples = Vec::new();
    thread::sleep(SAMPLE_EVERY);
    while Instant::now() < end {
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            fds: open_fds(pid),
            rss_kib: rss_kib(pid),
            sessions: d.log_text().matches("frontend connected").count() as u64,
        });
        thread::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(Instant::now())));
    }
    let sessions: Vec<Vec<Moved>> = guests.into_iter().map(|g| g.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    // A last guest on each device drains what waits (ring, AQM, tun ring).
    for sock in [&sock_bp, &sock_fq] {
        let mut drv = Driver::connect(DriverConfig {
            socket: sock.clone(),
            queue_pairs: QUEUES,
            ..DriverConfig::default()
        })
        .expect("draining guest");
        let mut quiet = 0;
        while quiet < 20 {
            let mut got = 0;
            for p in 0..QUEUES {
                drv.post_rx(p, usize::MAX, 2048);
                got += drv.recv_wait(p, 1, Duration::from_millis(10)).len();
            }
            quiet = if got == 0 { quiet + 1 } else { 0 };
        }
        drop(drv);
    }
    samples.push(Sample {
        t: t0.elapsed().as_secs_f64(),
        fds: open_fds(pid),
        rss_kib: rss_kib(pid),
        sessions: d.log_text().matches("frontend connected").count() as u64,
    });
    if let Ok(path) = std::env::var("VT_SOAK_CSV") {
        let mut csv = String::from("t_s,open_fds,rss_kib,connections\n");
        for s in &samples {
            csv.push_str(&format!(
                "{:.1},{},{},{}\n",
                s.t, s.fds, s.rss_kib, s.sessions
            ));
        }
        std::fs::write(&path, csv).expect("writing VT_SOAK_CSV");
    }
    eprintln!(
        "soak {secs} s: samples (t, fds, rss KiB, connections): {:?}",
        samples
            .iter()
            .map(|s| (s.t as u64, s.fds, s.rss_kib, s.sessions))
            .collect::<Vec<_>>()
    );

    // Every session moved frames both ways on every queue pair.
    for (dev, list) in ["backpressure", "fq-codel"].iter().zip(&sessions) {
        assert!(list.len() >= 2, "{dev}: only {} sessions", list.len());
        for (i, m) in list.iter().enumerate() {
            for (p, (rx, tx)) in m.iter().enumerate() {
                assert!(
                    *rx > 0 && *tx > 0,
                    "{dev}: session {i} moved rx {rx} tx {tx} on pair {p}: a queue stayed stopped"
                );
            }
        }
        eprintln!(
            "{dev}: {} sessions, frames (rx, tx) per session and pair: {list:?}",
            list.len()
        );
    }
    // Nothing dropped inside the daemon; no reader left stopped.
    for tap in [&tap_bp, &tap_fq] {
        let c = d.counters_of(tap);
        c.assert_no_drops();
        for p in 0..QUEUES {
            let (stops, wakes) = (c.at(p, "rx_reader_stops"), c.at(p, "rx_reader_wakes"));
            assert_eq!(
                stops, wakes,
                "{tap} queue {p}: {stops} reader stops but {wakes} wakes after the drain"
            );
        }
        eprintln!("{tap}: {:?}", c.summed());
    }
    // Descriptors and RSS flat. The samples fall anywhere in a session
    // (no, one or two frontends connected), so the bound is the highest
    // of the first third plus a little; the last sample (after the drain,
    // no frontend) is left out of the comparison.
    let during = &samples[..samples.len() - 1];
    let third = (during.len() / 3).max(1);
    let first = &during[..third];
    let rest = &during[third..];
    let fd_max_first = first.iter().map(|s| s.fds).max().unwrap();
    let fd_max_rest = rest.iter().map(|s| s.fds).max().unwrap_or(0);
    assert!(
        fd_max_rest <= fd_max_first + 4,
        "open descriptors grew: {fd_max_first} in the first third, up to {fd_max_rest} later"
    );
    let rss_max_first = first.iter().map(|s| s.rss_kib).max().unwrap();
    let rss_max_rest = rest.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    assert!(
        rss_max_rest <= rss_max_first + rss_max_first / 10 + 4096,
        "RSS grew: {rss_max_first} KiB in the first third, up to {rss_max_rest} KiB later"
    );
    d.assert_no_panic();
}
