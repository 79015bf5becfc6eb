//! Used-ring bookkeeping: entries written one by one and published with a
//! single used-index store, and the decision whether the guest wants an
//! interrupt for them.
//!
//! The guest sees a batch at once, and the index cache line is written once
//! per batch instead of once per frame.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::error::QueueError;
use crate::guest::map::GuestMap;

/// Where a queue's used ring is, and its next used index: a snapshot taken
/// before borrowing the queue for its avail iterator.
pub struct UsedRing {
    addr: u64,
    size: u16,
    next_used: u16,
}

impl UsedRing {
    pub fn of(queue: &Queue) -> UsedRing {
        UsedRing {
            addr: queue.used_ring(),
            size: queue.size(),
            next_used: queue.next_used(),
        }
    }
}

/// Used entries written but not yet published, of one vring.
#[derive(Default)]
pub struct UsedBatch {
    /// Entries written beyond the queue's `next_used`.
    pending: u16,
    /// Entries published since the guest was last considered for an interrupt.
    unsignalled: u16,
}

/// Where the pending entries stood before a frame started writing its own,
/// so that a frame that fails half-way withdraws them all.
#[derive(Clone, Copy)]
pub struct Mark(u16);

impl UsedBatch {
    /// Write one used element `{id: head, len}` after those already pending.
    pub fn push(
        &mut self,
        ring: &UsedRing,
        map: &GuestMap<'_>,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let size = ring.size;
        if size == 0 || self.pending >= size {
            return Err(QueueError::UsedOverrun {
                pending: self.pending,
                size,
            });
        }
        let slot = ring.next_used.wrapping_add(self.pending) % size;
        let at = GuestAddress(ring.addr)
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or(QueueError::RingAddress("used"))?;
        map.write_used(at, u32::from(head), len)?;
        self.pending += 1;
        Ok(())
    }

    /// The current end of the pending entries.
    pub fn mark(&self) -> Mark {
        Mark(self.pending)
    }

    /// Withdraw the entries pushed since `mark` (never published).
    pub fn rewind(&mut self, mark: Mark) {
        self.pending = mark.0;
    }

    /// Make the pending entries visible: one Release store of the used index.
    pub fn publish(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<(), QueueError> {
        if self.pending == 0 {
            return Ok(());
        }
        let next = queue.next_used().wrapping_add(self.pending);
        self.unsignalled = self.unsignalled.wrapping_add(self.pending);
        self.pending = 0;
        let at = GuestAddress(queue.used_ring())
            .checked_add(2)
            .ok_or(QueueError::RingAddress("used"))?;
        // Release: the entries written by `push` are visible to the guest
        // before the index that covers them. Pairs with the driver's read
        // barrier between reading used->idx and the entries
        // (virtio_rmb in virtqueue_get_buf).
        mem.store(next.to_le(), at, Ordering::Release)
            .map_err(|source| QueueError::RingAccess {
                what: "publish the used index",
                source,
            })?;
        queue.set_next_used(next);
        Ok(())
    }

    /// Whether the guest wants an interrupt for the entries published since
    /// the last call: with EVENT_IDX, when its `used_event` lies in that
    /// range (the kernel's `vring_need_event`); without, unless it set
    /// `VRING_AVAIL_F_NO_INTERRUPT`.
    pub fn needs_notification(
        &mut self,
        queue: &Queue,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, QueueError> {
        let added = std::mem::take(&mut self.unsignalled);
        if added == 0 {
            return Ok(false);
        }
        let new = queue.next_used();
        let old = new.wrapping_sub(added);
        // SeqCst fence: our used-index store must be visible before we read
        // the guest's used_event/flags, while the guest writes used_event and
        // then re-reads the used index (virtio_mb in
        // virtqueue_enable_cb_delayed). Store-buffering: one side sees the other.
        fence(Ordering::SeqCst);
        let avail = GuestAddress(queue.avail_ring());
        if queue.event_idx_enabled() {
            let at = avail
                .checked_add(4 + 2 * u64::from(queue.size()))
                .ok_or(QueueError::RingAddress("avail"))?;
            let used_event: u16 =
                mem.load(at, Ordering::Relaxed)
                    .map(u16::from_le)
                    .map_err(|source| QueueError::RingAccess {
                        what: "read used_event",
                        source,
                    })?;
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags: u16 = mem
                .load(avail, Ordering::Relaxed)
                .map(u16::from_le)
                .map_err(|source| QueueError::RingAccess {
                    what: "read the avail flags",
                    source,
                })?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
        }
    }
}
