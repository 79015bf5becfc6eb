//! The data path of one queue pair: TAP reader, RX filler, TX drainer.
//!
//! ```text
//!  TAP queue fd ──read──► [TapReader] ─produce─► ptr-ring ─peek/discard─► [RxFiller] ──► guest RX vring
//!                          stops at full ring                  wakes the reader at half
//!  guest TX vring ──► [TxDrainer] ──writev from guest memory──► TAP queue fd
//!                      EAGAIN/ENOBUFS: the chain stays in the ring, wait for EPOLLOUT
//! ```
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

use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use log::{error, warn};
use ptr_ring::{Consumer, Produced, Producer, Woken};
use virtio_queue::{AvailIter, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::chain::{self, Chain, Direction};
use crate::counters::QueueCounters;
use crate::guestmap::GuestMap;
use crate::slots::Slots;

/// Largest frame the TAP hands us or accepts: a 64 KiB GSO frame plus
/// Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_536 + 14 + 4;
/// Smallest frame worth delivering: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Room for the largest virtio-net header and the largest frame, with one
/// spare byte so that a truncated read is recognisable.
pub const BUF_SIZE: usize = 12 + MAX_FRAME + 1;
/// Frames moved per event before yielding to the other events of the worker.
pub const BUDGET: usize = 256;
/// Guest RX buffer room the direct path gathers for a frame while frames
/// are small: a virtio-net header and a 1500-byte frame with a VLAN tag.
/// A larger frame spills into a slot buffer; after one, the path gathers
/// room for the largest frame until a small one comes again.
const SMALL_FRAME_ROOM: usize = 12 + 1518;
/// Most guest buffers the direct path hands to one `readv` (the kernel takes
/// at most 1024 iovecs); a frame whose chains have more segments takes the
/// ring path, whose copy has no such limit.
const DIRECT_MAX_IOVECS: usize = 64;

/// What the guest and the backend agreed on, as far as the data path cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Length of the virtio-net header on both the vring and the TAP (10 or 12).
    pub hdr_len: usize,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several RX chains.
    pub mrg_rxbuf: bool,
}

/// How a call into the RX side ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Nothing more to do until the next event.
    Idle,
    /// The budget ran out with work left: call again after other events.
    MoreWork,
}

/// `iovec`s pointing into guest memory, kept between frames to avoid an
/// allocation per frame.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the raw pointers in the vector are only dereferenced by the kernel
// inside the `writev`/`readv` call that follows their construction, while
// the guest memory guard that keeps the mapping alive is held; the vector is
// cleared before the next use, so no pointer crosses threads in a usable state.
unsafe impl Send for IoVecs {}

/// One queue pair's state, owned by its worker thread (behind a mutex that
/// only that thread takes in steady state).
pub struct QueuePair {
    pub index: usize,
    tap: Arc<tap::Tap>,
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
    /// The last frame read directly was larger than `SMALL_FRAME_ROOM`:
    /// gather room for the largest frame.
    rx_expect_big: bool,
}

