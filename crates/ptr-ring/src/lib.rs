//! A bounded single-producer single-consumer ring of non-zero words, with
//! the semantics of Linux `include/linux/ptr_ring.h` and the stop/wake
//! protocol of the series "tun/tap & vhost-net: avoid ptr_ring tail-drop
//! when a qdisc is present".
//!
//! One producer, one consumer (a type fact: [`ring`] returns one
//! [`Producer`] and one [`Consumer`], neither is `Clone`). The aim is to
//! share as few cache lines as possible between the two: the producer and the
//! consumer never read each other's index, they only look at the slots, and
//! the consumer hands slots back in batches.
//!
//! # Design
//!
//! * A slot holds a `usize`; `0` means empty. Values are
//!   [`NonZeroUsize`](core::num::NonZeroUsize) handles (typically an index
//!   or a tag for slot-indexed side storage kept by the caller).
//! * [`Producer::produce`] writes the slot at the producer index if that slot
//!   is `0`, then advances the index (wrapping).
//! * The consumer reads the slot at `head` ([`Consumer::peek`]) and advances
//!   `head` ([`Consumer::discard_one`]). It zeroes consumed slots only in
//!   batches: when `head - tail >= batch` or when `head` wraps, it zeroes
//!   `tail..head` in *reverse* order and sets `tail = head`. Until then the
//!   producer sees those slots as occupied, so it may see the ring "full"
//!   although the consumer has already read some of it. That is intended.
//!
//! # Stop / wake protocol
//!
//! ```text
//!  producer (produce)                      consumer (after zeroing a batch)
//!  ------------------                      --------------------------------
//!  slot[p] = v            (Release)        slot[tail..head] = 0  (Release, reverse)
//!  p += 1
//!  slot[p] != 0 ? ring full:
//!    stop = tag(produced)  (Relaxed)
//!    fence(SeqCst)  <──── store buffering ────>  fence(SeqCst)
//!    slot[p] == 0 ?         (Acquire)        t = stop               (Relaxed)
//!      yes: CAS stop tag->0, Ok              t != 0 && occupied(t) <= cap/2 ?
//!      no:  Stopped                            CAS stop t->0 (Release): Woken::Yes
//! ```
//!
//! The two `SeqCst` fences order the two sides: either the producer's
//! re-check sees the zeroed slot (it un-stops itself), or the consumer's
//! load sees the stop tag (it wakes the producer once enough is free), or
//! both (then exactly one of the two compare-exchanges wins). So a wake-up
//! cannot be lost.
//!
//! **Wake threshold.** The stop tag carries the number of items the producer
//! had produced when it stopped (`P`). The consumer knows how many slots it
//! has zeroed (`T`), so `occupied = P - T` is exact, and it wakes the
//! producer when `occupied <= capacity / 2`, i.e. at least half the ring
//! (rounded up) is free. Because the tag identifies one stop, a consumer can
//! never clear a *later* stop with a decision taken for an earlier one (no
//! ABA), and `Woken::Yes` means the slot at the producer index is free.
//!
//! **No stop with a drained ring.** Zeroing happens at fixed slot
//! positions (every `batch` slots from 0, and at the wrap), and within a
//! batch in reverse order. A producer that saw slot `i - 1` zeroed (Acquire,
//! synchronizing with that Release store) therefore also sees slot `i` of the
//! same batch zeroed, so it can only find the ring full, and stop, at the
//! first slot of a batch. If it stays stopped there, its re-check did not see
//! the zeroing of that slot, so (store buffering) that zeroing and every later
//! one see the stop tag. A consumer that drains every item up to the stop
//! reaches that batch boundary again and zeroes its last batch there: nothing
//! is left occupied, and it wakes the producer. No extra flush of a partial
//! batch is needed (`draining_always_wakes_a_stopped_producer` checks every
//! position sequentially, `tests/loom.rs` the races).
//!
//! **Pairing.** Every [`Produced::Stopped`] is matched by exactly one
//! [`Woken::Yes`] and vice versa: when the producer's re-check finds space
//! but the consumer's compare-exchange won the race, `produce` still returns
//! `Stopped` (a wake is on its way; [`Producer::is_stopped`] is already
//! false). A caller that turns `Woken::Yes` into one eventfd write and
//! `Stopped` into one eventfd read never sees a stale event.
//!
//! # Slot-indexed side storage
//!
//! Callers often keep one buffer per slot. The producer owns side storage
//! `i` while slot `i` is empty ([`Producer::next_free_slot`] returns `i`);
//! `produce` hands it to the consumer (Release/Acquire on the slot); the
//! consumer owns it from a `peek` that returns `i` until it discards that
//! item; zeroing the slot (Release, paired with the producer's Acquire load)
//! hands it back.
//!
//! ```
//! use core::num::NonZeroUsize;
//! use ptr_ring::{ring, Produced, Woken};
//!
//! let (mut tx, mut rx) = ring(4);
//! let mut frames = vec![0u32; tx.capacity()]; // slot-indexed side storage
//! let slot = tx.next_free_slot().unwrap();
//! frames[slot] = 42;
//! assert_eq!(tx.produce(NonZeroUsize::new(slot + 1).unwrap()), Ok(Produced::Ok));
//! let (slot, handle) = rx.peek().unwrap();
//! assert_eq!((frames[slot], handle.get()), (42, 1));
//! assert_eq!(rx.discard_one(), Woken::No);
//! ```
//!
//! The handles are not `Clone`:
//!
//! ```compile_fail
//! let (tx, _rx) = ptr_ring::ring(4);
//! let _tx2 = tx.clone();
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;
use core::num::NonZeroUsize;

