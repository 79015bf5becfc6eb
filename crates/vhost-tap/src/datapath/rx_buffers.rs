//! The guest's RX buffers: taking chains from the avail ring for one frame,
//! giving back what a frame did not use, and asking for a kick when there
//! are too few. Both RX paths (ring and direct) take their chains here.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{AvailIter, Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::error::QueueError;
use crate::guest::chain::{self, Chain, Direction};
use crate::guest::map::GuestMap;

/// The avail iterator the RX paths take chains from.
pub type Avail<'a, 'm> = AvailIter<'a, &'m GuestMemoryMmap<()>>;

/// The descriptor table chains are walked in: its address and size.
#[derive(Clone, Copy)]
pub struct Table {
    pub addr: GuestAddress,
    pub size: u16,
}

impl Table {
    pub fn of(queue: &Queue) -> Table {
        Table {
            addr: GuestAddress(queue.desc_table()),
            size: queue.size(),
        }
    }
}

/// What [`gather`] took for one frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gathered {
    /// Chains taken from the avail ring (walked into `chains[..taken]`).
    pub taken: usize,
    /// Bytes they hold.
    pub capacity: usize,
    /// Buffers (descriptors) they have.
    pub segments: usize,
    /// Descriptors of the queue's table they occupy (an indirect chain
    /// occupies one): when that is the whole table, no chain can come
    /// before these are returned.
    pub descriptors: usize,
}

/// Take and walk avail RX chains into `chains[..]` until they hold `want`
/// bytes, the avail snapshot runs dry, or they reach `max_segments` buffers;
/// one chain only without MRG_RXBUF. `Err`: a chain is malformed (the guest
/// broke the queue).
pub fn gather(
    iter: &mut Avail<'_, '_>,
    map: &GuestMap<'_>,
    table: Table,
    mrg_rxbuf: bool,
    want: usize,
    max_segments: usize,
    chains: &mut Vec<Chain>,
) -> Result<Gathered, QueueError> {
    let mut g = Gathered::default();
    while g.capacity < want {
        let Some(dc) = iter.next() else { break };
        if chains.len() <= g.taken {
            chains.push(Chain::default());
        }
        let c = &mut chains[g.taken];
        chain::walk(
            map,
            table.addr,
            table.size,
            dc.head_index(),
            Direction::Writable,
            c,
        )?;
        g.taken += 1;
        g.capacity += c.total_len as usize;
        g.segments += c.segments.len();
        g.descriptors += usize::from(c.descriptors);
        if !mrg_rxbuf || g.segments >= max_segments {
            break;
        }
    }
    Ok(g)
}

/// Give the last `n` chains taken back to the avail ring (`next_avail` rewound).
pub fn put_back(iter: &mut Avail<'_, '_>, n: usize) {
    for _ in 0..n {
        iter.go_to_previous_position();
    }
}

/// Request a kick for the next chain the guest makes available after the
/// `seen` ones we could not use, then re-check. Returns whether more chains
/// than `seen` are available now (try again) or not (wait for the kick).
///
/// With EVENT_IDX the request is `avail_event = next_avail + seen`: the guest
/// kicks when its avail index moves past it (`vring_need_event`). Setting it
/// to `next_avail` alone (what a plain "enable notifications" does) would
/// never fire while chains we put back are still pending, so a frame needing
/// more mergeable buffers than are posted would wait forever. Without
/// EVENT_IDX the guest kicks on every addition once notifications are on.
pub fn arm_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap<()>,
    seen: u16,
) -> Result<bool, QueueError> {
    // Turns kicks on (flags, or avail_event = next_avail with EVENT_IDX).
    queue
        .enable_notification(mem)
        .map_err(|source| QueueError::Notifications {
            verb: "enable",
            source,
        })?;
    let want = queue.next_avail().wrapping_add(seen);
    if queue.event_idx_enabled() {
        let at = GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(queue.size()))
            .ok_or(QueueError::RingAddress("used"))?;
        vm_memory::Bytes::store(mem, want.to_le(), at, Ordering::Relaxed).map_err(|source| {
            QueueError::RingAccess {
                what: "write avail_event",
                source,
            }
        })?;
    }
    // SeqCst fence: avail_event must be visible before we re-read the avail
    // index, while the guest publishes its avail index and then reads
    // avail_event (virtio_mb in virtqueue_kick_prepare). Store-buffering:
    // either we see its new chains or it sees our request and kicks.
    fence(Ordering::SeqCst);
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(QueueError::AvailRing)?;
    Ok(avail.0.wrapping_sub(queue.next_avail()) > seen)
}
