//! The ring path of RX: the TAP reader reads frames into slot buffers and
//! produces them into the ring; the RX filler peeks at the oldest, copies
//! it into guest RX chains and discards it, which wakes a stopped reader
//! once half the ring is free. In FQ-CoDel mode the ring is only a
//! hand-off: every frame read moves on into the AQM at once, so the reader
//! never stops, and the filler takes frames from the AQM instead.

use std::io;
use std::num::NonZeroUsize;

use ptr_ring::{Produced, Woken};
use virtio_queue::{Queue, QueueOwnedT};

use super::rx_buffers::{self, Table};
use super::slots;
use super::used::{UsedBatch, UsedRing};
use super::vnet::{Negotiated, BUF_SIZE};
use super::{QueueError, QueuePair, Tally, BUDGET};
use crate::counters::QueueCounters;
use crate::guest::chain::Chain;
use crate::guest::iovecs::write_chains;
use crate::guest::map::GuestMap;

/// What became of a frame offered to the guest.
enum Delivery {
    Done,
    /// Larger than the guest's buffers can ever hold.
    TooBig {
        len: usize,
        capacity: usize,
    },
    /// The `seen` available chains cannot hold the frame (they are put back).
    NoBuffers {
        seen: u16,
    },
}

impl QueuePair {
    /// The reader's side of the ring path: read up to `budget` frames into
    /// the ring (and, in FQ-CoDel mode, on into the AQM). Returns frames read.
    pub(super) fn read_tap_into_ring(&mut self, neg: Negotiated, budget: usize) -> usize {
        if self.aqm.is_none() {
            return self.read_tap(neg, budget);
        }
        // The ring is only a hand-off: read no more than it holds, then
        // move everything into the AQM, so the reader never stops.
        let read = self.read_tap(neg, budget.min(self.producer.capacity() - 1));
        self.drain_ring_into_aqm(neg.hdr_len);
        read
    }

    /// Read frames from the TAP into the ring until the ring stops the
    /// reader, the TAP has nothing, or `budget` frames were read.
    fn read_tap(&mut self, neg: Negotiated, budget: usize) -> usize {
        let mut read = 0;
        while read < budget && self.tap_readable && !self.producer.is_stopped() {
            let Some(slot) = self.producer.next_free_slot() else {
                // Full without being stopped can only follow a consumer's
                // wake racing our previous produce; the next discard batch frees it.
                break;
            };
            let long = self.last_frame.longer_than(slots::SMALL);
            let (iov, count) = self.slots.read_iovecs(slot, long);
            // SAFETY: the iovecs point into `self.slots`' own buffers for
            // slot `slot` (free while the slot is empty) and the overflow
            // buffer, `BUF_SIZE` bytes in all; nothing else touches them
            // during the call.
            let r = unsafe { self.tap.readv(&iov[..count]) };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EBADFD after the TAP went away, EIO...: wait for the next edge.
                    self.read_failed(&e);
                    break;
                }
            };
            read += 1;
            if n >= BUF_SIZE {
                QueueCounters::add(&self.counters.rx_dropped_truncated, 1);
                continue;
            }
            self.slots.settle(slot, n, long);
            self.last_frame.saw(n);
            let Some(len) = NonZeroUsize::new(n).filter(|n| n.get() >= neg.min_len()) else {
                QueueCounters::add(&self.counters.rx_dropped_too_short, 1);
                continue;
            };
            self.produce(len);
        }
        // Only this thread fills the ring, so its occupancy peaks here.
        if read > 0 {
            QueueCounters::raise(
                &self.counters.rx_ring_high_water,
                self.consumer.len() as u64,
            );
        }
        read
    }

    /// Hand the frame just read into the slot `next_free_slot` gave to the
    /// ring, counting a reader stop.
    pub(super) fn produce(&mut self, len: NonZeroUsize) {
        match self.producer.produce(len) {
            Ok(Produced::Ok) => {}
            Ok(Produced::Stopped) => QueueCounters::add(&self.counters.rx_reader_stops, 1),
            // `next_free_slot` said the slot was free and only this thread
            // produces: cannot happen. Counted rather than trusted.
            Err(ptr_ring::Full) => QueueCounters::add(&self.counters.rx_dropped_internal, 1),
        }
    }

    /// A frame left the ring: discard it, counting a reader wake-up.
    fn discard(&mut self) {
        if self.consumer.discard_one() == Woken::Yes {
            QueueCounters::add(&self.counters.rx_reader_wakes, 1);
        }
    }

    /// FQ-CoDel mode: move every frame from the ring into the AQM, so that
    /// the reader never stops and the tun ring never fills.
    fn drain_ring_into_aqm(&mut self, hdr_len: usize) {
        while let Some((slot, len)) = self.consumer.peek() {
            if let Some(aqm) = &mut self.aqm {
                aqm.enqueue(self.slots.frame(slot, len.get()), hdr_len, &self.counters);
            }
            self.discard();
        }
    }

    /// The RX filler: deliver frames (from the ring, or from FQ-CoDel in
    /// that mode) into guest RX chains, then publish them with one used-index
    /// update. Returns the number of frames delivered.
    pub(super) fn fill_guest(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
    ) -> usize {
        let tally = self.fill_guest_batch(queue, map, neg);
        let published = self.rx_used.publish(queue, map.mem());
        self.rx_ok(published);
        tally.publish_rx(&self.counters);
        tally.frames as usize
    }

    /// The loop of `fill_guest`: the frames delivered.
    fn fill_guest_batch(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
    ) -> Tally {
        let mut tally = Tally::default();
        while (tally.frames as usize) < BUDGET {
            let (verdict, flen) = match &mut self.aqm {
                None => {
                    let Some((slot, len)) = self.consumer.peek() else {
                        break;
                    };
                    if !self.rx_meter.open() {
                        break;
                    }
                    let frame = self.slots.frame(slot, len.get());
                    let verdict =
                        deliver(queue, map, neg, &mut self.chains, &mut self.rx_used, frame);
                    (verdict, len.get())
                }
                Some(aqm) => {
                    // Held back before the dequeue, so that CoDel judges
                    // a frame's sojourn when it can really go.
                    if aqm.is_empty() || !self.rx_meter.open() {
                        break;
                    }
                    let Some(frame) = aqm.head(&self.counters) else {
                        break;
                    };
                    let n = frame.buf.len();
                    let verdict = deliver(
                        queue,
                        map,
                        neg,
                        &mut self.chains,
                        &mut self.rx_used,
                        &mut frame.buf,
                    );
                    (verdict, n)
                }
            };
            match verdict {
                Ok(Delivery::Done) => {
                    tally.add(flen, neg.hdr_len);
                    self.rx_meter.spend(flen.saturating_sub(neg.hdr_len));
                }
                Ok(Delivery::TooBig { len, capacity }) => {
                    QueueCounters::add(&self.counters.rx_dropped_too_big, 1);
                    log::debug!(
                        "rx: queue {}: dropped a {len}-byte frame larger than the guest's buffers ({capacity} bytes)",
                        self.index
                    );
                }
                Ok(Delivery::NoBuffers { seen }) => {
                    // Ask for a kick when the guest posts beyond the `seen`
                    // chains (too few for this frame), then look once more:
                    // it may have posted between our check and the request.
                    self.rx_kicks_on = true;
                    match rx_buffers::arm_notification(queue, map.mem(), seen) {
                        Ok(true) => continue,
                        Ok(false) => {
                            QueueCounters::add(&self.counters.rx_no_guest_buffers, 1);
                            break;
                        }
                        Err(e) => {
                            self.break_rx(&e);
                            break;
                        }
                    }
                }
                Err(why) => {
                    self.break_rx(&why);
                    break;
                }
            }
            // The frame left (delivered or dropped as undeliverable): release it.
            match &mut self.aqm {
                None => self.discard(),
                Some(aqm) => aqm.release_head(),
            }
        }
        tally
    }
}

