//! A userspace FQ-CoDel: the CoDel control law of RFC 8289 applied per flow
//! queue, under the flow-queueing scheduler of RFC 8290.
//!
//! vhost-tap uses it in `fq-codel` mode (see `docs/architecture.md`, "Queue
//! modes"): the daemon drains the TAP promptly so the tun ring never fills,
//! and keeps the standing queue towards the guest here, where drops are CoDel
//! decisions at the head of a flow and a sparse flow (ping, DNS, ACKs) is not
//! stuck behind bulk transfers.
//!
//! # Design
//!
//! The crate is pure logic: no threads, no clock, no I/O, no `unsafe`. Time is
//! passed in as `now_ns: u64` (any monotonic nanosecond clock; only
//! differences matter), so tests drive it with a simulated clock.
//!
//! - [`classify`] — flow classification: Ethernet (+ 802.1Q / 802.1ad tags) →
//!   IPv4 / IPv6 (+ common extension headers) → 5-tuple, hashed with a
//!   per-instance perturbation into one of `flows` buckets.
//! - [`ecn`] — reading the ECN field and setting CE in place, with the IPv4
//!   header checksum fixed incrementally (RFC 1624).
//! - `codel` — the RFC 8289 state machine for one queue, written against a
//!   small queue trait so it can be tested on its own.
//! - `fq` — [`FqCodel`]: the flow table (allocated once), the new / old flow
//!   lists, deficit round robin, the packet and memory limits with head drop
//!   from the fattest flow, and the counters ([`Stats`]).
//!
//! Packets are generic: anything implementing [`Packet`], which exposes the
//! Ethernet frame (starting at the destination MAC) and its length. The daemon
//! stores frames behind a 12-byte virtio-net header; its `Packet` impl returns
//! the slice after that header.
//!
//! Every packet the queue gives up is handed back to the caller, never freed
//! silently: [`FqCodel::enqueue`] pushes overlimit drops into a `Vec`,
//! [`FqCodel::dequeue`] pushes CoDel drops into one. The reason is therefore
//! known from the call, and [`Stats`] counts both.
//!
//! ```
//! use fq_codel::{Config, FqCodel};
//!
//! let mut q: FqCodel<Vec<u8>> = FqCodel::try_new(Config::default())?;
//! let mut dropped = Vec::new();
//! q.enqueue(vec![0u8; 60], 0, &mut dropped);
//! let pkt = q.dequeue(1_000, &mut dropped);
//! assert_eq!(pkt.map(|p| p.len()), Some(60));
//! assert!(dropped.is_empty() && q.is_empty());
//! # Ok::<(), fq_codel::ConfigError>(())
//! ```
//!
//! Parameters are checked once, by [`FqCodel::try_new`] (or
//! [`Config::validate`]); the error names the field, the value and its range,
//! and the ranges are public constants ([`MAX_FLOWS`], [`MIN_LIMIT`] ...)
//! for a configuration parser to check against where the user wrote them.
//! Nothing in the crate panics on a bad parameter.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
mod codel;
pub mod ecn;
mod fq;

pub use classify::FlowKey;
pub use fq::{
    Config, ConfigError, FqCodel, Stats, MAX_FLOWS, MAX_LIMIT, MAX_MEMORY_LIMIT, MAX_QUANTUM,
    MIN_FLOWS, MIN_INTERVAL_NS, MIN_LIMIT, MIN_MEMORY_LIMIT, MIN_QUANTUM, OVERLIMIT_DROP_BATCH,
};

/// A queued packet: an Ethernet frame plus whatever the owner keeps with it.
///
/// The queue reads [`frame`](Packet::frame) once, at enqueue, to classify the
/// packet, and [`len`](Packet::len) once, to charge it to its flow. It writes
/// through [`set_ecn_ce`](Packet::set_ecn_ce) only when CoDel marks instead
/// of dropping.
pub trait Packet {
    /// The Ethernet frame, starting at the destination MAC address (after any
    /// virtio-net header the owner keeps in front of it).
    fn frame(&self) -> &[u8];

    /// The same bytes, writable. Used only to set ECN CE.
    fn frame_mut(&mut self) -> &mut [u8];

    /// Bytes charged to the flow's DRR deficit, to the byte backlog and to
    /// `memory_limit`. Read once at enqueue. Default: the frame length.
    fn len(&self) -> usize {
        self.frame().len()
    }

    /// Whether [`len`](Packet::len) is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Set ECN Congestion Experienced if the packet is ECN-capable.
    ///
    /// Returns `true` if the packet now carries CE (it was ECT(0), ECT(1), or
    /// already CE), `false` if it is not ECN-capable (Not-ECT, not IP, or too
    /// short to tell) and was left untouched. The default edits the IPv4 /
    /// IPv6 header of [`frame_mut`](Packet::frame_mut) with
    /// [`ecn::set_ce`].
    fn set_ecn_ce(&mut self) -> bool {
        ecn::set_ce(self.frame_mut())
    }
}

/// A bare Ethernet frame.
impl Packet for Vec<u8> {
    fn frame(&self) -> &[u8] {
        self
    }

    fn frame_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A bare Ethernet frame.
impl Packet for Box<[u8]> {
    fn frame(&self) -> &[u8] {
        self
    }

    fn frame_mut(&mut self) -> &mut [u8] {
        self
    }
}
