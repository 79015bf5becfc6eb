//! `crates/fq-codel`: flow classification and hashing over arbitrary
//! frames, ECN marking, and FqCodel over arbitrary enqueue/dequeue
//! sequences with arbitrary (even backward) timestamps and parameters.
//!
//! Checked against a model of what is queued (packet ids per flow):
//! - classification is deterministic, a VLAN tag inserted in front of the
//!   ethertype (while fewer than `MAX_VLAN_TAGS` are there) changes no key,
//!   IPv4 keys have zeros past their 4 address bytes, buckets are in range;
//! - ECN marking sets CE exactly on ECT frames and keeps a valid IPv4
//!   header checksum valid (RFC 1624);
//! - every packet enqueued is dequeued, dropped (CoDel or overlimit,
//!   counted as such), cleared, or still queued; each leaves from the head
//!   of its flow; backlog counters (total, per flow, in `Stats`) match the
//!   model; after an enqueue the queue is within its packet and byte limits;
//!   `flows_active` is the number of flows with packets.

#![no_main]

use std::collections::{HashMap, VecDeque};

use fq_codel::classify::{classify, FlowKey, MAX_VLAN_TAGS};
use fq_codel::ecn::{ecn, internet_checksum, set_ce, Ecn};
use fq_codel::{Config, FqCodel, Packet};
use libfuzzer_sys::fuzz_target;
use vhost_tap_fuzz::input::Input;

/// A packet that knows its id.
struct Pkt {
    id: u32,
    frame: Vec<u8>,
}

impl Packet for Pkt {
    fn frame(&self) -> &[u8] {
        &self.frame
    }
    fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.frame
    }
}

fn is_tpid(t: u16) -> bool {
    matches!(t, 0x8100 | 0x88a8 | 0x9100)
}

/// VLAN tags in front of the ethertype, or `None` when a tag runs past
/// the end of the frame (or there is no Ethernet header).
fn tags(f: &[u8]) -> Option<usize> {
    let be16 = |o: usize| f.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut et = be16(12)?;
    let mut n = 0;
    while is_tpid(et) && n <= MAX_VLAN_TAGS {
        et = be16(14 + 4 * n + 2)?;
        n += 1;
    }
    Some(n)
}

fn check_classify(frame: &[u8], tci: u16, seed: u64, buckets: usize) {
    let key = classify(frame);
    assert_eq!(key, classify(frame));
    assert_eq!(key.hash(seed), classify(frame).hash(seed));
    assert!(key.bucket(seed, buckets) < buckets);
    if let FlowKey::Ip {
        v6: false,
        src,
        dst,
        ..
    } = key
    {
        assert!(src[4..].iter().chain(&dst[4..]).all(|&b| b == 0));
    }
    if let FlowKey::Runt { len, .. } = key {
        assert_eq!(usize::from(len), frame.len());
    }
    // A tag more, with any VLAN id, lands in the same flow.
    if tags(frame).is_some_and(|n| n < MAX_VLAN_TAGS) {
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00]);
        tagged.extend_from_slice(&tci.to_be_bytes());
        tagged.extend_from_slice(&frame[12..]);
        assert_eq!(classify(&tagged), key, "a VLAN tag changed the flow key");
    }
}

/// The IPv4 header of a frame that `ecn` sees as IPv4: (offset, length).
fn ipv4_header(f: &[u8]) -> Option<(usize, usize)> {
    let n = tags(f)?;
    let off = 14 + 4 * n;
    let et = u16::from_be_bytes([f[off - 2], f[off - 1]]);
    let first = *f.get(off)?;
    let ihl = usize::from(first & 0x0f) * 4;
    (et == 0x0800 && first >> 4 == 4 && ihl >= 20 && f.len() >= off + ihl).then_some((off, ihl))
}

fn check_ecn(frame: &[u8]) {
    let before = ecn(frame);
    let mut f = frame.to_vec();
    let marked = set_ce(&mut f);
    match before {
        Some(Ecn::Ect0 | Ecn::Ect1 | Ecn::Ce) => {
            assert!(marked);
            assert_eq!(ecn(&f), Some(Ecn::Ce));
        }
        Some(Ecn::NotEct) | None => {
            assert!(!marked);
            assert_eq!(f, frame, "a frame that is not ECN-capable was changed");
        }
    }
    if let Some((off, ihl)) = ipv4_header(frame) {
        if internet_checksum(&frame[off..off + ihl]) == 0 {
            assert_eq!(
                internet_checksum(&f[off..off + ihl]),
                0,
                "marking broke a valid IPv4 header checksum"
            );
        }
    }
}

/// A frame from the input: raw, or a plausible IPv4/IPv6 TCP/UDP header
/// with fields from the input (so that flows and ECN bits vary).
fn frame(i: &mut Input) -> Vec<u8> {
    match i.u8() % 4 {
        0 | 1 => i.blob(256).to_vec(),
        2 => {
            let mut f = vec![0u8; 14 + 20 + 8];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[15] = i.u8();
            f[23] = if i.bool() { 6 } else { 17 };
            i.fill(&mut f[26..34]);
            f[34..38].copy_from_slice(&[i.u8() % 4, 0, 0, 80]);
            let sum = internet_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
            f.resize(f.len() + usize::from(i.u16() % 1500), 0);
            f
        }
        _ => {
            let mut f = vec![0u8; 14 + 40 + 8];
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            let tc = i.u8();
            f[14] = 0x60 | tc >> 4;
            f[15] = tc << 4;
            f[20] = if i.bool() { 6 } else { 17 };
            f[22..54].copy_from_slice(&{
                let mut a = [0u8; 32];
                a[15] = i.u8() % 4;
                a[31] = 1;
                a
            });
            f.resize(f.len() + usize::from(i.u16() % 1500), 0);
            f
        }
    }
}

