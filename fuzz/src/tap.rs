//! A TAP that answers from a script, behind the daemon's `TapIo` seam (as
//! `datapath/tests.rs` does), and that checks the iovecs it is handed.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use vhost_tap::datapath::TapIo;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// The kernel's limit on iovecs per `readv`/`writev` (`UIO_MAXIOV`).
const UIO_MAXIOV: usize = 1024;

/// What the TAP does on its next read or write.
#[derive(Clone, Debug)]
pub enum Step {
    /// Read: hand out this frame (virtio-net header first). Write: accept.
    Frame(Vec<u8>),
    /// Fail with this errno. On a read, EFAULT means the kernel took a frame
    /// it could not copy out (it is lost, and the daemon must count it).
    Errno(i32),
}

/// The errnos a TAP read or write may return.
pub const ERRNOS: [i32; 7] = [
    libc::EAGAIN,
    libc::EINTR,
    libc::EINVAL,
    libc::EFAULT,
    libc::ENOBUFS,
    libc::EIO,
    libc::EBADFD,
];

/// What the TAP handed out, in order.
#[derive(Clone, Debug)]
pub enum Handed {
    Frame(Vec<u8>),
    /// A read that failed with EFAULT: one frame lost.
    Fault,
}

#[derive(Default)]
pub struct ScriptedTap {
    reads: Mutex<VecDeque<Step>>,
    writes: Mutex<VecDeque<Step>>,
    /// Reads that returned a frame or EFAULT, in order.
    pub handed: Mutex<Vec<Handed>>,
    /// Frames written (accepted), in order.
    pub written: Mutex<Vec<Vec<u8>>>,
    /// Host address ranges of guest memory mappings: an iovec that starts
    /// in one must end in it.
    guest: Mutex<Vec<(usize, usize, usize)>>,
}

impl ScriptedTap {
    pub fn push_read(&self, s: Step) {
        self.reads.lock().unwrap().push_back(s);
    }

    pub fn push_write(&self, s: Step) {
        self.writes.lock().unwrap().push_back(s);
    }

    /// Steps not read yet.
    pub fn unread(&self) -> usize {
        self.reads.lock().unwrap().len()
    }

    /// Forget the write script (what is left of it).
    pub fn accept_writes(&self) {
        self.writes.lock().unwrap().clear();
    }

    /// Frames and faults handed out so far.
    pub fn handed_count(&self) -> usize {
        self.handed.lock().unwrap().len()
    }

    /// Remember the host mappings of `mem` as guest memory number `id`
    /// (replacing what that id had), for the iovec checks.
    pub fn set_guest(&self, id: usize, mem: &GuestMemoryMmap<()>) {
        let mut g = self.guest.lock().unwrap();
        g.retain(|&(i, _, _)| i != id);
        for r in mem.iter() {
            if let Ok(p) = r.get_host_address(MemoryRegionAddress(0)) {
                g.push((id, p as usize, p as usize + r.len() as usize));
            }
        }
    }

    /// Each iovec lies inside one guest mapping, or starts outside all of
    /// them (then it is the daemon's own buffer, which ASan checks).
    fn check_iovecs(&self, iov: &[libc::iovec]) {
        let g = self.guest.lock().unwrap();
        for v in iov {
            let (base, len) = (v.iov_base as usize, v.iov_len);
            assert!(
                !v.iov_base.is_null() || len == 0,
                "null iovec of {len} bytes"
            );
            if let Some(&(_, s, e)) = g.iter().find(|&&(_, s, e)| s <= base && base < e) {
                assert!(
                    base.checked_add(len).is_some_and(|end| end <= e),
                    "iovec {base:#x}+{len} runs past the end of the guest mapping {s:#x}..{e:#x}"
                );
            }
        }
    }
}

impl TapIo for ScriptedTap {
    unsafe fn readv(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.check_iovecs(iov);
        if iov.len() > UIO_MAXIOV {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let step = self.reads.lock().unwrap().pop_front();
        match step {
            None => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            Some(Step::Errno(e)) => {
                if e == libc::EFAULT {
                    self.handed.lock().unwrap().push(Handed::Fault);
                }
                Err(io::Error::from_raw_os_error(e))
            }
            Some(Step::Frame(data)) => {
                // As the kernel does: scatter, truncating to the room given.
                let mut off = 0;
                for v in iov {
                    let n = v.iov_len.min(data.len() - off);
                    // SAFETY: the caller's contract: each iovec is valid for
                    // writes of `iov_len >= n` bytes during this call.
                    unsafe {
                        std::ptr::copy_nonoverlapping(data[off..].as_ptr(), v.iov_base.cast(), n)
                    };
                    off += n;
                }
                self.handed.lock().unwrap().push(Handed::Frame(data));
                Ok(off)
            }
        }
    }

    unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.check_iovecs(iov);
        if iov.len() > UIO_MAXIOV {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if let Some(Step::Errno(e)) = self.writes.lock().unwrap().pop_front() {
            return Err(io::Error::from_raw_os_error(e));
        }
        let mut frame = Vec::new();
        for v in iov {
            // SAFETY: the caller's contract: each iovec is valid for reads
            // of `iov_len` bytes during this call.
            frame.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            });
        }
        let n = frame.len();
        self.written.lock().unwrap().push(frame);
        Ok(n)
    }

    fn name(&self) -> &str {
        "fuzz"
    }
}
