//! Descriptor chains (`guest/chain.rs`), guest memory lookups
//! (`guest/map.rs`) and the iovecs and copies over checked chains
//! (`guest/iovecs.rs`), over guest memory of up to 10 regions the input
//! lays out and fills, with descriptor tables and indirect tables it writes.
//!
//! Checked:
//! - `GuestMap` answers as vm-memory does (host addresses, ranges,
//!   descriptor reads, used-element writes), whatever region it hit last;
//! - `walk` agrees with a plain walker written from the virtio spec
//!   (reading through vm-memory), and a chain it accepts has only buffers
//!   inside guest memory, non-empty, of the queue's direction, with the
//!   total it reports, occupying 1 to `size` table descriptors;
//! - the iovecs of an accepted chain cover exactly its buffers, each inside
//!   one host mapping, and read what vm-memory reads there;
//! - copies into and out of accepted chains round-trip (when their buffers
//!   do not overlap) and write exactly where the buffers are.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_tap::guest::chain::{walk, Chain, Direction};
use vhost_tap::guest::iovecs::{guest_iovecs, read_chains, write_chains, write_chains_at};
use vhost_tap::guest::map::GuestMap;
use vhost_tap::guest::MemError;
use vhost_tap_fuzz::input::Input;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Regions a `GuestMap` resolves itself (`guest/map.rs`: vhost-user
/// without `CONFIGURE_MEM_SLOTS` sends at most 8).
const MAP_REGIONS: usize = 8;

/// The regions as laid out: (guest start, length), sorted, disjoint.
struct Layout(Vec<(u64, u64)>);

impl Layout {
    /// Whether `[addr, addr + len)` is covered by regions without a gap.
    fn covers(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        for &(s, l) in &self.0 {
            if at >= end {
                break;
            }
            if s <= at && at < s + l {
                at = s + l;
            }
        }
        at >= end
    }

    /// A guest address chosen by the input: inside a region, or anywhere.
    fn addr(&self, i: &mut Input) -> u64 {
        let mode = i.u8();
        if mode % 4 == 3 {
            return i.u64();
        }
        let (s, l) = self.0[usize::from(mode) % self.0.len()];
        s + u64::from(i.u16()) % l
    }
}

/// Lay out 1 to 10 regions: each after the previous one (adjacent, or
/// after a gap), the first anywhere (the top of the address space too).
fn layout(i: &mut Input) -> Option<(GuestMemoryMmap<()>, Layout)> {
    let n = 1 + i.below(10);
    let mut ranges = Vec::with_capacity(n);
    let mut next = match i.u8() % 4 {
        0 => 0,
        1 => u64::from(i.u32()),
        2 => u64::MAX - 0x10_0000 + u64::from(i.u16()),
        _ => i.u64(),
    };
    for _ in 0..n {
        let len = 1 + u64::from(i.u16() % 0x4000);
        let gap = match i.u8() % 4 {
            0 | 1 => 0,
            2 => u64::from(i.u8()),
            _ => u64::from(i.u32()),
        };
        let start = next.checked_add(gap)?;
        next = start.checked_add(len)?;
        ranges.push((start, len));
    }
    let regions: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&regions).ok()?;
    Some((mem, Layout(ranges)))
}

fn write_desc(mem: &GuestMemoryMmap<()>, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    // Partly outside memory is fine: then the walker must say so.
    let _ = mem.write_slice(&raw, GuestAddress(at));
}

/// Descriptors from the input: mostly plausible (inside memory, small,
/// with the flags that matter), sometimes raw.
fn write_table(i: &mut Input, mem: &GuestMemoryMmap<()>, lay: &Layout, table: u64, n: usize) {
    for k in 0..n {
        let addr = lay.addr(i);
        let f = i.u8();
        let len = if f & 0x80 != 0 {
            i.u32()
        } else {
            u32::from(i.u16() % 0x2000)
        };
        let flags = if f & 0x40 != 0 {
            i.u16()
        } else {
            let mut fl = 0;
            if f & 1 != 0 {
                fl |= F_NEXT;
            }
            if f & 2 != 0 {
                fl |= F_WRITE;
            }
            if f & 4 != 0 {
                fl |= F_INDIRECT;
            }
            fl
        };
        let next = if f & 0x20 != 0 {
            i.u16()
        } else {
            u16::from(i.u8() % 32)
        };
        write_desc(
            mem,
            table.wrapping_add(16 * k as u64),
            addr,
            len,
            flags,
            next,
        );
    }
}