/// Put `frame` (virtio-net header included) into guest RX chains: gather
/// chains until they hold it (several with MRG_RXBUF), set `num_buffers`,
/// copy, add one used entry per chain. On `NoBuffers`/`TooBig` every chain
/// taken is put back. `Err` means the guest broke the queue.
fn deliver(
    queue: &mut Queue,
    map: &GuestMap<'_>,
    neg: Negotiated,
    chains: &mut Vec<Chain>,
    used: &mut UsedBatch,
    frame: &mut [u8],
) -> Result<Delivery, QueueError> {
    let len = frame.len();
    let table = Table::of(queue);
    let ring = UsedRing::of(queue);
    let taken = {
        let mut iter = queue.iter(map.mem()).map_err(QueueError::AvailRing)?;
        let g = rx_buffers::gather(
            &mut iter,
            map,
            table,
            neg.mrg_rxbuf,
            len,
            usize::MAX,
            chains,
        )?;
        if g.capacity < len {
            // Never: without MRG_RXBUF a frame has one chain; with it, the
            // chains taken occupy the whole descriptor table, so the guest
            // cannot post another before we return one (counting chains
            // instead left a frame waiting forever at the ring's head when
            // the guest's chains had several descriptors each).
            let never = !neg.mrg_rxbuf && g.taken == 1 || g.descriptors >= usize::from(table.size);
            rx_buffers::put_back(&mut iter, g.taken);
            return Ok(if never {
                Delivery::TooBig {
                    len,
                    capacity: g.capacity,
                }
            } else {
                Delivery::NoBuffers {
                    seen: g.taken as u16,
                }
            });
        }
        g.taken
    };
    // The frame fits: set num_buffers, copy, add the used entries.
    if let Some(nb) = neg.num_buffers(taken) {
        // The frame is at least `neg.min_len()` long, so the field is there.
        let at = super::vnet::NUM_BUFFERS_AT;
        if let Some(field) = frame.get_mut(at..at + 2) {
            field.copy_from_slice(&nb);
        }
    }
    write_chains(map, &chains[..taken], frame, |head, n| {
        used.push(&ring, map, head, n)
    })?;
    Ok(Delivery::Done)
}