impl QueuePair {
    /// `aqm`: `Some` for FQ-CoDel mode, `None` for backpressure mode.
    pub fn new(
        index: usize,
        tap: Arc<tap::Tap>,
        ring_size: usize,
        aqm: Option<fq_codel::Config>,
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
            rx_broken: false,
            tx_broken: false,
            rx_kicks_on: true,
            tx_kicks_on: true,
            chains: Vec::new(),
            rx_used: UsedBatch::default(),
            tx_used: UsedBatch::default(),
            iov: IoVecs(Vec::new()),
            rx_expect_big: false,
        }
    }

    /// Forget the per-connection state (broken queues, TX waiting); frames in
    /// the ring stay for the next guest.
    pub fn reset_for_connection(&mut self) {
        self.tap_readable = true;
        self.tx_blocked = false;
        self.rx_broken = false;
        self.tx_broken = false;
        self.rx_kicks_on = true;
        self.tx_kicks_on = true;
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

    pub fn tap_readable(&mut self) {
        self.tap_readable = true;
    }

    pub fn tap_writable(&mut self) {
        self.tx_blocked = false;
    }

    /// Read frames from the TAP into the ring until the ring stops the
    /// reader, the TAP has nothing, or `budget` frames were read.
    fn read_tap(&mut self, budget: usize) -> usize {
        let c = Arc::clone(&self.counters);
        let mut read = 0;
        while read < budget && self.tap_readable && !self.producer.is_stopped() {
            let Some(slot) = self.producer.next_free_slot() else {
                // Full without being stopped can only follow a consumer's
                // wake racing our previous produce; the next discard batch frees it.
                break;
            };
            let (iov, count) = self.slots.read_iovecs(slot);
            // SAFETY: the iovecs point into `self.slots`' own buffers for
            // slot `slot` (free while the slot is empty) and the overflow
            // buffer, `BUF_SIZE` bytes in all; nothing else touches them
            // during the call.
            let r = unsafe { self.tap.queue(self.index).readv_raw(&iov[..count]) };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EBADFD after the TAP went away, EIO...: wait for the next edge.
                    self.read_failed(&e);
                    break;
                }
            };
            read += 1;
            if n >= BUF_SIZE {
                QueueCounters::add(&c.rx_dropped_truncated, 1);
                continue;
            }
            self.slots.settle(slot, n);
            let Some(len) = NonZeroUsize::new(n).filter(|n| n.get() >= 12 + MIN_FRAME) else {
                QueueCounters::add(&c.rx_dropped_too_short, 1);
                continue;
            };
            self.produce(len);
        }
        // Only this thread fills the ring, so its occupancy peaks here.
        if read > 0 {
            QueueCounters::raise(&c.rx_ring_high_water, self.consumer.len() as u64);
        }
        read
    }

    /// Hand the frame just read into the slot `next_free_slot` gave to the
    /// ring, counting a reader stop.
    fn produce(&mut self, len: NonZeroUsize) {
        match self.producer.produce(len) {
            Ok(Produced::Ok) => {}
            Ok(Produced::Stopped) => QueueCounters::add(&self.counters.rx_reader_stops, 1),
            Err(ptr_ring::Full) => unreachable!("next_free_slot said the slot was free"),
        }
    }

    /// Move frames TAP → ring → guest until neither side can progress or the
    /// budget runs out. Returns whether work is left and whether the guest
    /// wants an interrupt (the caller then signals it, once).
    pub fn rx_run(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap<()>,
        neg: Negotiated,
        ready: bool,
    ) -> (RxOutcome, bool) {
        let map = &GuestMap::new(mem);
        let mut moved = 0usize;
        if ready && !self.rx_broken && self.rx_kicks_on {
            // Kicks only matter while we wait for buffers (re-armed then).
            match queue.disable_notification(mem) {
                Ok(()) => self.rx_kicks_on = false,
                Err(e) => self.break_rx(&format!("cannot disable notifications: {e}")),
            }
        }
        loop {
            if ready && !self.rx_broken {
                moved += self.fill_guest(queue, map, neg);
            }
            if moved >= BUDGET {
                self.publish_aqm();
                return (RxOutcome::MoreWork, self.rx_signal(queue, mem));
            }
            // Nothing waits in the ring or the AQM and the guest has
            // buffers: read frames straight into them (no copy of ours).
            let mut read = 0;
            if ready && !self.rx_broken && self.nothing_waiting() {
                read = self.read_tap_direct(queue, map, neg, BUDGET - moved);
                moved += read;
                if moved >= BUDGET {
                    self.publish_aqm();
                    return (RxOutcome::MoreWork, self.rx_signal(queue, mem));
                }
            }
            // In FQ-CoDel mode the ring is only a hand-off: read no more
            // than it holds, then move everything into the AQM, so the
            // reader never stops.
            let budget = match self.aqm {
                Some(_) => (BUDGET - moved).min(self.producer.capacity() - 1),
                None => BUDGET - moved,
            };
            let from_ring_path = self.read_tap(budget);
            if self.aqm.is_some() {
                self.drain_ring_into_aqm(neg.hdr_len);
            }
            moved += from_ring_path;
            read += from_ring_path;
            if read == 0 {
                self.publish_aqm();
                return (RxOutcome::Idle, self.rx_signal(queue, mem));
            }
        }
    }

    /// Whether no frame waits in the ring or the AQM, so that one read now
    /// may go to the guest without overtaking another.
    fn nothing_waiting(&self) -> bool {
        self.consumer.is_empty() && self.aqm.as_ref().is_none_or(Aqm::is_empty)
    }

    /// The direct path: read frames from the TAP straight into the guest's
    /// RX chains, while nothing waits in the ring. Each read gathers the
    /// chains for a small frame (with MRG_RXBUF, as many as hold
    /// `SMALL_FRAME_ROOM`, or the largest frame after a large one) plus a
    /// free slot buffer behind them; a frame longer than the chains spills
    /// into the slot, is reassembled there and goes the ring's way (the
    /// chains go back to the avail ring). Chains a frame did not need go
    /// back too. Returns frames read (delivered, spilled or dropped).
    ///
    /// Stops when the TAP is empty, the guest has no chain, a frame
    /// spilled, or `budget` frames were read.
    fn read_tap_direct(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
        budget: usize,
    ) -> usize {
        let mem = map.mem();
        let mut read = 0usize;
        let (mut frames, mut bytes) = (0usize, 0u64);
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        let ring = UsedRing::of(queue);
        // A frame is read but neither delivered, handed to the ring nor counted.
        let mut in_flight = false;
        let fail = 'frames: {
            // One avail-index read for the batch: chains the guest posts
            // meanwhile wait for the next pass (or the ring path).
            let mut iter = match queue.iter(mem) {
                Ok(iter) => iter,
                Err(e) => break 'frames Some(format!("bad avail ring: {e}")),
            };
            while read < budget && self.tap_readable {
                let Some(slot) = self.producer.next_free_slot() else {
                    break;
                };
                let want = if self.rx_expect_big {
                    BUF_SIZE
                } else {
                    SMALL_FRAME_ROOM
                };
                let g = match gather_rx_chains(
                    &mut iter,
                    map,
                    (table, size),
                    neg.mrg_rxbuf,
                    want,
                    DIRECT_MAX_IOVECS,
                    &mut self.chains,
                ) {
                    Ok(g) => g,
                    Err(e) => break 'frames Some(e),
                };
                let (taken, capacity) = (g.taken, g.capacity);
                if taken == 0 {
                    // The guest has no chain now: the ring path waits for one.
                    break;
                }
                if g.segments > DIRECT_MAX_IOVECS {
                    // Too scattered for one readv: this frame takes the ring path.
                    put_back(&mut iter, taken);
                    break;
                }
                // The chains, then the slot buffer for what does not fit, with
                // one spare byte beyond the largest frame to see truncation.
                self.iov.0.clear();
                if let Err(e) = guest_iovecs(map, &self.chains[..taken], &mut self.iov.0) {
                    break 'frames Some(e);
                }
                let spill_len = BUF_SIZE.saturating_sub(capacity).max(1);
                self.iov.0.push(self.slots.overflow_iovec(spill_len));
                // SAFETY: the guest iovecs come from `guest_iovecs`, each inside
                // one mapped region of `mem`, of chains checked device-writable and
                // not yet returned to the guest (it does not touch them);
                // `mem` outlives the call. The last iovec is `spill_len`
                // bytes of our own overflow buffer, which nothing else uses
                // during the call.
                let r = unsafe { self.tap.queue(self.index).readv_raw(&self.iov.0) };
                self.iov.0.clear();
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        put_back(&mut iter, taken);
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) => self.tap_readable = false,
                            Some(libc::EINTR) => continue,
                            // The kernel refused our iovecs before taking a
                            // frame: let the ring path read it.
                            Some(libc::EINVAL) => {
                                warn!(
                                    "tap: {} queue {}: direct read refused ({e}); using the ring",
                                    self.tap.name(),
                                    self.index
                                );
                            }
                            // The frame was taken but could not be written
                            // into the guest's buffers: counted; the guest
                            // memory is not what its chains say.
                            Some(libc::EFAULT) => {
                                self.read_failed(&e);
                                break 'frames Some(format!(
                                    "the TAP could not write a frame into the guest's RX buffers: {e}"
                                ));
                            }
                            _ => self.read_failed(&e),
                        }
                        break;
                    }
                };
                read += 1;
                in_flight = true;
                if n < neg.hdr_len + MIN_FRAME || n >= capacity + spill_len {
                    put_back(&mut iter, taken);
                    let reason = if n >= capacity + spill_len {
                        &self.counters.rx_dropped_truncated
                    } else {
                        &self.counters.rx_dropped_too_short
                    };
                    QueueCounters::add(reason, 1);
                    in_flight = false;
                    continue;
                }
                if n > capacity {
                    // Spilled: reassemble the frame in the slot, give the
                    // chains back, hand the frame to the ring path.
                    put_back(&mut iter, taken);
                    let chains = &self.chains[..taken];
                    if let Err(e) = self
                        .slots
                        .assemble(slot, n, capacity, |head| read_guest(mem, chains, head))
                    {
                        break 'frames Some(e);
                    }
                    let len = NonZeroUsize::new(n).expect("n > capacity >= 0");
                    self.produce(len);
                    in_flight = false;
                    // Only a long frame calls for long-frame room; a short one
                    // spilled because the guest had few chains posted.
                    self.rx_expect_big = n > SMALL_FRAME_ROOM;
                    break;
                }
                // Delivered: the chains the frame filled become used entries,
                // the rest go back.
                let mut used_chains = 0usize;
                let mut left = n;
                // On failure the frame's entries are withdrawn, never published.
                let pending_before = self.rx_used.pending;
                while left > 0 {
                    let c = &self.chains[used_chains];
                    let part = left.min(c.total_len as usize);
                    if let Err(e) = self.rx_used.push(&ring, map, c.head, part as u32) {
                        self.rx_used.pending = pending_before;
                        break 'frames Some(e);
                    }
                    left -= part;
                    used_chains += 1;
                }
                put_back(&mut iter, taken - used_chains);
                // The kernel wrote the first 10 header bytes; num_buffers is ours.
                if neg.hdr_len == 12 {
                    let nb = if neg.mrg_rxbuf { used_chains as u16 } else { 1 };
                    if let Err(e) =
                        write_guest_at(map, &self.chains[..used_chains], 10, &nb.to_le_bytes())
                    {
                        self.rx_used.pending = pending_before;
                        break 'frames Some(e);
                    }
                }
                if n <= SMALL_FRAME_ROOM {
                    self.rx_expect_big = false;
                }
                in_flight = false;
                frames += 1;
                bytes += (n - neg.hdr_len) as u64;
            }
            None
        };
        if let Some(why) = fail {
            if in_flight {
                // Read from the TAP, but not into the guest's hands nor the ring.
                QueueCounters::add(&self.counters.rx_dropped_queue_broken, 1);
            }
            self.break_rx(&why);
        }
        if let Err(e) = self.rx_used.publish(queue, mem) {
            self.break_rx(&e);
        }
        QueueCounters::add(&self.counters.rx_frames, frames as u64);
        QueueCounters::add(&self.counters.rx_direct_frames, frames as u64);
        QueueCounters::add(&self.counters.rx_bytes, bytes);
        read
    }

    /// A TAP read failed with something other than "try again": log it,
    /// wait for the next edge. EFAULT means the kernel dequeued a frame it
    /// could not copy out: lost, and counted.
    fn read_failed(&mut self, e: &io::Error) {
        if e.raw_os_error() == Some(libc::EFAULT) {
            QueueCounters::add(&self.counters.rx_dropped_read_fault, 1);
        }
        warn!(
            "tap: {} queue {}: read failed: {e}",
            self.tap.name(),
            self.index
        );
        self.tap_readable = false;
    }

    /// Whether the guest wants an interrupt for what RX just published.
    fn rx_signal(&mut self, queue: &Queue, mem: &GuestMemoryMmap<()>) -> bool {
        match self.rx_used.needs_notification(queue, mem) {
            Ok(s) => s,
            Err(e) => {
                self.break_rx(&e);
                false
            }
        }
    }

    fn publish_aqm(&self) {
        if let Some(aqm) = &self.aqm {
            aqm.publish(&self.counters);
        }
    }

    /// FQ-CoDel mode: move every frame from the ring into the AQM, so that
    /// the reader never stops and the tun ring never fills.
    fn drain_ring_into_aqm(&mut self, hdr_len: usize) {
        let Some(aqm) = &mut self.aqm else { return };
        while let Some((slot, len)) = self.consumer.peek() {
            aqm.enqueue(self.slots.frame(slot, len.get()), hdr_len, &self.counters);
            if self.consumer.discard_one() == Woken::Yes {
                QueueCounters::add(&self.counters.rx_reader_wakes, 1);
            }
        }
    }

    /// Deliver frames (from the ring, or from FQ-CoDel in that mode) into
    /// guest RX chains. Returns the number of frames delivered.
    fn fill_guest(&mut self, queue: &mut Queue, map: &GuestMap<'_>, neg: Negotiated) -> usize {
        let (frames, bytes) = self.fill_guest_batch(queue, map, neg);
        // One used-index update and one counter update for the whole batch.
        if let Err(e) = self.rx_used.publish(queue, map.mem()) {
            self.break_rx(&e);
        }
        QueueCounters::add(&self.counters.rx_frames, frames as u64);
        QueueCounters::add(&self.counters.rx_bytes, bytes);
        frames
    }

    /// The loop of `fill_guest`: (frames delivered, their bytes without headers).
    fn fill_guest_batch(
        &mut self,
        queue: &mut Queue,
        map: &GuestMap<'_>,
        neg: Negotiated,
    ) -> (usize, u64) {
        let mut delivered = 0;
        let mut bytes = 0u64;
        while delivered < BUDGET {
            let (verdict, flen) = match &mut self.aqm {
                None => {
                    let Some((slot, len)) = self.consumer.peek() else {
                        return (delivered, bytes);
                    };
                    let frame = self.slots.frame(slot, len.get());
                    (
                        deliver(queue, map, neg, &mut self.chains, &mut self.rx_used, frame),
                        len.get(),
                    )
                }
                Some(aqm) => {
                    let Some(frame) = aqm.head(&self.counters) else {
                        return (delivered, bytes);
                    };
                    let n = frame.buf.len();
                    (
                        deliver(
                            queue,
                            map,
                            neg,
                            &mut self.chains,
                            &mut self.rx_used,
                            &mut frame.buf,
                        ),
                        n,
                    )
                }
            };
            match verdict {
                Ok(Delivery::Done) => {
                    delivered += 1;
                    bytes += flen.saturating_sub(neg.hdr_len) as u64;
                }
                Ok(Delivery::TooBig { len, capacity }) => {
                    QueueCounters::add(&self.counters.rx_dropped_too_big, 1);
                    log::debug!(
                        "rx: queue {}: dropped a {len}-byte frame larger than the guest's buffers ({capacity} bytes)",
                        self.index
                    );
                }
                Ok(Delivery::NoBuffers { seen }) => {
                    // Ask for a kick when the guest posts beyond the `seen`
                    // chains (too few for this frame), then look once more:
                    // it may have posted between our check and the request.
                    self.rx_kicks_on = true;
                    match arm_rx_notification(queue, map.mem(), seen) {
                        Ok(true) => continue,
                        Ok(false) => {
                            QueueCounters::add(&self.counters.rx_no_guest_buffers, 1);
                            return (delivered, bytes);
                        }
                        Err(e) => {
                            self.break_rx(&e);
                            return (delivered, bytes);
                        }
                    }
                }
                Err(why) => {
                    self.break_rx(&why);
                    return (delivered, bytes);
                }
            }
            // The frame left (delivered or dropped as undeliverable): release it.
            match &mut self.aqm {
                None => {
                    if self.consumer.discard_one() == Woken::Yes {
                        QueueCounters::add(&self.counters.rx_reader_wakes, 1);
                    }
                }
                Some(aqm) => aqm.release_head(),
            }
        }
        (delivered, bytes)
    }

    fn break_rx(&mut self, why: &str) {
        self.rx_broken = true;
        self.report_broken("RX", &self.counters.rx_queue_broken, why);
    }

    fn break_tx(&mut self, why: &str) {
        self.tx_broken = true;
        self.report_broken("TX", &self.counters.tx_queue_broken, why);
    }

    /// The one log line and counter of a queue the guest broke.
    fn report_broken(&self, dir: &str, counter: &std::sync::atomic::AtomicU64, why: &str) {
        error!(
            "{}: {} queue {}: guest {dir} queue broken, not served until the guest resets it: {why}",
            dir.to_lowercase(),
            self.tap.name(),
            self.index
        );
        QueueCounters::add(counter, 1);
    }

    /// Drain guest TX chains into the TAP. Returns whether work is left and
    /// whether the guest wants an interrupt.
    pub fn tx_run(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap<()>,
        neg: Negotiated,
    ) -> (RxOutcome, bool) {
        if self.tx_broken || self.tx_blocked {
            return (RxOutcome::Idle, false);
        }
        let map = &GuestMap::new(mem);
        if self.tx_kicks_on {
            // No kicks while we drain; turned on again when the ring looks empty.
            if let Err(e) = queue.disable_notification(mem) {
                self.break_tx(&format!("cannot disable notifications: {e}"));
                return (RxOutcome::Idle, false);
            }
            self.tx_kicks_on = false;
        }
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        let mut chain = self.chains.pop().unwrap_or_default();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut done = 0;
        let outcome = 'batch: loop {
            let used = UsedRing::of(queue);
            // One avail-index read per pass, not per chain.
            let mut iter = match queue.iter(mem) {
                Ok(iter) => iter,
                Err(e) => {
                    self.break_tx(&format!("bad avail ring: {e}"));
                    break RxOutcome::Idle;
                }
            };
            for dc in iter.by_ref() {
                if done >= BUDGET {
                    iter.go_to_previous_position();
                    break 'batch RxOutcome::MoreWork;
                }
                if let Err(e) = chain::walk(
                    map,
                    table,
                    size,
                    dc.head_index(),
                    Direction::Readable,
                    &mut chain,
                ) {
                    self.break_tx(&e.to_string());
                    break 'batch RxOutcome::Idle;
                }
                let total = chain.total_len as usize;
                let invalid = if total < neg.hdr_len + MIN_FRAME {
                    Some(&self.counters.tx_dropped_too_short)
                } else if total > neg.hdr_len + MAX_FRAME {
                    Some(&self.counters.tx_dropped_too_big)
                } else {
                    None
                };
                match invalid {
                    Some(counter) => {
                        QueueCounters::add(counter, 1);
                        log::debug!(
                            "tx: queue {}: dropped a {total}-byte chain (invalid length)",
                            self.index
                        );
                    }
                    None => match self.write_chain(map, &chain) {
                        Ok(true) => {
                            frames += 1;
                            bytes += (total - neg.hdr_len) as u64;
                        }
                        Ok(false) => {}
                        Err(TxError::Full) => {
                            // The chain stays in the guest's ring; EPOLLOUT resumes.
                            iter.go_to_previous_position();
                            self.tx_blocked = true;
                            QueueCounters::add(&self.counters.tx_tap_full, 1);
                            break 'batch RxOutcome::Idle;
                        }
                        Err(TxError::Broken(why)) => {
                            self.break_tx(&why);
                            break 'batch RxOutcome::Idle;
                        }
                    },
                }
                if let Err(e) = self.tx_used.push(&used, map, chain.head, 0) {
                    self.break_tx(&e);
                    break 'batch RxOutcome::Idle;
                }
                done += 1;
            }
            // The ring looked empty: publish, ask for a kick, look once more.
            if let Err(e) = self.tx_used.publish(queue, mem) {
                self.break_tx(&e);
                break RxOutcome::Idle;
            }
            self.tx_kicks_on = true;
            match queue.enable_notification(mem) {
                Ok(true) => {
                    // More came meanwhile: drain it with kicks off again.
                    if let Err(e) = queue.disable_notification(mem) {
                        self.break_tx(&format!("cannot disable notifications: {e}"));
                        break RxOutcome::Idle;
                    }
                    self.tx_kicks_on = false;
                    continue;
                }
                Ok(false) => break RxOutcome::Idle,
                Err(e) => {
                    self.break_tx(&format!("cannot enable notifications: {e}"));
                    break RxOutcome::Idle;
                }
            }
        };
        self.chains.push(chain);
        let c = &*self.counters;
        QueueCounters::add(&c.tx_frames, frames);
        QueueCounters::add(&c.tx_bytes, bytes);
        // One used-index update for the whole batch.
        if let Err(e) = self.tx_used.publish(queue, mem) {
            self.break_tx(&e);
        }
        let signal = match self.tx_used.needs_notification(queue, mem) {
            Ok(s) => s,
            Err(e) => {
                self.break_tx(&e);
                false
            }
        };
        (outcome, signal)
    }

    /// `writev` one checked chain straight from guest memory. `Ok(false)`:
    /// the TAP refused the frame for good (counted as `tx_dropped_tap_error`).
    fn write_chain(&mut self, map: &GuestMap<'_>, chain: &Chain) -> Result<bool, TxError> {
        self.iov.0.clear();
        guest_iovecs(map, std::slice::from_ref(chain), &mut self.iov.0).map_err(TxError::Broken)?;
        let q = self.tap.queue(self.index);
        loop {
            // SAFETY: every iovec was built just above by `guest_iovecs`,
            // each inside one mapped region of the memory `map` borrows (so
            // the mapping outlives this call); writev only reads them.
            let r = unsafe { q.writev_raw(&self.iov.0) };
            self.iov.0.clear();
            return match r {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(TxError::Full),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(TxError::Full),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    QueueCounters::add(&self.counters.tx_dropped_tap_error, 1);
                    log::debug!("tx: queue {}: the TAP refused a frame: {e}", self.index);
                    Ok(false)
                }
            };
        }
    }
}

