//! The driver side of one split virtqueue, laid out by us in guest memory.
//!
//! One producer (us, the driver) publishes descriptor heads in the avail ring;
//! one consumer (the backend) returns them in the used ring. Every access to
//! the shared rings goes through vm-memory (`write_obj`/`read_obj` for plain
//! fields, `store`/`load` with an `Ordering` for the indices and event words).
//!
//! Buffer memory: each descriptor index `d` owns a fixed slot of `slot_size`
//! bytes at `data + d * slot_size`. An RX buffer uses its head's slot; a TX
//! chain packs header, frame segments (and, if indirect, its descriptor table)
//! into its head's slot, so a chain needs only one slot however many
//! descriptors it has.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{
    __virtio16, vring_avail, vring_desc, vring_used, vring_used_elem,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::features::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use crate::RawDesc;

/// Bytes of one descriptor-table entry.
pub(crate) const DESC_SIZE: u64 = size_of::<vring_desc>() as u64;
/// Bytes of one avail ring entry (a descriptor head index).
const AVAIL_ELEM_SIZE: u64 = size_of::<__virtio16>() as u64;
/// Bytes of one used ring entry.
const USED_ELEM_SIZE: u64 = size_of::<vring_used_elem>() as u64;
/// Bytes of the event word after each ring (`used_event` after the avail
/// ring, `avail_event` after the used ring), used with EVENT_IDX.
const EVENT_SIZE: u64 = size_of::<__virtio16>() as u64;
/// Where the avail ring's fields sit from its start.
const AVAIL_IDX: u64 = offset_of!(vring_avail, idx) as u64;
const AVAIL_RING: u64 = offset_of!(vring_avail, ring) as u64;
/// Where the used ring's fields sit from its start.
const USED_IDX: u64 = offset_of!(vring_used, idx) as u64;
const USED_RING: u64 = offset_of!(vring_used, ring) as u64;
/// We align the descriptor table + avail ring, and the used ring, to a page
/// (as the legacy layout does); virtio 1.x asks for less (16 and 4 bytes).
const RING_ALIGN: u64 = 4096;

/// Bytes of the avail ring of a queue of `n` entries, `used_event` included.
fn avail_bytes(n: u64) -> u64 {
    AVAIL_RING + AVAIL_ELEM_SIZE * n + EVENT_SIZE
}

/// Bytes of the used ring of a queue of `n` entries, `avail_event` included.
fn used_bytes(n: u64) -> u64 {
    USED_RING + USED_ELEM_SIZE * n + EVENT_SIZE
}

/// Descriptor `i` of a chain made of `descs` (address, length, flags):
/// NEXT pointing at `next`, except on the last one.
fn chain_desc(descs: &[(u64, u32, u16)], i: usize, next: u16) -> RawDesc {
    let (addr, len, flags) = descs[i];
    let last = i + 1 == descs.len();
    RawDesc {
        addr,
        len,
        flags: if last {
            flags
        } else {
            flags | VRING_DESC_F_NEXT as u16
        },
        next: if last { 0 } else { next },
    }
}

/// Size in bytes of the ring area for a queue of `n` entries (4 KiB aligned parts).
pub(crate) fn ring_bytes(n: u16) -> u64 {
    let n = u64::from(n);
    let desc_avail = DESC_SIZE * n + avail_bytes(n);
    align_up(desc_avail, RING_ALIGN) + align_up(used_bytes(n), RING_ALIGN)
}

pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// `vring_need_event` from the virtio spec: true if moving the index from
/// `old` to `new` crossed `event`.
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What a published head stands for, kept until its used entry comes back.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    /// Every descriptor index of the chain (head first), returned to the free pool on reap.
    pub descs: Vec<u16>,
    /// Guest address of the (first) data buffer: the RX buffer, or the TX slot.
    pub buf: GuestAddress,
    /// Length of that buffer.
    pub buf_len: u32,
}

/// One used-ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index, as the device wrote it (not validated).
    pub id: u32,
    /// Bytes written into the chain, as the device wrote it (not validated).
    pub len: u32,
}

pub(crate) struct Vring {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    pub data: GuestAddress,
    pub slot_size: u64,
    pub event_idx: bool,
    pub kick: EventFd,
    pub call: EventFd,
    /// Descriptor indices we may hand out.
    free: Vec<u16>,
    /// Chains in flight, indexed by head.
    chains: Vec<Option<Chain>>,
    /// Our shadow of avail.idx (the next slot we fill).
    avail_idx: u16,
    /// avail.idx as last published to the device (for the kick decision).
    published_idx: u16,
    /// Next used entry we have not consumed.
    pub last_used: u16,
    /// Used entries whose id named no chain of ours (raw posts or a misbehaving device).
    pub stray_used: Vec<UsedElem>,
}

