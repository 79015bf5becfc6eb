//! Real threads: one producer, one consumer, sequence numbers end to end.
//!
//! The producer honours the stop protocol: on `Produced::Stopped` it parks
//! (`std::thread::park`) until `is_stopped()` is false; the consumer unparks
//! it for every `Woken::Yes`. The consumer checks every value is the next
//! sequence number (zero lost, zero duplicated, FIFO), and in peek mode the
//! slot-indexed side storage written by the producer before `produce`. The
//! consumer stalls now and then so that the ring fills and the stop/wake path
//! runs thousands of times. A lost wake-up is caught by a watchdog (the ring
//! stays empty for 10 s) rather than a hang.
//!
//! The 10^7-item variants run in `cargo test --release` (they are compiled
//! out with debug assertions, where they would be slow); short variants
//! always run.
#![cfg(not(loom))]

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ptr_ring::{ring, Produced, Woken};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// `peek`, check side storage, `discard_one`.
    PeekDiscard,
    /// `consume_batched` with batch sizes 1..=64.
    Batched,
}

fn side_value(seq: usize) -> usize {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize)
}

fn run(items: usize, capacity: usize, mode: Mode) {
    let start = Instant::now();
    let (mut tx, mut rx) = ring(capacity);
    // Relaxed is enough: the ring's Release/Acquire on the slot orders it.
    let side: Arc<Vec<AtomicUsize>> =
        Arc::new((0..capacity).map(|_| AtomicUsize::new(0)).collect());

    let producer = {
        let side = side.clone();
        thread::spawn(move || {
            let mut stops = 0;
            for seq in 1..=items {
                let slot = tx
                    .next_free_slot()
                    .expect("running producer found no free slot");
                side[slot].store(side_value(seq), Ordering::Relaxed);
                match tx.produce(NonZeroUsize::new(seq).unwrap()) {
                    Ok(Produced::Ok) => {}
                    Ok(Produced::Stopped) => {
                        stops += 1;
                        while tx.is_stopped() {
                            thread::park();
                        }
                    }
                    Err(full) => panic!("running producer: {full} at {seq}"),
                }
            }
            (tx, stops)
        })
    };
    let producer_thread = producer.thread().clone();

    let mut expected = 1;
    let mut wakes = 0;
    let mut out = vec![NonZeroUsize::MIN; 64];
    let mut idle_since: Option<Instant> = None;
    let mut next_stall = 4096;
    while expected <= items {
        let (got, woken) = match mode {
            Mode::PeekDiscard => match rx.peek() {
                Some((slot, value)) => {
                    assert_eq!(value.get(), expected, "lost, duplicated or reordered");
                    assert_eq!(slot, (expected - 1) % capacity);
                    assert_eq!(
                        side[slot].load(Ordering::Relaxed),
                        side_value(expected),
                        "side storage of slot {slot} at {expected}"
                    );
                    (1, rx.discard_one())
                }
                None => (0, Woken::No),
            },
            Mode::Batched => {
                let want = 1 + expected % out.len();
                let (n, woken) = rx.consume_batched(&mut out[..want]);
                for (i, value) in out[..n].iter().enumerate() {
                    assert_eq!(value.get(), expected + i, "lost, duplicated or reordered");
                }
                (n, woken)
            }
        };
        if woken == Woken::Yes {
            wakes += 1;
            producer_thread.unpark();
        }
        if got == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "ring empty for 10 s at {expected}/{items}: lost wake-up? wakes {wakes}"
            );
            thread::yield_now();
            continue;
        }
        idle_since = None;
        expected += got;
        if expected >= next_stall {
            // Let the producer fill the ring.
            next_stall += 4096;
            for _ in 0..20_000 {
                std::hint::spin_loop();
            }
        }
    }
    assert!(rx.is_empty());
    let (tx, stops) = producer.join().unwrap();
    assert!(!tx.is_stopped(), "producer stopped with a drained ring");
    assert_eq!(stops, wakes, "every Stopped is matched by one Woken::Yes");
    eprintln!(
        "stress capacity {capacity} {mode:?}: items {items} stops {stops} wakes {wakes} in {:?}",
        start.elapsed()
    );
    assert!(stops > 0, "the stop/wake path never ran");
}

#[test]
fn stress_short_peek_discard() {
    run(200_000, 256, Mode::PeekDiscard);
}

#[test]
fn stress_short_batched_cap8() {
    run(200_000, 8, Mode::Batched);
}

#[test]
fn stress_short_cap2() {
    run(100_000, 2, Mode::PeekDiscard);
}

#[cfg(not(debug_assertions))]
#[test]
fn stress_10m_peek_discard() {
    run(10_000_000, 256, Mode::PeekDiscard);
}

#[cfg(not(debug_assertions))]
#[test]
fn stress_10m_batched() {
    run(10_000_000, 256, Mode::Batched);
}