/// Append host iovecs covering the segments of `chains` in guest memory,
/// merging neighbours: drivers usually put the header right before the
/// frame, and one iovec instead of two saves the kernel an iovec import.
fn guest_iovecs(
    map: &GuestMap<'_>,
    chains: &[Chain],
    iov: &mut Vec<libc::iovec>,
) -> Result<(), String> {
    let mut add = |base: *mut u8, len: usize| match iov.last_mut() {
        Some(prev) if (prev.iov_base as usize).wrapping_add(prev.iov_len) == base as usize => {
            prev.iov_len += len;
        }
        _ => iov.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }),
    };
    for seg in chains.iter().flat_map(|c| &c.segments) {
        let len = seg.len as usize;
        if let Some(p) = map.host(seg.addr, len) {
            add(p.as_ptr(), len);
            continue;
        }
        // Across regions: one iovec per region.
        for s in map.mem().get_slices(seg.addr, len) {
            let s = s.map_err(|e| format!("guest buffer unmapped: {e}"))?;
            add(s.ptr_guard_mut().as_ptr(), s.len());
        }
    }
    Ok(())
}

/// Copy the first `out.len()` bytes held by `chains` into `out`.
fn read_guest(mem: &GuestMemoryMmap<()>, chains: &[Chain], out: &mut [u8]) -> Result<(), String> {
    let mut off = 0usize;
    for seg in chains.iter().flat_map(|c| &c.segments) {
        if off == out.len() {
            break;
        }
        let n = (seg.len as usize).min(out.len() - off);
        vm_memory::Bytes::read_slice(mem, &mut out[off..off + n], seg.addr)
            .map_err(|e| format!("read from guest buffer failed: {e}"))?;
        off += n;
    }
    Ok(())
}

