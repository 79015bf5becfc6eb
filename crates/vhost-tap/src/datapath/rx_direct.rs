//! The direct path of RX: while nothing waits in the ring or the AQM, TAP
//! frames are read straight into the guest's RX chains (the kernel copies;
//! we write only `num_buffers`). Three steps per frame:
//!
//! 1. **gather**: take the chains for a small frame (with MRG_RXBUF, as many
//!    as hold [`SMALL_FRAME_ROOM`], or the largest frame after a long one),
//!    and turn them into iovecs, plus a free slot buffer behind them;
//! 2. **readv**: one frame from the TAP into those iovecs;
//! 3. **settle**: a frame that fit becomes used entries (the chains it did
//!    not need go back); a frame longer than the chains spilled into the
//!    slot buffer: it is reassembled there and takes the ring path (the
//!    chains go back); a runt or a truncated frame is dropped and counted.
//!
//! The batch stops when the TAP is empty, the guest has no chain, a frame
//! spilled (order: the next frame must queue behind it), or the budget ran out.

use std::num::NonZeroUsize;

use virtio_queue::{Queue, QueueOwnedT};

use super::rx_buffers::{self, Avail, Gathered, Table};
use super::used::UsedRing;
use super::vnet::{Negotiated, BUF_SIZE, NUM_BUFFERS_AT, SMALL_FRAME_ROOM};
use super::{QueueError, QueuePair, Tally};
use crate::counters::QueueCounters;
use crate::guest::iovecs::{guest_iovecs, read_chains, write_chains_at};
use crate::guest::map::GuestMap;

/// Most guest buffers the direct path hands to one `readv` (the kernel takes
/// at most 1024 iovecs); a frame whose chains have more segments takes the
/// ring path, whose copy has no such limit.
const DIRECT_MAX_IOVECS: usize = 64;

/// What the gather step found.
enum Gather {
    /// Chains ready, iovecs built (`self.iov`), `spill` bytes of slot buffer behind them.
    Ready { g: Gathered, spill: usize },
    /// No chain to read into (none posted, or too scattered for one readv):
    /// the ring path takes the next frame.
    Nothing,
}

/// What the readv step got.
enum Readv {
    /// A frame of this many bytes.
    Frame(usize),
    /// Nothing read; stop the batch (TAP empty, or a read error logged and counted).
    Stop,
    /// Interrupted before reading: try again.
    Retry,
}

/// What the settle step did with a frame.
enum Settled {
    /// In the guest's chains, as used entries (not yet published).
    Delivered,
    /// Longer than the chains: now in the ring, behind which the batch stops.
    Spilled,
    /// A runt or a truncated frame, counted.
    Dropped,
}

/// Counts of one direct batch.
#[derive(Default)]
struct Batch {
    /// Frames read from the TAP (delivered, spilled or dropped).
    read: usize,
    /// Frames delivered into the guest's chains.
    delivered: Tally,
}

impl QueuePair {
    /// Read up to `budget` frames straight into the guest's RX chains (or,
    /// for a frame too long for them, into the ring); publish what was
    /// delivered. Returns frames read.
    pub(super) fn read_tap_direct(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
        budget: usize,
    ) -> usize {
        let mut batch = Batch::default();
        if let Err(e) = self.direct_batch(queue, map, neg, budget, &mut batch) {
            self.break_rx(&e);
        }
        let published = self.rx_used.publish(queue, map.mem());
        self.rx_ok(published);
        batch.delivered.publish_rx(&self.counters);
        QueueCounters::add(&self.counters.rx_direct_frames, batch.delivered.frames);
        batch.read
    }

