//! RFC 8289 behaviour through `FqCodel`, with a simulated clock: one flow,
//! one packet in and one out per tick, so the sojourn time is the standing
//! queue length times the tick.

mod common;

use common::*;
use fq_codel::{Config, FqCodel};

/// A single-flow simulation. Not-ECT frames unless `tos` says otherwise.
struct Sim {
    q: FqCodel<TestPkt>,
    frame: Vec<u8>,
    now: u64,
    next_id: u64,
    dropped: Vec<TestPkt>,
    /// (id, time) of every CoDel drop.
    drops: Vec<(u64, u64)>,
    sent: Vec<(TestPkt, u64)>,
}

impl Sim {
    fn new(cfg: Config, frame: Vec<u8>) -> Self {
        Sim {
            q: new_queue(cfg),
            frame,
            now: 0,
            next_id: 0,
            dropped: Vec::new(),
            drops: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn arrive(&mut self) {
        let p = TestPkt::new(&self.frame, self.next_id);
        self.next_id += 1;
        let mut over = Vec::new();
        self.q.enqueue(p, self.now, &mut over);
        assert!(over.is_empty(), "no overlimit drops in these tests");
    }

    fn depart(&mut self) {
        let p = self.q.dequeue(self.now, &mut self.dropped);
        for d in self.dropped.drain(..) {
            self.drops.push((d.id, self.now));
        }
        if let Some(p) = p {
            self.sent.push((p, self.now));
        }
    }

    /// Until `end`: every `tick`, `arrivals` packets in, `departures` out.
    fn run(&mut self, end: u64, tick: u64, arrivals: usize, departures: usize) {
        while self.now < end {
            self.now += tick;
            for _ in 0..arrivals {
                self.arrive();
            }
            for _ in 0..departures {
                self.depart();
            }
        }
    }
}

fn big_limits() -> Config {
    Config {
        limit: 1 << 20,
        memory_limit: 1 << 30,
        ..Config::default()
    }
}

fn not_ect_1000() -> Vec<u8> {
    ipv4(udp(1000, 2000), 0, 1000)
}

#[test]
fn no_drops_while_sojourn_below_target() {
    let mut s = Sim::new(Config::default(), not_ect_1000());
    // Four queued, one in one out per ms: sojourn 4 ms < 5 ms, with 4000
    // bytes queued (> MAXPACKET, so only the sojourn rule protects them).
    for _ in 0..4 {
        s.arrive();
    }
    s.run(10_000 * MS, MS, 1, 1);
    assert!(s.drops.is_empty());
    assert_eq!(s.q.stats().codel_drops, 0);
    assert_eq!(s.sent.len(), 10_000);
    // Ids 0..4 arrived at 0, id k ≥ 4 at (k - 3) ms.
    let arrival = |id: u64| id.saturating_sub(3) * MS;
    assert!(s.sent.iter().all(|(p, t)| t - arrival(p.id) < 5 * MS));
}

#[test]
fn above_target_for_less_than_an_interval_no_drop_then_drop_at_interval() {
    let mut s = Sim::new(Config::default(), not_ect_1000());
    for _ in 0..20 {
        s.arrive();
    }
    // The sojourn time reaches 5 ms at t = 5 ms and stays at 20 ms: CoDel
    // may drop from t = 105 ms, not before.
    s.run(104 * MS, MS, 1, 1);
    assert!(s.drops.is_empty(), "{:?}", s.drops);
    s.run(105 * MS, MS, 1, 1);
    assert_eq!(s.drops.len(), 1);
    assert_eq!(s.drops[0].1, 105 * MS);
    // The dropped packet is the head; the next one was still sent.
    assert_eq!(s.q.stats().codel_drops, 1);
    assert_eq!(s.sent.len(), 105);
}

#[test]
fn dipping_below_target_restarts_the_interval() {
    let mut s = Sim::new(Config::default(), not_ect_1000());
    for _ in 0..20 {
        s.arrive();
    }
    // Above target from 5 ms to about 75 ms (the drain below takes time:
    // the head packets are old)...
    s.run(60 * MS, MS, 1, 1);
    // ...then drain to three packets (3000 bytes queued, sojourn < 5 ms)...
    while s.q.len() > 3 {
        s.now += MS;
        s.arrive();
        s.depart();
        s.depart();
    }
    s.run(s.now + 3 * MS, MS, 1, 1);
    assert!(s.drops.is_empty(), "{:?}", s.drops);
    assert!(s.now < 90 * MS);
    // ...then above target again: another full interval before a drop
    // (without the reset, the first drop would come by 105 ms).
    for _ in 0..20 {
        s.arrive();
    }
    let back_above = s.now;
    s.run(back_above + 95 * MS, MS, 1, 1);
    assert!(s.drops.is_empty(), "{:?}", s.drops);
    s.run(back_above + 200 * MS, MS, 1, 1);
    assert!(!s.drops.is_empty());
    assert!(s.drops[0].1 >= back_above + 100 * MS);
}

/// Drops (or marks) at times t_1, t_2, ...: t_{k+1} - t_k must be
/// interval / sqrt(k) within 1 %.
fn check_spacing(times: &[u64], interval: u64, tick: u64) {
    assert!(times.len() >= 100, "only {} signals", times.len());
    for (k, w) in times.windows(2).enumerate() {
        let count = (k + 1) as f64;
        let expected = interval as f64 / count.sqrt();
        let got = (w[1] - w[0]) as f64;
        assert!(
            (got - expected).abs() <= expected * 0.01,
            "gap {} after signal {}: {got} ns, expected {expected} ns",
            k + 1,
            k + 1
        );
        // The clock tick bounds the error anyway.
        assert!((got - expected).abs() <= tick as f64 + 1.0);
    }
}

#[test]
fn drop_spacing_follows_interval_over_sqrt_count() {
    let mut s = Sim::new(big_limits(), ipv4(udp(1, 2), 0, 100));
    let tick = 10 * US;
    // 2000 queued at 10 us per departure: a 20 ms standing queue. Each drop
    // shortens it by one packet; 5 s of drops (~600) leave it above 13 ms.
    for _ in 0..2000 {
        s.arrive();
    }
    s.run(5_000 * MS, tick, 1, 1);
    let times: Vec<u64> = s.drops.iter().map(|d| d.1).collect();
    assert_eq!(times[0], 105 * MS); // above target from t = 5 ms
    check_spacing(&times, 100 * MS, tick);
    // Head drops: dropped ids increase.
    assert!(s.drops.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(s.q.stats().codel_drops as usize, s.drops.len());
}

#[test]
fn mark_spacing_follows_interval_over_sqrt_count() {
    // Same, with ECT(0): CE marks instead of drops, on the same schedule.
    let mut s = Sim::new(big_limits(), ipv4(udp(1, 2), 0x02, 100));
    let tick = 10 * US;
    for _ in 0..2000 {
        s.arrive();
    }
    s.run(3_000 * MS, tick, 1, 1);
    assert!(s.drops.is_empty());
    let times: Vec<u64> = s
        .sent
        .iter()
        .filter(|(p, _)| {
            fq_codel::ecn::ecn(p.buf.get(12..).unwrap()) == Some(fq_codel::ecn::Ecn::Ce)
        })
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(times.len() as u64, s.q.stats().ecn_marks);
    check_spacing(&times, 100 * MS, tick);
}

#[test]
fn leaves_dropping_state_when_sojourn_falls_below_target() {
    let mut s = Sim::new(Config::default(), not_ect_1000());
    for _ in 0..20 {
        s.arrive();
    }
    // Standing 20 ms queue: drops at 105, 205, 276, 334, ... ms.
    s.run(400 * MS, MS, 1, 1);
    let in_episode = s.drops.len();
    assert!(in_episode >= 4, "{:?}", s.drops);
    // The link speeds up until four packets are queued (4 ms sojourn at one
    // departure per ms, 4000 bytes > MAXPACKET)...
    while s.q.len() > 4 {
        s.now += MS;
        s.arrive();
        s.depart();
        s.depart();
    }
    let drained_at = s.now;
    let during_drain = s.drops.len();
    // ...and stays there: CoDel must have left the dropping state, or it
    // would keep dropping every interval / sqrt(count).
    s.run(drained_at + 5_000 * MS, MS, 1, 1);
    assert_eq!(
        s.drops.len(),
        during_drain,
        "dropped after sojourn fell below target"
    );
    assert!(
        s.sent
            .iter()
            .filter(|(_, t)| *t > drained_at + 10 * MS)
            .count()
            > 4_000
    );
    // Going above target again needs a full interval before a drop.
    for _ in 0..20 {
        s.arrive();
    }
    let again = s.now;
    s.run(again + 99 * MS, MS, 1, 1);
    assert_eq!(s.drops.len(), during_drain);
    s.run(again + 300 * MS, MS, 1, 1);
    assert!(s.drops.len() > during_drain);
}
