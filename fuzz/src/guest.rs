//! One split virtqueue in guest memory of its own, and a driver for it that
//! remembers what it posted, so that a target can check every used entry
//! the data path returns.
//!
//! Layout (guest addresses):
//!
//! ```text
//! 0x0000 descriptor table   0x1000 avail ring   0x2000 used ring
//! 0x3000 indirect tables (64 bytes, 4 entries, per head)
//! 0x4000 + d * SLOT  the buffer slot of descriptor d (SLOT = 8 KiB)
//! ```
//!
//! With `split`, the memory is two regions (two host mappings) adjacent in
//! guest memory at [`SPLIT`], inside slot 15: buffers there cross regions.
//!
//! While the driver only posts what it allocated, it checks each used entry
//! (a head it posted and did not get back yet, a length within the chain).
//! A raw write (a hostile guest) makes it `hostile`: it then only counts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const INDIRECT: u64 = 0x3000;
pub const BUFS: u64 = 0x4000;
pub const SLOT: u64 = 0x2000;
/// The largest queue the layout holds.
pub const MAX_QUEUE: u16 = 64;
/// Where the second region starts when the memory is split.
pub const SPLIT: u64 = BUFS + 15 * SLOT + 0x1000;
pub const MEM_END: u64 = BUFS + MAX_QUEUE as u64 * SLOT;

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Which way a chain's buffers point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Device-writable (RX).
    Rx,
    /// Device-readable (TX).
    Tx,
}

/// A chain the driver posted and has not got back.
#[derive(Clone, Debug)]
pub struct Posted {
    /// Descriptors it occupies (returned to the free list when it is used).
    descs: Vec<u16>,
    /// Its buffers, in order.
    pub segs: Vec<(u64, u32)>,
    /// TX: the bytes it holds.
    pub frame: Vec<u8>,
    /// Posted with the wrong direction on purpose: the device must break
    /// the queue on it, never use it.
    pub wrong_direction: bool,
}

impl Posted {
    pub fn capacity(&self) -> u64 {
        self.segs.iter().map(|&(_, l)| u64::from(l)).sum()
    }
}

/// How a chain is to be built.
#[derive(Clone, Debug, Default)]
pub struct ChainSpec {
    /// Buffer lengths (1 to 16 of them; each clipped to its slot).
    pub lens: Vec<u32>,
    /// Offset of each buffer in its slot (clipped).
    pub offset: u32,
    /// One indirect descriptor instead of a chain (at most 4 buffers).
    pub indirect: bool,
    /// Flip the direction flag of the last buffer.
    pub wrong_direction: bool,
}

pub struct Guest {
    pub mem: GuestMemoryMmap<()>,
    pub queue: Queue,
    pub kind: Kind,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    outstanding: HashMap<u16, Posted>,
    /// The guest wrote raw bytes: used entries are no longer checked.
    pub hostile: bool,
    event_idx: bool,
}

