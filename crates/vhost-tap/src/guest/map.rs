//! Guest memory as host addresses, for the per-frame accesses of the data path.
//!
//! Each frame costs the data path a few small guest-memory accesses (a
//! descriptor, a range check, the buffer's host address, a used element).
//! Through vm-memory each is a region search plus a slice iterator with its
//! error plumbing: 5–7 % of the daemon's CPU at 1 M frames/s in perf. A
//! `GuestMap` is a snapshot of the regions' bounds and host addresses taken
//! once per pass; a lookup tries the region of the previous hit, then the
//! others (a guest has a handful). What it cannot do directly (a range
//! across two regions, a misaligned ring field, more regions than it holds)
//! goes through vm-memory, so the answers are the same either way: the unit
//! tests below check that against vm-memory.

use std::cell::Cell;
use std::ptr::NonNull;

use virtio_queue::desc::split::Descriptor;

use super::MemError;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// Regions held; vhost-user without `CONFIGURE_MEM_SLOTS` sends at most 8.
const MAX_REGIONS: usize = 8;

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    /// One past the last guest address.
    end: u64,
    host: NonNull<u8>,
}

/// The regions of one `GuestMemoryMmap`, borrowed for one data-path pass.
pub struct GuestMap<'m> {
    mem: &'m GuestMemoryMmap<()>,
    regions: [Option<Region>; MAX_REGIONS],
    /// Index of the region of the last hit.
    last: Cell<usize>,
}

impl<'m> GuestMap<'m> {
    pub fn new(mem: &'m GuestMemoryMmap<()>) -> GuestMap<'m> {
        let mut regions = [None; MAX_REGIONS];
        if mem.num_regions() <= MAX_REGIONS {
            for (slot, r) in regions.iter_mut().zip(mem.iter()) {
                let start = r.start_addr().0;
                let Some(end) = start.checked_add(r.len()) else {
                    continue;
                };
                let Some(host) = r
                    .get_host_address(MemoryRegionAddress(0))
                    .ok()
                    .and_then(NonNull::new)
                else {
                    continue;
                };
                *slot = Some(Region { start, end, host });
            }
        }
        // More regions than we hold: every lookup takes vm-memory's path.
        GuestMap {
            mem,
            regions,
            last: Cell::new(0),
        }
    }

    /// The memory this map was taken from.
    pub fn mem(&self) -> &'m GuestMemoryMmap<()> {
        self.mem
    }

    /// Host address of `[addr, addr + len)` when that range lies inside one
    /// region (`None` otherwise: outside memory, or across regions).
    pub fn host(&self, addr: GuestAddress, len: usize) -> Option<NonNull<u8>> {
        let a = addr.0;
        let end = a.checked_add(len as u64)?;
        let inside = |r: &Region| r.start <= a && end <= r.end;
        let hit = |r: &Region| {
            // SAFETY: only called on a region with `r.start <= a` and
            // `a + len <= r.end`, so the offset is at most the region's
            // length: the result stays inside the mapping `r.host` points to
            // (one past its end only for an empty range at the end).
            unsafe { r.host.add((a - r.start) as usize) }
        };
        let last = self.last.get();
        if let Some(r) = self.regions[last].as_ref().filter(|r| inside(r)) {
            return Some(hit(r));
        }
        for (i, r) in self.regions.iter().enumerate() {
            match r {
                Some(r) if inside(r) => {
                    self.last.set(i);
                    return Some(hit(r));
                }
                // A slot `new` left empty (a region it could not use) may
                // sit between used ones.
                Some(_) | None => {}
            }
        }
        None
    }

    /// Whether `[addr, addr + len)` is guest memory (possibly across regions).
    pub fn contains(&self, addr: GuestAddress, len: usize) -> bool {
        self.host(addr, len).is_some() || self.mem.check_range(addr, len)
    }

    /// Read the split-ring descriptor at `at`.
    pub fn read_desc(&self, at: GuestAddress) -> Option<Descriptor> {
        match self.host(at, 16) {
            Some(p) if p.as_ptr().align_offset(8) == 0 => {
                let p = p.as_ptr().cast::<u64>();
                // SAFETY: `host` checked that the 16 bytes at `p` are inside
                // a mapped region, which `self.mem` keeps mapped; `p` is
                // 8-aligned. Volatile: the guest may write the table
                // concurrently (we read each field once and check the copy).
                let (lo, hi) = unsafe { (p.read_volatile(), p.add(1).read_volatile()) };
                let (lo, hi) = (u64::from_le(lo), u64::from_le(hi));
                Some(Descriptor::new(
                    lo,
                    hi as u32,
                    (hi >> 32) as u16,
                    (hi >> 48) as u16,
                ))
            }
            _ => self.mem.read_obj(at).ok(),
        }
    }

    /// Write the used-ring element `{id, len}` at `at`.
    pub fn write_used(&self, at: GuestAddress, id: u32, len: u32) -> Result<(), MemError> {
        match self.host(at, 8) {
            Some(p) if p.as_ptr().align_offset(4) == 0 => {
                let p = p.as_ptr().cast::<u32>();
                // SAFETY: `host` checked that the 8 bytes at `p` are inside a
                // mapped region, which `self.mem` keeps mapped; `p` is
                // 4-aligned. Volatile: the guest reads the ring concurrently
                // (it is told by the used index, stored with Release after).
                unsafe {
                    p.write_volatile(id.to_le());
                    p.add(1).write_volatile(len.to_le());
                }
                Ok(())
            }
            _ => {
                let elem = (u64::from(len) << 32 | u64::from(id)).to_le();
                self.mem
                    .write_obj(elem, at)
                    .map_err(|source| MemError::WriteUsed { addr: at.0, source })
            }
        }
    }

