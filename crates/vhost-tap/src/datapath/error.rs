//! Why the data path stops serving a queue.

use std::io;

use crate::guest::chain::ChainError;
use crate::guest::MemError;

/// Why a queue is broken: the guest (or its frontend) put something there
/// that the data path cannot use. The queue is then left alone until the
/// guest resets it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("bad avail ring: {0}")]
    AvailRing(virtio_queue::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Memory(#[from] MemError),
    #[error("cannot {verb} notifications: {source}")]
    Notifications {
        verb: &'static str,
        source: virtio_queue::Error,
    },
    #[error("more used entries pending ({pending}) than the queue holds ({size})")]
    UsedOverrun { pending: u16, size: u16 },
    #[error("{0} ring address overflows")]
    RingAddress(&'static str),
    #[error("cannot {what}: {source}")]
    RingAccess {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("the TAP could not write a frame into the guest's RX buffers: {0}")]
    TapFault(io::Error),
}
