//! The CoDel control law (RFC 8289) for one queue.
//!
//! This is the RFC's pseudocode (§5.5–5.7) with its state in [`CodelVars`]
//! and the queue behind the [`CodelQueue`] trait, so the same code runs on a
//! flow queue of [`crate::FqCodel`] and on a plain FIFO in the tests below.
//!
//! - `dodequeue`: pop the head; the packet is "ok to drop" once the sojourn
//!   time has stayed at or above `target` for a whole `interval` while more
//!   than MAXPACKET bytes were queued.
//! - `dequeue`: outside the dropping state, the first ok-to-drop packet enters
//!   it (drop, or mark CE when ECN is on and the packet is ECN-capable). Inside
//!   it, drop (or mark) at `drop_next`, then schedule the next signal at
//!   `drop_next + interval / sqrt(count)`. A packet that is not ok to drop, or
//!   an empty queue, leaves the state.
//! - Re-entering the dropping state: RFC 8289's pseudocode, which is the Linux
//!   rule: if the state is re-entered less than 16 intervals after the last
//!   scheduled signal and more than one signal was sent in the previous
//!   episode (`delta = count - lastcount > 1`), `count` restarts at `delta`
//!   instead of 1, so the drop rate resumes near where it left off.
//! - With ECN (as in Linux), a mark both in and on entering the dropping state
//!   stands for the drop: the marked packet is returned, and no further packet
//!   is examined in that call.
//!
//! `interval / sqrt(count)` is computed in `f64` (Linux uses a fixed-point
//! Newton iteration of `1/sqrt`); spacing is therefore exact to the
//! nanosecond, which the drop-spacing tests rely on.
//!
//! Times are `u64` nanoseconds from the caller's monotonic clock. A timestamp
//! later than `now` (a clock that went backwards) counts as zero sojourn.

/// Parameters shared by every queue of one instance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CodelParams {
    /// Acceptable standing queue delay (RFC 8289 TARGET).
    pub target_ns: u64,
    /// Sliding window over which the minimum delay is judged (INTERVAL).
    pub interval_ns: u64,
    /// MAXPACKET: with this many bytes or fewer still queued after the head
    /// is removed, never drop — the queue cannot be emptied faster.
    pub maxpacket: usize,
    /// Mark ECN-capable packets CE instead of dropping them.
    pub ecn: bool,
}

/// Per-queue CoDel state. All zero / `false` initially.
#[derive(Clone, Debug, Default)]
pub(crate) struct CodelVars {
    /// When the sojourn time will have been above target for a whole
    /// interval; `None` while it is below target (RFC: `first_above_time ==
    /// 0`, which cannot tell "unset" from a clock that starts at 0).
    first_above_time: Option<u64>,
    /// When the next drop (or mark) is due, in the dropping state.
    drop_next: u64,
    /// Drops (and marks) since entering the dropping state, plus the carried-
    /// over `delta` on re-entry.
    count: u32,
    /// `count` at the last entry into the dropping state.
    lastcount: u32,
    /// In the dropping state.
    dropping: bool,
}

/// The queue CoDel runs on.
pub(crate) trait CodelQueue {
    type Item;
    /// Remove the head and return it with its enqueue time.
    fn pop(&mut self) -> Option<(Self::Item, u64)>;
    /// Bytes still queued, after the last `pop`, for the MAXPACKET test.
    fn backlog_bytes(&self) -> usize;
    /// CoDel drops `item`.
    fn drop_item(&mut self, item: Self::Item);
    /// Try to mark `item` CE; `false` if it is not ECN-capable.
    fn mark_ce(&mut self, item: &mut Self::Item) -> bool;
}

/// `t + interval / sqrt(count)`; `count` ≥ 1.
fn control_law(t: u64, interval_ns: u64, count: u32) -> u64 {
    debug_assert!(count >= 1);
    let step = interval_ns as f64 / f64::from(count.max(1)).sqrt();
    t.saturating_add(step as u64)
}

impl CodelVars {
    /// Whether the queue is in the dropping state.
    #[cfg(test)]
    pub(crate) fn dropping(&self) -> bool {
        self.dropping
    }

