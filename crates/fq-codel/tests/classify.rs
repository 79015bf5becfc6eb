//! Flow classification: 5-tuple, VLAN tags, IPv6 extension headers, and
//! garbage that must not panic.

mod common;

use common::*;
use fq_codel::classify::classify;
use fq_codel::{Config, FlowKey, FqCodel, Packet};

fn queue() -> FqCodel<TestPkt> {
    new_queue(Config {
        seed: 0x5eed,
        ..Config::default()
    })
}

fn ports(key: FlowKey) -> (u8, u16, u16) {
    match key {
        FlowKey::Ip {
            proto,
            src_port,
            dst_port,
            ..
        } => (proto, src_port, dst_port),
        k => panic!("not an IP key: {k:?}"),
    }
}

#[test]
fn same_five_tuple_same_flow() {
    let q = queue();
    let a = ipv4(tcp(40000, 443), 0, 60);
    // Different length, TOS/ECN, payload: still the same flow.
    let b = ipv4(tcp(40000, 443), 0x03, 1514);
    assert_eq!(classify(&a), classify(&b));
    assert_eq!(q.flow_of(&a), q.flow_of(&b));
    assert_eq!(ports(classify(&a)), (6, 40000, 443));
    let a6 = ipv6(udp(5353, 53), 0, 10);
    let b6 = ipv6(udp(5353, 53), 0x02, 900);
    assert_eq!(q.flow_of(&a6), q.flow_of(&b6));
    assert_eq!(ports(classify(&a6)), (17, 5353, 53));
}

#[test]
fn differing_ports_protocols_and_hosts_differ() {
    let q = queue();
    assert_ne!(
        classify(&ipv4(udp(1, 2), 0, 60)),
        classify(&ipv4(udp(1, 3), 0, 60))
    );
    assert_ne!(
        classify(&ipv4(udp(1, 2), 0, 60)),
        classify(&ipv4(tcp(1, 2), 0, 60))
    );
    assert_ne!(
        classify(&ipv4(udp(1, 2), 0, 60)),
        classify(&ipv4_from(udp(1, 2), 0, 60, 9))
    );
    assert_ne!(
        classify(&ipv4(udp(1, 2), 0, 60)),
        classify(&ipv6(udp(1, 2), 0, 60))
    );
    // 100 source ports over 1024 buckets: ~95 distinct expected (birthday).
    let mut buckets: Vec<usize> = (0..100)
        .map(|p| q.flow_of(&ipv4(tcp(30000 + p, 80), 0, 60)))
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    assert!(
        buckets.len() >= 90,
        "only {} distinct buckets",
        buckets.len()
    );
}

#[test]
fn buckets_are_spread_evenly() {
    // 64 000 flows over 64 buckets: each within 25 % of 1000.
    let q: FqCodel<TestPkt> = new_queue(Config {
        flows: 64,
        ..Config::default()
    });
    let mut hist = [0u32; 64];
    for sport in 0..1000u16 {
        for host in 0..64u8 {
            hist[q.flow_of(&ipv4_from(udp(sport, 53), 0, 60, host))] += 1;
        }
    }
    assert!(hist.iter().all(|&n| (750..=1250).contains(&n)), "{hist:?}");
}

#[test]
fn seed_is_deterministic_and_perturbs() {
    let frames: Vec<Vec<u8>> = (0..64).map(|p| ipv4(udp(p, 9), 0, 60)).collect();
    let with_seed = |seed| {
        let q: FqCodel<TestPkt> = new_queue(Config {
            seed,
            ..Config::default()
        });
        frames.iter().map(|f| q.flow_of(f)).collect::<Vec<_>>()
    };
    assert_eq!(with_seed(1), with_seed(1));
    assert_ne!(with_seed(1), with_seed(2));
}

#[test]
fn vlan_tagged_classifies_like_untagged() {
    let q = queue();
    for frame in [ipv4(tcp(1234, 80), 0, 100), ipv6(udp(1234, 53), 0, 40)] {
        let dot1q = push_vlan(&frame, 0x8100, 100);
        let qinq = push_vlan(&push_vlan(&frame, 0x8100, 100), 0x88a8, 7);
        let other_vid = push_vlan(&frame, 0x8100, 200);
        for tagged in [&dot1q, &qinq, &other_vid] {
            assert_eq!(classify(tagged), classify(&frame));
            assert_eq!(q.flow_of(tagged), q.flow_of(&frame));
        }
    }
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let plain = classify(&ipv6(udp(4000, 4001), 0, 20));
    // Hop-by-Hop (8 bytes, next = Destination Options), Destination Options
    // (16 bytes, next = UDP).
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let with_ext = classify(&ipv6_ext(udp(4000, 4001), 0, 20, Some(0), &ext));
    assert_eq!(with_ext, plain);
    // Routing header (type 4 segment list of one address).
    let mut rh = vec![17, 2, 4, 0, 0, 0, 0, 0];
    rh.extend_from_slice(&[0xfd; 16]);
    assert_eq!(
        classify(&ipv6_ext(udp(4000, 4001), 0, 20, Some(43), &rh)),
        plain
    );
}

