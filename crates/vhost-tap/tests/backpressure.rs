//! A slow guest. Backpressure mode: the daemon stops reading the TAP
//! instead of dropping (the kernel's tun then tail-drops on this kernel).
//! FQ-CoDel mode: the daemon keeps reading, the backlog waits in its queue,
//! and the tun driver drops nothing.

mod common;

use std::time::Duration;

use common::*;
use vu_driver::{Driver, RxFrame};

/// The ring between reader and filler in these tests: small, so that a
/// slow guest fills it quickly.
const RING: usize = 64;

/// A daemon in `mode` with a small ring, a connected guest, and the TAP's
/// `tx_dropped` before any traffic.
fn slow_guest(mode: &str) -> (Daemon, Driver, u64) {
    let d = Daemon::start(Opts {
        ring_size: Some(RING),
        extra: vec!["--mode".into(), mode.into()],
        ..opts()
    });
    let drv = d.connect();
    let tx_dropped_before = tap_stat(&d.tap, "tx_dropped");
    (d, drv, tx_dropped_before)
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn slow_guest_causes_no_daemon_drops() {
    const POSTED: usize = 32;
    const SENT: u32 = 20_000;
    let (mut d, mut drv, tx_dropped_before) = slow_guest("backpressure");
    assert_eq!(drv.post_rx(0, POSTED, 2048), POSTED);
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    for seq in 0..SENT {
        sock.send(&test_frame(
            HOST_MAC,
            GUEST_MAC,
            tag,
            seq,
            60 + (seq % 64) as usize,
        ));
    }
    // Wait until the data path has settled: guest buffers used up, ring full,
    // reader stopped.
    let c = wait_for(Duration::from_secs(10), || {
        let c = d.counters();
        (c.at(0, "rx_frames") >= POSTED as u64
            && c.at(0, "rx_reader_stops") >= 1
            && c.at(0, "rx_ring_high_water") >= RING as u64)
            .then_some(c)
    })
    .unwrap_or_else(|| panic!("reader never stopped on a full ring: {:?}", d.counters()));
    assert_eq!(
        c.at(0, "rx_frames"),
        POSTED as u64,
        "more frames than buffers: {:?}",
        c.queues[0]
    );
    c.assert_no_drops();
    let tail_drops = tap_stat(&d.tap, "tx_dropped") - tx_dropped_before;
    assert!(
        tail_drops > 0,
        "the tun driver dropped nothing: did the daemon read and discard instead?"
    );
    eprintln!("tun tail drops: {tail_drops}; counters {:?}", c.queues[0]);

    let mut got: Vec<RxFrame> = drv
        .recv(0)
        .into_iter()
        .filter(|f| has_tag(&f.data, tag))
        .collect();
    let first = got.len();
    // The guest comes back: everything the ring (and the tun ring) held arrives.
    loop {
        drv.post_rx(0, usize::MAX, 2048);
        let more = drv.recv_wait(0, 256, Duration::from_millis(300));
        if more.is_empty() {
            break;
        }
        got.extend(more.into_iter().filter(|f| has_tag(&f.data, tag)));
    }
    let after = got.len() - first;
    assert!(
        after >= RING,
        "only {after} frames arrived after the guest came back (ring {RING})"
    );
    // In order and intact. Gaps are the tun driver's tail drops while the
    // ring was full (counted in the TAP's tx_dropped), never the daemon's.
    let mut last = None;
    for (i, f) in got.iter().enumerate() {
        let (_, seq) = test_frame_id(&f.data).unwrap();
        assert!(
            last.is_none_or(|l| seq > l),
            "frame {i}: seq {seq} after {last:?}: reordered or duplicated"
        );
        last = Some(seq);
        assert!(
            f.data == test_frame(HOST_MAC, GUEST_MAC, tag, seq, 60 + (seq % 64) as usize),
            "frame {i} (seq {seq}) altered"
        );
    }
    // The first frames, and those held in the daemon's ring, have no gap.
    for (i, f) in got.iter().take(POSTED + RING).enumerate() {
        assert_eq!(
            test_frame_id(&f.data),
            Some((tag, i as u32)),
            "gap at frame {i}"
        );
    }
    let c = d.counters();
    assert!(
        c.at(0, "rx_reader_wakes") >= 1,
        "reader never woken: {:?}",
        c.queues[0]
    );
    c.assert_no_drops();
    eprintln!("{} frames before, {after} after the guest came back", first);
}

/// FQ-CoDel mode with a guest that takes nothing for a while: the daemon
/// keeps draining the TAP, so the tun driver never tail-drops, and every
/// frame of one flow reaches the guest in order once it posts buffers again
/// (a backlog younger than CoDel's interval is never dropped).
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn fq_codel_mode_holds_the_backlog_without_tail_drops() {
    const CHUNK: u32 = 500;
    const CHUNKS: u32 = 6;
    let (mut d, mut drv, tx_dropped_before) = slow_guest("fq-codel");
    d.assert_mode("fq-codel");
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    // More than the tun ring (txqueuelen 1000) and far more than the
    // daemon's ring, in chunks the reader can follow: with a stopped reader
    // (backpressure mode) the tun driver would drop most of this.
    for chunk in 0..CHUNKS {
        for i in 0..CHUNK {
            let seq = chunk * CHUNK + i;
            sock.send(&test_frame(
                HOST_MAC,
                GUEST_MAC,
                tag,
                seq,
                60 + (seq % 64) as usize,
            ));
        }
        let want = u64::from((chunk + 1) * CHUNK);
        let c = wait_for(Duration::from_secs(10), || {
            let c = d.counters();
            (c.at(0, "rx_aqm_backlog_frames") >= want).then_some(c)
        });
        assert!(
            c.is_some(),
            "backlog did not grow to {want}: {:?}",
            d.counters()
        );
    }
    let c = d.counters();
    assert_eq!(
        tap_stat(&d.tap, "tx_dropped") - tx_dropped_before,
        0,
        "tun tail drops"
    );
    assert_eq!(c.at(0, "rx_frames"), 0, "no buffers were posted");
    // The hand-off ring may fill within one read batch; the drain into the
    // AQM wakes the reader at once, so no stop outlives its batch.
    assert_eq!(
        c.at(0, "rx_reader_stops"),
        c.at(0, "rx_reader_wakes"),
        "the reader stayed stopped: {:?}",
        c.queues[0]
    );
    c.assert_no_drops();
    // The guest comes back within CoDel's interval: everything arrives, in order, intact.
    let mut got: Vec<RxFrame> = Vec::new();
    let total = (CHUNK * CHUNKS) as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.iter().filter(|f| has_tag(&f.data, tag)).count() < total
        && std::time::Instant::now() < deadline
    {
        drv.post_rx(0, usize::MAX, 2048);
        got.extend(drv.recv_wait(0, 1, Duration::from_millis(200)));
    }
    let got: Vec<RxFrame> = got.into_iter().filter(|f| has_tag(&f.data, tag)).collect();
    let c = d.counters();
    let codel = c.at(0, "rx_aqm_codel_drops");
    assert_eq!(
        got.len() as u64 + codel,
        total as u64,
        "frames lost without a reason: {:?}",
        c.queues[0]
    );
    let mut last = None;
    for f in &got {
        let (_, seq) = test_frame_id(&f.data).unwrap();
        assert!(
            last.is_none_or(|l| seq > l),
            "reordered: {seq} after {last:?}"
        );
        assert!(
            f.data == test_frame(HOST_MAC, GUEST_MAC, tag, seq, 60 + (seq % 64) as usize),
            "frame {seq} altered"
        );
        last = Some(seq);
    }
    assert_eq!(c.at(0, "rx_aqm_backlog_frames"), 0);
    eprintln!(
        "fq-codel: {} frames delivered, {codel} CoDel drops, 0 tun tail drops",
        got.len()
    );
}