impl Guest {
    /// A vring of `size` (rounded down to a power of two, 1 to 64) entries.
    pub fn new(kind: Kind, size: u16, split: bool, event_idx: bool) -> Guest {
        let size = size.clamp(1, MAX_QUEUE);
        let size = 1 << (15 - size.leading_zeros());
        let mem = if split {
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), SPLIT as usize),
                (GuestAddress(SPLIT), (MEM_END - SPLIT) as usize),
            ])
        } else {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)])
        }
        .expect("guest memory");
        let mut queue = Queue::new(MAX_QUEUE).expect("queue");
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "the layout is a valid queue");
        Guest {
            mem,
            queue,
            kind,
            size,
            avail_idx: 0,
            used_seen: 0,
            free: (0..size).rev().collect(),
            outstanding: HashMap::new(),
            hostile: false,
            event_idx,
        }
    }

    /// Whether the guest asked for an interrupt for the used entries
    /// `old..new` (virtio 2.7.7.2 and 2.7.10): with EVENT_IDX when
    /// `used_event` is among them (the kernel's `vring_need_event`),
    /// without unless it set `VRING_AVAIL_F_NO_INTERRUPT`.
    pub fn wants_interrupt(&self, old: u16, new: u16) -> bool {
        if old == new {
            return false;
        }
        let flags: u16 = u16::from_le(self.mem.read_obj(GuestAddress(AVAIL)).unwrap());
        let at = AVAIL + 4 + 2 * u64::from(self.size);
        let used_event: u16 = u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap());
        if self.event_idx {
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            flags & 1 == 0
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    fn slot(d: u16) -> u64 {
        BUFS + u64::from(d) * SLOT
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Post a chain built by `spec`; a TX chain holds the start of `frame`
    /// (as much as fits). Returns false when there are not enough free
    /// descriptors.
    pub fn post(&mut self, spec: &ChainSpec, frame: &[u8]) -> bool {
        let n = spec.lens.len().clamp(1, if spec.indirect { 4 } else { 16 });
        let need = if spec.indirect { 1 } else { n };
        if self.free.len() < need {
            return false;
        }
        let descs: Vec<u16> = (0..need).map(|_| self.free.pop().unwrap()).collect();
        let head = descs[0];
        // Buffers: each in its descriptor's slot, or parts of the head's slot.
        let part = if spec.indirect { SLOT / n as u64 } else { SLOT };
        let mut segs = Vec::with_capacity(n);
        for i in 0..n {
            let base = match descs.get(i) {
                Some(&d) if !spec.indirect => Self::slot(d),
                _ => Self::slot(head) + i as u64 * part,
            };
            let off = u64::from(spec.offset) % part;
            let len = u64::from(spec.lens.get(i).copied().unwrap_or(1)).clamp(1, part - off);
            segs.push((base + off, len as u32));
        }
        // TX: the frame's bytes, spread over the buffers in order; the chain
        // is as long as the part of the frame it holds (at least one byte per buffer).
        let mut held = Vec::new();
        if self.kind == Kind::Tx {
            let mut rest = frame;
            for s in segs.iter_mut() {
                let take = rest.len().min(s.1 as usize);
                let (now, later) = rest.split_at(take);
                let mut bytes = now.to_vec();
                if bytes.is_empty() {
                    bytes.push(0);
                }
                s.1 = bytes.len() as u32;
                self.mem.write_slice(&bytes, GuestAddress(s.0)).unwrap();
                held.extend_from_slice(&bytes);
                rest = later;
            }
        }
        let dir = if self.kind == Kind::Rx { F_WRITE } else { 0 };
        let flags = |i: usize| {
            let mut f = dir;
            if spec.wrong_direction && i + 1 == n {
                f ^= F_WRITE;
            }
            if i + 1 < n {
                f |= F_NEXT;
            }
            f
        };
        if spec.indirect {
            let table = INDIRECT + u64::from(head) * 64;
            for (i, &(addr, len)) in segs.iter().enumerate() {
                self.write_desc(table + 16 * i as u64, addr, len, flags(i), (i + 1) as u16);
            }
            self.write_desc(
                DESC + 16 * u64::from(head),
                table,
                16 * n as u32,
                F_INDIRECT,
                0,
            );
        } else {
            for (i, &(addr, len)) in segs.iter().enumerate() {
                let next = descs.get(i + 1).copied().unwrap_or(0);
                self.write_desc(DESC + 16 * u64::from(descs[i]), addr, len, flags(i), next);
            }
        }
        self.outstanding.insert(
            head,
            Posted {
                descs,
                segs,
                frame: held,
                wrong_direction: spec.wrong_direction,
            },
        );
        self.push_avail(head);
        true
    }

    /// Put `head` in the avail ring and publish it.
    pub fn push_avail(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx.to_le(),
                GuestAddress(AVAIL + 2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// A hostile guest: `bytes` at guest address `at` (clipped to memory).
    pub fn raw_write(&mut self, at: u64, bytes: &[u8]) {
        let at = at % MEM_END;
        let n = bytes.len().min((MEM_END - at) as usize);
        self.mem.write_slice(&bytes[..n], GuestAddress(at)).unwrap();
        self.hostile = true;
    }

    /// A hostile guest: an avail index of its choosing.
    pub fn raw_avail_idx(&mut self, idx: u16) {
        self.mem
            .store(idx.to_le(), GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        self.hostile = true;
    }

    /// The avail flags word (VRING_AVAIL_F_NO_INTERRUPT) and, with
    /// EVENT_IDX, `used_event`: how the guest asks for interrupts.
    pub fn interrupt_hints(&mut self, flags: u16, used_event: u16) {
        self.mem
            .write_obj(flags.to_le(), GuestAddress(AVAIL))
            .unwrap();
        let at = AVAIL + 4 + 2 * u64::from(self.size);
        self.mem
            .write_obj(used_event.to_le(), GuestAddress(at))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(USED + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// Chains posted and not given back.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Free descriptors.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// The used entries published since the last call: each with the chain
    /// it returns (`None` for a hostile guest, whose entries are not checked).
    pub fn harvest(&mut self) -> Vec<(u32, u32, Option<Posted>)> {
        let now = self.used_idx();
        let mut n = now.wrapping_sub(self.used_seen);
        if self.hostile && n > self.size {
            // A hostile guest may have written the used index itself.
            self.used_seen = now.wrapping_sub(self.size);
            n = self.size;
        }
        if !self.hostile {
            assert!(
                usize::from(n) <= self.outstanding.len(),
                "{n} used entries published, {} chains outstanding",
                self.outstanding.len()
            );
        }
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let at = USED + 4 + 8 * u64::from(self.used_seen % self.size);
            let id = u32::from_le(self.mem.read_obj(GuestAddress(at)).unwrap());
            let len = u32::from_le(self.mem.read_obj(GuestAddress(at + 4)).unwrap());
            self.used_seen = self.used_seen.wrapping_add(1);
            if self.hostile {
                out.push((id, len, None));
                continue;
            }
            let head = u16::try_from(id).ok();
            let p = head
                .and_then(|h| self.outstanding.remove(&h))
                .unwrap_or_else(|| panic!("used entry for head {id}, which is not outstanding"));
            assert!(
                !p.wrong_direction,
                "head {id} was posted with the wrong direction and came back used"
            );
            if self.kind == Kind::Rx {
                assert!(
                    u64::from(len) <= p.capacity(),
                    "used length {len} of head {id} above its capacity {}",
                    p.capacity()
                );
            }
            self.free.extend_from_slice(&p.descs);
            out.push((id, len, Some(p)));
        }
        out
    }

    /// The first `len` bytes of a chain's buffers.
    pub fn read_chain(&self, p: &Posted, len: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut left = len as usize;
        for &(addr, l) in &p.segs {
            if left == 0 {
                break;
            }
            let n = left.min(l as usize);
            let mut b = vec![0u8; n];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend_from_slice(&b);
            left -= n;
        }
        out
    }
}