#[test]
fn fragments_use_three_tuple() {
    // IPv6 first fragment (offset 0, M = 1) and a later one: same flow, no
    // ports (the later one has none to read).
    let first = ipv6_ext(
        udp(4000, 4001),
        0,
        20,
        Some(44),
        &[17, 0, 0x00, 0x01, 0, 0, 0, 9],
    );
    let later = ipv6_ext(
        udp(4000, 4001),
        0,
        20,
        Some(44),
        &[17, 0, 0x05, 0x00, 0, 0, 0, 9],
    );
    assert_eq!(ports(classify(&first)), (17, 0, 0));
    assert_eq!(classify(&first), classify(&later));
    // An atomic fragment (offset 0, M = 0) is a whole datagram: ports kept.
    let atomic = ipv6_ext(udp(4000, 4001), 0, 20, Some(44), &[17, 0, 0, 0, 0, 0, 0, 9]);
    assert_eq!(ports(classify(&atomic)), (17, 4000, 4001));
    // IPv4: MF set, then offset 185.
    let mut a = ipv4(udp(1, 2), 0, 100);
    a[20] = 0x20;
    let mut b = ipv4(udp(1, 2), 0, 100);
    b[20] = 0x00;
    b[21] = 185;
    assert_eq!(ports(classify(&a)), (17, 0, 0));
    assert_eq!(classify(&a), classify(&b));
}

#[test]
fn non_ip_hashes_on_ethertype_and_macs() {
    let mut arp = vec![0u8; 60];
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut other_host = arp.clone();
    other_host[11] = 2;
    let mut lldp = arp.clone();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_ne!(classify(&arp), classify(&other_host));
    assert_ne!(classify(&arp), classify(&lldp));
    // Payload does not matter.
    let mut arp2 = arp.clone();
    arp2[40] = 1;
    assert_eq!(classify(&arp), classify(&arp2));
}

#[test]
fn truncated_transport_header_falls_back_to_three_tuple() {
    let f = ipv4(udp(1, 2), 0, 60);
    // Cut after two bytes of UDP.
    let key = classify(&f[..36]);
    assert_eq!(ports(key), (17, 0, 0));
    // Cut inside the IP header: L2 key.
    assert!(matches!(
        classify(&f[..30]),
        FlowKey::L2 {
            ethertype: 0x0800,
            ..
        }
    ));
}

/// Random bytes, and random corruptions of valid frames (so that parsing
/// gets deep), through classification, ECN marking and the whole queue:
/// nothing panics and the accounting stays exact.
#[test]
fn garbage_frames_do_not_panic() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let templates = [
        ipv4(tcp(1, 2), 0x02, 80),
        ipv6_ext(udp(3, 4), 0x01, 8, Some(0), &[44, 0, 1, 4, 0, 0, 0, 0]),
        push_vlan(&push_vlan(&ipv6(udp(5, 6), 0x02, 8), 0x8100, 1), 0x88a8, 2),
        push_vlan(&ipv4(udp(7, 8), 0x01, 60), 0x8100, 3),
    ];
    let mut q: FqCodel<TestPkt> = new_queue(Config {
        flows: 64,
        limit: 256,
        memory_limit: 16 << 10,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    let (mut enqueued, mut sent) = (0u64, 0u64);
    for i in 0..200_000u64 {
        let mut frame = if i % 2 == 0 {
            let len = rng.below(160) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
        } else {
            let mut f = templates[rng.below(templates.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.len() as u64) as usize;
                f[at] = rng.next_u64() as u8;
            }
            // Sometimes force VLAN / IP ethertypes and plausible versions.
            if rng.below(4) == 0 && f.len() > 14 {
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                f[14] = 0x60 | (f[14] & 0x0f);
            }
            let keep = rng.below(f.len() as u64 + 1) as usize;
            f.truncate(keep);
            f
        };
        let _ = classify(&frame);
        let _ = fq_codel::ecn::ecn(&frame);
        let _ = fq_codel::ecn::set_ce(&mut frame);
        let pkt = TestPkt::new(&frame, i);
        assert_eq!(pkt.len(), frame.len());
        q.enqueue(pkt, i * 1_000, &mut dropped);
        enqueued += 1;
        if i % 3 == 0 && q.dequeue(i * 1_000, &mut dropped).is_some() {
            sent += 1;
        }
    }
    while q.dequeue(u64::MAX / 2, &mut dropped).is_some() {
        sent += 1;
    }
    let s = q.stats();
    assert_eq!(enqueued, sent + dropped.len() as u64);
    assert_eq!(dropped.len() as u64, s.codel_drops + s.overlimit_drops);
    assert_eq!(
        (s.backlog_packets, s.backlog_bytes, s.flows_active),
        (0, 0, 0)
    );
}