    /// Copy `bytes` into guest memory at `at`.
    pub fn write(&self, at: GuestAddress, bytes: &[u8]) -> Result<(), MemError> {
        match self.host(at, bytes.len()) {
            Some(p) => {
                // SAFETY: `host` checked that `bytes.len()` bytes at `p` are
                // inside a mapped region, which `self.mem` keeps mapped;
                // `copy` allows the two ranges to overlap. A plain copy: the
                // buffer belongs to the device until its used element is
                // published (Release), so the guest does not read it now.
                unsafe {
                    std::ptr::copy(bytes.as_ptr(), p.as_ptr(), bytes.len());
                }
                Ok(())
            }
            None => self
                .mem
                .write_slice(bytes, at)
                .map_err(|source| MemError::Write {
                    addr: at.0,
                    len: bytes.len(),
                    source,
                }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two regions with a gap, as a guest with memory below and above a hole.
    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x2000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn host_agrees_with_vm_memory_at_every_edge() {
        let mem = mem();
        let map = GuestMap::new(&mem);
        // Upward, then back down, so that the last-hit region is sometimes
        // a later one than the answer.
        let addrs = [
            0u64,
            0xfff,
            0x1000,
            0x1001,
            0x2ff8,
            0x2fff,
            0x3000,
            0xffff,
            0x10000,
            0x10ff8,
            0x10fff,
            0x11000,
            u64::MAX - 3,
            0x10010,
            0x1010,
            0x10020,
            0x2000,
        ];
        for addr in addrs {
            for len in [1usize, 8, 16, 0x1000, 0x2000, usize::MAX] {
                let ours = map.host(GuestAddress(addr), len).map(|p| p.as_ptr());
                let theirs = mem
                    .get_slice(GuestAddress(addr), len)
                    .ok()
                    .map(|s| s.ptr_guard_mut().as_ptr());
                assert_eq!(ours, theirs, "addr {addr:#x} len {len}");
                assert_eq!(
                    map.contains(GuestAddress(addr), len),
                    mem.check_range(GuestAddress(addr), len),
                    "addr {addr:#x} len {len}"
                );
            }
            // Empty ranges: vm-memory calls any address memory.
            assert_eq!(
                map.contains(GuestAddress(addr), 0),
                mem.check_range(GuestAddress(addr), 0),
                "addr {addr:#x} len 0"
            );
        }
    }

    /// Two 4 KiB regions adjacent in guest memory (0..0x2000), two host mappings.
    pub(crate) fn adjacent_regions() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn a_range_across_adjacent_regions_is_memory_but_has_no_single_host_address() {
        let mem = adjacent_regions();
        let map = GuestMap::new(&mem);
        assert!(map.host(GuestAddress(0xff8), 16).is_none());
        assert!(map.contains(GuestAddress(0xff8), 16));
        // Ring fields across the border take vm-memory's path and still work.
        let d = Descriptor::new(0xabcd, 64, 2, 1);
        mem.write_obj(d, GuestAddress(0xff8)).unwrap();
        let r = map.read_desc(GuestAddress(0xff8)).unwrap();
        assert_eq!(
            (r.addr().0, r.len(), r.flags(), r.next()),
            (0xabcd, 64, 2, 1)
        );
        map.write_used(GuestAddress(0xffc), 9, 77).unwrap();
        let elem: u64 = mem.read_obj(GuestAddress(0xffc)).unwrap();
        assert_eq!(u64::from_le(elem), 77 << 32 | 9);
        // Written through vm-memory's path, read back whole.
        map.write(GuestAddress(0xffc), &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let mut back = [0u8; 8];
        mem.read_slice(&mut back, GuestAddress(0xffc)).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn descriptors_and_used_elements_read_and_write_like_vm_memory() {
        let mem = mem();
        let map = GuestMap::new(&mem);
        let d = Descriptor::new(0x1234_5678_9abc, 1500, 3, 7);
        // Aligned (the fast path) and misaligned (vm-memory's path).
        for at in [0x1010u64, 0x1013, 0x10000] {
            mem.write_obj(d, GuestAddress(at)).unwrap();
            let r = map.read_desc(GuestAddress(at)).unwrap();
            assert_eq!(
                (r.addr(), r.len(), r.flags(), r.next()),
                (d.addr(), d.len(), d.flags(), d.next())
            );
        }
        assert!(
            map.read_desc(GuestAddress(0x2ff8)).is_none(),
            "straddles the region's end"
        );
        for at in [0x1104u64, 0x1101] {
            map.write_used(GuestAddress(at), 5, 0xdead).unwrap();
            let elem: u64 = mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(u64::from_le(elem), 0xdead << 32 | 5);
        }
        assert!(map.write_used(GuestAddress(0x3000), 1, 1).is_err());
        assert!(
            map.write_used(GuestAddress(0x2ffc), 1, 1).is_err(),
            "straddles the region's end"
        );
        assert!(map.write(GuestAddress(0x2fff), &[0, 0]).is_err());
    }
}