    /// RFC 8289 `dodequeue`: pop the head and say whether it is ok to drop.
    fn do_dequeue<Q: CodelQueue>(
        &mut self,
        p: &CodelParams,
        q: &mut Q,
        now: u64,
    ) -> (Option<Q::Item>, bool) {
        let Some((item, enqueued)) = q.pop() else {
            self.first_above_time = None;
            return (None, false);
        };
        let sojourn = now.saturating_sub(enqueued);
        let ok_to_drop = if sojourn < p.target_ns || q.backlog_bytes() <= p.maxpacket {
            // Went below target (or too little queued to matter): stay out
            // of / leave the dropping state.
            self.first_above_time = None;
            false
        } else {
            match self.first_above_time {
                // Just went above target: start the interval.
                None => {
                    self.first_above_time = Some(now.saturating_add(p.interval_ns));
                    false
                }
                Some(t) => now >= t,
            }
        };
        (Some(item), ok_to_drop)
    }

    /// RFC 8289 `dequeue`: the next packet to send, after dropping (via
    /// [`CodelQueue::drop_item`]) or marking what the control law says.
    pub(crate) fn dequeue<Q: CodelQueue>(
        &mut self,
        p: &CodelParams,
        q: &mut Q,
        now: u64,
    ) -> Option<Q::Item> {
        let (mut out, ok_to_drop) = self.do_dequeue(p, q, now);
        if out.is_none() {
            // An empty queue takes us out of the dropping state.
            self.dropping = false;
            return None;
        }
        if self.dropping {
            if !ok_to_drop {
                // Sojourn time below target: leave the dropping state.
                self.dropping = false;
            }
            // Time for the next drop: drop the head and look at the next
            // packet; a large backlog may need several drops now.
            while self.dropping && now >= self.drop_next {
                let Some(mut item) = out.take() else {
                    break;
                };
                self.count = self.count.saturating_add(1);
                if p.ecn && q.mark_ce(&mut item) {
                    self.drop_next = control_law(self.drop_next, p.interval_ns, self.count);
                    return Some(item);
                }
                q.drop_item(item);
                let (next, ok_to_drop) = self.do_dequeue(p, q, now);
                out = next;
                if ok_to_drop {
                    self.drop_next = control_law(self.drop_next, p.interval_ns, self.count);
                } else {
                    self.dropping = false;
                }
            }
        } else if ok_to_drop {
            // Sojourn above target for a whole interval: enter the dropping
            // state with one drop (or mark).
            if let Some(mut item) = out.take() {
                if p.ecn && q.mark_ce(&mut item) {
                    out = Some(item);
                } else {
                    q.drop_item(item);
                    out = self.do_dequeue(p, q, now).0;
                }
            }
            self.dropping = true;
            // Re-entering soon after the last episode: resume near its drop
            // rate. `now - drop_next` is the time since the last scheduled
            // signal; a `drop_next` in the future counts as "soon".
            let delta = self.count.wrapping_sub(self.lastcount);
            self.count = if delta > 1
                && now.saturating_sub(self.drop_next) < p.interval_ns.saturating_mul(16)
            {
                delta
            } else {
                1
            };
            self.lastcount = self.count;
            self.drop_next = control_law(now, p.interval_ns, self.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MS: u64 = 1_000_000;

    /// A FIFO of (id, enqueue time, ECN-capable), 1000 bytes each.
    #[derive(Default)]
    struct Fifo {
        q: VecDeque<(u64, u64, bool)>,
        drops: Vec<(u64, u64)>, // (id, when)
        marks: Vec<(u64, u64)>,
        now: u64,
        /// Whether arriving packets are ECN-capable.
        ect: bool,
    }

    impl CodelQueue for Fifo {
        type Item = (u64, u64, bool);
        fn pop(&mut self) -> Option<(Self::Item, u64)> {
            self.q.pop_front().map(|it| (it, it.1))
        }
        fn backlog_bytes(&self) -> usize {
            self.q.len() * 1000
        }
        fn drop_item(&mut self, item: Self::Item) {
            self.drops.push((item.0, self.now));
        }
        fn mark_ce(&mut self, item: &mut Self::Item) -> bool {
            if item.2 {
                self.marks.push((item.0, self.now));
            }
            item.2
        }
    }

    fn params(ecn: bool) -> CodelParams {
        CodelParams {
            target_ns: 5 * MS,
            interval_ns: 100 * MS,
            maxpacket: 1514,
            ecn,
        }
    }

    /// Every `tick`, enqueue `arrivals` packets and dequeue one, until `end`.
    fn run(
        v: &mut CodelVars,
        f: &mut Fifo,
        p: &CodelParams,
        from: u64,
        end: u64,
        tick: u64,
        arrivals: usize,
    ) {
        let mut t = from;
        let mut id = f.q.back().map_or(0, |b| b.0 + 1);
        while t < end {
            f.now = t;
            for _ in 0..arrivals {
                f.q.push_back((id, t, f.ect));
                id += 1;
            }
            v.dequeue(p, f, t);
            t += tick;
        }
    }

    #[test]
    fn below_target_never_drops() {
        let (mut v, mut f, p) = (CodelVars::default(), Fifo::default(), params(false));
        // Preload 4 packets, then one in one out every ms: sojourn 4 ms.
        for i in 0..4 {
            f.q.push_back((i, 0, false));
        }
        run(&mut v, &mut f, &p, MS, 10_000 * MS, MS, 1);
        assert!(f.drops.is_empty());
        assert!(!v.dropping());
    }

    #[test]
    fn first_drop_one_interval_after_going_above_target() {
        let (mut v, mut f, p) = (CodelVars::default(), Fifo::default(), params(false));
        for i in 0..20 {
            f.q.push_back((i, 0, false));
        }
        // Sojourn reaches 5 ms at t = 5 ms: first_above_time = 105 ms.
        run(&mut v, &mut f, &p, MS, 105 * MS, MS, 1);
        assert!(f.drops.is_empty(), "{:?}", f.drops);
        run(&mut v, &mut f, &p, 105 * MS, 106 * MS, MS, 1);
        assert_eq!(f.drops.len(), 1);
        assert_eq!(f.drops[0].1, 105 * MS);
        assert!(v.dropping());
    }

    #[test]
    fn ecn_marks_instead_of_dropping() {
        let (mut v, mut f, p) = (CodelVars::default(), Fifo::default(), params(true));
        f.ect = true;
        for i in 0..20 {
            f.q.push_back((i, 0, true));
        }
        run(&mut v, &mut f, &p, MS, 1000 * MS, MS, 1);
        assert!(f.drops.is_empty());
        assert_eq!(f.marks[0].1, 105 * MS);
        // Marks follow the same law: 105, 205, 205 + 70.7, ...
        assert_eq!(f.marks[1].1, 205 * MS);
        assert_eq!(f.marks[2].1, 276 * MS); // first tick ≥ 275.71 ms
    }

    #[test]
    fn reentry_within_16_intervals_resumes_count() {
        let (mut v, mut f, p) = (CodelVars::default(), Fifo::default(), params(false));
        let tick = MS / 10;
        // Two arrivals per departure: a growing queue, a dropping episode.
        run(&mut v, &mut f, &p, 0, 2_000 * MS, tick, 2);
        assert!(f.drops.len() > 5);
        assert!(v.dropping());
        // Drain: no arrivals until the queue is empty (leaves the state).
        let mut t = 2_000 * MS;
        while !f.q.is_empty() {
            f.now = t;
            v.dequeue(&p, &mut f, t);
            t += tick;
        }
        v.dequeue(&p, &mut f, t);
        assert!(!v.dropping());
        let count = v.count;
        assert_eq!(v.lastcount, 1);
        assert!(count > 5);
        // Overload again straight away: re-entry is within 16 intervals, so
        // count restarts at count - lastcount (lastcount was 1).
        let dropped_before = f.drops.len();
        run(&mut v, &mut f, &p, t, t + 1_000 * MS, tick, 2);
        assert!(f.drops.len() > dropped_before);
        assert_eq!(v.lastcount, count - 1);
        // The second drop of the new episode comes interval/sqrt(count - 1)
        // after the first, not a full interval.
        let a = f.drops[dropped_before].1;
        let b = f.drops[dropped_before + 1].1;
        let expected = 100.0 * MS as f64 / f64::from(count - 1).sqrt();
        let got = (b - a) as f64;
        assert!(
            (got - expected).abs() <= tick as f64,
            "got {got}, expected {expected}"
        );
    }

    #[test]
    fn control_law_is_interval_over_sqrt_count() {
        assert_eq!(control_law(0, 100 * MS, 1), 100 * MS);
        assert_eq!(control_law(0, 100 * MS, 4), 50 * MS);
        assert_eq!(control_law(7, 100 * MS, 100), 10 * MS + 7);
        assert_eq!(control_law(u64::MAX - 1, 100 * MS, 1), u64::MAX);
    }
}
