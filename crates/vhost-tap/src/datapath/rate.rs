//! Rate limits without loss: token buckets that decide how many frames may
//! move, never which to drop.
//!
//! A device has one [`Limiter`] per limited direction, shared by its queue
//! pairs. A limited direction simply stops moving frames while the buckets
//! are empty and comes back on the pair's timer when they have refilled:
//!
//! - host → guest (RX): the filler stops putting frames into guest buffers
//!   and the direct path stops reading. In backpressure mode the ring fills,
//!   the reader stops and the queue forms behind the TAP (in the qdisc with
//!   `IFF_BACKPRESSURE`); in FQ-CoDel mode the reader goes on and the queue
//!   forms in the daemon's AQM, which manages it.
//! - guest → host (TX): the drainer stops popping the guest's TX ring, so
//!   the queue forms in the guest (its virtio-net queue stops, its qdisc
//!   holds the rest).
//!
//! No lock on the per-frame path: a pass takes the whole balance the
//! buckets hold as a grant ([`Meter::begin`]), spends it frame by frame in
//! plain integers, and gives back what is left — or the debt of its last
//! frame, since a frame's size is known only once it is read — at its end
//! ([`Meter::end`]). Debt is at most one frame (64 KiB with GSO) and is
//! paid before the next frame goes, so over any interval longer than the
//! burst the rate holds exactly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::settings::{RateLimit, TokenBucket};

/// Tokens are counted in billionths of a unit, so that refilling by
/// `rate × elapsed nanoseconds` is exact integer arithmetic.
const NANO: i128 = 1_000_000_000;

/// The shortest wait a limited pass asks for: below it a timer costs more
/// than it saves.
const MIN_WAIT: Duration = Duration::from_micros(50);

/// One bucket, in nano-units.
///
/// Bounds: `burst` < 2^64 · 10^9 < 2^94 and a debt is at most one grant's
/// frame (< 2^63 units, so < 2^93 nano-units), so `tokens` stays within
/// ±2^94; `refill` caps the elapsed time at what the bucket needs to fill,
/// so `rate × ns` ≤ `burst - tokens + rate` < 2^96. Far inside i128.
#[derive(Debug)]
struct Bucket {
    /// Units per second (≥ 1).
    rate: i128,
    /// Most nano-units saved up.
    burst: i128,
    /// Nano-units available; negative while a frame's debt is being paid.
    tokens: i128,
}

impl Bucket {
    /// A bucket that starts full.
    fn new(b: TokenBucket) -> Bucket {
        let burst = i128::from(b.burst.max(1)) * NANO;
        Bucket {
            rate: i128::from(b.rate.max(1)),
            burst,
            tokens: burst,
        }
    }

    fn refill(&mut self, elapsed_ns: u64) {
        // Past the time an empty bucket needs to fill, more time adds
        // nothing; capping it keeps the product far inside i128.
        let full_after = (self.burst - self.tokens.min(0)) / self.rate + 1;
        let ns = i128::from(elapsed_ns).min(full_after);
        self.tokens = (self.tokens + self.rate * ns).min(self.burst);
        debug_assert!(self.tokens <= self.burst);
    }

    /// Take every whole unit available (none while in debt).
    fn take_whole(&mut self) -> i64 {
        if self.tokens < NANO {
            return 0;
        }
        let whole = (self.tokens / NANO).min(i128::from(i64::MAX));
        self.tokens -= whole * NANO;
        whole as i64
    }

    /// Give back `units` of a grant: what was left, or (negative) the debt
    /// of the pass's last frame.
    fn give_back(&mut self, units: i64) {
        self.tokens = (self.tokens + i128::from(units) * NANO).min(self.burst);
    }

    /// Nanoseconds until the bucket holds `want` whole units.
    fn ns_until(&self, want: i128) -> u64 {
        let need = want * NANO - self.tokens;
        if need <= 0 {
            return 0;
        }
        // Rounded up: never wake a nanosecond before the tokens are there.
        let ns = (need + self.rate - 1) / self.rate;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// What a limited pass waits for: about a millisecond of the rate (or
    /// the whole burst, if smaller), so that a limited direction wakes at
    /// most about a thousand times a second.
    fn useful(&self) -> i128 {
        (self.rate / 1000).max(1).min(self.burst / NANO)
    }
}

/// The buckets of one direction of one device.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    bytes: Option<Bucket>,
    frames: Option<Bucket>,
    /// When the buckets were last refilled.
    last: Instant,
}

