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

use super::vnet::BUF_SIZE;

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

    /// Where a read into slot `i` goes (the first `count` iovecs),
    /// `BUF_SIZE` bytes in all (one spare byte beyond the largest frame, so
    /// a truncated read is recognisable): its compact buffer then the
    /// overflow buffer, or, when the caller expects a long frame (the last
    /// one was longer than [`SMALL`]), straight into its large buffer, so
    /// that a run of long frames is not moved after every read.
    pub fn read_iovecs(&mut self, i: usize, expect_long: bool) -> ([libc::iovec; 2], usize) {
        if expect_long {
            let whole = libc::iovec {
                iov_base: self.large(i).as_mut_ptr().cast(),
                iov_len: BUF_SIZE,
            };
            return ([whole, whole], 1);
        }
        let small = &mut self.arena[i * STRIDE..i * STRIDE + SMALL];
        let small = libc::iovec {
            iov_base: small.as_mut_ptr().cast(),
            iov_len: SMALL,
        };
        ([small, self.overflow_iovec(BUF_SIZE - SMALL)], 2)
    }

    /// After reading `n` bytes through `read_iovecs(i, expect_long)`: put
    /// the frame where [`Slots::frame`] looks for it (a long one in the large
    /// buffer, a short one in the compact buffer).
    pub fn settle(&mut self, i: usize, n: usize, expect_long: bool) {
        let long = n > SMALL;
        match (expect_long, long) {
            (false, true) => {
                let big = self.big[i].get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice());
                big[..SMALL].copy_from_slice(&self.arena[i * STRIDE..i * STRIDE + SMALL]);
                big[SMALL..n].copy_from_slice(&self.overflow[..n - SMALL]);
            }
            (true, false) => {
                if let Some(big) = &self.big[i] {
                    self.arena[i * STRIDE..i * STRIDE + n].copy_from_slice(&big[..n]);
                }
            }
            _ => {}
        }
    }

    /// Slot `i`'s large buffer, allocated on first use.
    fn large(&mut self, i: usize) -> &mut [u8] {
        self.big[i].get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice())
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
            &mut self.large(i)[..len]
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
        // short, long (through the overflow), short (read into the large
        // buffer, as right after a long one), long (through the overflow again).
        let frames = [(0, 60), (1, SMALL + 1), (2, SMALL), (3, BUF_SIZE - 1)];
        // The caller expects a long frame right after one.
        let mut expect_long = false;
        for (i, n) in frames {
            let data = pattern(n, i as u8);
            let (iov, count) = s.read_iovecs(i, expect_long);
            let total: usize = iov[..count].iter().map(|v| v.iov_len).sum();
            assert_eq!(total, BUF_SIZE);
            scatter(&iov[..count], &data);
            s.settle(i, n, expect_long);
            expect_long = n > SMALL;
        }
        // The overflow buffer is shared: reading slot 3 last must not have
        // disturbed slot 1's settled frame.
        for (i, n) in frames {
            assert!(s.frame(i, n) == pattern(n, i as u8), "slot {i}, {n} bytes");
        }
    }

    #[test]
    fn a_short_frame_read_into_the_large_buffer_is_found_again() {
        let mut s = Slots::new(2);
        let long = pattern(SMALL + 100, 1);
        let (iov, count) = s.read_iovecs(0, false);
        scatter(&iov[..count], &long);
        s.settle(0, long.len(), false);
        // Right after a long frame the read goes whole into the large buffer.
        let data = pattern(90, 3);
        let (iov, count) = s.read_iovecs(1, true);
        assert_eq!(count, 1);
        scatter(&iov[..count], &data);
        s.settle(1, 90, true);
        assert!(s.frame(1, 90) == data);
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
