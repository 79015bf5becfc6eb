//! A slow guest: the daemon must stop reading the TAP instead of dropping.

mod common;

use std::time::Duration;

use common::*;
use vu_driver::RxFrame;

#[test]
fn slow_guest_causes_no_daemon_drops() {
    const RING: usize = 64;
    const POSTED: usize = 32;
    const SENT: u32 = 20_000;
    let mut d = Daemon::start(Opts {
        ring_size: Some(RING),
        ..Opts::default()
    });
    let mut drv = d.connect();
    let tx_dropped_before = tap_stat(&d.tap, "tx_dropped");
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
        (c[0]["rx_frames"] >= POSTED as u64
            && c[0]["rx_reader_stops"] >= 1
            && c[0]["rx_ring_high_water"] >= RING as u64)
            .then_some(c)
    })
    .unwrap_or_else(|| panic!("reader never stopped on a full ring: {:?}", d.counters()));
    assert_eq!(
        c[0]["rx_frames"], POSTED as u64,
        "more frames than buffers: {:?}",
        c[0]
    );
    assert!(
        nonzero_drops(&c).is_empty(),
        "daemon drops: {:?}",
        nonzero_drops(&c)
    );
    let tail_drops = tap_stat(&d.tap, "tx_dropped") - tx_dropped_before;
    assert!(
        tail_drops > 0,
        "the tun driver dropped nothing: did the daemon read and discard instead?"
    );
    eprintln!("tun tail drops: {tail_drops}; counters {:?}", c[0]);

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
        c[0]["rx_reader_wakes"] >= 1,
        "reader never woken: {:?}",
        c[0]
    );
    assert!(
        nonzero_drops(&c).is_empty(),
        "daemon drops: {:?}",
        nonzero_drops(&c)
    );
    eprintln!("{} frames before, {after} after the guest came back", first);
}