impl Buckets {
    fn each(&mut self) -> impl Iterator<Item = &mut Bucket> {
        self.bytes.iter_mut().chain(self.frames.iter_mut())
    }

    fn refill(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.last).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.last = now;
        for b in self.each() {
            b.refill(ns);
        }
    }
}

impl Limiter {
    /// `None` for a direction without a limit.
    pub fn new(limit: RateLimit) -> Option<Arc<Limiter>> {
        if limit.is_unlimited() {
            return None;
        }
        Some(Arc::new(Limiter {
            state: Mutex::new(Buckets {
                bytes: limit.bytes.map(Bucket::new),
                frames: limit.frames.map(Bucket::new),
                last: Instant::now(),
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refill, then take the whole balance: `(bytes, frames)`.
    fn grant(&self, now: Instant) -> (i64, i64) {
        let mut s = self.lock();
        s.refill(now);
        let bytes = s.bytes.as_mut().map_or(i64::MAX, Bucket::take_whole);
        let frames = s.frames.as_mut().map_or(i64::MAX, Bucket::take_whole);
        (bytes, frames)
    }

    /// Give back what a grant has left (negative: debt) and say how long
    /// until every bucket holds a useful amount again.
    fn settle(&self, now: Instant, bytes: i64, frames: i64) -> Duration {
        let mut s = self.lock();
        if let Some(b) = &mut s.bytes {
            b.give_back(bytes);
        }
        if let Some(b) = &mut s.frames {
            b.give_back(frames);
        }
        s.refill(now);
        let ns = s.each().map(|b| b.ns_until(b.useful())).max().unwrap_or(0);
        Duration::from_nanos(ns).max(MIN_WAIT)
    }
}

/// One queue pair's use of one direction's [`Limiter`], pass by pass.
#[derive(Debug)]
pub struct Meter {
    limiter: Option<Arc<Limiter>>,
    /// What the current pass may still move: bytes, frames (`i64::MAX` when
    /// that bucket is not limited, and between passes).
    bytes: i64,
    frames: i64,
    /// The grant ran out in this pass while something wanted to move.
    held: bool,
}

impl Default for Meter {
    /// Unlimited.
    fn default() -> Meter {
        Meter::new(None)
    }
}

impl Meter {
    pub fn new(limiter: Option<Arc<Limiter>>) -> Meter {
        Meter {
            limiter,
            bytes: i64::MAX,
            frames: i64::MAX,
            held: false,
        }
    }

    /// Start a pass: take the balance as this pass's grant.
    pub fn begin(&mut self) {
        self.held = false;
        if let Some(l) = &self.limiter {
            (self.bytes, self.frames) = l.grant(Instant::now());
        }
    }

    /// Whether one more frame may move now. A `false` is remembered: the
    /// pass was held back by the limit.
    #[inline]
    pub fn open(&mut self) -> bool {
        let open = self.bytes > 0 && self.frames > 0;
        self.held |= !open;
        open
    }

    /// A frame of `bytes` (Ethernet, no virtio-net header) moved.
    #[inline]
    pub fn spend(&mut self, bytes: usize) {
        if self.limiter.is_some() {
            self.frames -= 1;
            self.bytes = self
                .bytes
                .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// End a pass: give back what is left of the grant. `Some(wait)` when
    /// the limit held frames back: come back after `wait`.
    pub fn end(&mut self) -> Option<Duration> {
        let l = self.limiter.as_ref()?;
        let wait = l.settle(Instant::now(), self.bytes, self.frames);
        (self.bytes, self.frames) = (i64::MAX, i64::MAX);
        std::mem::take(&mut self.held).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: u64, burst: u64) -> Option<TokenBucket> {
        Some(TokenBucket { rate, burst })
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = Bucket::new(TokenBucket {
            rate: 1000,
            burst: 50,
        });
        assert_eq!(b.take_whole(), 50);
        assert_eq!(b.take_whole(), 0);
        b.refill(10_000_000); // 10 ms at 1000/s
        assert_eq!(b.take_whole(), 10);
        b.refill(10_000_000_000); // 10 s: capped at the burst
        assert_eq!(b.take_whole(), 50);
        b.refill(u64::MAX); // no overflow
        assert_eq!(b.take_whole(), 50);
    }

    #[test]
    fn debt_is_paid_before_the_next_grant() {
        let mut b = Bucket::new(TokenBucket {
            rate: 1_000_000,
            burst: 1500,
        });
        let g = b.take_whole();
        b.give_back(g - 9000); // one 9000-byte frame on a 1500-byte grant
        assert_eq!(b.take_whole(), 0);
        assert_eq!(b.ns_until(1), 7_501_000); // 7501 bytes at 1 byte/µs
        b.refill(7_500_000);
        assert_eq!(b.take_whole(), 0);
        b.refill(1_000);
        assert_eq!(b.take_whole(), 1);
    }

    #[test]
    fn a_meter_stops_when_its_grant_is_spent_and_says_when_to_come_back() {
        let l = Limiter::new(RateLimit {
            bytes: bucket(1_000_000, 3000),
            frames: None,
        });
        let mut m = Meter::new(l);
        m.begin();
        let mut moved = 0;
        while m.open() {
            m.spend(1000);
            moved += 1;
        }
        assert_eq!(moved, 3);
        let wait = m.end().expect("the limit held frames back");
        // About 1 ms of the rate (1000 bytes at 1 byte/µs) must come back.
        assert!(
            wait > Duration::from_micros(900) && wait <= Duration::from_millis(1),
            "{wait:?}"
        );
        // A pass that stopped for another reason asks for no timer.
        m.begin();
        assert_eq!(m.end(), None);
    }

    #[test]
    fn frames_and_bytes_both_limit() {
        let l = Limiter::new(RateLimit {
            bytes: bucket(1 << 30, 1 << 20),
            frames: bucket(1000, 4),
        });
        let mut m = Meter::new(l);
        m.begin();
        let mut moved = 0;
        while m.open() {
            m.spend(64);
            moved += 1;
        }
        assert_eq!(moved, 4);
        assert!(m.end().is_some());
    }

    #[test]
    fn pairs_share_one_balance() {
        let l = Limiter::new(RateLimit {
            bytes: None,
            frames: bucket(1, 10),
        });
        let (mut a, mut b) = (Meter::new(l.clone()), Meter::new(l));
        a.begin();
        b.begin();
        assert!(!b.open(), "the first pass holds the whole balance");
        for _ in 0..4 {
            assert!(a.open());
            a.spend(100);
        }
        a.end();
        b.end();
        b.begin();
        let mut moved = 0;
        while b.open() {
            b.spend(100);
            moved += 1;
        }
        assert_eq!(moved, 6, "what the first pass left is the second's");
    }

    #[test]
    fn an_unlimited_meter_never_closes() {
        let mut m = Meter::new(Limiter::new(RateLimit::default()));
        assert!(m.limiter.is_none());
        m.begin();
        for _ in 0..100_000 {
            assert!(m.open());
            m.spend(65536);
        }
        assert_eq!(m.end(), None);
    }

    /// Over simulated time, a pass every millisecond moving 1500-byte
    /// frames through a 10 MB/s limit delivers 10 MB/s within 0.1 %.
    #[test]
    fn the_long_run_rate_is_the_limit() {
        let mut b = Bucket::new(TokenBucket::with_default_burst(10_000_000));
        let mut sent: i64 = 0;
        let first = b.take_whole();
        b.give_back(first); // start from a full bucket, as the limiter does
        for _ in 0..10_000 {
            b.refill(1_000_000);
            let mut grant = b.take_whole();
            while grant > 0 {
                grant -= 1500;
                sent += 1500;
            }
            b.give_back(grant);
        }
        // 10 s at 10 MB/s, plus the initial burst (50 ms of the rate).
        let want = 100_000_000 + 500_000;
        assert!((sent - want).abs() < want / 1000, "{sent} vs {want}");
    }
}