mod sync {
    //! std atomics normally, loom's under `cfg(loom)`.
    #[cfg(loom)]
    pub(crate) use loom::sync::{
        atomic::{fence, AtomicUsize, Ordering},
        Arc,
    };
    #[cfg(not(loom))]
    pub(crate) use std::sync::{
        atomic::{fence, AtomicUsize, Ordering},
        Arc,
    };
}

use sync::{fence, Arc, AtomicUsize, Ordering};

/// Slots zeroed per batch for a ring of `capacity` slots:
/// `min(16, capacity / 2)`, at least 1.
///
/// 16 is Linux's `SMP_CACHE_BYTES * 2 / sizeof(void *)` on 64-bit: the
/// consumer hands back two cache lines of slots at a time. Linux falls back
/// to 1 when that exceeds `size / 2`; capping at `capacity / 2` instead keeps
/// batching on mid-sized rings while never withholding more than half the
/// ring from the producer (consumed slots wait for their batch to be zeroed).
/// The wake-up does not depend on the batch size (see the crate docs).
pub fn batch_for(capacity: usize) -> usize {
    (capacity / 2).clamp(1, 16)
}

/// Aligns its content to its own cache line (64 bytes, as
/// `____cacheline_aligned_in_smp` on x86-64 and arm64).
#[repr(align(64))]
struct CachePadded<T>(T);

/// Written by the producer on every produce / stop; read by the consumer only
/// for a wake check or [`Consumer::len`]; written by the consumer once per
/// wake (the compare-exchange on `stop`).
struct ProducerShared {
    /// Items produced so far (wrapping). Stored before the slot it counts so
    /// that a consumer which has seen an item also sees it counted.
    produced: AtomicUsize,
    /// `0` while running; `stop_tag(produced)` while stopped.
    stop: AtomicUsize,
}

/// Fixed at construction, read by both sides.
struct ReadOnly {
    capacity: usize,
    batch: usize,
}

/// The shared part of the ring. The consumer's indices live in [`Consumer`]
/// and the producer's in [`Producer`]: nothing else is consumer-written.
struct Ring {
    /// Producer-written cache line.
    prod: CachePadded<ProducerShared>,
    /// Read-mostly cache line.
    ro: CachePadded<ReadOnly>,
    /// The ring itself; `0` = empty. Shared by design: the batching keeps
    /// the consumer off the lines the producer is writing.
    slots: Box<[AtomicUsize]>,
}

/// Encodes "stopped after `produced` items" as a non-zero word: the count
/// (modulo 2^(usize::BITS - 1)) shifted left, with bit 0 set.
fn stop_tag(produced: usize) -> usize {
    (produced << 1) | 1
}

