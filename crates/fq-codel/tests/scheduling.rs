//! RFC 8290 flow queueing: sparse-flow priority, DRR fairness, the new-flow
//! anti-starvation rule.

mod common;

use common::*;
use fq_codel::{Config, FqCodel};

#[test]
fn sparse_flow_bypasses_bulk_backlog() {
    let mut q: FqCodel<TestPkt> = new_queue(Config::default());
    let flows = distinct_flows(&q, 5);
    let (bulk, sparse) = (&flows[..4], flows[4]);
    let bulk_frames: Vec<Vec<u8>> = bulk.iter().map(|&t| ipv4(t, 0, 1514)).collect();
    let bulk_buckets: Vec<usize> = bulk_frames.iter().map(|f| q.flow_of(f)).collect();
    let ping = ipv4(sparse, 0, 98);
    const PING_ID: u64 = u64::MAX;

    let mut dropped = Vec::new();
    let tick = 12 * US; // 1514 bytes at ~1 Gbit/s
    let mut now = 0;
    let mut pings_sent = 0;
    let mut ping_pending: Option<u64> = None;
    let mut bulk_sent_while_ping_waited = 0;
    let mut id = 0;
    // A ping every 10 ms (833 ticks), from 10 ms on: at start-up the bulk
    // flows are new flows themselves and a ping waits one quantum each.
    let ping_every = 10 * MS / tick;
    let mut ticks = 0u64;
    let mut next_ping = ping_every;
    while ticks < 100 * ping_every + 1 {
        // Keep every bulk flow backlogged with 50 packets.
        for (f, &b) in bulk_frames.iter().zip(&bulk_buckets) {
            while q.flow_len(b) < 50 {
                q.enqueue(TestPkt::new(f, id), now, &mut dropped);
                id += 1;
            }
        }
        // A ping every 10 ms, behind 200 bulk packets.
        if ticks == next_ping {
            next_ping += ping_every;
            assert!(ping_pending.is_none());
            q.enqueue(TestPkt::new(&ping, PING_ID), now, &mut dropped);
            ping_pending = Some(now);
        }
        let p = q.dequeue(now, &mut dropped).expect("backlogged");
        if p.id == PING_ID {
            let queued_at = ping_pending.take().expect("one ping at a time");
            // Served by the very next dequeue: no wait for the bulk flows.
            assert_eq!(queued_at, now);
            pings_sent += 1;
        } else if ping_pending.is_some() {
            bulk_sent_while_ping_waited += 1;
        }
        now += tick;
        ticks += 1;
    }
    assert_eq!(pings_sent, 100);
    assert_eq!(bulk_sent_while_ping_waited, 0);
    assert!(dropped.iter().all(|p| p.id != PING_ID));
}

/// Keep `frames.len()` flows backlogged and dequeue `rounds` packets at a
/// fixed time (no CoDel involvement: zero sojourn); bytes sent per flow.
fn drr_bytes(q: &mut FqCodel<TestPkt>, frames: &[Vec<u8>], rounds: usize) -> Vec<u64> {
    let buckets: Vec<usize> = frames.iter().map(|f| q.flow_of(f)).collect();
    let mut sent = vec![0u64; frames.len()];
    let mut dropped = Vec::new();
    for _ in 0..rounds {
        for (i, f) in frames.iter().enumerate() {
            while q.flow_len(buckets[i]) < 30 {
                q.enqueue(TestPkt::new(f, i as u64), 0, &mut dropped);
            }
        }
        let p = q.dequeue(0, &mut dropped).expect("backlogged");
        sent[p.id as usize] += p.buf.len() as u64 - VNET_HDR_LEN as u64;
    }
    assert!(dropped.is_empty());
    sent
}

fn assert_fair(sent: &[u64]) {
    let mean = sent.iter().sum::<u64>() as f64 / sent.len() as f64;
    for (i, &b) in sent.iter().enumerate() {
        let dev = (b as f64 - mean).abs() / mean;
        assert!(
            dev <= 0.10,
            "flow {i}: {b} bytes vs mean {mean:.0} ({sent:?})"
        );
    }
}

fn fairness(n: usize, sizes: &[usize]) {
    let mut q: FqCodel<TestPkt> = new_queue(Config::default());
    let frames: Vec<Vec<u8>> = distinct_flows(&q, n)
        .into_iter()
        .enumerate()
        .map(|(i, t)| ipv4(t, 0, sizes[i % sizes.len()]))
        .collect();
    let sent = drr_bytes(&mut q, &frames, 200_000);
    assert_fair(&sent);
}

#[test]
fn fairness_4_flows_equal_sizes() {
    fairness(4, &[1514]);
}

#[test]
fn fairness_8_flows_equal_sizes() {
    fairness(8, &[1514]);
}

#[test]
fn fairness_4_flows_64_vs_1514_bytes() {
    fairness(4, &[64, 1514]);
}

