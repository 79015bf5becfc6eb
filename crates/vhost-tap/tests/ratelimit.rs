//! Rate limits without loss, with a real TAP and a vhost-user guest: the
//! delivered rate is the limit within 5 % over 10 s, the daemon drops
//! nothing, and the queue forms where the mode puts it — in the daemon's
//! AQM (fq-codel mode), behind the stopped reader (backpressure mode), in
//! the guest's TX ring (guest → host).
//!
//! The host side sends at twice the limit, paced, so that the limit (not
//! the machine) decides the rate.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use vhost_tap::counters::DeviceReport;
use vu_driver::Driver;

/// How long a rate is measured, after a warm-up in which the initial
/// burst (50 ms of the rate) has gone.
const WINDOW: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(1);
/// The delivered rate must be within this fraction of the limit.
const TOLERANCE: f64 = 0.05;

fn assert_rate(what: &str, got: f64, limit: f64) {
    let off = (got - limit) / limit;
    eprintln!(
        "{what}: {got:.0}/s against a limit of {limit:.0}/s ({:+.2} %)",
        off * 100.0
    );
    assert!(
        off.abs() <= TOLERANCE,
        "{what}: {got:.0}/s is {:+.1} % off the limit {limit:.0}/s",
        off * 100.0
    );
}