/// Occupied slots as seen by the consumer for a stop `tag`, given `zeroed`
/// slots handed back so far: `produced - zeroed`, modulo 2^(usize::BITS - 1).
fn occupied_at_stop(tag: usize, zeroed: usize) -> usize {
    (tag & !1).wrapping_sub(zeroed << 1) >> 1
}

/// Creates a ring of `capacity` slots and returns its two ends.
///
/// # Panics
///
/// If `capacity < 2` (a one-slot ring would stop the producer on every
/// produce), or if the slot array cannot be allocated.
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    assert!(
        capacity >= 2,
        "ptr-ring capacity must be >= 2, got {capacity}"
    );
    let slots: Box<[AtomicUsize]> = (0..capacity).map(|_| AtomicUsize::new(0)).collect();
    let ring = Arc::new(Ring {
        prod: CachePadded(ProducerShared {
            produced: AtomicUsize::new(0),
            stop: AtomicUsize::new(0),
        }),
        ro: CachePadded(ReadOnly {
            capacity,
            batch: batch_for(capacity),
        }),
        slots,
    });
    (
        Producer {
            ring: ring.clone(),
            index: 0,
            produced: 0,
        },
        Consumer {
            ring,
            head: 0,
            tail: 0,
            zeroed: 0,
        },
    )
}

/// Result of a successful [`Producer::produce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    /// The value is in the ring and the next slot is free.
    Ok,
    /// The produce succeeded and left the ring full: the producer is now
    /// stopped. Exactly one [`Woken::Yes`] is (or was already) returned to the
    /// consumer for this stop; wait for it (or until
    /// [`Producer::is_stopped`] is false) before producing again.
    Stopped,
}

/// The produce failed: the slot at the producer index is still occupied.
/// A producer that honours [`Produced::Stopped`] never sees this.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ptr-ring full")
    }
}

impl std::error::Error for Full {}

/// Whether a consumer call woke the stopped producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Nothing to do.
    No,
    /// This call cleared the producer's stop flag: signal the producer
    /// thread (e.g. write its eventfd).
    Yes,
}

/// The producing end. `Send`, not `Clone`.
#[repr(align(64))]
pub struct Producer {
    ring: Arc<Ring>,
    /// Slot the next produce writes. Producer-private.
    index: usize,
    /// Items produced so far (wrapping); private copy of `prod.produced`.
    produced: usize,
}