#[test]
fn fairness_8_flows_64_vs_1514_bytes() {
    fairness(8, &[64, 1514]);
}

#[test]
fn fairness_mixed_sizes_and_odd_quantum() {
    let mut q: FqCodel<TestPkt> = new_queue(Config {
        quantum: 300,
        ..Config::default()
    });
    let frames: Vec<Vec<u8>> = distinct_flows(&q, 5)
        .into_iter()
        .zip([64, 200, 577, 1000, 1514])
        .map(|(t, len)| ipv4(t, 0, len))
        .collect();
    assert_fair(&drr_bytes(&mut q, &frames, 200_000));
}

/// Equal sizes in packets too: strictly round robin with 1514-byte frames
/// and a 1514-byte quantum.
#[test]
fn equal_flows_alternate_packet_by_packet() {
    let mut q: FqCodel<TestPkt> = new_queue(Config::default());
    let frames: Vec<Vec<u8>> = distinct_flows(&q, 4)
        .into_iter()
        .map(|t| ipv4(t, 0, 1514))
        .collect();
    let mut dropped = Vec::new();
    for _ in 0..10 {
        for (i, f) in frames.iter().enumerate() {
            q.enqueue(TestPkt::new(f, i as u64), 0, &mut dropped);
        }
    }
    let order: Vec<u64> = std::iter::from_fn(|| q.dequeue(0, &mut dropped))
        .map(|p| p.id)
        .collect();
    assert_eq!(order.len(), 40);
    for (k, chunk) in order.chunks(4).enumerate() {
        assert_eq!(chunk, [0, 1, 2, 3], "round {k}: {order:?}");
    }
}

/// RFC 8290 §4.2: a new flow found empty while old flows wait goes to the end
/// of the old list, so a flow whose next packet always arrives just after its
/// queue empties cannot keep new-flow priority.
#[test]
fn emptied_new_flow_goes_behind_old_flows() {
    let mut q: FqCodel<TestPkt> = new_queue(Config::default());
    let flows = distinct_flows(&q, 5);
    let bulk: Vec<Vec<u8>> = flows[..4].iter().map(|&t| ipv4(t, 0, 1514)).collect();
    let buckets: Vec<usize> = bulk.iter().map(|f| q.flow_of(f)).collect();
    let chatty = ipv4(flows[4], 0, 1000);
    let mut dropped = Vec::new();

    q.enqueue(TestPkt::new(&chatty, 99), 0, &mut dropped);
    let mut refill_after_next = false;
    let (mut chatty_bytes, mut total_bytes) = (0, 0);
    for _ in 0..10_000 {
        for (i, f) in bulk.iter().enumerate() {
            while q.flow_len(buckets[i]) < 10 {
                q.enqueue(TestPkt::new(f, i as u64), 0, &mut dropped);
            }
        }
        let p = q.dequeue(0, &mut dropped).expect("backlogged");
        total_bytes += p.buf.len() - VNET_HDR_LEN;
        if refill_after_next {
            // One packet time after the chatty flow's last packet left.
            q.enqueue(TestPkt::new(&chatty, 99), 0, &mut dropped);
            refill_after_next = false;
        }
        if p.id == 99 {
            chatty_bytes += p.buf.len() - VNET_HDR_LEN;
            refill_after_next = true;
        }
    }
    // Its fair share of bytes is 1/5; keeping priority would give it every
    // other packet, 1000 / 2514 of the bytes.
    let share = chatty_bytes as f64 / total_bytes as f64;
    assert!((0.15..=0.25).contains(&share), "chatty flow share {share}");
}

#[test]
fn flow_counters_track_lists() {
    let mut q: FqCodel<TestPkt> = new_queue(Config::default());
    let flows = distinct_flows(&q, 3);
    let mut dropped = Vec::new();
    for (i, &t) in flows.iter().enumerate() {
        for _ in 0..3 {
            q.enqueue(TestPkt::new(&ipv4(t, 0, 1514), i as u64), 0, &mut dropped);
        }
    }
    let s = q.stats();
    assert_eq!(
        (
            s.new_flow_count,
            s.new_flows_len,
            s.old_flows_len,
            s.flows_active
        ),
        (3, 3, 0, 3)
    );
    assert_eq!((s.backlog_packets, s.backlog_bytes), (9, 9 * 1514));
    // One packet each uses up each flow's quantum: all move to the old list.
    for _ in 0..4 {
        q.dequeue(0, &mut dropped);
    }
    let s = q.stats();
    assert_eq!((s.new_flows_len, s.old_flows_len), (0, 3));
    while q.dequeue(0, &mut dropped).is_some() {}
    let s = q.stats();
    assert_eq!(
        (s.new_flows_len, s.old_flows_len, s.flows_active),
        (0, 0, 0)
    );
    assert!(q.is_empty() && q.backlog_bytes() == 0);
}