/// The guest: keep RX buffers posted and count what arrives, as
/// (time since start, frames, Ethernet bytes) samples, until `stop`.
fn receiving_guest(
    mut drv: Driver,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(Duration, u64, u64)>> {
    thread::spawn(move || {
        let start = Instant::now();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut samples = vec![(Duration::ZERO, 0, 0)];
        while !stop.load(Ordering::Relaxed) {
            drv.post_rx(0, usize::MAX, 2048);
            for f in drv.recv_wait(0, 1, Duration::from_millis(5)) {
                frames += 1;
                bytes += f.data.len() as u64;
            }
            samples.push((start.elapsed(), frames, bytes));
        }
        samples
    })
}

/// The rate in the window [WARMUP, WARMUP + WINDOW] of the guest's
/// samples: (frames/s, bytes/s).
fn window_rate(samples: &[(Duration, u64, u64)]) -> (f64, f64) {
    let at = |t: Duration| {
        let s = samples
            .iter()
            .find(|s| s.0 >= t)
            .unwrap_or_else(|| panic!("the guest stopped before {t:?}"));
        (s.0, s.1, s.2)
    };
    let (t0, f0, b0) = at(WARMUP);
    let (t1, f1, b1) = at(WARMUP + WINDOW);
    let secs = (t1 - t0).as_secs_f64();
    ((f1 - f0) as f64 / secs, (b1 - b0) as f64 / secs)
}

/// Run a host → guest flood at twice `limit_fps` frames of `payload` bytes
/// through a daemon started with `args`; returns the daemon, the guest's
/// window rate, a report taken mid-window and the TAP's tail drops.
fn rx_run(
    args: &[&str],
    limit_fps: u64,
    payload: usize,
) -> (Daemon, (f64, f64), DeviceReport, u64) {
    let mut d = Daemon::start(Opts {
        extra: args.iter().map(|s| s.to_string()).collect(),
        ..opts()
    });
    let drv = d.connect();
    let tail_before = d.tap_stat("tx_dropped");
    let stop = Arc::new(AtomicBool::new(false));
    let guest = receiving_guest(drv, stop.clone());
    let sender = paced_udp(
        d.tap.clone(),
        2 * limit_fps,
        (1024, 8),
        move |_| payload,
        stop.clone(),
    );
    thread::sleep(WARMUP + WINDOW / 2);
    let mid = d.counters();
    thread::sleep(WINDOW / 2 + Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let samples = guest.join().unwrap();
    let tail = d.tap_stat("tx_dropped") - tail_before;
    eprintln!("sent {sent} frames; mid-window counters {:?}", mid.summed());
    (d, window_rate(&samples), mid, tail)
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn rx_byte_limit_in_fq_codel_mode_queues_in_the_aqm() {
    // 2 MB/s (16 Mbit/s) of 1042-byte frames: 1920 frames/s.
    const LIMIT: u64 = 2_000_000;
    const PAYLOAD: usize = 1000;
    let frame = (PAYLOAD + 42) as u64;
    let (mut d, (_, bytes_s), mid, tail) = rx_run(
        &["--mode", "fq-codel", "--rx-rate-bytes", &LIMIT.to_string()],
        LIMIT / frame,
        PAYLOAD,
    );
    assert_rate("host→guest bytes", bytes_s, LIMIT as f64);
    assert!(
        mid.sum("rx_aqm_backlog_frames") > 0,
        "no backlog in the AQM mid-run: where did the queue form? {:?}",
        mid.summed()
    );
    assert!(mid.sum("rx_rate_limited") > 0);
    assert_eq!(tail, 0, "the tun driver tail-dropped in fq-codel mode");
    let c = d.counters();
    c.assert_no_drops();
    eprintln!(
        "AQM drops (its job, at the head): {}",
        c.sum("rx_aqm_codel_drops")
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn rx_frame_limit_in_backpressure_mode_stops_the_reader() {
    const LIMIT: u64 = 3000;
    let (mut d, (frames_s, _), mid, tail) = rx_run(
        &[
            "--mode",
            "backpressure",
            "--rx-rate-frames",
            &LIMIT.to_string(),
        ],
        LIMIT,
        64,
    );
    assert_rate("host→guest frames", frames_s, LIMIT as f64);
    assert!(
        mid.sum("rx_reader_stops") > 0,
        "the reader never stopped: the ring did not hold the queue {:?}",
        mid.summed()
    );
    let c = d.counters();
    c.assert_no_drops();
    // Behind the stopped reader the queue is the kernel's: on a kernel
    // without IFF_BACKPRESSURE the tun ring overflows (tail drops).
    eprintln!("tun tail drops behind the stopped reader: {tail}");
}

/// The guest sends `frame`-sized frames as fast as its TX ring takes them,
/// until `stop`; returns frames queued.
fn sending_guest(mut drv: Driver, len: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let tag = fresh_tag();
        let mut seq = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let f = test_frame(GUEST_MAC, HOST_MAC, tag, seq, len);
            match drv.send(0, &[0; 12], &f) {
                Ok(()) => seq += 1,
                Err(vu_driver::Error::QueueFull) => {
                    let done = drv.tx_completed(0);
                    drv.tx_wait(0, done + 1, Duration::from_millis(20));
                }
                Err(e) => panic!("guest send: {e}"),
            }
        }
        u64::from(seq)
    })
}

/// Guest → host at full speed through a daemon started with `args`; the
/// TAP's received (frames/s, bytes/s) over the window, and the final report.
fn tx_run(args: &[&str], len: usize) -> ((f64, f64), DeviceReport) {
    let mut d = Daemon::start(Opts {
        extra: args.iter().map(|s| s.to_string()).collect(),
        ..opts()
    });
    let drv = d.connect();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = sending_guest(drv, len, stop.clone());
    thread::sleep(WARMUP);
    let t0 = Instant::now();
    let (p0, b0) = (d.tap_stat("rx_packets"), d.tap_stat("rx_bytes"));
    thread::sleep(WINDOW);
    let (p1, b1) = (d.tap_stat("rx_packets"), d.tap_stat("rx_bytes"));
    let secs = t0.elapsed().as_secs_f64();
    let c = d.counters();
    stop.store(true, Ordering::Relaxed);
    let queued = guest.join().unwrap();
    eprintln!("guest queued {queued} frames; counters {:?}", c.summed());
    (((p1 - p0) as f64 / secs, (b1 - b0) as f64 / secs), c)
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_byte_and_frame_limits_hold_frames_in_the_guests_ring() {
    // Bytes: 2 MB/s of 1000-byte frames (2000 frames/s).
    let ((_, bytes_s), c) = tx_run(&["--tx-rate-bytes", "2000000"], 1000);
    assert_rate("guest→host bytes", bytes_s, 2_000_000.0);
    assert!(c.sum("tx_rate_limited") > 0);
    c.assert_no_drops();
    // Frames: 5000 frames/s of 64-byte frames.
    let ((frames_s, _), c) = tx_run(&["--tx-rate-frames", "5000"], 64);
    assert_rate("guest→host frames", frames_s, 5000.0);
    c.assert_no_drops();
}