/// What the model knows of the queue.
#[derive(Default)]
struct Model {
    /// Per flow, the ids queued, oldest first.
    flows: HashMap<usize, VecDeque<u32>>,
    /// Per id: flow and length.
    packets: HashMap<u32, (usize, usize)>,
    bytes: usize,
}

impl Model {
    fn add(&mut self, id: u32, flow: usize, len: usize) {
        self.flows.entry(flow).or_default().push_back(id);
        self.packets.insert(id, (flow, len));
        self.bytes += len;
    }

    /// A packet left the queue: it must be the head of its flow.
    fn remove(&mut self, id: u32, why: &str) {
        let (flow, len) = self
            .packets
            .remove(&id)
            .unwrap_or_else(|| panic!("{why}: packet {id} is not queued"));
        let q = self.flows.get_mut(&flow).unwrap();
        assert_eq!(
            q.pop_front(),
            Some(id),
            "{why}: packet {id} left from the middle of its flow"
        );
        if q.is_empty() {
            self.flows.remove(&flow);
        }
        self.bytes -= len;
    }

    fn check(&self, q: &FqCodel<Pkt>) {
        let st = q.stats();
        assert_eq!(q.len(), self.packets.len());
        assert_eq!(q.is_empty(), self.packets.is_empty());
        assert_eq!(q.backlog_bytes(), self.bytes);
        assert_eq!(
            (st.backlog_packets, st.backlog_bytes),
            (q.len(), self.bytes)
        );
        assert_eq!(st.flows_active, self.flows.len());
        assert!(st.new_flows_len + st.old_flows_len <= q.config().flows);
        for (&f, ids) in &self.flows {
            assert_eq!(q.flow_len(f), ids.len());
            let bytes: usize = ids.iter().map(|id| self.packets[id].1).sum();
            assert_eq!(q.flow_backlog_bytes(f), bytes);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let cfg = Config {
        flows: 1 + i.below(64),
        limit: 1 + i.below(128),
        memory_limit: 1 + i.u32() as usize % 200_000,
        quantum: 1 + i.below(3000),
        target_ns: u64::from(i.u32()),
        interval_ns: 1 + u64::from(i.u32()),
        ecn: i.bool(),
        seed: i.u64(),
    };
    let mut q: FqCodel<Pkt> = FqCodel::try_new(cfg).expect("in range");
    let mut m = Model::default();
    let (mut now, mut next_id) = (i.u64(), 0u32);
    let (mut codel_drops, mut overlimit_drops) = (0u64, 0u64);
    let mut dropped = Vec::new();
    while !i.is_empty() {
        now = match i.u8() % 8 {
            0 => i.u64(),
            1 => now.saturating_add(i.u64()),
            2 => now.saturating_sub(u64::from(i.u32())),
            _ => now.saturating_add(u64::from(i.u32())),
        };
        match i.u8() % 4 {
            0 | 1 => {
                let f = frame(&mut i);
                check_classify(&f, i.u16(), cfg.seed, cfg.flows);
                check_ecn(&f);
                let flow = q.flow_of(&f);
                assert_eq!(flow, classify(&f).bucket(cfg.seed, cfg.flows));
                let (id, len) = (next_id, f.len());
                next_id += 1;
                m.add(id, flow, len);
                q.enqueue(Pkt { id, frame: f }, now, &mut dropped);
                for p in dropped.drain(..) {
                    m.remove(p.id, "overlimit drop");
                    overlimit_drops += 1;
                }
                assert!(q.len() <= cfg.limit && q.backlog_bytes() <= cfg.memory_limit);
            }
            2 => {
                let marks = q.stats().ecn_marks;
                let got = q.dequeue(now, &mut dropped);
                for p in dropped.drain(..) {
                    m.remove(p.id, "CoDel drop");
                    codel_drops += 1;
                }
                match got {
                    Some(p) => {
                        let flow = m.packets.get(&p.id).map(|&(f, _)| f);
                        m.remove(p.id, "dequeue");
                        // A mark changes no flow, and only marks change bytes.
                        assert_eq!(Some(q.flow_of(&p.frame)), flow);
                        if q.stats().ecn_marks > marks {
                            assert_eq!(ecn(&p.frame), Some(Ecn::Ce));
                        }
                    }
                    None => assert!(
                        m.packets.is_empty(),
                        "dequeue found nothing in a non-empty queue"
                    ),
                }
            }
            _ => {
                if i.u8().is_multiple_of(16) {
                    let mut out = Vec::new();
                    q.clear(&mut out);
                    assert_eq!(out.len(), m.packets.len());
                    for p in out {
                        assert!(m.packets.contains_key(&p.id));
                    }
                    m = Model::default();
                }
            }
        }
        let st = q.stats();
        assert_eq!(
            (st.codel_drops, st.overlimit_drops),
            (codel_drops, overlimit_drops)
        );
        m.check(&q);
    }
});