/// Write `bytes` at offset `at` of the data held by `chains` (which may
/// split it between segments).
fn write_guest_at(
    map: &GuestMap<'_>,
    chains: &[Chain],
    mut at: usize,
    mut bytes: &[u8],
) -> Result<(), String> {
    for seg in chains.iter().flat_map(|c| &c.segments) {
        if bytes.is_empty() {
            break;
        }
        let len = seg.len as usize;
        if at >= len {
            at -= len;
            continue;
        }
        let n = (len - at).min(bytes.len());
        map.write(seg.addr.unchecked_add(at as u64), &bytes[..n])?;
        bytes = &bytes[n..];
        at = 0;
    }
    Ok(())
}

/// Where a queue's used ring is, and its next used index: a snapshot taken
/// before borrowing the queue for its avail iterator.
struct UsedRing {
    addr: u64,
    size: u16,
    next_used: u16,
}

impl UsedRing {
    fn of(queue: &Queue) -> UsedRing {
        UsedRing {
            addr: queue.used_ring(),
            size: queue.size(),
            next_used: queue.next_used(),
        }
    }
}

/// Used-ring entries written one by one and published with a single
/// used-index store, so the guest sees a batch at once and the index cache
/// line is written once per batch instead of once per frame.
#[derive(Default)]
struct UsedBatch {
    /// Entries written beyond the queue's `next_used`.
    pending: u16,
    /// Entries published since the guest was last considered for an interrupt.
    unsignalled: u16,
}

