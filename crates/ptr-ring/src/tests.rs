//! Single-threaded tests of the ring's bookkeeping. Concurrency is in
//! `tests/loom.rs` (exhaustive, small) and `tests/stress.rs` (real threads).

use super::*;
use std::collections::VecDeque;

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

/// Produces `1..` until `produce` returns `Stopped`; returns how many.
fn fill(tx: &mut Producer, first: usize) -> usize {
    let mut n = 0;
    loop {
        let r = tx.produce(nz(first + n)).expect("fill hit Full");
        n += 1;
        if r == Produced::Stopped {
            return n;
        }
    }
}

#[test]
fn fifo_order() {
    let (mut tx, mut rx) = ring(8);
    for v in 1..=5 {
        assert_eq!(tx.produce(nz(v)), Ok(Produced::Ok));
    }
    assert_eq!(rx.len(), 5);
    for v in 1..=5 {
        assert_eq!(rx.consume(), Some((nz(v), Woken::No)));
    }
    assert_eq!(rx.consume(), None);
    assert!(rx.is_empty());
    assert_eq!(rx.len(), 0);
}

#[test]
fn full_detection() {
    let (mut tx, rx) = ring(4);
    assert_eq!(tx.produce(nz(1)), Ok(Produced::Ok));
    assert_eq!(tx.produce(nz(2)), Ok(Produced::Ok));
    assert_eq!(tx.produce(nz(3)), Ok(Produced::Ok));
    assert!(!tx.is_stopped());
    assert_eq!(tx.produce(nz(4)), Ok(Produced::Stopped));
    assert!(tx.is_stopped());
    assert_eq!(tx.next_free_slot(), None);
    assert_eq!(tx.produce(nz(5)), Err(Full));
    // A failed produce changes nothing.
    assert_eq!(rx.len(), 4);
    assert_eq!(rx.peek(), Some((0, nz(1))));
}

#[test]
fn next_free_slot_is_the_slot_produce_writes_and_peek_returns() {
    let (mut tx, mut rx) = ring(3);
    for round in 0..10 {
        let slot = tx.next_free_slot().unwrap();
        assert_eq!(slot, round % 3);
        assert_eq!(tx.produce(nz(100 + round)), Ok(Produced::Ok));
        assert_eq!(rx.peek(), Some((slot, nz(100 + round))));
        assert_eq!(rx.discard_one(), Woken::No);
    }
}

#[test]
fn batched_invalidation_keeps_producer_full_until_batch_boundary() {
    // capacity 8 -> batch 4.
    let (mut tx, mut rx) = ring(8);
    assert_eq!(batch_for(8), 4);
    assert_eq!(fill(&mut tx, 1), 8);
    for v in 1..=3 {
        assert_eq!(rx.consume(), Some((nz(v), Woken::No)));
        // Consumed but not yet handed back: the producer still sees full.
        assert_eq!(tx.next_free_slot(), None);
        assert_eq!(tx.produce(nz(99)), Err(Full));
    }
    // The 4th crosses the batch: slots 0..4 are zeroed; occupied = 4 = 8/2.
    assert_eq!(rx.consume(), Some((nz(4), Woken::Yes)));
    assert!(!tx.is_stopped());
    assert_eq!(tx.next_free_slot(), Some(0));
    for v in 9..=11 {
        assert_eq!(tx.produce(nz(v)), Ok(Produced::Ok));
    }
    assert_eq!(tx.produce(nz(12)), Ok(Produced::Stopped));
    for v in 5..=12 {
        assert_eq!(rx.consume().map(|c| c.0), Some(nz(v)));
    }
    assert!(rx.is_empty());
    assert!(!tx.is_stopped());
}

#[test]
fn head_wrap_zeroes_a_partial_batch() {
    // capacity 6 -> batch 3; start the consumer at slot 4 so the wrap comes
    // after 2 items, before a batch boundary.
    let (mut tx, mut rx) = ring(6);
    for v in 1..=4 {
        tx.produce(nz(v)).unwrap();
    }
    for _ in 0..4 {
        rx.consume().unwrap();
    }
    // slots 0..3 zeroed by the batch, slot 3 pending.
    tx.produce(nz(5)).unwrap();
    tx.produce(nz(6)).unwrap();
    rx.consume().unwrap(); // slot 4: head - tail = 2 < 3
    assert_eq!(tx.next_free_slot(), Some(0));
    rx.consume().unwrap(); // slot 5: head wraps -> zero 3..6
    assert_eq!(rx.len(), 0);
    // The producer can now fill all six slots again.
    assert_eq!(fill(&mut tx, 7), 6);
}

#[test]
fn stop_is_set_only_by_a_produce_that_fills_the_ring() {
    let (mut tx, _rx) = ring(5);
    for v in 1..=4 {
        assert_eq!(tx.produce(nz(v)), Ok(Produced::Ok));
        assert!(!tx.is_stopped());
    }
    assert_eq!(tx.produce(nz(5)), Ok(Produced::Stopped));
    assert!(tx.is_stopped());
}