impl Vring {
    pub fn new(
        size: u16,
        base: GuestAddress,
        data: GuestAddress,
        slot_size: u64,
        event_idx: bool,
    ) -> std::io::Result<Self> {
        let n = u64::from(size);
        let avail = base.0 + DESC_SIZE * n;
        let used = align_up(avail + avail_bytes(n), RING_ALIGN);
        Ok(Vring {
            size,
            desc: base,
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            data,
            slot_size,
            event_idx,
            kick: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            call: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            // Pop from the end: hand out low indices first.
            free: (0..size).rev().collect(),
            chains: vec![None; usize::from(size)],
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            stray_used: Vec::new(),
        })
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The first buffer (address, length) of the chain in flight with head `id`, if any.
    pub fn chain_buf(&self, id: u32) -> Option<(GuestAddress, u32)> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get(i))
            .and_then(Option::as_ref)
            .map(|c| (c.buf, c.buf_len))
    }

    pub fn slot(&self, d: u16) -> GuestAddress {
        GuestAddress(self.data.0 + u64::from(d) * self.slot_size)
    }

    /// `used_event`: the word after the avail ring's entries.
    fn used_event_addr(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + AVAIL_RING + AVAIL_ELEM_SIZE * u64::from(self.size))
    }

    /// `avail_event`: the word after the used ring's entries.
    fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.used.0 + USED_RING + USED_ELEM_SIZE * u64::from(self.size))
    }

    pub fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, d: &RawDesc) {
        let a = self.desc.0 + DESC_SIZE * u64::from(index);
        write_desc_at(mem, GuestAddress(a), d);
    }

    /// Takes `k` descriptor indices from the free pool, or None if there are fewer.
    pub fn alloc(&mut self, k: usize) -> Option<Vec<u16>> {
        if k == 0 || self.free.len() < k {
            return None;
        }
        Some(self.free.split_off(self.free.len() - k))
    }

    /// Writes the chain `descs` (addr, len, flags without NEXT) at the allocated
    /// indices, linking them with NEXT, and queues the head in the avail ring
    /// (not yet published).
    pub fn add_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        indices: Vec<u16>,
        descs: &[(u64, u32, u16)],
        buf: GuestAddress,
        buf_len: u32,
    ) {
        debug_assert_eq!(indices.len(), descs.len());
        for i in 0..descs.len() {
            let next = indices.get(i + 1).copied().unwrap_or(0);
            self.write_desc(mem, indices[i], &chain_desc(descs, i, next));
        }
        let head = indices[0];
        self.chains[usize::from(head)] = Some(Chain {
            descs: indices,
            buf,
            buf_len,
        });
        self.push_avail(mem, head);
    }

    /// Writes an indirect table at `table` and one INDIRECT head descriptor for it.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        table: GuestAddress,
        descs: &[(u64, u32, u16)],
    ) {
        for i in 0..descs.len() {
            let d = chain_desc(descs, i, (i + 1) as u16);
            write_desc_at(mem, GuestAddress(table.0 + DESC_SIZE * i as u64), &d);
        }
        let d = RawDesc {
            addr: table.0,
            len: (DESC_SIZE as usize * descs.len()) as u32,
            flags: VRING_DESC_F_INDIRECT as u16,
            next: 0,
        };
        self.write_desc(mem, head, &d);
        self.chains[usize::from(head)] = Some(Chain {
            descs: vec![head],
            buf: table,
            buf_len: d.len,
        });
        self.push_avail(mem, head);
    }

    /// Puts `head` in the next avail slot; the device sees it after `publish`.
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let a = GuestAddress(self.avail.0 + AVAIL_RING + AVAIL_ELEM_SIZE * slot);
        mem.write_obj(head.to_le(), a)
            .expect("avail ring lies in guest memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Sets the shadow avail index (raw tests), published by the next `publish`.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
    }

    /// Publishes avail.idx; returns whether the device wants a kick.
    pub fn publish(&mut self, mem: &GuestMemoryMmap) -> bool {
        let old = self.published_idx;
        let new = self.avail_idx;
        // Descriptors and avail ring entries are written above; make them
        // visible before the index that hands them over.
        // Pairs with the device's Acquire load of avail.idx.
        mem.store(
            new.to_le(),
            GuestAddress(self.avail.0 + AVAIL_IDX),
            Ordering::Release,
        )
        .expect("avail ring lies in guest memory");
        self.published_idx = new;
        if !self.event_idx {
            return true;
        }
        // SeqCst fence: store-buffering with the device, which writes
        // avail_event, fences, then re-reads avail.idx. Either it sees our new
        // idx, or we see its avail_event and kick.
        fence(Ordering::SeqCst);
        let ev: u16 = mem
            .load(self.avail_event_addr(), Ordering::Acquire)
            .expect("used ring lies in guest memory");
        need_event(u16::from_le(ev), new, old)
    }

    pub fn kick(&self) {
        if let Err(e) = self.kick.write(1) {
            log::warn!("vu-driver: kick eventfd write failed: {e}");
        }
    }

    /// used.idx, loaded with Acquire: pairs with the device's Release store of
    /// used.idx after it wrote the used elements we are about to read.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        let v: u16 = mem
            .load(GuestAddress(self.used.0 + USED_IDX), Ordering::Acquire)
            .expect("used ring lies in guest memory");
        u16::from_le(v)
    }

    /// Number of used entries the device published that we have not consumed.
    pub fn pending(&self, mem: &GuestMemoryMmap) -> u16 {
        self.used_idx(mem).wrapping_sub(self.last_used)
    }

    /// The used element `off` places past `last_used` (callers check `pending`).
    pub fn peek_used(&self, mem: &GuestMemoryMmap, off: u16) -> UsedElem {
        let slot = u64::from(self.last_used.wrapping_add(off) % self.size);
        let a = self.used.0 + USED_RING + USED_ELEM_SIZE * slot;
        let id: u32 = mem
            .read_obj(GuestAddress(a + offset_of!(vring_used_elem, id) as u64))
            .expect("used ring lies in guest memory");
        let len: u32 = mem
            .read_obj(GuestAddress(a + offset_of!(vring_used_elem, len) as u64))
            .expect("used ring lies in guest memory");
        UsedElem {
            id: u32::from_le(id),
            len: u32::from_le(len),
        }
    }

    /// Consumes the next used element: frees its chain and returns it, or
    /// records it in `stray_used` and returns None if its id is not ours.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> (UsedElem, Option<Chain>) {
        let e = self.peek_used(mem, 0);
        self.last_used = self.last_used.wrapping_add(1);
        let chain = usize::try_from(e.id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .and_then(Option::take);
        match &chain {
            Some(c) => self.free.extend_from_slice(&c.descs),
            None => {
                log::debug!("vu-driver: used id {} names no chain of ours", e.id);
                self.stray_used.push(e);
            }
        }
        (e, chain)
    }

    /// Asks for an interrupt on the next used entry (EVENT_IDX), then reports
    /// whether entries arrived meanwhile, so the caller must not sleep.
    pub fn arm_and_recheck(&self, mem: &GuestMemoryMmap) -> bool {
        if self.event_idx {
            mem.store(
                self.last_used.to_le(),
                self.used_event_addr(),
                Ordering::Relaxed,
            )
            .expect("avail ring lies in guest memory");
        }
        // SeqCst fence: store-buffering with the device, which writes used.idx,
        // fences, then reads used_event. Either it sees our used_event and
        // signals, or we see its used.idx here.
        fence(Ordering::SeqCst);
        self.pending(mem) != 0
    }

    /// Removes descriptor indices handed to raw posts from the free pool.
    pub fn take_raw(&mut self, n: usize) {
        let n = n.min(usize::from(self.size));
        self.free.retain(|&d| usize::from(d) >= n);
        for c in self.chains.iter_mut().take(n) {
            *c = None;
        }
    }
}