impl Producer {
    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.ro.0.capacity
    }

    /// Index of the slot the next `produce` writes, if it is free (slot value
    /// 0). Callers keep slot-indexed side storage (e.g. frame buffers): the
    /// producer owns side storage `i` while slot `i` is empty.
    pub fn next_free_slot(&self) -> Option<usize> {
        // Acquire: pairs with the Release zeroing in `Consumer::zero_batch`,
        // so the consumer is done with side storage `index` before we reuse it.
        (self.ring.slots[self.index].load(Ordering::Acquire) == 0).then_some(self.index)
    }

    /// Writes `value` into the slot at the producer index.
    ///
    /// `Err(Full)` if that slot is occupied (nothing changes). On success, if
    /// the ring is now full: set the stop flag, `fence(SeqCst)`, re-check the
    /// slot at the producer index; if it became free meanwhile, clear the
    /// stop flag and return [`Produced::Ok`], else [`Produced::Stopped`]
    /// (also when the consumer cleared the flag first: its `Woken::Yes` is
    /// the one matching this stop).
    ///
    /// NB: after `Stopped`, produce again only once woken; producing earlier
    /// is memory-safe but delays the next wake-up decision.
    pub fn produce(&mut self, value: NonZeroUsize) -> Result<Produced, Full> {
        let ring = &*self.ring;
        let slot = &ring.slots[self.index];
        // Acquire: pairs with the Release zeroing in `Consumer::zero_batch`
        // (the consumer's reads of the old value and side storage happen
        // before our overwrite).
        if slot.load(Ordering::Acquire) != 0 {
            return Err(Full);
        }
        self.produced = self.produced.wrapping_add(1);
        // Relaxed: made visible together with the slot by the Release store
        // below, pairs with the Acquire load in `Consumer::peek` (then
        // `Consumer::len` never counts fewer items than the consumer saw).
        ring.prod.0.produced.store(self.produced, Ordering::Relaxed);
        // Release: publishes the value and the caller's side storage. Pairs
        // with the Acquire load in `Consumer::peek`.
        slot.store(value.get(), Ordering::Release);
        self.index += 1;
        if self.index == ring.ro.0.capacity {
            self.index = 0;
        }
        let next = &ring.slots[self.index];
        // Acquire: pairs with the Release zeroing in `Consumer::zero_batch`.
        if next.load(Ordering::Acquire) == 0 {
            return Ok(Produced::Ok);
        }
        // The ring is full: stop.
        let tag = stop_tag(self.produced);
        // Relaxed: ordered before the re-check by the fence below. Read by the
        // Relaxed load in `Consumer::wake_if_stopped`, after its fence.
        ring.prod.0.stop.store(tag, Ordering::Relaxed);
        // SeqCst fence: store buffering with the fence in
        // `Consumer::wake_if_stopped`. Either our re-load below sees its
        // zeroing, or its load of `stop` sees our tag (or both).
        fence(Ordering::SeqCst);
        // Acquire: pairs with the Release zeroing in `Consumer::zero_batch`.
        if next.load(Ordering::Acquire) == 0 {
            // Space appeared. Relaxed: no data is published by the flag; the
            // slot was acquired above. Races with the compare-exchange in
            // `Consumer::wake_if_stopped`: exactly one of the two succeeds.
            match ring
                .prod
                .0
                .stop
                .compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => Ok(Produced::Ok),
                // The consumer cleared it: its `Woken::Yes` is on its way.
                Err(_) => Ok(Produced::Stopped),
            }
        } else {
            Ok(Produced::Stopped)
        }
    }

    /// The stop flag: true from a `produce` that returned
    /// [`Produced::Stopped`] until the consumer wakes the producer.
    pub fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release compare-exchange in
        // `Consumer::wake_if_stopped`; once this is false after a wake, the
        // slot at the producer index reads as free.
        self.ring.prod.0.stop.load(Ordering::Acquire) != 0
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("index", &self.index)
            .field("produced", &self.produced)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// The consuming end. `Send`, not `Clone`.
#[repr(align(64))]
pub struct Consumer {
    ring: Arc<Ring>,
    /// Slot the next peek reads. Consumer-private.
    head: usize,
    /// First slot consumed but not yet zeroed; `tail <= head < capacity`
    /// (head is reset to 0 together with tail when it wraps).
    tail: usize,
    /// Slots zeroed so far (wrapping).
    zeroed: usize,
}

