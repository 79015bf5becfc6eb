//! Exhaustive interleavings of one producer thread and one consumer thread
//! on small rings, under loom's C11 memory model (with `fence(SeqCst)`).
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p ptr-ring --test loom --release`
//!
//! Each model proves, for every interleaving loom explores:
//! * no lost wake-up: the producer honours `Produced::Stopped` by blocking
//!   on an eventfd model that only the consumer's `Woken::Yes` signals, and
//!   the consumer blocks on another eventfd when the ring is empty. A lost
//!   wake-up leaves both blocked, which loom reports as a deadlock. After
//!   the consumer has drained everything, the producer is not stopped;
//! * pairing: each `Stopped` is matched by exactly one `Woken::Yes` (one
//!   eventfd read per stop; the wake eventfd ends at zero) and the producer is
//!   running after that read;
//! * no overwrite and FIFO: the consumer sees 1, 2, ..., N in order, and the
//!   producer never gets `Full` or `next_free_slot() == None` while running;
//! * side-storage hand-off: the producer writes a per-slot `UnsafeCell`
//!   before `produce`, the consumer reads it after `peek`; loom reports any
//!   access not ordered by happens-before.
//!
//! Search: preemption bound 4 by default (`LOOM_MAX_PREEMPTIONS` overrides);
//! an unbounded search of even the smallest model did not finish in 8
//! minutes. With bound 4 all models together take about 35 s in --release on
//! 2 cores.
//!
//! Checked by mutation: removing either `SeqCst` fence, or the producer's
//! re-check, gives a loom deadlock; `Relaxed` instead of `Release` for the
//! slot publish or the zeroing gives a causality violation on the side
//! storage; clearing the stop flag with a plain store in the re-check, or
//! letting one `consume_batched` call report two wakes as one, breaks the
//! pairing assertion. (`Relaxed` on the wake compare-exchange passes: the
//! SeqCst fence before it already acts as the release.)
//!
//! Model limit: loom implements `fence(SeqCst)` by joining every SeqCst
//! fence's causality (stronger than C11, where SC fences only constrain what
//! later loads may read). The protocol's argument (crate docs) uses only the
//! C11 store-buffering rule.
#![cfg(loom)]

use core::num::NonZeroUsize;
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use ptr_ring::{ring, Produced, Woken};

/// An eventfd: `signal` adds one; `wait` blocks until non-zero, then takes
/// one (`EFD_SEMAPHORE`) or all.
struct EventFd {
    count: Mutex<usize>,
    cv: Condvar,
}

impl EventFd {
    fn new() -> Self {
        EventFd {
            count: Mutex::new(0),
            cv: Condvar::new(),
        }
    }

    fn signal(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
    }

    fn wait(&self, take_all: bool) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.cv.wait(count).unwrap();
        }
        if take_all {
            *count = 0;
        } else {
            *count -= 1;
        }
    }

    fn pending(&self) -> usize {
        *self.count.lock().unwrap()
    }
}

/// Slot-indexed side storage, as the daemon's frame buffers.
struct Side(Vec<UnsafeCell<usize>>);

// SAFETY: every access goes through loom's `UnsafeCell`, which checks that
// accesses to one cell are ordered by happens-before; the ring's slot
// ownership rules are what this test verifies.
unsafe impl Sync for Side {}

/// How each side waits for the other.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wait {
    /// Block on an eventfd model (`Mutex` + `Condvar`): a lost wake-up is
    /// a loom deadlock.
    EventFd,
    /// Spin on `is_stopped()` / `peek()` with `yield_now`: nothing but the
    /// ring's own orderings connects the threads (no mutex to lend them
    /// happens-before). A lost wake-up spins forever, which loom reports as
    /// exceeding its branch limit.
    Spin,
}

#[derive(Clone, Copy, Debug)]
enum ConsumeMode {
    /// `peek`, read side storage, `discard_one`.
    PeekDiscard,
    /// `consume_batched` into a 2-element buffer.
    Batched,
}

const DEFAULT_PREEMPTION_BOUND: usize = 4;

fn wait_for_data(wait: Wait, data: &EventFd) {
    match wait {
        Wait::EventFd => data.wait(true),
        Wait::Spin => thread::yield_now(),
    }
}

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

fn run_model(capacity: usize, items: usize, mode: ConsumeMode, wait: Wait) {
    let mut builder = loom::model::Builder::new();
    // Unbounded search of even the smallest model (capacity 2, 4 items)
    // does not finish in 8 minutes; bound 4 takes 1-8 s per model (bound 5:
    // about 5x more). `LOOM_MAX_PREEMPTIONS` overrides the default.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTION_BOUND);
    }
    let preemption_bound = builder.preemption_bound;
    let start = Instant::now();
    builder.check(move || {
        let (mut tx, mut rx) = ring(capacity);
        let side = Arc::new(Side((0..capacity).map(|_| UnsafeCell::new(0)).collect()));
        let wake = Arc::new(EventFd::new()); // consumer -> producer
        let data = Arc::new(EventFd::new()); // producer -> consumer

        let producer = {
            let (side, wake, data) = (side.clone(), wake.clone(), data.clone());
            thread::spawn(move || {
                let mut stops = 0;
                for seq in 1..=items {
                    let slot = tx
                        .next_free_slot()
                        .expect("running producer found no free slot");
                    // SAFETY: the producer owns side storage `slot` while the
                    // slot is empty (loom checks the hand-off).
                    side.0[slot].with_mut(|p| unsafe { *p = seq * 10 });
                    let produced = tx.produce(nz(seq)).expect("running producer got Full");
                    if wait == Wait::EventFd {
                        data.signal();
                    }
                    if produced == Produced::Stopped {
                        stops += 1;
                        match wait {
                            // One eventfd read per stop: pairing.
                            Wait::EventFd => wake.wait(false),
                            Wait::Spin => {
                                while tx.is_stopped() {
                                    thread::yield_now();
                                }
                            }
                        }
                        assert!(!tx.is_stopped(), "woken but still stopped");
                    }
                }
                (tx, stops)
            })
        };

        let mut wakes = 0;
        let mut expected = 1;
        while expected <= items {
            let woken = match mode {
                ConsumeMode::PeekDiscard => match rx.peek() {
                    Some((slot, value)) => {
                        assert_eq!(value.get(), expected, "FIFO / overwrite");
                        // SAFETY: the consumer owns side storage `slot` from
                        // the peek until it discards it.
                        let stored = side.0[slot].with(|p| unsafe { *p });
                        assert_eq!(stored, expected * 10, "side storage");
                        expected += 1;
                        rx.discard_one()
                    }
                    None => {
                        wait_for_data(wait, &data);
                        continue;
                    }
                },
                ConsumeMode::Batched => {
                    let mut out = [nz(1); 2];
                    let (n, woken) = rx.consume_batched(&mut out);
                    if n == 0 {
                        wait_for_data(wait, &data);
                        continue;
                    }
                    for value in &out[..n] {
                        assert_eq!(value.get(), expected, "FIFO / overwrite");
                        expected += 1;
                    }
                    woken
                }
            };
            if woken == Woken::Yes {
                wakes += 1;
                if wait == Wait::EventFd {
                    wake.signal();
                }
            }
        }
        assert!(rx.is_empty());
        let (tx, stops) = producer.join().unwrap();
        assert!(!tx.is_stopped(), "producer stopped with a drained ring");
        assert_eq!(stops, wakes, "Stopped / Woken::Yes pairing");
        assert_eq!(wake.pending(), 0, "stale wake event");
    });
    eprintln!(
        "loom capacity {capacity} items {items} {mode:?} {wait:?} bound {preemption_bound:?}: {:?}",
        start.elapsed()
    );
}

/// batch 1: every consume zeroes and checks for a wake.
#[test]
fn cap2_items4_peek_discard() {
    run_model(2, 4, ConsumeMode::PeekDiscard, Wait::EventFd);
}

#[test]
fn cap2_items4_batched() {
    run_model(2, 4, ConsumeMode::Batched, Wait::EventFd);
}

/// Odd capacity: batch 1, wake at occupied <= 1.
#[test]
fn cap3_items5_peek_discard() {
    run_model(3, 5, ConsumeMode::PeekDiscard, Wait::EventFd);
}

/// batch 2: partial batches, zeroing on head wrap, the producer seeing
/// "full" while the consumer holds consumed-but-not-zeroed slots.
#[test]
fn cap4_items6_peek_discard() {
    run_model(4, 6, ConsumeMode::PeekDiscard, Wait::EventFd);
}

#[test]
fn cap4_items6_batched() {
    run_model(4, 6, ConsumeMode::Batched, Wait::EventFd);
}

/// No eventfd: the producer polls `is_stopped()`, so only the ring's
/// Release compare-exchange / Acquire `is_stopped` make the zeroed slot
/// visible to a woken producer.
#[test]
fn cap2_items4_spin() {
    run_model(2, 4, ConsumeMode::PeekDiscard, Wait::Spin);
}

#[test]
fn cap4_items6_spin() {
    run_model(4, 6, ConsumeMode::Batched, Wait::Spin);
}

/// A producer that restarts as soon as `is_stopped()` is false can refill
/// and stop again while one `consume_batched` call is still running: each
/// stop must still get its own `Woken::Yes`.
#[test]
fn cap2_items4_spin_batched() {
    run_model(2, 4, ConsumeMode::Batched, Wait::Spin);
}
