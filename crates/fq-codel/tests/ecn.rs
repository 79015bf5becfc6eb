//! ECN through the queue: ECT packets are marked CE (IPv4 checksum still
//! valid) instead of dropped; Not-ECT packets are dropped; IPv6 too.

mod common;

use common::*;
use fq_codel::ecn::{ecn, Ecn};
use fq_codel::{Config, FqCodel};

/// A 20 ms standing queue of `frame` for 300 ms (one in, one out per ms):
/// CoDel signals at 105, 205 and 276 ms. Returns (sent, dropped, queue).
fn standing_queue(frame: &[u8], ecn_on: bool) -> (Vec<TestPkt>, Vec<TestPkt>, FqCodel<TestPkt>) {
    let mut q = new_queue(Config {
        ecn: ecn_on,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    let mut sent = Vec::new();
    let mut id = 0;
    for _ in 0..20 {
        q.enqueue(TestPkt::new(frame, id), 0, &mut dropped);
        id += 1;
    }
    let mut now = 0;
    while now < 300 * MS {
        now += MS;
        q.enqueue(TestPkt::new(frame, id), now, &mut dropped);
        id += 1;
        sent.extend(q.dequeue(now, &mut dropped));
    }
    (sent, dropped, q)
}

fn ce_count(pkts: &[TestPkt]) -> usize {
    pkts.iter()
        .filter(|p| ecn(&p.buf[VNET_HDR_LEN..]) == Some(Ecn::Ce))
        .count()
}

#[test]
fn ect0_ipv4_is_marked_not_dropped_and_checksum_valid() {
    let frame = ipv4(udp(1, 2), 0x02, 1000);
    let (sent, dropped, q) = standing_queue(&frame, true);
    assert!(dropped.is_empty());
    let s = q.stats();
    assert_eq!(s.codel_drops, 0);
    assert_eq!(s.ecn_marks, 3);
    assert_eq!(ce_count(&sent), 3);
    for p in &sent {
        let f = &p.buf[VNET_HDR_LEN..];
        assert_eq!(
            internet_checksum(&f[14..34]),
            0,
            "IPv4 checksum of packet {}",
            p.id
        );
        // The virtio-net header is not touched.
        assert_eq!(p.buf[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        // Nothing else changed but TOS and checksum.
        assert_eq!(
            (&f[..15], &f[16..24], &f[26..]),
            (&frame[..15], &frame[16..24], &frame[26..])
        );
    }
}

#[test]
fn ect1_ipv4_is_marked() {
    let (sent, dropped, q) = standing_queue(&ipv4(tcp(1, 2), 0x01, 1000), true);
    assert!(dropped.is_empty());
    assert_eq!(q.stats().ecn_marks, 3);
    assert_eq!(ce_count(&sent), 3);
    assert!(sent
        .iter()
        .all(|p| internet_checksum(&p.buf[12 + 14..12 + 34]) == 0));
}

#[test]
fn not_ect_ipv4_is_dropped() {
    let (sent, dropped, q) = standing_queue(&ipv4(udp(1, 2), 0, 1000), true);
    assert_eq!(dropped.len(), 3);
    let s = q.stats();
    assert_eq!((s.codel_drops, s.ecn_marks), (3, 0));
    assert_eq!(ce_count(&sent), 0);
    // Dropped packets come back untouched.
    assert!(dropped
        .iter()
        .all(|p| ecn(&p.buf[VNET_HDR_LEN..]) == Some(Ecn::NotEct)));
}

#[test]
fn ecn_disabled_drops_ect_packets_untouched() {
    let (sent, dropped, q) = standing_queue(&ipv4(udp(1, 2), 0x02, 1000), false);
    assert_eq!(dropped.len(), 3);
    assert_eq!(q.stats().ecn_marks, 0);
    assert_eq!(ce_count(&sent) + ce_count(&dropped), 0);
}

#[test]
fn ect_ipv6_is_marked() {
    for tclass in [0x02u8, 0x01, 0xb9] {
        let (sent, dropped, q) = standing_queue(&ipv6(udp(1, 2), tclass, 900), true);
        assert!(dropped.is_empty(), "tclass {tclass:#x}");
        assert_eq!(q.stats().ecn_marks, 3);
        let marked: Vec<&TestPkt> = sent
            .iter()
            .filter(|p| ecn(&p.buf[VNET_HDR_LEN..]) == Some(Ecn::Ce))
            .collect();
        assert_eq!(marked.len(), 3);
        // DSCP bits and flow label survive.
        let f = &marked[0].buf[VNET_HDR_LEN..];
        let tc = (f[14] << 4) | (f[15] >> 4);
        assert_eq!(tc, tclass | 0x03);
        assert_eq!(f[15] & 0x0f, 0x0a);
    }
}

#[test]
fn not_ect_ipv6_is_dropped() {
    let (_, dropped, q) = standing_queue(&ipv6(udp(1, 2), 0xb8, 900), true);
    assert_eq!(dropped.len(), 3);
    assert_eq!(q.stats().ecn_marks, 0);
}

#[test]
fn vlan_tagged_ect_is_marked_with_valid_checksum() {
    let frame = push_vlan(&ipv4(udp(1, 2), 0x02, 1000), 0x8100, 42);
    let (sent, dropped, _) = standing_queue(&frame, true);
    assert!(dropped.is_empty());
    assert_eq!(ce_count(&sent), 3);
    assert!(sent
        .iter()
        .all(|p| internet_checksum(&p.buf[12 + 18..12 + 38]) == 0));
}

#[test]
fn non_ip_frames_are_dropped_not_marked() {
    let mut arp = vec![0u8; 1000];
    arp[12] = 0x08;
    arp[13] = 0x06;
    let (_, dropped, q) = standing_queue(&arp, true);
    assert_eq!(dropped.len(), 3);
    assert_eq!(q.stats().ecn_marks, 0);
}