#[test]
fn woken_yes_exactly_once_when_half_the_ring_is_free() {
    for capacity in [4, 5, 8, 9, 32, 64, 100, 256] {
        let (mut tx, mut rx) = ring(capacity);
        let batch = batch_for(capacity);
        assert_eq!(fill(&mut tx, 1), capacity);
        let mut wakes = Vec::new();
        for n in 1..=capacity {
            let (v, w) = rx.consume().unwrap();
            assert_eq!(v.get(), n);
            if w == Woken::Yes {
                wakes.push(n);
            }
            // Not before the wake, and not stopped after it.
            assert_eq!(tx.is_stopped(), wakes.is_empty(), "cap {capacity} n {n}");
        }
        // The first batch boundary at which at most capacity/2 are occupied.
        let expected = (1..=capacity)
            .find(|n| n % batch == 0 && capacity - n <= capacity / 2)
            .unwrap();
        assert_eq!(wakes, vec![expected], "capacity {capacity}");
    }
    // Spelled out for 64 (batch 16): zeroing 16 leaves 48 occupied, 32 leaves 32.
    let (mut tx, mut rx) = ring(64);
    fill(&mut tx, 1);
    let woken: Vec<usize> = (1..=64)
        .filter(|_| rx.consume().unwrap().1 == Woken::Yes)
        .collect();
    assert_eq!(woken, vec![32]);
}

#[test]
fn capacity_2() {
    let (mut tx, mut rx) = ring(2);
    assert_eq!(batch_for(2), 1);
    assert_eq!(tx.produce(nz(1)), Ok(Produced::Ok));
    assert_eq!(tx.produce(nz(2)), Ok(Produced::Stopped));
    assert_eq!(tx.produce(nz(3)), Err(Full));
    // batch 1: every consume zeroes; one occupied = 2/2 -> wake.
    assert_eq!(rx.consume(), Some((nz(1), Woken::Yes)));
    assert!(!tx.is_stopped());
    assert_eq!(tx.produce(nz(3)), Ok(Produced::Stopped));
    assert_eq!(rx.consume(), Some((nz(2), Woken::Yes)));
    assert_eq!(rx.consume(), Some((nz(3), Woken::No)));
    assert_eq!(rx.consume(), None);
    assert!(!tx.is_stopped());
}

#[test]
#[should_panic(expected = "capacity must be >= 2")]
fn capacity_1_panics() {
    let _ = ring(1);
}

#[test]
fn wraparound_many_rounds() {
    let (mut tx, mut rx) = ring(4);
    let mut next_in = 1;
    let mut next_out = 1;
    for round in 0..1000 {
        let n = 1 + round % 3;
        // Consumed-but-not-zeroed slots (batch 2) may make a produce fill
        // the ring; draining must then wake the producer.
        for _ in 0..n {
            if tx.is_stopped() {
                break;
            }
            assert_eq!(tx.next_free_slot(), Some((next_in - 1) % 4));
            tx.produce(nz(next_in)).unwrap();
            next_in += 1;
        }
        while let Some((slot, v)) = rx.peek() {
            assert_eq!((slot, v.get()), ((next_out - 1) % 4, next_out));
            rx.discard_one();
            next_out += 1;
        }
        assert!(!tx.is_stopped());
    }
    assert_eq!(next_in, next_out);
    assert!(next_in > 1500);
}

#[test]
fn discard_one_on_empty_ring_is_a_no_op() {
    let (mut tx, mut rx) = ring(4);
    assert_eq!(rx.discard_one(), Woken::No);
    tx.produce(nz(7)).unwrap();
    assert_eq!(rx.peek(), Some((0, nz(7))));
}

