//! RFC 8290 §4.1: over `limit` or `memory_limit`, drop from the head of the
//! fattest flow, never the arriving packet of a thin flow.

mod common;

use common::*;
use fq_codel::{Config, FqCodel, OVERLIMIT_DROP_BATCH};

struct Two {
    q: FqCodel<TestPkt>,
    fat: Vec<u8>,
    thin: Vec<u8>,
}

fn two_flows(cfg: Config) -> Two {
    let q = new_queue(cfg);
    let f = distinct_flows(&q, 2);
    Two {
        fat: ipv4(f[0], 0, 1000),
        thin: ipv4(f[1], 0, 100),
        q,
    }
}

#[test]
fn packet_limit_drops_head_of_fattest_flow() {
    let mut t = two_flows(Config {
        limit: 100,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    for id in 0..80 {
        t.q.enqueue(TestPkt::new(&t.fat, id), 0, &mut dropped);
    }
    for id in 1000..1020 {
        t.q.enqueue(TestPkt::new(&t.thin, id), 0, &mut dropped);
    }
    assert!(dropped.is_empty());
    assert_eq!(t.q.len(), 100);
    // The 101st packet arrives on the thin flow.
    t.q.enqueue(TestPkt::new(&t.thin, 1020), 0, &mut dropped);
    assert!(!dropped.is_empty());
    // All from the fat flow, oldest first: its head.
    let ids: Vec<u64> = dropped.iter().map(|p| p.id).collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    // Linux batch: up to 64 packets or half the flow's bytes (40 of 80).
    assert_eq!(ids.len(), 40.min(OVERLIMIT_DROP_BATCH));
    let s = t.q.stats();
    assert_eq!(s.overlimit_drops, ids.len() as u64);
    assert_eq!(s.codel_drops, 0);
    assert_eq!(t.q.flow_len(t.q.flow_of(&t.thin)), 21);
    assert_eq!(t.q.len(), 101 - ids.len());
    assert!(t.q.len() <= 100);
    // Nothing of the thin flow was lost, including the arrival.
    let mut out = Vec::new();
    while let Some(p) = t.q.dequeue(0, &mut out) {
        assert!(p.id >= 40);
    }
    assert!(out.is_empty());
}

#[test]
fn memory_limit_drops_head_of_fattest_flow() {
    let mut t = two_flows(Config {
        memory_limit: 50_000,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    for id in 0..50 {
        t.q.enqueue(TestPkt::new(&t.fat, id), 0, &mut dropped);
    }
    assert!(dropped.is_empty());
    assert_eq!(t.q.backlog_bytes(), 50_000);
    t.q.enqueue(TestPkt::new(&t.thin, 1000), 0, &mut dropped);
    let ids: Vec<u64> = dropped.iter().map(|p| p.id).collect();
    // Half of the fat flow's 50 000 bytes.
    assert_eq!(ids, (0..25).collect::<Vec<_>>());
    assert_eq!(t.q.stats().overlimit_drops, 25);
    assert_eq!(t.q.flow_len(t.q.flow_of(&t.thin)), 1);
    assert!(t.q.backlog_bytes() <= 50_000);
}

#[test]
fn arriving_flow_is_fattest_drops_its_head_not_the_arrival() {
    let mut t = two_flows(Config {
        limit: 100,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    t.q.enqueue(TestPkt::new(&t.thin, 1000), 0, &mut dropped);
    for id in 0..100 {
        t.q.enqueue(TestPkt::new(&t.fat, id), 0, &mut dropped);
    }
    let ids: Vec<u64> = dropped.iter().map(|p| p.id).collect();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
    // The newest fat packet and the thin one are still queued.
    let mut out = Vec::new();
    let sent: Vec<u64> = std::iter::from_fn(|| t.q.dequeue(0, &mut out))
        .map(|p| p.id)
        .collect();
    assert!(sent.contains(&99) && sent.contains(&1000));
    assert_eq!(sent.len(), 51);
}

#[test]
fn fattest_is_by_bytes_not_packets() {
    // Many small packets vs fewer big ones: the big flow has more bytes.
    let mut t = two_flows(Config {
        limit: 100,
        ..Config::default()
    });
    let mut dropped = Vec::new();
    for id in 0..40 {
        t.q.enqueue(TestPkt::new(&t.fat, id), 0, &mut dropped); // 40 000 B
    }
    for id in 1000..1060 {
        t.q.enqueue(TestPkt::new(&t.thin, id), 0, &mut dropped); // 6 000 B
    }
    t.q.enqueue(TestPkt::new(&t.thin, 1060), 0, &mut dropped);
    assert!(!dropped.is_empty());
    assert!(
        dropped.iter().all(|p| p.id < 1000),
        "dropped from the thin flow"
    );
}

#[test]
fn sustained_overload_stays_within_limits() {
    let cfg = Config {
        limit: 1000,
        memory_limit: 300_000,
        ..Config::default()
    };
    let mut q: FqCodel<TestPkt> = new_queue(cfg);
    let flows = distinct_flows(&q, 16);
    let mut rng = XorShift(7);
    let mut dropped = Vec::new();
    let mut enqueued = 0u64;
    let mut sent = 0u64;
    let mut now = 0;
    for _ in 0..50_000 {
        for _ in 0..3 {
            let t = flows[rng.below(16) as usize];
            let len = 60 + rng.below(1455) as usize;
            q.enqueue(TestPkt::new(&ipv4(t, 0, len), enqueued), now, &mut dropped);
            enqueued += 1;
            assert!(q.len() <= cfg.limit && q.backlog_bytes() <= cfg.memory_limit);
        }
        if q.dequeue(now, &mut dropped).is_some() {
            sent += 1;
        }
        // Three arrivals per departure: the queue sits at its limits with a
        // standing delay well above target, so CoDel drops as well.
        now += 100 * US;
    }
    let s = q.stats();
    // Every packet is accounted for: sent, dropped (with a reason) or queued.
    assert_eq!(dropped.len() as u64, s.codel_drops + s.overlimit_drops);
    assert_eq!(enqueued, sent + dropped.len() as u64 + q.len() as u64);
    assert!(s.overlimit_drops > 0 && s.codel_drops > 0);
    let queued: usize = (0..cfg.flows).map(|f| q.flow_backlog_bytes(f)).sum();
    assert_eq!(queued, q.backlog_bytes());
}