/// Writes `d` as a `vring_desc` (little-endian fields) at `a`, in one write.
fn write_desc_at(mem: &GuestMemoryMmap, a: GuestAddress, d: &RawDesc) {
    let mut b = [0u8; size_of::<vring_desc>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(vring_desc, addr), &d.addr.to_le_bytes());
    put(offset_of!(vring_desc, len), &d.len.to_le_bytes());
    put(offset_of!(vring_desc, flags), &d.flags.to_le_bytes());
    put(offset_of!(vring_desc, next), &d.next.to_le_bytes());
    mem.write_slice(&b, a)
        .expect("descriptor table lies in guest memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_spec() {
        // Crossing the event index from below needs a notification.
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(10, 10, 0));
        assert!(!need_event(3, 5, 4));
        // Wrap-around.
        assert!(need_event(65535, 0, 65535));
        assert!(need_event(65534, 2, 65530));
    }

    #[test]
    fn layout_matches_the_spec() {
        // virtio 1.2 §2.7: 16-byte descriptors; avail = flags, idx, ring[n],
        // used_event; used = flags, idx, ring[n] of (id, len), avail_event.
        assert_eq!(DESC_SIZE, 16);
        assert_eq!(
            (AVAIL_IDX, AVAIL_RING, avail_bytes(256)),
            (2, 4, 6 + 2 * 256)
        );
        assert_eq!((USED_IDX, USED_RING, used_bytes(256)), (2, 4, 6 + 8 * 256));
    }

    #[test]
    fn ring_bytes_256() {
        // desc 4096 + avail 518 -> 8192, used 2054 -> 4096.
        assert_eq!(ring_bytes(256), 8192 + 4096);
    }
}