/// The virtio spec's rules (2.7.5, 2.7.5.3), walked plainly through
/// vm-memory: the buffers of the chain, or `None` when it is malformed.
fn reference(
    mem: &GuestMemoryMmap<()>,
    table: u64,
    size: u16,
    head: u16,
    writable: bool,
) -> Option<Vec<(u64, u32)>> {
    let in_mem =
        |a: u64, l: u64| a.checked_add(l).is_some() && mem.check_range(GuestAddress(a), l as usize);
    let (mut tbl, mut n, mut idx, mut in_indirect) = (table, u32::from(size), head, false);
    let (mut seen, mut total) = (0u32, 0u64);
    let mut segs = Vec::new();
    loop {
        if u32::from(idx) >= n {
            return None;
        }
        seen += 1;
        if seen > n {
            return None; // a loop
        }
        let at = tbl.checked_add(u64::from(idx) * 16)?;
        let mut d = [0u8; 16];
        mem.read_slice(&mut d, GuestAddress(at)).ok()?;
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let next = u16::from_le_bytes([d[14], d[15]]);
        if flags & F_INDIRECT != 0 {
            let entries = len / 16;
            if in_indirect
                || flags & F_NEXT != 0
                || len == 0
                || len % 16 != 0
                || entries > u32::from(u16::MAX)
                || !in_mem(addr, u64::from(len))
            {
                return None;
            }
            (tbl, n, idx, seen, in_indirect) = (addr, entries, 0, 0, true);
            continue;
        }
        if len == 0 || (flags & F_WRITE != 0) != writable || !in_mem(addr, u64::from(len)) {
            return None;
        }
        total += u64::from(len);
        if total > u64::from(u32::MAX) {
            return None;
        }
        segs.push((addr, len));
        if flags & F_NEXT == 0 {
            return Some(segs);
        }
        idx = next;
    }
}

/// Host mappings of the regions: (host start, host end).
fn host_ranges(mem: &GuestMemoryMmap<()>) -> Vec<(usize, usize)> {
    mem.iter()
        .map(|r| {
            let p = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            (p, p + r.len() as usize)
        })
        .collect()
}

/// `GuestMap` against vm-memory at addresses the input picks.
fn check_map(i: &mut Input, mem: &GuestMemoryMmap<()>, map: &GuestMap<'_>, lay: &Layout) {
    for _ in 0..i.below(8) {
        let addr = lay.addr(i);
        let len = match i.u8() % 4 {
            0 => 0,
            1 => 16,
            2 => usize::from(i.u16()),
            _ => i.u64() as usize,
        };
        let ours = map.host(GuestAddress(addr), len).map(|p| p.as_ptr());
        let theirs = mem
            .get_slice(GuestAddress(addr), len)
            .ok()
            .filter(|_| len > 0)
            .map(|s| s.ptr_guard_mut().as_ptr());
        if len > 0 {
            if lay.0.len() <= MAP_REGIONS {
                assert_eq!(ours, theirs, "host({addr:#x}, {len})");
            } else {
                // More regions than the map holds: everything goes through vm-memory.
                assert_eq!(
                    ours,
                    None,
                    "host({addr:#x}, {len}) with {} regions",
                    lay.0.len()
                );
            }
            assert_eq!(
                map.contains(GuestAddress(addr), len),
                mem.check_range(GuestAddress(addr), len),
                "contains({addr:#x}, {len})"
            );
        }
        let d = map.read_desc(GuestAddress(addr));
        let mut raw = [0u8; 16];
        let r = mem.read_slice(&mut raw, GuestAddress(addr));
        assert_eq!(d.is_some(), r.is_ok(), "read_desc({addr:#x})");
        if let Some(d) = d {
            assert_eq!(
                (d.addr().0, d.len(), d.flags(), d.next()),
                (
                    u64::from_le_bytes(raw[..8].try_into().unwrap()),
                    u32::from_le_bytes(raw[8..12].try_into().unwrap()),
                    u16::from_le_bytes([raw[12], raw[13]]),
                    u16::from_le_bytes([raw[14], raw[15]]),
                ),
                "read_desc({addr:#x})"
            );
        }
        if i.bool() {
            let (id, l) = (i.u32(), i.u32());
            let wrote = map.write_used(GuestAddress(addr), id, l);
            assert_eq!(
                wrote.is_ok(),
                mem.check_range(GuestAddress(addr), 8),
                "write_used({addr:#x})"
            );
            if wrote.is_ok() {
                let mut back = [0u8; 8];
                mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
                assert_eq!(back[..4], id.to_le_bytes());
                assert_eq!(back[4..], l.to_le_bytes());
            }
        }
    }
}

