//! The data path of one queue pair: TAP reader, RX filler, TX drainer.
//!
//! ```text
//!  TAP queue ──readv──► [TAP reader] ─produce─► ptr-ring ─peek/discard─► [RX filler] ──► guest RX chains
//!   (rx_ring.rs)         stops at full ring      (slots.rs)  wakes the reader at half     (rx_buffers.rs)
//!
//!  direct, while nothing waits in the ring or the AQM (rx_direct.rs):
//!  TAP queue ──readv into the guest's RX chains (gather → readv → settle)──► guest
//!
//!  guest TX chains ──► [TX drainer] ──writev from guest memory──► TAP queue   (tx.rs)
//!                       EAGAIN/ENOBUFS: the chain stays in the ring, wait for EPOLLOUT
//! ```
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`QueuePair`]: the state of one pair, and the entry points [`QueuePair::rx_run`] / [`QueuePair::tx_run`] the backend calls |
//! | [`vnet`] | the virtio-net header layout and frame sizes (a leaf) |
//! | `rx_ring.rs` | the ring path: TAP reader into the ring, RX filler out of it (or out of the AQM) |
//! | `rx_direct.rs` | the direct path: TAP frames read straight into guest RX chains |
//! | `rx_buffers.rs` | the guest's RX chains: gather for a frame, put back, ask for a kick |
//! | `tx.rs` | the TX drainer |
//! | `error.rs` | [`QueueError`]: why a queue is broken |
//! | `used.rs` | used-ring entries, published once per batch; interrupt decisions |
//! | `aqm.rs` | FQ-CoDel mode's queue (glue to the `fq-codel` crate) |
//! | `rate.rs` | rate limits: token buckets that hold frames back, never drop them |
//! | [`slots`] | the ring's frame buffers |
//! | [`tap_io`] | the TAP queue as a trait: the seam where tests inject errors |
//!
//! Reader and filler run on the queue pair's worker thread; the ring's
//! stop/wake protocol is the one the kernel series uses between tun and
//! vhost-net, so moving the reader to a thread of its own changes no rule.
//! Frames live in slot-indexed buffers beside the ring: the reader owns
//! buffer `i` while slot `i` is empty, the filler from its `peek` until its
//! `discard_one`.
//!
//! Nothing here drops a frame for lack of room: a full ring stops the reader
//! (the frame waits in the kernel), a guest without RX buffers leaves the
//! frame in the ring, a full TAP leaves the chain in the guest's TX ring.
//! The only drops are frames that can never be delivered, each counted.

mod aqm;
mod error;
mod rate;
mod rx_buffers;
mod rx_direct;
mod rx_ring;
pub mod slots;
pub mod tap_io;
mod tx;
mod used;
pub mod vnet;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use log::{error, info, warn};
use ptr_ring::{Consumer, Producer};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::counters::QueueCounters;
use crate::guest::chain::Chain;
use crate::guest::iovecs::IoVecs;
use aqm::Aqm;
pub use aqm::QueuedFrame;
pub use error::QueueError;
pub use rate::Limiter;
use rate::Meter;
use slots::Slots;
pub use tap_io::{TapIo, TapQueue};
use used::UsedBatch;
pub use vnet::Negotiated;

/// Frames moved per event before yielding to the other events of the worker.
pub const BUDGET: usize = 256;

/// What a pass of [`QueuePair::rx_run`] or [`QueuePair::tx_run`] leaves to
/// its caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Pass {
    /// The budget ran out with work left: run again after the worker's other events.
    pub work_left: bool,
    /// The guest wants an interrupt for what this pass published.
    pub interrupt: bool,
    /// The rate limit held frames back: run again after this long.
    pub wait: Option<std::time::Duration>,
}

/// Frames moved in one batch, counted once per batch (not per frame).
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    frames: u64,
    /// Ethernet bytes, virtio-net headers not included.
    bytes: u64,
    /// The largest of those frames.
    largest: u64,
}

impl Tally {
    /// One frame of `len` bytes, its `hdr_len`-byte header included.
    fn add(&mut self, len: usize, hdr_len: usize) {
        let bytes = len.saturating_sub(hdr_len) as u64;
        self.frames += 1;
        self.bytes += bytes;
        self.largest = self.largest.max(bytes);
    }

