//! An untrusted guest: malformed rings on queue pair 0 must break only that
//! pair, with a precise log line and a counter; pair 1 keeps working, and a
//! reconnecting driver gets a working device again.

mod common;

use std::time::Duration;

use common::*;
use vu_driver::features::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vu_driver::{Driver, RawDesc};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const RX0: usize = 0;
const TX0: usize = 1;

enum Abuse {
    /// Write these descriptors at indices 0.., publish these heads.
    Descs(Vec<RawDesc>, Vec<u16>),
    /// Publish this avail index.
    AvailIdx(u16),
}

/// Break vring `vring` (RX0 or TX0) of pair 0 with `abuse(driver)`, expect a
/// log line containing `why`, then check the rest of the device.
fn untrusted(vring: usize, abuse: impl FnOnce(&Driver) -> Abuse, why: &str) {
    let mut d = start_queues(2);
    let mut drv = d.connect();
    match abuse(&drv) {
        Abuse::Descs(descs, heads) => drv.raw_post(vring, &descs, &heads),
        Abuse::AvailIdx(idx) => drv.raw_set_avail_idx(vring, idx),
    }
    let (dir, counter) = if vring == RX0 {
        ("guest RX queue broken", "rx_queue_broken")
    } else {
        ("guest TX queue broken", "tx_queue_broken")
    };
    let needles = [dir, &format!("{} queue 0:", d.tap), why];
    let line = if vring == RX0 {
        // The RX queue is only looked at when a frame waits for it: send
        // flows until one lands on TAP queue 0.
        let sock = PacketSock::open(&d.tap, false);
        let tag = fresh_tag();
        let mut found = None;
        for round in 0..25u32 {
            for i in 0..64u32 {
                sock.send(&udp_frame(tag, round * 64 + i, 1024 + i as u16, 64));
            }
            found = d.wait_log(&needles, Duration::from_millis(200));
            if found.is_some() {
                break;
            }
        }
        found
    } else {
        d.wait_log(&needles, Duration::from_secs(5))
    };
    let line =
        line.unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", d.log_text()));
    eprintln!("daemon said: {line}");
    let c = d.counters();
    assert!(
        c.at(0, counter) >= 1,
        "queue 0 {counter}: {:?}",
        c.queues[0]
    );
    assert_eq!(
        c.at(1, "rx_queue_broken") + c.at(1, "tx_queue_broken"),
        0,
        "{:?}",
        c.queues[1]
    );
    assert!(d.alive(), "daemon died");

    // The other pair still carries traffic both ways, counted on queue 1.
    check_both_ways(&d, &mut drv, 1);
    assert!(d.alive(), "daemon died");
    let c = d.counters();
    assert!(
        c.at(1, "tx_frames") >= 1 && c.at(1, "rx_frames") >= 1,
        "pair 1 traffic not counted on queue 1: {:?}",
        c.queues[1]
    );

    // A new connection gets a working device.
    let _ = drv.disconnect();
    d.wait_log(&["frontend gone (connection 1)"], Duration::from_secs(5))
        .expect("daemon did not notice the disconnect");
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    check_both_ways(&d, &mut drv, 1);
    let c = d.counters();
    c.assert_no_drops();
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_descriptor_outside_guest_memory() {
    untrusted(
        TX0,
        |drv| {
            let a = drv.guest_mem_size() + 4096;
            Abuse::Descs(vec![desc(a, 100, 0, 0)], vec![0])
        },
        "descriptor 0 points outside guest memory",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn rx_descriptor_outside_guest_memory() {
    untrusted(
        RX0,
        |drv| {
            let a = drv.guest_mem_size() + 4096;
            Abuse::Descs(vec![desc(a, 2048, WRITE, 0)], vec![0])
        },
        "descriptor 0 points outside guest memory",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_descriptor_loop() {
    untrusted(
        TX0,
        |drv| {
            let (s, _) = drv.scratch();
            Abuse::Descs(
                vec![desc(s, 64, NEXT, 1), desc(s + 64, 64, NEXT, 0)],
                vec![0],
            )
        },
        "chain from head 0 has more descriptors than its table",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_zero_length_descriptor() {
    untrusted(
        TX0,
        |drv| {
            let (s, _) = drv.scratch();
            Abuse::Descs(vec![desc(s, 12, NEXT, 1), desc(s + 64, 0, 0, 0)], vec![0])
        },
        "descriptor 1 has length 0",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_device_writable_buffer() {
    untrusted(
        TX0,
        |drv| {
            let (s, _) = drv.scratch();
            Abuse::Descs(vec![desc(s, 100, WRITE, 0)], vec![0])
        },
        "descriptor 0 is device-writable but this queue needs device-readable",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn rx_device_readable_buffer() {
    untrusted(
        RX0,
        |drv| {
            let (s, _) = drv.scratch();
            Abuse::Descs(vec![desc(s, 2048, 0, 0)], vec![0])
        },
        "descriptor 0 is device-readable but this queue needs device-writable",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_chain_longer_than_the_queue() {
    untrusted(
        TX0,
        |drv| {
            let (s, _) = drv.scratch();
            let n = drv.vring_layout(TX0).size;
            // Every descriptor points to the next, the last one back to 0.
            let descs = (0..n)
                .map(|i| desc(s + 64 * u64::from(i), 64, NEXT, (i + 1) % n))
                .collect();
            Abuse::Descs(descs, vec![0])
        },
        "chain from head 0 has more descriptors than its table",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_avail_index_jumps_beyond_the_queue() {
    untrusted(
        TX0,
        |drv| Abuse::AvailIdx(drv.vring_layout(TX0).size * 4 + 3),
        "bad avail ring",
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tx_next_index_out_of_range() {
    untrusted(
        TX0,
        |drv| {
            let (s, _) = drv.scratch();
            Abuse::Descs(vec![desc(s, 64, NEXT, 9999)], vec![0])
        },
        "descriptor index 9999 is outside the table of 256 entries",
    );
}