    /// The loop of `read_tap_direct`. `Err`: the guest broke the queue.
    fn direct_batch(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
        budget: usize,
        batch: &mut Batch,
    ) -> Result<(), QueueError> {
        let table = Table::of(queue);
        let ring = UsedRing::of(queue);
        // One avail-index read for the batch: chains the guest posts
        // meanwhile wait for the next pass (or the ring path).
        let mut iter = queue.iter(map.mem()).map_err(QueueError::AvailRing)?;
        while batch.read < budget && self.tap_readable && self.rx_meter.open() {
            let Some(slot) = self.producer.next_free_slot() else {
                break;
            };
            let Gather::Ready { g, spill } = self.direct_gather(&mut iter, map, table, neg)? else {
                break;
            };
            let n = match self.direct_readv(spill)? {
                Readv::Frame(n) => n,
                Readv::Stop => {
                    rx_buffers::put_back(&mut iter, g.taken);
                    break;
                }
                Readv::Retry => {
                    rx_buffers::put_back(&mut iter, g.taken);
                    continue;
                }
            };
            batch.read += 1;
            let settled = self.direct_settle(&mut iter, map, &ring, neg, slot, g, spill, n);
            match settled {
                Ok(Settled::Delivered) => {
                    batch.delivered.add(n, neg.hdr_len);
                    self.rx_meter.spend(n.saturating_sub(neg.hdr_len));
                }
                Ok(Settled::Dropped) => {}
                Ok(Settled::Spilled) => break,
                Err(e) => {
                    // Read from the TAP, but neither in the guest's hands nor in the ring.
                    QueueCounters::add(&self.counters.rx_dropped_queue_broken, 1);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Step 1: take chains for the next frame and build the iovecs of the
    /// read: the chains' buffers, then `spill` bytes of the overflow buffer
    /// (room for the rest of the largest frame, and one spare byte to see
    /// truncation).
    fn direct_gather(
        &mut self,
        iter: &mut Avail<'_, '_>,
        map: &GuestMap<'_>,
        table: Table,
        neg: Negotiated,
    ) -> Result<Gather, QueueError> {
        let want = if self.last_frame.longer_than(SMALL_FRAME_ROOM) {
            BUF_SIZE
        } else {
            SMALL_FRAME_ROOM
        };
        let g = rx_buffers::gather(
            iter,
            map,
            table,
            neg.mrg_rxbuf,
            want,
            DIRECT_MAX_IOVECS,
            &mut self.chains,
        )?;
        if g.taken == 0 {
            // The guest has no chain now: the ring path waits for one.
            return Ok(Gather::Nothing);
        }
        if g.segments > DIRECT_MAX_IOVECS {
            // Too scattered for one readv: this frame takes the ring path.
            rx_buffers::put_back(iter, g.taken);
            return Ok(Gather::Nothing);
        }
        self.iov.0.clear();
        if let Err(e) = guest_iovecs(map, &self.chains[..g.taken], &mut self.iov.0) {
            rx_buffers::put_back(iter, g.taken);
            return Err(e.into());
        }
        let spill = BUF_SIZE.saturating_sub(g.capacity).max(1);
        self.iov.0.push(self.slots.overflow_iovec(spill));
        Ok(Gather::Ready { g, spill })
    }

    /// Step 2: one `readv` into the iovecs of step 1. EFAULT (the kernel
    /// took a frame but could not write it into the guest's buffers) breaks
    /// the queue: the guest's memory is not what its chains say.
    fn direct_readv(&mut self, spill: usize) -> Result<Readv, QueueError> {
        // SAFETY: the guest iovecs come from `guest_iovecs`, each inside one
        // mapped region of the memory the pass's `GuestMap` borrows (so the
        // mapping outlives the call), of chains checked device-writable and
        // not yet returned to the guest (it does not touch them). The last
        // iovec is `spill` bytes of our own overflow buffer, which nothing
        // else uses during the call.
        let r = unsafe { self.tap.readv(&self.iov.0) };
        self.iov.0.clear();
        let e = match r {
            Ok(n) => return Ok(Readv::Frame(n)),
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::EAGAIN) => self.tap_readable = false,
            Some(libc::EINTR) => return Ok(Readv::Retry),
            // The kernel refused our iovecs before taking a frame: the ring
            // path reads it (this pass stops here).
            Some(libc::EINVAL) => log::warn!(
                "tap: {} queue {}: direct read refused ({e}, {} bytes in the spill buffer); using the ring",
                self.tap.name(),
                self.index,
                spill
            ),
            Some(libc::EFAULT) => {
                self.read_failed(&e);
                return Err(QueueError::TapFault(e));
            }
            _ => self.read_failed(&e),
        }
        Ok(Readv::Stop)
    }

    /// Step 3: the frame of `n` bytes read into the chains `g` (and `spill`
    /// bytes of the slot's overflow buffer behind them). `Err`: the guest
    /// broke the queue with the frame in our hands (the caller counts it).
    #[allow(clippy::too_many_arguments)]
    fn direct_settle(
        &mut self,
        iter: &mut Avail<'_, '_>,
        map: &GuestMap<'_>,
        ring: &UsedRing,
        neg: Negotiated,
        slot: usize,
        g: Gathered,
        spill: usize,
        n: usize,
    ) -> Result<Settled, QueueError> {
        if n < neg.min_len() || n >= g.capacity + spill {
            rx_buffers::put_back(iter, g.taken);
            let reason = if n >= g.capacity + spill {
                &self.counters.rx_dropped_truncated
            } else {
                &self.counters.rx_dropped_too_short
            };
            QueueCounters::add(reason, 1);
            return Ok(Settled::Dropped);
        }
        self.last_frame.saw(n);
        if n > g.capacity {
            // Spilled: reassemble the frame in the slot, give the chains
            // back, hand the frame to the ring path.
            rx_buffers::put_back(iter, g.taken);
            let chains = &self.chains[..g.taken];
            self.slots
                .assemble(slot, n, g.capacity, |head| read_chains(map, chains, head))?;
            if let Some(len) = NonZeroUsize::new(n) {
                self.produce(len);
            }
            return Ok(Settled::Spilled);
        }
        // Delivered: the chains the frame filled become used entries, the
        // rest go back. On failure the frame's entries are withdrawn, never
        // published.
        let mark = self.rx_used.mark();
        let mut used_chains = 0usize;
        let mut left = n;
        while left > 0 {
            let c = &self.chains[used_chains];
            let part = left.min(c.total_len as usize);
            if let Err(e) = self.rx_used.push(ring, map, c.head, part as u32) {
                self.rx_used.rewind(mark);
                return Err(e);
            }
            left -= part;
            used_chains += 1;
        }
        rx_buffers::put_back(iter, g.taken - used_chains);
        // The kernel wrote the rest of the header; num_buffers is ours.
        if let Some(nb) = neg.num_buffers(used_chains) {
            let written = write_chains_at(map, &self.chains[..used_chains], NUM_BUFFERS_AT, &nb);
            if let Err(e) = written {
                self.rx_used.rewind(mark);
                return Err(e.into());
            }
        }
        Ok(Settled::Delivered)
    }
}
