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
//! Models use loom's default exhaustive search unless a preemption bound is
//! given (see each test); the bound, if any, is stated where used.
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

#[derive(Clone, Copy, Debug)]
enum ConsumeMode {
    /// `peek`, read side storage, `discard_one`.
    PeekDiscard,
    /// `consume_batched` into a 2-element buffer.
    Batched,
}

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

fn run_model(capacity: usize, items: usize, mode: ConsumeMode, preemption_bound: Option<usize>) {
    let mut builder = loom::model::Builder::new();
    if preemption_bound.is_some() {
        builder.preemption_bound = preemption_bound;
    }
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
                    data.signal();
                    if produced == Produced::Stopped {
                        stops += 1;
                        // One eventfd read per stop: pairing.
                        wake.wait(false);
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
                        data.wait(true);
                        continue;
                    }
                },
                ConsumeMode::Batched => {
                    let mut out = [nz(1); 2];
                    let (n, woken) = rx.consume_batched(&mut out);
                    if n == 0 {
                        data.wait(true);
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
                wake.signal();
            }
        }
        assert!(rx.is_empty());
        let (tx, stops) = producer.join().unwrap();
        assert!(!tx.is_stopped(), "producer stopped with a drained ring");
        assert_eq!(stops, wakes, "Stopped / Woken::Yes pairing");
        assert_eq!(wake.pending(), 0, "stale wake event");
    });
    eprintln!(
        "loom capacity {capacity} items {items} {mode:?} bound {preemption_bound:?}: {:?}",
        start.elapsed()
    );
}

/// batch 1: every consume zeroes and checks for a wake.
#[test]
fn cap2_items4_peek_discard() {
    run_model(2, 4, ConsumeMode::PeekDiscard, None);
}

#[test]
fn cap2_items4_batched() {
    run_model(2, 4, ConsumeMode::Batched, None);
}

/// Odd capacity: batch 1, wake at occupied <= 1.
#[test]
fn cap3_items5_peek_discard() {
    run_model(3, 5, ConsumeMode::PeekDiscard, None);
}

/// batch 2: partial batches, zeroing on head wrap, the producer seeing
/// "full" while the consumer holds consumed-but-not-zeroed slots.
#[test]
fn cap4_items6_peek_discard() {
    run_model(4, 6, ConsumeMode::PeekDiscard, None);
}

#[test]
fn cap4_items6_batched() {
    run_model(4, 6, ConsumeMode::Batched, None);
}