#[test]
fn consume_batched_partial_and_full() {
    let (mut tx, mut rx) = ring(8);
    for v in 1..=5 {
        tx.produce(nz(v)).unwrap();
    }
    let mut out = [nz(1); 3];
    assert_eq!(rx.consume_batched(&mut out), (3, Woken::No));
    assert_eq!(out.map(NonZeroUsize::get), [1, 2, 3]);
    assert_eq!(rx.consume_batched(&mut out), (2, Woken::No));
    assert_eq!(out[..2].iter().map(|v| v.get()).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(rx.consume_batched(&mut out), (0, Woken::No));
    assert_eq!(rx.consume_batched(&mut []), (0, Woken::No));
}

#[test]
fn consume_batched_stops_at_the_wake() {
    // capacity 8 -> batch 4: the 4th item's zeroing wakes the producer.
    let (mut tx, mut rx) = ring(8);
    fill(&mut tx, 1);
    let mut out = [nz(1); 8];
    assert_eq!(rx.consume_batched(&mut out), (4, Woken::Yes));
    assert!(!tx.is_stopped());
    // The woken producer refills and stops again: the next batch call
    // reports that second wake on its own.
    assert_eq!(fill(&mut tx, 9), 4);
    assert_eq!(rx.consume_batched(&mut out), (4, Woken::Yes));
    assert_eq!(
        out[..4].iter().map(|v| v.get()).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    assert_eq!(rx.consume_batched(&mut out), (4, Woken::No));
    assert_eq!(
        out[..4].iter().map(|v| v.get()).collect::<Vec<_>>(),
        [9, 10, 11, 12]
    );
}

/// The no-lost-wake-up argument, sequentially and exhaustively: whatever the
/// consumer's position, batch phase and pending (consumed, not zeroed) count
/// when the producer stops, draining the ring wakes it exactly once.
#[test]
fn draining_always_wakes_a_stopped_producer() {
    for capacity in 2..=40 {
        for pre in 0..3 * capacity {
            let (mut tx, mut rx) = ring(capacity);
            // Move both ends: produce/consume `pre` items one at a time.
            for v in 1..=pre {
                tx.produce(nz(v)).unwrap();
                rx.consume().unwrap();
            }
            let filled = fill(&mut tx, pre + 1);
            assert!(tx.is_stopped());
            let mut wakes = 0;
            for _ in 0..filled {
                if rx.consume().unwrap().1 == Woken::Yes {
                    wakes += 1;
                }
            }
            assert!(rx.is_empty());
            assert_eq!(wakes, 1, "capacity {capacity} pre {pre}");
            assert!(!tx.is_stopped(), "capacity {capacity} pre {pre}");
            assert!(tx.next_free_slot().is_some());
        }
    }
}

#[test]
fn len_counts_waiting_items() {
    let (mut tx, mut rx) = ring(4);
    assert_eq!(rx.len(), 0);
    fill(&mut tx, 1);
    assert_eq!(rx.len(), 4);
    rx.consume().unwrap();
    assert_eq!(rx.len(), 3);
    rx.consume().unwrap(); // batch 2: zeroed
    assert_eq!(rx.len(), 2);
    tx.produce(nz(5)).unwrap();
    assert_eq!(rx.len(), 3);
}

#[test]
fn stop_tag_arithmetic_wraps() {
    for produced in [0, 1, 5, usize::MAX >> 1, usize::MAX - 3, usize::MAX] {
        for occupied in [0, 1, 2, 100] {
            let zeroed = produced.wrapping_sub(occupied);
            let tag = stop_tag(produced);
            assert_ne!(tag, 0);
            assert_eq!(occupied_at_stop(tag, zeroed), occupied);
        }
    }
}

/// Random single-threaded interleavings against a `VecDeque` model: FIFO,
/// slot indices, and Stopped/Woken::Yes pairing.
#[test]
fn random_ops_match_model() {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for capacity in [2, 3, 4, 7, 16, 33] {
        let (mut tx, mut rx) = ring(capacity);
        let mut model = VecDeque::new();
        let (mut next, mut stops, mut wakes) = (1, 0, 0);
        for i in 0..20_000 {
            // Alternate phases where the producer or the consumer is faster.
            let producer_weight = if (i / 256) % 2 == 0 { 3 } else { 1 };
            let op = if rand() % 4 < producer_weight {
                0
            } else {
                1 + rand() % 2
            };
            match op {
                0 if !tx.is_stopped() => {
                    let slot = tx.next_free_slot().expect("running producer has a slot");
                    if tx.produce(nz(next)).unwrap() == Produced::Stopped {
                        stops += 1;
                    }
                    model.push_back((slot, next));
                    next += 1;
                }
                0 => {}
                1 => match rx.peek() {
                    Some((slot, v)) => {
                        assert_eq!(Some((slot, v.get())), model.pop_front());
                        if rx.discard_one() == Woken::Yes {
                            wakes += 1;
                        }
                    }
                    None => assert!(model.is_empty()),
                },
                _ => {
                    let mut out = vec![nz(1); (rand() % 5) as usize];
                    let (n, w) = rx.consume_batched(&mut out);
                    for v in &out[..n] {
                        assert_eq!(Some(v.get()), model.pop_front().map(|m| m.1));
                    }
                    if n < out.len() && w == Woken::No {
                        assert!(model.is_empty());
                    }
                    if w == Woken::Yes {
                        wakes += 1;
                    }
                }
            }
            assert_eq!(rx.len(), model.len());
            assert_eq!(stops - wakes, usize::from(tx.is_stopped()));
        }
        assert!(stops > 10, "capacity {capacity}: only {stops} stops");
    }
}

#[test]
fn handles_are_send() {
    fn send<T: Send>() {}
    send::<Producer>();
    send::<Consumer>();
}
