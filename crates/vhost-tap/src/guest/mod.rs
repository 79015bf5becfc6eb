//! The guest's side of the data path: its memory and its descriptor chains.
//!
//! Nothing here trusts the guest. [`chain::walk`] checks a descriptor chain
//! completely before any byte moves; [`map::GuestMap`] resolves guest
//! addresses to host pointers only inside the regions the frontend mapped;
//! [`iovecs`] turns checked chains into the `iovec`s that `readv`/`writev`
//! hand to the kernel, and copies in and out of them.
//!
//! - [`map`]: guest memory as host addresses, for the per-frame accesses.
//! - [`chain`]: descriptor chains checked before use; one error per defect.
//! - [`iovecs`]: scatter-gather over checked chains.
//! - [`fault`]: a frontend that shrinks a region's file under us: the
//!   SIGBUS contained to its connection.

pub mod chain;
pub mod fault;
pub mod iovecs;
pub mod map;

use vm_memory::GuestMemoryError;

/// A guest-memory access that failed although the chain or ring it belongs
/// to was checked: the frontend changed the memory map under us, or the
/// guest placed a ring where it cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("cannot write the used element at {addr:#x}: {source}")]
    WriteUsed { addr: u64, source: GuestMemoryError },
    #[error("cannot write {len} bytes into the guest buffer at {addr:#x}: {source}")]
    Write {
        addr: u64,
        len: usize,
        source: GuestMemoryError,
    },
    #[error("cannot read {len} bytes from the guest buffer at {addr:#x}: {source}")]
    Read {
        addr: u64,
        len: usize,
        source: GuestMemoryError,
    },
    #[error("guest buffer at {addr:#x} ({len} bytes) is not mapped: {source}")]
    Unmapped {
        addr: u64,
        len: usize,
        source: GuestMemoryError,
    },
}
