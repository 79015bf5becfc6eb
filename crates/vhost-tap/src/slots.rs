//! Frame buffers beside the ptr-ring, indexed by ring slot.
//!
//! Most frames are small. Each slot has a compact buffer of [`SMALL`] bytes
//! in one arena, the slots spaced by a cache line more than that, so that
//! consecutive slots start in different cache sets: 0.5 MiB per ring of 256
//! instead of 16.8 MiB with one 64 KiB buffer per slot. (A plain copy loop
//! shows no speed difference between the two layouts on our machines; the
//! gain is memory.) A large buffer, once allocated, stays with its slot:
//! after long frames went through the ring, a ring of 256 holds up to
//! 17.3 MiB, as the old layout did from the start.
//! A frame longer than `SMALL` lives in the slot's own large buffer,
//! allocated the first time the slot needs one; reads that may bring a long
//! frame put its tail into one shared overflow buffer, moved afterwards.
//!
//! Which buffer holds a slot's frame follows from the frame's length alone
//! (stored in the ring): `len <= SMALL` in the arena, else the large buffer.

use crate::datapath::BUF_SIZE;

/// Bytes of a slot's compact buffer: a virtio-net header and a 1500-byte
/// frame with room to spare.
pub const SMALL: usize = 2048;
/// Distance between two slots in the arena: one cache line more than
/// `SMALL`, so that slot starts rotate through the cache sets.
const STRIDE: usize = SMALL + 64;

pub struct Slots {
    arena: Box<[u8]>,
    big: Vec<Option<Box<[u8]>>>,
    overflow: Box<[u8]>,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots {
            arena: vec![0u8; n * STRIDE].into_boxed_slice(),
            big: (0..n).map(|_| None).collect(),
            overflow: vec![0u8; BUF_SIZE].into_boxed_slice(),
        }
    }

    /// Where a read into slot `i` goes: its compact buffer, then the
    /// overflow buffer; `BUF_SIZE` bytes in all (one spare byte beyond the
    /// largest frame, so a truncated read is recognisable).
    pub fn read_iovecs(&mut self, i: usize) -> [libc::iovec; 2] {
        let small = &mut self.arena[i * STRIDE..i * STRIDE + SMALL];
        [
            libc::iovec {
                iov_base: small.as_mut_ptr().cast(),
                iov_len: SMALL,
            },
            self.overflow_iovec(BUF_SIZE - SMALL),
        ]
    }

    /// After reading `n` bytes through `read_iovecs(i)`: a long frame is
    /// moved into the slot's large buffer.
    pub fn settle(&mut self, i: usize, n: usize) {
        if n <= SMALL {
            return;
        }
        let big = self.big[i].get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice());
        big[..SMALL].copy_from_slice(&self.arena[i * STRIDE..i * STRIDE + SMALL]);
        big[SMALL..n].copy_from_slice(&self.overflow[..n - SMALL]);
    }

    /// After a read of `n <= SMALL` bytes into slot `i`'s large buffer (read
    /// whole when a long frame was expected): move it to the compact buffer.
    pub fn demote(&mut self, i: usize, n: usize) {
        if let Some(big) = &self.big[i] {
            self.arena[i * STRIDE..i * STRIDE + n].copy_from_slice(&big[..n]);
        }
    }

    /// The first `len` bytes (at most `BUF_SIZE`) of the overflow buffer, for
    /// a read whose head goes elsewhere.
    pub fn overflow_iovec(&mut self, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: self.overflow.as_mut_ptr().cast(),
            iov_len: len.min(BUF_SIZE),
        }
    }

    /// Put an `n`-byte frame into slot `i` whose first `head` bytes are
    /// elsewhere (written into place by `fill_head`) and whose rest is at
    /// the start of the overflow buffer.
    pub fn assemble<E>(
        &mut self,
        i: usize,
        n: usize,
        head: usize,
        fill_head: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let dst: &mut [u8] = if n <= SMALL {
            &mut self.arena[i * STRIDE..i * STRIDE + SMALL]
        } else {
            self.big[i].get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice())
        };
        dst[head..n].copy_from_slice(&self.overflow[..n - head]);
        fill_head(&mut dst[..head])
    }

    /// The `len`-byte frame in slot `i`.
    pub fn frame(&mut self, i: usize, len: usize) -> &mut [u8] {
        if len <= SMALL {
            &mut self.arena[i * STRIDE..i * STRIDE + len]
        } else {
            // A long frame was settled or assembled into the large buffer.
            let big = self.big[i].get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice());
            &mut big[..len]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fill the buffers of `iov` with consecutive bytes of `data`, as readv would.
    fn scatter(iov: &[libc::iovec], data: &[u8]) {
        let mut off = 0;
        for v in iov {
            let n = v.iov_len.min(data.len() - off);
            // SAFETY: each iovec points into a live buffer of the `Slots`
            // under test with at least `iov_len >= n` bytes; nothing else
            // borrows it during the copy.
            unsafe { std::ptr::copy_nonoverlapping(data[off..].as_ptr(), v.iov_base.cast(), n) };
            off += n;
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn short_and_long_frames_read_back_whole() {
        let mut s = Slots::new(4);
        for (i, n) in [(0, 60), (1, SMALL), (2, SMALL + 1), (3, BUF_SIZE - 1)] {
            let data = pattern(n, i as u8);
            let iov = s.read_iovecs(i);
            assert_eq!(iov[0].iov_len + iov[1].iov_len, BUF_SIZE);
            scatter(&iov, &data);
            s.settle(i, n);
        }
        // The overflow buffer is shared: reading slot 3 last must not have
        // disturbed slot 2's settled frame.
        for (i, n) in [(0, 60), (1, SMALL), (2, SMALL + 1), (3, BUF_SIZE - 1)] {
            assert!(s.frame(i, n) == pattern(n, i as u8), "slot {i}, {n} bytes");
        }
    }

    #[test]
    fn a_short_frame_read_into_the_large_buffer_is_found_again() {
        let mut s = Slots::new(1);
        let data = pattern(90, 3);
        s.frame(0, BUF_SIZE)[..90].copy_from_slice(&data);
        s.demote(0, 90);
        assert!(s.frame(0, 90) == data);
    }

    #[test]
    fn slots_start_in_different_cache_sets() {
        let s = Slots::new(64);
        let sets: std::collections::HashSet<usize> =
            (0..64).map(|i| (i * STRIDE / 64) % 64).collect();
        assert_eq!(sets.len(), 64);
        assert!(s.arena.len() >= 64 * STRIDE);
    }

    #[test]
    fn assembled_frames_join_head_and_overflow() {
        let mut s = Slots::new(2);
        for (i, n, head) in [(0, 1000, 300), (1, 40_000, 1530)] {
            let data = pattern(n, 7);
            let tail = s.overflow_iovec(BUF_SIZE - head);
            scatter(&[tail], &data[head..]);
            s.assemble(i, n, head, |h| {
                h.copy_from_slice(&data[..head]);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert!(s.frame(i, n) == data, "slot {i}");
        }
    }
}
