//! A frontend that shrinks the file behind a guest memory region while the
//! daemon uses it: the SIGBUS is contained to that connection.
//!
//! Guest memory is the frontend's file (a memfd, a hugetlbfs or tmpfs file)
//! mapped shared. `SET_MEM_TABLE` is checked against the file's size
//! (`relay/check.rs`), but the frontend can `ftruncate` it later, and the
//! next access past the new end raises SIGBUS, whose default action ends
//! the whole daemon — every device. Sealing cannot be required: QEMU seals
//! its memfds, but hugetlbfs and tmpfs files (QEMU's `memory-backend-file`,
//! DPDK) cannot be sealed.
//!
//! So every mapped region is registered here ([`Registration`]) with its
//! host range, and a SIGBUS handler looks the faulting address up: inside
//! a registered region, it maps anonymous memory over the whole region
//! (`MAP_FIXED`: the region stays mapped, its content now reads as zeros and
//! writes go nowhere the frontend sees), marks the region faulted and
//! returns, so the faulting access is retried and completes. The backend
//! sees the mark before its next pass, logs one line and stops every queue
//! of that connection until the frontend sends a new memory table or
//! reconnects. An address outside every registered region is not ours: the
//! previous action is put back and the fault repeats under it (a crash, as
//! before).
//!
//! Why the handler cannot map over memory that is no longer the region: a
//! thread faults only while it accesses the region, so it holds a guard of
//! the guest memory that keeps the mapping alive (vm-memory unmaps when the
//! last `Arc` of the region goes); and a registration is removed before the
//! memory it registered can be unmapped (it holds a clone, dropped after
//! the removal), so a stale range is never looked up after its address
//! space is reused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use log::warn;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Regions registered at most: 8 per connection (vhost-user without
/// `CONFIGURE_MEM_SLOTS`) for 1000 devices, twice over while a memory table
/// is replaced.
const SLOTS: usize = 16384;