impl Consumer {
    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.ro.0.capacity
    }

    /// Look at the head without consuming: (slot index, value). The consumer
    /// owns side storage `i` from a successful peek of slot `i` until it
    /// discards it.
    pub fn peek(&self) -> Option<(usize, NonZeroUsize)> {
        // Acquire: pairs with the Release store in `Producer::produce`.
        let value = self.ring.slots[self.head].load(Ordering::Acquire);
        NonZeroUsize::new(value).map(|v| (self.head, v))
    }

    /// Discard the head (after peek). Returns `Woken::Yes` if this call woke
    /// the stopped producer (the caller must then signal the producer
    /// thread, e.g. write an eventfd), else `Woken::No`.
    ///
    /// NB: on an empty ring this does nothing and returns `Woken::No`.
    pub fn discard_one(&mut self) -> Woken {
        if self.peek().is_none() {
            return Woken::No;
        }
        self.advance()
    }

    /// `peek` + `discard_one`.
    pub fn consume(&mut self) -> Option<(NonZeroUsize, Woken)> {
        let (_, value) = self.peek()?;
        Some((value, self.advance()))
    }

    /// Consumes up to `out.len()` items into `out`; returns (count, Woken).
    ///
    /// NB: returns early, after the item whose discard woke the producer, so
    /// that one call never wakes it twice: a woken producer may refill and
    /// stop again while a long batch is still being consumed, and each
    /// [`Produced::Stopped`] must get its own [`Woken::Yes`].
    pub fn consume_batched(&mut self, out: &mut [NonZeroUsize]) -> (usize, Woken) {
        for (n, dst) in out.iter_mut().enumerate() {
            let Some((_, value)) = self.peek() else {
                return (n, Woken::No);
            };
            *dst = value;
            if self.advance() == Woken::Yes {
                return (n + 1, Woken::Yes);
            }
        }
        (out.len(), Woken::No)
    }

    /// True if there is nothing to consume.
    pub fn is_empty(&self) -> bool {
        self.peek().is_none()
    }

    /// Items waiting to be consumed, as seen by the consumer: `produced -
    /// consumed`. Approximate under concurrency (it may count an item whose
    /// slot is not visible yet), always in `0..=capacity`. For counters and
    /// high-water marks. Reads the producer's cache line.
    pub fn len(&self) -> usize {
        let consumed = self.zeroed.wrapping_add(self.head - self.tail);
        // Relaxed: pairs with the Relaxed store in `Producer::produce`, which
        // precedes the Release slot store we acquired in `peek` for every
        // item counted in `consumed`, so this is never behind `consumed`.
        let produced = self.ring.prod.0.produced.load(Ordering::Relaxed);
        let len = produced.wrapping_sub(consumed);
        debug_assert!(len <= self.capacity(), "len {len} > capacity");
        len.min(self.capacity())
    }

    /// Advances `head` past a slot that `peek` found occupied; zeroes a
    /// batch when due.
    fn advance(&mut self) -> Woken {
        self.head += 1;
        let ro = &self.ring.ro.0;
        if self.head - self.tail >= ro.batch || self.head == ro.capacity {
            self.zero_batch()
        } else {
            Woken::No
        }
    }

    /// Hands `tail..head` back to the producer and checks for a wake-up.
    fn zero_batch(&mut self) -> Woken {
        let slots = &self.ring.slots;
        // Reverse order, as `__ptr_ring_discard_one`: the producer is waiting
        // on slot `tail`, which we zero last, so it cannot start writing into
        // the batch (and pull its cache lines) before we are done with it.
        for slot in slots[self.tail..self.head].iter().rev() {
            // Release: pairs with the Acquire loads in `Producer::produce` and
            // `Producer::next_free_slot`: our reads of the value and side
            // storage happen before the producer reuses the slot.
            slot.store(0, Ordering::Release);
        }
        self.zeroed = self.zeroed.wrapping_add(self.head - self.tail);
        if self.head == self.ring.ro.0.capacity {
            self.head = 0;
        }
        self.tail = self.head;
        self.wake_if_stopped()
    }

    /// After zeroing: wake the producer if it is stopped and at least half
    /// the ring is free (`occupied <= capacity / 2`).
    fn wake_if_stopped(&self) -> Woken {
        let prod = &self.ring.prod.0;
        // SeqCst fence: store buffering with the fence in `Producer::produce`.
        // Either our load below sees its stop tag, or its re-check sees the
        // zeroing we just did (or both).
        fence(Ordering::SeqCst);
        // Relaxed: ordered after our zeroing by the fence above; pairs with
        // the Relaxed tag store in `Producer::produce`, before its fence.
        let tag = prod.stop.load(Ordering::Relaxed);
        if tag == 0 || occupied_at_stop(tag, self.zeroed) > self.ring.ro.0.capacity / 2 {
            return Woken::No;
        }
        // Release: pairs with the Acquire load in `Producer::is_stopped`
        // (a woken producer sees our zeroing; the SeqCst fence above already
        // orders the zeroing before this, Release keeps it so if the fence
        // ever moves). Races with the compare-exchange
        // in `Producer::produce`'s re-check: exactly one succeeds. The tag
        // names one stop, so we never clear a later one.
        match prod
            .stop
            .compare_exchange(tag, 0, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => Woken::Yes,
            Err(_) => Woken::No,
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .field("tail", &self.tail)
            .field("zeroed", &self.zeroed)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
