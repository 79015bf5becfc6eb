//! The TAP queue as the data path sees it: one frame per `readv`, one per
//! `writev`. A trait, so that tests can put a TAP there that fails on cue
//! (EFAULT, EINVAL, ENOBUFS, EAGAIN) and check what the data path does.

use std::io;
use std::sync::Arc;

/// A TAP queue fd, or something that behaves like one.
pub trait TapIo: Send + Sync {
    /// Read one frame (virtio-net header first) into the buffers of `iov`.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for writes of its length for
    /// the whole call, that nothing else reads or writes meanwhile.
    unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize>;

    /// Write one frame (virtio-net header first) gathered from `iov`.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for reads of its length for
    /// the whole call.
    unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize>;

    /// The TAP's name, for log lines.
    fn name(&self) -> &str;
}

/// Queue `index` of a real TAP.
pub struct TapQueue {
    tap: Arc<tap::Tap>,
    index: usize,
}

impl TapQueue {
    pub fn new(tap: Arc<tap::Tap>, index: usize) -> TapQueue {
        TapQueue { tap, index }
    }
}

impl TapIo for TapQueue {
    unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller upholds `readv_raw`'s contract, which is ours.
        unsafe { self.tap.queue(self.index).readv_raw(iov) }
    }

    unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller upholds `writev_raw`'s contract, which is ours.
        unsafe { self.tap.queue(self.index).writev_raw(iov) }
    }

    fn name(&self) -> &str {
        self.tap.name()
    }
}
