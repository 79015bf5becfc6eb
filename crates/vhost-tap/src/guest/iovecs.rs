//! Scatter-gather over checked descriptor chains: host `iovec`s for
//! `readv`/`writev`, and copies into and out of a chain's buffers.
//!
//! Every function here takes chains that [`super::chain::walk`] checked, so
//! a failure means the memory map changed under us (a [`MemError`]), not a
//! malformed chain.

use vm_memory::{Address, Bytes, GuestMemoryBackend};

use super::chain::Chain;
use super::map::GuestMap;
use super::MemError;

/// `iovec`s pointing into guest memory, kept between frames to avoid an
/// allocation per frame.
#[derive(Default)]
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the raw pointers in the vector are only dereferenced by the kernel
// inside the `writev`/`readv` call that follows their construction, while
// the guest memory guard that keeps the mapping alive is held; the vector is
// cleared before the next use, so no pointer crosses threads in a usable state.
unsafe impl Send for IoVecs {}

/// Append host iovecs covering the segments of `chains` in guest memory,
/// merging neighbours: drivers usually put the header right before the
/// frame, and one iovec instead of two saves the kernel an iovec import.
pub fn guest_iovecs(
    map: &GuestMap<'_>,
    chains: &[Chain],
    iov: &mut Vec<libc::iovec>,
) -> Result<(), MemError> {
    let mut add = |base: *mut u8, len: usize| match iov.last_mut() {
        Some(prev) if (prev.iov_base as usize).wrapping_add(prev.iov_len) == base as usize => {
            prev.iov_len += len;
        }
        _ => iov.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }),
    };
    for seg in chains.iter().flat_map(|c| &c.segments) {
        let len = seg.len as usize;
        if let Some(p) = map.host(seg.addr, len) {
            add(p.as_ptr(), len);
            continue;
        }
        // Across regions: one iovec per region.
        for s in map.mem().get_slices(seg.addr, len) {
            let s = s.map_err(|source| MemError::Unmapped {
                addr: seg.addr.raw_value(),
                len,
                source,
            })?;
            add(s.ptr_guard_mut().as_ptr(), s.len());
        }
    }
    Ok(())
}

/// Copy the first `out.len()` bytes held by `chains` into `out`.
pub fn read_chains(map: &GuestMap<'_>, chains: &[Chain], out: &mut [u8]) -> Result<(), MemError> {
    let mut off = 0usize;
    for seg in chains.iter().flat_map(|c| &c.segments) {
        if off == out.len() {
            break;
        }
        let n = (seg.len as usize).min(out.len() - off);
        map.mem()
            .read_slice(&mut out[off..off + n], seg.addr)
            .map_err(|source| MemError::Read {
                addr: seg.addr.raw_value(),
                len: n,
                source,
            })?;
        off += n;
    }
    Ok(())
}

/// Write `bytes` at offset `at` of the data held by `chains` (which may
/// split it between segments).
pub fn write_chains_at(
    map: &GuestMap<'_>,
    chains: &[Chain],
    mut at: usize,
    mut bytes: &[u8],
) -> Result<(), MemError> {
    for seg in chains.iter().flat_map(|c| &c.segments) {
        if bytes.is_empty() {
            break;
        }
        let len = seg.len as usize;
        if at >= len {
            at -= len;
            continue;
        }
        let n = (len - at).min(bytes.len());
        map.write(seg.addr.unchecked_add(at as u64), &bytes[..n])?;
        bytes = &bytes[n..];
        at = 0;
    }
    Ok(())
}