impl UsedBatch {
    /// Write one used element `{id: head, len}` after those already pending.
    fn push(
        &mut self,
        ring: &UsedRing,
        map: &GuestMap<'_>,
        head: u16,
        len: u32,
    ) -> Result<(), String> {
        let size = ring.size;
        if size == 0 || self.pending >= size {
            return Err(format!(
                "more used entries pending ({}) than the queue holds ({size})",
                self.pending
            ));
        }
        let slot = ring.next_used.wrapping_add(self.pending) % size;
        let at = GuestAddress(ring.addr)
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or_else(|| "used ring address overflows".to_string())?;
        map.write_used(at, u32::from(head), len)?;
        self.pending += 1;
        Ok(())
    }

    /// Make the pending entries visible: one Release store of the used index.
    fn publish(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap<()>) -> Result<(), String> {
        if self.pending == 0 {
            return Ok(());
        }
        let next = queue.next_used().wrapping_add(self.pending);
        self.unsignalled = self.unsignalled.wrapping_add(self.pending);
        self.pending = 0;
        let at = GuestAddress(queue.used_ring())
            .checked_add(2)
            .ok_or_else(|| "used ring address overflows".to_string())?;
        // Release: the entries written by `push` are visible to the guest
        // before the index that covers them. Pairs with the driver's read
        // barrier between reading used->idx and the entries
        // (virtio_rmb in virtqueue_get_buf).
        vm_memory::Bytes::store(mem, next.to_le(), at, std::sync::atomic::Ordering::Release)
            .map_err(|e| format!("cannot publish the used index: {e}"))?;
        queue.set_next_used(next);
        Ok(())
    }