    /// Into the RX counters (frames written into guest buffers).
    fn publish_rx(&self, c: &QueueCounters) {
        QueueCounters::add(&c.rx_frames, self.frames);
        QueueCounters::add(&c.rx_bytes, self.bytes);
        QueueCounters::raise(&c.rx_frame_bytes_high_water, self.largest);
    }

    /// Into the TX counters (frames the TAP accepted).
    fn publish_tx(&self, c: &QueueCounters) {
        QueueCounters::add(&c.tx_frames, self.frames);
        QueueCounters::add(&c.tx_bytes, self.bytes);
        QueueCounters::raise(&c.tx_frame_bytes_high_water, self.largest);
    }
}

/// One queue pair's state, owned by its worker thread (behind a mutex that
/// only that thread takes in steady state).
pub struct QueuePair {
    pub index: usize,
    tap: Arc<dyn TapIo>,
    producer: Producer,
    consumer: Consumer,
    /// Frame buffers, indexed by ring slot.
    slots: Slots,
    /// FQ-CoDel mode: the standing queue, kept here instead of in the kernel.
    aqm: Option<Aqm>,
    pub counters: Arc<QueueCounters>,
    /// The TAP fd may have frames (edge-triggered epoll: set on EPOLLIN, cleared on EAGAIN).
    tap_readable: bool,
    /// A TAP write returned EAGAIN/ENOBUFS; TX waits for EPOLLOUT.
    tx_blocked: bool,
    /// The TAP answered EBADFD (deleted under us); said once.
    tap_gone: bool,
    /// A TAP write answered EIO (the TAP is down); said once per spell.
    link_down: bool,
    /// The guest broke a queue; it is left alone until the next connection.
    rx_broken: bool,
    tx_broken: bool,
    /// Whether we last asked the guest for kicks on the RX / TX queue. A
    /// queue starts with them on; the worker turns them off while it works
    /// and on again only when it must wait for the guest (RX: no buffers;
    /// TX: ring empty). Matters to guests without EVENT_IDX (DPDK's virtio
    /// PMD): they kick after every burst while kicks are on.
    rx_kicks_on: bool,
    tx_kicks_on: bool,
    /// Scratch space, reused for every frame.
    chains: Vec<Chain>,
    /// Used entries written but not yet published (one index update per
    /// batch), one per vring.
    rx_used: UsedBatch,
    tx_used: UsedBatch,
    iov: IoVecs,
    /// How long the last frame read was; both RX paths size reads by it.
    last_frame: vnet::LastFrame,
    /// The device's rate limits, host → guest and guest → host.
    rx_meter: Meter,
    tx_meter: Meter,
}

impl QueuePair {
    /// `aqm`: `Some` for FQ-CoDel mode, `None` for backpressure mode.
    pub fn new(
        index: usize,
        tap: Arc<dyn TapIo>,
        ring_size: usize,
        aqm: Option<fq_codel::FqCodel<QueuedFrame>>,
    ) -> Self {
        let (producer, consumer) = ptr_ring::ring(ring_size);
        QueuePair {
            index,
            tap,
            producer,
            consumer,
            slots: Slots::new(ring_size),
            aqm: aqm.map(Aqm::new),
            counters: Arc::new(QueueCounters::default()),
            tap_readable: true,
            tx_blocked: false,
            tap_gone: false,
            link_down: false,
            rx_broken: false,
            tx_broken: false,
            rx_kicks_on: true,
            tx_kicks_on: true,
            chains: Vec::new(),
            rx_used: UsedBatch::default(),
            tx_used: UsedBatch::default(),
            iov: IoVecs::default(),
            last_frame: vnet::LastFrame::default(),
            rx_meter: Meter::default(),
            tx_meter: Meter::default(),
        }
    }

    /// Share the device's rate limits (`None`: that direction is not limited).
    pub fn set_limits(&mut self, rx: Option<Arc<Limiter>>, tx: Option<Arc<Limiter>>) {
        self.rx_meter = Meter::new(rx);
        self.tx_meter = Meter::new(tx);
    }