/// Copy `frame` into the buffers of `chains`, in order; returns how many
/// bytes went into each chain through `per_chain` (head, bytes). The chains
/// must hold at least `frame.len()` bytes.
pub fn write_chains<E: From<MemError>>(
    map: &GuestMap<'_>,
    chains: &[Chain],
    frame: &[u8],
    mut per_chain: impl FnMut(u16, u32) -> Result<(), E>,
) -> Result<(), E> {
    let len = frame.len();
    let mut off = 0usize;
    for c in chains {
        let start = off;
        for seg in &c.segments {
            if off == len {
                break;
            }
            let n = (seg.len as usize).min(len - off);
            // walk() checked the range; a failure here means the memory map changed.
            map.write(seg.addr, &frame[off..off + n])?;
            off += n;
        }
        per_chain(c.head, (off - start) as u32)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::chain::Segment;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn host(mem: &GuestMemoryMmap<()>, addr: u64) -> usize {
        mem.get_host_address(GuestAddress(addr)).unwrap() as usize
    }

    #[test]
    fn guest_iovecs_split_a_buffer_across_regions_and_merge_neighbours() {
        let mem = crate::guest::map::tests::adjacent_regions();
        let map = GuestMap::new(&mem);
        let chain = Chain {
            head: 0,
            // Header right before the frame (merged), then a buffer across
            // the regions' border (split).
            segments: vec![
                Segment {
                    addr: GuestAddress(0x100),
                    len: 12,
                },
                Segment {
                    addr: GuestAddress(0x10c),
                    len: 64,
                },
                Segment {
                    addr: GuestAddress(0xf00),
                    len: 0x200,
                },
            ],
            total_len: 12 + 64 + 0x200,
            descriptors: 3,
        };
        let mut iov = Vec::new();
        guest_iovecs(&map, std::slice::from_ref(&chain), &mut iov).unwrap();
        let got: Vec<(usize, usize)> = iov
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect();
        let mut want = vec![(host(&mem, 0x100), 76), (host(&mem, 0xf00), 0x100)];
        let second = (host(&mem, 0x1000), 0x100);
        // The two mappings may happen to be adjacent in our address space too.
        if want[1].0 + 0x100 == second.0 {
            want[1].1 += 0x100;
        } else {
            want.push(second);
        }
        assert_eq!(got, want);

        // A buffer outside guest memory is refused, not turned into an iovec.
        let bad = Chain {
            head: 1,
            segments: vec![Segment {
                addr: GuestAddress(0x1f00),
                len: 0x200,
            }],
            total_len: 0x200,
            descriptors: 1,
        };
        iov.clear();
        assert!(matches!(
            guest_iovecs(&map, std::slice::from_ref(&bad), &mut iov),
            Err(MemError::Unmapped { addr: 0x1f00, .. })
        ));
    }

    #[test]
    fn chains_are_written_and_read_back_across_segments() {
        let mem = crate::guest::map::tests::adjacent_regions();
        let map = GuestMap::new(&mem);
        let seg = |addr, len| Segment {
            addr: GuestAddress(addr),
            len,
        };
        let chains = [
            Chain {
                head: 3,
                segments: vec![seg(0x100, 5), seg(0x200, 7)],
                total_len: 12,
                descriptors: 2,
            },
            Chain {
                head: 9,
                segments: vec![seg(0xffc, 8)],
                total_len: 8,
                descriptors: 1,
            },
        ];
        let frame: Vec<u8> = (1..=18).collect();
        let mut parts = Vec::new();
        write_chains(&map, &chains, &frame, |head, n| {
            parts.push((head, n));
            Ok::<(), MemError>(())
        })
        .unwrap();
        assert_eq!(parts, vec![(3, 12), (9, 6)]);
        let mut back = vec![0u8; 18];
        read_chains(&map, &chains, &mut back).unwrap();
        assert_eq!(back, frame);
        // num_buffers-style patch at offset 10, across the first chain's segments.
        write_chains_at(&map, &chains, 10, &[0xaa, 0xbb, 0xcc]).unwrap();
        read_chains(&map, &chains, &mut back).unwrap();
        assert_eq!(&back[9..14], &[10, 0xaa, 0xbb, 0xcc, 14]);
    }
}