    /// Whether the guest wants an interrupt for the entries published since
    /// the last call: with EVENT_IDX, when its `used_event` lies in that
    /// range (the kernel's `vring_need_event`); without, unless it set
    /// `VRING_AVAIL_F_NO_INTERRUPT`.
    fn needs_notification(
        &mut self,
        queue: &Queue,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, String> {
        let added = std::mem::take(&mut self.unsignalled);
        if added == 0 {
            return Ok(false);
        }
        let new = queue.next_used();
        let old = new.wrapping_sub(added);
        // SeqCst fence: our used-index store must be visible before we read
        // the guest's used_event/flags, while the guest writes used_event and
        // then re-reads the used index (virtio_mb in
        // virtqueue_enable_cb_delayed). Store-buffering: one side sees the other.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let avail = GuestAddress(queue.avail_ring());
        if queue.event_idx_enabled() {
            let at = avail
                .checked_add(4 + 2 * u64::from(queue.size()))
                .ok_or_else(|| "avail ring address overflows".to_string())?;
            let used_event: u16 =
                vm_memory::Bytes::load(mem, at, std::sync::atomic::Ordering::Relaxed)
                    .map(u16::from_le)
                    .map_err(|e| format!("cannot read used_event: {e}"))?;
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags: u16 =
                vm_memory::Bytes::load(mem, avail, std::sync::atomic::Ordering::Relaxed)
                    .map(u16::from_le)
                    .map_err(|e| format!("cannot read avail flags: {e}"))?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want interrupts (without EVENT_IDX).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

enum Delivery {
    Done,
    /// Larger than the guest's buffers can ever hold.
    TooBig {
        len: usize,
        capacity: usize,
    },
    /// The `seen` available chains cannot hold the frame (they are put back).
    NoBuffers {
        seen: u16,
    },
}

/// What `gather_rx_chains` took for one frame.
struct Gathered {
    /// Chains taken from the avail ring (walked into `chains[..taken]`).
    taken: usize,
    /// Bytes they hold.
    capacity: usize,
    /// Buffers (descriptors) they have.
    segments: usize,
}

/// Take and walk avail RX chains into `chains[..]` until they hold `want`
/// bytes, the avail snapshot runs dry, or they reach `max_segments` buffers;
/// one chain only without MRG_RXBUF. `Err`: a chain is malformed (the guest
/// broke the queue).
fn gather_rx_chains(
    iter: &mut AvailIter<'_, &GuestMemoryMmap<()>>,
    map: &GuestMap<'_>,
    (table, size): (GuestAddress, u16),
    mrg_rxbuf: bool,
    want: usize,
    max_segments: usize,
    chains: &mut Vec<Chain>,
) -> Result<Gathered, String> {
    let mut g = Gathered {
        taken: 0,
        capacity: 0,
        segments: 0,
    };
    while g.capacity < want {
        let Some(dc) = iter.next() else { break };
        if chains.len() <= g.taken {
            chains.push(Chain::default());
        }
        let c = &mut chains[g.taken];
        chain::walk(map, table, size, dc.head_index(), Direction::Writable, c)
            .map_err(|e| e.to_string())?;
        g.taken += 1;
        g.capacity += c.total_len as usize;
        g.segments += c.segments.len();
        if !mrg_rxbuf || g.segments >= max_segments {
            break;
        }
    }
    Ok(g)
}

/// Give the last `n` chains taken back to the avail ring (`next_avail` rewound).
fn put_back(iter: &mut AvailIter<'_, &GuestMemoryMmap<()>>, n: usize) {
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
fn arm_rx_notification(
    queue: &mut Queue,
    mem: &GuestMemoryMmap<()>,
    seen: u16,
) -> Result<bool, String> {
    use std::sync::atomic::Ordering;
    // Turns kicks on (flags, or avail_event = next_avail with EVENT_IDX).
    queue
        .enable_notification(mem)
        .map_err(|e| format!("cannot enable notifications: {e}"))?;
    let want = queue.next_avail().wrapping_add(seen);
    if queue.event_idx_enabled() {
        let at = GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(queue.size()))
            .ok_or_else(|| "used ring address overflows".to_string())?;
        vm_memory::Bytes::store(mem, want.to_le(), at, Ordering::Relaxed)
            .map_err(|e| format!("cannot write avail_event: {e}"))?;
    }
    // SeqCst fence: avail_event must be visible before we re-read the avail
    // index, while the guest publishes its avail index and then reads
    // avail_event (virtio_mb in virtqueue_kick_prepare). Store-buffering:
    // either we see its new chains or it sees our request and kicks.
    std::sync::atomic::fence(Ordering::SeqCst);
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| format!("cannot read the avail index: {e}"))?;
    Ok(avail.0.wrapping_sub(queue.next_avail()) > seen)
}

/// Put `frame` (virtio-net header included) into guest RX chains: gather
/// chains until they hold it (several with MRG_RXBUF), set `num_buffers`,
/// copy, publish one used entry per chain. On `NoBuffers`/`TooBig` every
/// chain taken is put back. `Err` means the guest broke the queue.
fn deliver(
    queue: &mut Queue,
    map: &GuestMap<'_>,
    neg: Negotiated,
    chains: &mut Vec<Chain>,
    used: &mut UsedBatch,
    frame: &mut [u8],
) -> Result<Delivery, String> {
    let len = frame.len();
    let table = GuestAddress(queue.desc_table());
    let size = queue.size();
    let ring = UsedRing::of(queue);
    let (taken, capacity);
    {
        let mut iter = queue
            .iter(map.mem())
            .map_err(|e| format!("bad avail ring: {e}"))?;
        let g = gather_rx_chains(
            &mut iter,
            map,
            (table, size),
            neg.mrg_rxbuf,
            len,
            usize::MAX,
            chains,
        )?;
        (taken, capacity) = (g.taken, g.capacity);
        if capacity < len {
            let never = !neg.mrg_rxbuf && taken == 1 || taken >= usize::from(size);
            put_back(&mut iter, taken);
            return Ok(if never {
                Delivery::TooBig { len, capacity }
            } else {
                Delivery::NoBuffers { seen: taken as u16 }
            });
        }
    }

    // The frame fits: set num_buffers, copy, publish.
    if neg.hdr_len == 12 {
        let nb = if neg.mrg_rxbuf { taken as u16 } else { 1 };
        frame[10..12].copy_from_slice(&nb.to_le_bytes());
    }
    let mut off = 0usize;
    for c in &chains[..taken] {
        let start = off;
        for seg in &c.segments {
            if off == len {
                break;
            }
            let n = (seg.len as usize).min(len - off);
            // walk() checked the range; a failure here means the memory map changed.
            map.write(seg.addr, &frame[off..off + n])?;
            off += n;
        }
        used.push(&ring, map, c.head, (off - start) as u32)?;
    }
    Ok(Delivery::Done)
}

enum TxError {
    Full,
    Broken(String),
}

/// A frame waiting in FQ-CoDel: the virtio-net header, then the Ethernet frame.
pub struct QueuedFrame {
    buf: Vec<u8>,
    hdr_len: usize,
}

impl fq_codel::Packet for QueuedFrame {
    fn frame(&self) -> &[u8] {
        &self.buf[self.hdr_len.min(self.buf.len())..]
    }
    fn frame_mut(&mut self) -> &mut [u8] {
        let h = self.hdr_len.min(self.buf.len());
        &mut self.buf[h..]
    }
}

/// FQ-CoDel mode's queue: frames read from the TAP wait here while the guest
/// is slow; CoDel decides at the head, flows are served round-robin.
struct Aqm {
    fq: fq_codel::FqCodel<QueuedFrame>,
    /// Dequeued (CoDel already judged it) but not delivered yet: the guest had no buffers.
    head: Option<QueuedFrame>,
    dropped: Vec<QueuedFrame>,
    origin: std::time::Instant,
}

impl Aqm {
    fn new(cfg: fq_codel::Config) -> Aqm {
        Aqm {
            fq: fq_codel::FqCodel::new(cfg),
            head: None,
            dropped: Vec::new(),
            origin: std::time::Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn enqueue(&mut self, frame: &[u8], hdr_len: usize, c: &QueueCounters) {
        let now = self.now_ns();
        let pkt = QueuedFrame {
            buf: frame.to_vec(),
            hdr_len,
        };
        self.fq.enqueue(pkt, now, &mut self.dropped);
        if !self.dropped.is_empty() {
            QueueCounters::add(&c.rx_aqm_overlimit_drops, self.dropped.len() as u64);
            self.dropped.clear();
        }
    }

    /// The next frame for the guest, dequeued if there is none waiting.
    fn head(&mut self, c: &QueueCounters) -> Option<&mut QueuedFrame> {
        if self.head.is_none() {
            let now = self.now_ns();
            self.head = self.fq.dequeue(now, &mut self.dropped);
            if !self.dropped.is_empty() {
                QueueCounters::add(&c.rx_aqm_codel_drops, self.dropped.len() as u64);
                self.dropped.clear();
            }
        }
        self.head.as_mut()
    }

    fn release_head(&mut self) {
        self.head = None;
    }

    fn is_empty(&self) -> bool {
        self.head.is_none() && self.fq.is_empty()
    }

    /// Empty the queue; returns how many frames were in it.
    fn clear(&mut self) -> usize {
        let mut out = Vec::new();
        self.fq.clear(&mut out);
        out.len() + usize::from(self.head.take().is_some())
    }

    /// Refresh the gauges.
    fn publish(&self, c: &QueueCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        let head = self.head.as_ref();
        c.rx_aqm_backlog_frames.store(
            (self.fq.len() + usize::from(head.is_some())) as u64,
            Relaxed,
        );
        c.rx_aqm_backlog_bytes.store(
            (self.fq.backlog_bytes() + head.map_or(0, |h| h.buf.len())) as u64,
            Relaxed,
        );
        let st = self.fq.stats();
        c.rx_aqm_ecn_marks.store(st.ecn_marks, Relaxed);
        c.rx_aqm_flows.store(st.flows_active as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Segment;

    fn host(mem: &GuestMemoryMmap<()>, addr: u64) -> usize {
        mem.get_host_address(GuestAddress(addr)).unwrap() as usize
    }

    #[test]
    fn guest_iovecs_split_a_buffer_across_regions_and_merge_neighbours() {
        let mem = crate::guestmap::tests::adjacent_regions();
        let map = GuestMap::new(&mem);
        let chain = Chain {
            head: 0,
            // Header right before the frame (merged), then a buffer across
            // the regions' border (split).
            segments: vec![
                Segment {
                    addr: GuestAddress(0x100),
                    len: 12,
                },
                Segment {
                    addr: GuestAddress(0x10c),
                    len: 64,
                },
                Segment {
                    addr: GuestAddress(0xf00),
                    len: 0x200,
                },
            ],
            total_len: 12 + 64 + 0x200,
        };
        let mut iov = Vec::new();
        guest_iovecs(&map, std::slice::from_ref(&chain), &mut iov).unwrap();
        let got: Vec<(usize, usize)> = iov
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect();
        let mut want = vec![(host(&mem, 0x100), 76), (host(&mem, 0xf00), 0x100)];
        let second = (host(&mem, 0x1000), 0x100);
        // The two mappings may happen to be adjacent in our address space too.
        if want[1].0 + 0x100 == second.0 {
            want[1].1 += 0x100;
        } else {
            want.push(second);
        }
        assert_eq!(got, want);

        // A buffer outside guest memory is refused, not turned into an iovec.
        let bad = Chain {
            head: 1,
            segments: vec![Segment {
                addr: GuestAddress(0x1f00),
                len: 0x200,
            }],
            total_len: 0x200,
        };
        iov.clear();
        assert!(guest_iovecs(&map, std::slice::from_ref(&bad), &mut iov).is_err());
    }
}