    /// Forget the per-connection state (broken queues, TX waiting); frames in
    /// the ring stay for the next guest.
    pub fn reset_for_connection(&mut self) {
        self.tap_readable = true;
        self.tx_blocked = false;
        let _ = self.reset_rx();
        let _ = self.reset_tx();
    }

    /// The guest stopped its RX vring (`GET_VRING_BASE`, as at a driver
    /// reset): forget what this connection knew of it, a broken state
    /// included, so that the next enable serves it afresh. Frames in the
    /// ring stay.
    pub fn reset_rx(&mut self) -> bool {
        let was_broken = std::mem::take(&mut self.rx_broken);
        self.rx_kicks_on = true;
        self.rx_used = UsedBatch::default();
        was_broken
    }

    /// The same for the TX vring. Returns whether it was broken.
    pub fn reset_tx(&mut self) -> bool {
        let was_broken = std::mem::take(&mut self.tx_broken);
        self.tx_kicks_on = true;
        self.tx_used = UsedBatch::default();
        was_broken
    }

    /// Switch the queue mode between connections: `Some` for FQ-CoDel mode,
    /// `None` for backpressure mode. Frames in the ring stay (in FQ-CoDel
    /// mode the next read batch moves them on into the AQM); frames an AQM
    /// being removed still holds waited for a guest that left and are
    /// counted as `rx_dropped_mode_change`.
    pub fn set_aqm(&mut self, aqm: Option<fq_codel::FqCodel<QueuedFrame>>) {
        if let Some(mut old) = self.aqm.take() {
            let n = old.clear();
            old.publish(&self.counters);
            QueueCounters::add(&self.counters.rx_dropped_mode_change, n as u64);
        }
        self.aqm = aqm.map(Aqm::new);
    }

    /// Count the frames still in the ring (and the AQM) as lost (daemon shutdown).
    pub fn drop_ring_at_shutdown(&mut self) {
        let mut n = 0;
        while self.consumer.consume().is_some() {
            n += 1;
        }
        if let Some(aqm) = &mut self.aqm {
            n += aqm.clear() as u64;
            aqm.publish(&self.counters);
        }
        QueueCounters::add(&self.counters.rx_dropped_shutdown, n);
    }

    /// The TAP fd reported EPOLLIN.
    pub fn tap_readable(&mut self) {
        self.tap_readable = true;
    }

    /// The TAP fd reported EPOLLOUT.
    pub fn tap_writable(&mut self) {
        self.tx_blocked = false;
    }

    /// Move frames TAP → guest until neither side can progress or the
    /// budget runs out: frames waiting in the ring (or the AQM) first, then
    /// straight from the TAP while nothing waits, then through the ring.
    /// `ready`: the guest's RX queue is set up and enabled; until it is, the
    /// reader still fills the ring (and stops when it is full).
    pub fn rx_run(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap<()>,
        neg: Negotiated,
        ready: bool,
    ) -> Pass {
        let map = &crate::guest::map::GuestMap::new(mem);
        let mut moved = 0usize;
        self.rx_meter.begin();
        if ready && !self.rx_broken && self.rx_kicks_on {
            // Kicks only matter while we wait for buffers (re-armed then).
            match queue.disable_notification(mem) {
                Ok(()) => self.rx_kicks_on = false,
                Err(source) => self.break_rx(&QueueError::Notifications {
                    verb: "disable",
                    source,
                }),
            }
        }
        let work_left = loop {
            if ready && !self.rx_broken {
                moved += self.fill_guest(queue, map, neg);
            }
            if moved >= BUDGET {
                break true;
            }
            // Nothing waits in the ring or the AQM and the guest has
            // buffers: read frames straight into them (no copy of ours).
            let mut read = 0;
            if ready && !self.rx_broken && self.nothing_waiting() {
                read = self.read_tap_direct(queue, map, neg, BUDGET - moved);
                moved += read;
                if moved >= BUDGET {
                    break true;
                }
            }
            let from_ring_path = self.read_tap_into_ring(neg, BUDGET - moved);
            moved += from_ring_path;
            read += from_ring_path;
            if read == 0 {
                break false;
            }
        };
        if let Some(aqm) = &self.aqm {
            aqm.publish(&self.counters);
        }
        let wanted = self.rx_used.needs_notification(queue, mem);
        let interrupt = self.rx_ok(wanted).unwrap_or(false);
        let wait = self.rx_meter.end();
        if wait.is_some() {
            QueueCounters::add(&self.counters.rx_rate_limited, 1);
        }
        Pass {
            work_left,
            interrupt,
            wait,
        }
    }