/// What must hold of a chain `walk` accepted.
fn check_chain(
    mem: &GuestMemoryMmap<()>,
    map: &GuestMap<'_>,
    lay: &Layout,
    c: &Chain,
    size: u16,
    want: &[(u64, u32)],
) {
    let got: Vec<(u64, u32)> = c.segments.iter().map(|s| (s.addr.0, s.len)).collect();
    assert_eq!(
        got, want,
        "walk and the spec's walker disagree on the buffers"
    );
    let total: u64 = got.iter().map(|&(_, l)| u64::from(l)).sum();
    assert_eq!(u64::from(c.total_len), total);
    for &(a, l) in &got {
        assert!(l > 0);
        assert!(
            lay.covers(a, u64::from(l)),
            "buffer {a:#x}+{l} outside guest memory"
        );
    }
    assert!(
        c.descriptors >= 1 && c.descriptors <= size && usize::from(c.descriptors) <= got.len(),
        "{} table descriptors for {} buffers in a table of {size}",
        c.descriptors,
        got.len()
    );

    // The iovecs: the buffers' bytes, each iovec inside one mapping.
    let hosts = host_ranges(mem);
    let mut iov = Vec::new();
    guest_iovecs(map, std::slice::from_ref(c), &mut iov).expect("iovecs of a checked chain");
    let mut via_iov = Vec::new();
    for v in &iov {
        let (b, l) = (v.iov_base as usize, v.iov_len);
        assert!(
            hosts.iter().any(|&(s, e)| s <= b && b + l <= e),
            "iovec {b:#x}+{l} not inside one guest mapping"
        );
        // SAFETY: checked just above to lie inside a live mapping of `mem`.
        via_iov.extend_from_slice(unsafe { std::slice::from_raw_parts(b as *const u8, l) });
    }
    let mut via_mem = Vec::new();
    for &(a, l) in &got {
        let mut b = vec![0u8; l as usize];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        via_mem.extend(b);
    }
    assert_eq!(
        via_iov, via_mem,
        "the iovecs read other bytes than the buffers"
    );
}

/// Copies into and out of accepted chains.
fn check_copies(i: &mut Input, mem: &GuestMemoryMmap<()>, map: &GuestMap<'_>, chains: &[Chain]) {
    let segs: Vec<(u64, u64)> = chains
        .iter()
        .flat_map(|c| &c.segments)
        .map(|s| (s.addr.0, s.addr.0 + u64::from(s.len)))
        .collect();
    let overlap = segs
        .iter()
        .enumerate()
        .any(|(k, a)| segs[k + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
    let cap: usize = chains.iter().map(|c| c.total_len as usize).sum();
    let len = i.below(cap.min(0x4_0000) + 1);
    let seed = i.u8();
    let frame: Vec<u8> = (0..len)
        .map(|k| (k as u8).wrapping_mul(13) ^ seed)
        .collect();
    let mut parts = Vec::new();
    write_chains(map, chains, &frame, |head, n| {
        parts.push((head, n));
        Ok::<(), MemError>(())
    })
    .expect("write into checked chains");
    assert_eq!(parts.len(), chains.len());
    assert_eq!(parts.iter().map(|&(_, n)| n as usize).sum::<usize>(), len);
    for (p, c) in parts.iter().zip(chains) {
        assert_eq!(p.0, c.head);
        assert!(p.1 <= c.total_len);
    }
    if !overlap {
        let mut back = vec![0u8; len];
        read_chains(map, chains, &mut back).unwrap();
        assert!(
            back == frame,
            "read_chains did not read back what write_chains wrote"
        );
        // A patch at an offset lands there (as num_buffers does).
        let at = i.below(len.max(1));
        let patch = [0xa5u8, 0x5a];
        let n = patch.len().min(len - at.min(len));
        write_chains_at(map, chains, at, &patch[..n]).unwrap();
        read_chains(map, chains, &mut back).unwrap();
        let mut want = frame.clone();
        want[at..at + n].copy_from_slice(&patch[..n]);
        assert!(back == want, "write_chains_at wrote elsewhere");
    }
    let _ = mem;
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let Some((mem, lay)) = layout(&mut i) else {
        return;
    };
    // Fill each region with a pattern from the input.
    let fill = i.blob(256);
    if !fill.is_empty() {
        for &(s, l) in &lay.0 {
            let bytes: Vec<u8> = fill.iter().copied().cycle().take(l as usize).collect();
            mem.write_slice(&bytes, GuestAddress(s)).unwrap();
        }
    }
    let table = lay.addr(&mut i);
    let size = if i.bool() {
        i.u16()
    } else {
        1 + i.below(64) as u16
    };
    let n = i.below(33);
    write_table(&mut i, &mem, &lay, table, n);
    if i.bool() {
        let ind = lay.addr(&mut i);
        let n = i.below(17);
        write_table(&mut i, &mem, &lay, ind, n);
    }

    let map = GuestMap::new(&mem);
    check_map(&mut i, &mem, &map, &lay);
    let mut accepted = Vec::new();
    for _ in 0..1 + i.below(8) {
        let head = i.u16() % size.saturating_add(2).max(1);
        let dir = if i.bool() {
            Direction::Writable
        } else {
            Direction::Readable
        };
        let mut c = Chain::default();
        let r = walk(&map, GuestAddress(table), size, head, dir, &mut c);
        let want = reference(&mem, table, size, head, dir == Direction::Writable);
        match (&r, &want) {
            (Ok(()), Some(w)) => {
                check_chain(&mem, &map, &lay, &c, size, w);
                accepted.push(c);
            }
            (Err(_), None) => {}
            _ => panic!("walk says {r:?}, the spec's walker {want:?}"),
        }
        check_map(&mut i, &mem, &map, &lay);
    }
    if !accepted.is_empty() {
        check_copies(&mut i, &mem, &map, &accepted);
    }
});