/// One registered region. `end == 0`: free (or being filled).
struct Slot {
    claimed: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // the array initialiser: each slot is its own.
const FREE: Slot = Slot {
    claimed: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// The SIGBUS action before ours, put back for a fault that is not ours.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();
static INSTALL: Once = Once::new();

/// The regions of one memory table, registered while this lives.
pub struct Registration {
    slots: Vec<usize>,
    /// Keeps the regions mapped until after they are unregistered (see the
    /// module docs).
    _mem: GuestMemoryMmap<()>,
}

impl Registration {
    /// Register every region of `mem` (and install the handler, once).
    pub fn new(mem: &GuestMemoryMmap<()>) -> Registration {
        INSTALL.call_once(install);
        let mut slots = Vec::new();
        for r in mem.iter() {
            let Ok(host) = r.get_host_address(MemoryRegionAddress(0)) else {
                continue;
            };
            let (start, len) = (host as usize, r.len() as usize);
            let Some(end) = start.checked_add(len).filter(|_| len > 0) else {
                continue;
            };
            match claim(start, end) {
                Some(i) => slots.push(i),
                None => warn!(
                    "guest memory at {start:#x} ({len} bytes): more than {SLOTS} regions registered; a frontend that shrinks its file would end the daemon"
                ),
            }
        }
        Registration {
            slots,
            _mem: mem.clone(),
        }
    }

    /// The host range of a region the handler found faulted, if any.
    pub fn faulted(&self) -> Option<(usize, usize)> {
        self.slots.iter().map(|&i| &TABLE[i]).find_map(|s| {
            // Acquire: pairs with the handler's Release store, after its remap.
            s.faulted.load(Ordering::Acquire).then(|| {
                let start = s.start.load(Ordering::Relaxed);
                (start, s.end.load(Ordering::Relaxed) - start)
            })
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for &i in &self.slots {
            let s = &TABLE[i];
            // Release: the handler's Acquire load of `end` sees 0 from now
            // on; `start` is cleared after, so a handler that read a
            // non-zero `end` reads its matching `start` (see `lookup`).
            s.end.store(0, Ordering::Release);
            s.start.store(0, Ordering::Release);
            s.faulted.store(false, Ordering::Relaxed);
            // Release: pairs with the Acquire of `claim`'s compare_exchange.
            s.claimed.store(false, Ordering::Release);
        }
        // `_mem` drops after this: the mapping may go only once unregistered.
    }
}

/// Take a free slot and fill it with `[start, end)`.
fn claim(start: usize, end: usize) -> Option<usize> {
    for (i, s) in TABLE.iter().enumerate() {
        // Acquire: pairs with the Release store of a previous owner's drop.
        if s.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            s.faulted.store(false, Ordering::Relaxed);
            s.start.store(start, Ordering::Relaxed);
            // Release: publishes `start` (and `faulted`) with `end`; pairs
            // with the Acquire loads of `end` in `lookup`.
            s.end.store(end, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// The registered region holding `addr`, as (slot, start, end). Only atomic
/// loads: callable from the signal handler.
fn lookup(addr: usize) -> Option<(usize, usize, usize)> {
    for (i, s) in TABLE.iter().enumerate() {
        // Acquire: pairs with the Release store in `claim`.
        let end = s.end.load(Ordering::Acquire);
        if end == 0 || addr >= end {
            continue;
        }
        let start = s.start.load(Ordering::Acquire);
        // A slot being cleared meanwhile (end, then start, both Release):
        // `end` read again must be unchanged, or the pair is not one region.
        if s.end.load(Ordering::Acquire) != end || start == 0 {
            continue;
        }
        if addr >= start {
            return Some((i, start, end));
        }
    }
    None
}

fn install() {
    // SAFETY: a zeroed sigaction is a valid value to fill; `on_sigbus`
    // has the SA_SIGINFO signature; `PREVIOUS` is written here once, under
    // `INSTALL`, before the handler can run (it reads it only after this
    // sigaction call has installed it).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        let prev = &raw mut PREVIOUS;
        if libc::sigaction(libc::SIGBUS, &sa, (*prev).as_mut_ptr()) != 0 {
            warn!(
                "cannot install the SIGBUS handler: {}; a frontend that shrinks its guest memory file would end the daemon",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The SIGBUS handler. Async-signal-safe: atomics, `mmap`, `sigaction`.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((i, start, end)) = lookup(addr) {
        // SAFETY: [start, end) is a registered guest memory mapping that
        // stays mapped while this thread runs (it faulted inside it, so it
        // holds the memory; module docs). Mapping anonymous memory over it
        // with MAP_FIXED replaces those pages atomically; nothing else in
        // the process lives in that range.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // Release: pairs with the Acquire load in `Registration::faulted`.
            TABLE[i].faulted.store(true, Ordering::Release);
            return;
        }
    }
    // Not ours (or the remap failed): the previous action, and the fault again.
    // SAFETY: `PREVIOUS` was filled by `install` before this handler existed.
    unsafe {
        let prev = &raw const PREVIOUS;
        libc::sigaction(libc::SIGBUS, (*prev).as_ptr(), std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap};

    fn memfd_memory(len: usize) -> (GuestMemoryMmap<()>, File) {
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fault-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor that nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len as u64).unwrap();
        let r = GuestRegionMmap::from_range(
            GuestAddress(0),
            len,
            Some(FileOffset::new(f.try_clone().unwrap(), 0)),
        )
        .unwrap();
        (GuestMemoryMmap::from_regions(vec![r]).unwrap(), f)
    }

    #[test]
    fn a_shrunk_region_faults_into_zeros_not_a_crash() {
        let (mem, file) = memfd_memory(1 << 20);
        mem.write_obj(0xabcd_u32, GuestAddress(0x8000)).unwrap();
        let reg = Registration::new(&mem);
        assert_eq!(reg.faulted(), None);
        file.set_len(4096).unwrap();
        // Past the new end: SIGBUS, contained; the access completes with zeros.
        let v: u32 = mem.read_obj(GuestAddress(0x8000)).unwrap();
        assert_eq!(v, 0);
        let host = mem
            .iter()
            .next()
            .unwrap()
            .get_host_address(MemoryRegionAddress(0))
            .unwrap() as usize;
        assert_eq!(reg.faulted(), Some((host, 1 << 20)));
        // Writes land in the anonymous pages; the process goes on.
        mem.write_obj(7u32, GuestAddress(0x9000)).unwrap();
        drop(reg);
        assert_eq!(lookup(host + 0x8000), None, "unregistered");
    }
}