    /// Whether no frame waits in the ring or the AQM, so that one read now
    /// may go to the guest without overtaking another.
    fn nothing_waiting(&self) -> bool {
        self.consumer.is_empty() && self.aqm.as_ref().is_none_or(Aqm::is_empty)
    }

    /// A TAP read failed with something other than "try again": log it,
    /// wait for the next edge. EFAULT means the kernel dequeued a frame it
    /// could not copy out: lost, and counted.
    fn read_failed(&mut self, e: &io::Error) {
        if e.raw_os_error() == Some(libc::EFAULT) {
            QueueCounters::add(&self.counters.rx_dropped_read_fault, 1);
        }
        self.tap_readable = false;
        if e.raw_os_error() == Some(libc::EBADFD) {
            self.tap_is_gone();
            return;
        }
        warn!(
            "tap: {} queue {}: read failed: {e}",
            self.tap.name(),
            self.index
        );
        self.tap_readable = false;
    }

    /// The TAP answered EBADFD: it was deleted under us (`ip link del`),
    /// and this queue's fd will never carry a frame again. Said once; the
    /// device is stopped by the daemon (see `Device::tap_gone`).
    fn tap_is_gone(&mut self) {
        if !self.tap_gone {
            self.tap_gone = true;
            QueueCounters::add(&self.counters.tap_gone, 1);
            error!(
                "tap: {} queue {}: the TAP is gone (EBADFD: deleted under the daemon?); the device stops",
                self.tap.name(),
                self.index
            );
        }
    }

    /// A TAP write failed with EIO: the TAP is down. Said once per spell.
    fn tap_is_down(&mut self) {
        QueueCounters::add(&self.counters.tx_dropped_link_down, 1);
        if !self.link_down {
            self.link_down = true;
            warn!(
                "tap: {} queue {}: the TAP is down (EIO): guest → host frames are dropped, counted as tx_dropped_link_down, until it is up",
                self.tap.name(),
                self.index
            );
        }
    }

    /// A TAP write went through: if the TAP was down, say it is up again.
    fn tap_is_up(&mut self) {
        // Called for every frame written: a load, and a store only after a spell.
        if self.link_down {
            self.link_down = false;
            info!(
                "tap: {} queue {}: the TAP is up again; guest → host frames flow",
                self.tap.name(),
                self.index
            );
        }
    }

    /// The value of `r`, or `None` after breaking the RX queue with its error.
    fn rx_ok<T>(&mut self, r: Result<T, QueueError>) -> Option<T> {
        r.map_err(|e| self.break_rx(&e)).ok()
    }

    /// The same for the TX queue.
    fn tx_ok<T>(&mut self, r: Result<T, QueueError>) -> Option<T> {
        r.map_err(|e| self.break_tx(&e)).ok()
    }

    fn break_rx(&mut self, why: &QueueError) {
        self.rx_broken = true;
        self.report_broken("RX", &self.counters.rx_queue_broken, why);
    }

    fn break_tx(&mut self, why: &QueueError) {
        self.tx_broken = true;
        self.report_broken("TX", &self.counters.tx_queue_broken, why);
    }

    /// The one log line and counter of a queue the guest broke.
    fn report_broken(&self, dir: &str, counter: &AtomicU64, why: &QueueError) {
        error!(
            "{}: {} queue {}: guest {dir} queue broken, not served until the guest resets it: {why}",
            dir.to_lowercase(),
            self.tap.name(),
            self.index
        );
        QueueCounters::add(counter, 1);
    }

    /// Whether the RX / TX queue is broken (for tests and reports).
    pub fn broken(&self) -> (bool, bool) {
        (self.rx_broken, self.tx_broken)
    }
}

#[cfg(test)]
mod tests;
