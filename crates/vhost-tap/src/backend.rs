//! The vhost-user-net backend: features, config space, one worker per
//! queue pair, and the dispatch of vring kicks and TAP events to the
//! data path.
//!
//! A `NetBackend` lives for one frontend connection; the device's TAP,
//! queue pairs (with the frames waiting in their rings) and counters
//! outlive it in [`Device`], so a guest that reconnects finds them as they
//! were.
//!
//! Each worker has an epoll of its own (vhost-user-backend's
//! `VringEpollHandler`) and so its own event ids: its two vrings
//! ([`RX_KICK`], [`TX_KICK`]), the library's exit event at `num_queues`,
//! and ours above it ([`WorkerEvent`]).
//!
//! A worker confines itself ([`crate::seccomp`]) at its first event, which
//! [`NetBackend::register`] makes come at once (a `resume` write): before
//! any guest memory is mapped or any frame moves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use log::{error, info};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::counters::QueueCounters;
use crate::datapath::{Negotiated, Pass};
use crate::device::Device;
use crate::guest::fault::Registration;
use crate::seccomp;

/// The virtio features the backend offers: virtio-net's with the
/// offloads both ways, mergeable RX buffers, multi-queue, and the ring
/// features the data path implements.
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_MQ
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN;

/// Event id of a worker's RX vring (its first), as the library numbers them.
pub const RX_KICK: u16 = 0;
/// Event id of a worker's TX vring (its second).
pub const TX_KICK: u16 = 1;

/// The events a worker waits on besides its vring kicks, with ids above
/// those the library reserves (its vrings and its exit event, `0..=num_queues`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorkerEvent {
    /// The pair's TAP queue fd (edge-triggered, IN and OUT).
    Tap,
    /// The pair's `resume` eventfd: the worker left work for later.
    Resume,
    /// The pair's RX / TX rate-limit timer: tokens have refilled.
    RxTimer,
    TxTimer,
}

impl WorkerEvent {
    const ALL: [WorkerEvent; 4] = [
        WorkerEvent::Tap,
        WorkerEvent::Resume,
        WorkerEvent::RxTimer,
        WorkerEvent::TxTimer,
    ];

    fn id(self, num_queues: usize) -> u16 {
        num_queues as u16 + 1 + self as u16
    }

    fn from_id(id: u16, num_queues: usize) -> Option<WorkerEvent> {
        Self::ALL.into_iter().find(|e| e.id(num_queues) == id)
    }
}

/// Which vring of a pair a pass served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Rx,
    Tx,
}

/// A one-shot timer whose read never blocks: a pass may re-arm it between
/// epoll reporting it and the worker reading it, and the worker must not
/// then wait for the new expiry.
fn timer() -> io::Result<TimerFd> {
    let t = TimerFd::new()?;
    // SAFETY: F_SETFL on a descriptor `t` owns and keeps open; it changes
    // only the file's status flags, no memory.
    if unsafe { libc::fcntl(t.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

/// A pair's rate-limit timers, RX and TX (only for a limited device).
struct Timers([Mutex<TimerFd>; 2]);

impl Timers {
    fn new() -> io::Result<Timers> {
        Ok(Timers([Mutex::new(timer()?), Mutex::new(timer()?)]))
    }

    fn of(&self, dir: Dir) -> std::sync::MutexGuard<'_, TimerFd> {
        self.0[dir as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The TAP offloads that match what the guest acked: what the TAP may hand
/// us is what the guest accepts. Public for the `vnet_header` fuzz target.
pub fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut off = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        off |= tap::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            off |= tap::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            off |= tap::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN)
            && (has(VIRTIO_NET_F_GUEST_TSO4) || has(VIRTIO_NET_F_GUEST_TSO6))
        {
            off |= tap::TUN_F_TSO_ECN;
        }
    }
    off
}

/// Guest memory as the rust-vmm crates pass it around (no dirty bitmap: no live migration).
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// One memory table and its SIGBUS registration.
struct Memory {
    mem: GuestMem,
    fault: Registration,
}

/// The `VhostUserBackend` of one connection.
pub struct NetBackend {
    device: Arc<Device>,
    mem: RwLock<Option<Memory>>,
    /// A memory fault was reported for this connection (one log line).
    fault_logged: AtomicBool,
    acked: AtomicU64,
    features_acked: AtomicBool,
    /// One per queue pair: written when a worker leaves work for later.
    resume: Vec<EventFd>,
    /// One per worker thread: the library writes it to stop the worker.
    exits: Vec<(EventConsumer, EventNotifier)>,
    /// One per queue pair when the device has a rate limit: a pass the
    /// limit held back arms its direction's timer.
    timers: Vec<Timers>,
}

impl NetBackend {
    pub fn new(device: Arc<Device>) -> io::Result<NetBackend> {
        for i in 0..device.pairs.len() {
            device.pair(i).reset_for_connection();
        }
        let resume = (0..device.pairs.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        let exits = (0..device.pairs.len())
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC))
            .collect::<io::Result<_>>()?;
        let s = &device.settings;
        let timers = if s.rx_limit.is_unlimited() && s.tx_limit.is_unlimited() {
            Vec::new()
        } else {
            (0..device.pairs.len())
                .map(|_| Timers::new())
                .collect::<io::Result<_>>()?
        };
        Ok(NetBackend {
            exits,
            timers,
            device,
            mem: RwLock::new(None),
            fault_logged: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            features_acked: AtomicBool::new(false),
            resume,
        })
    }

    /// Add each pair's TAP queue fd and resume eventfd to its worker's
    /// epoll, and wake each worker once so that it confines itself now.
    pub fn register(&self, handlers: &[Arc<VringEpollHandler<Arc<NetBackend>>>]) -> io::Result<()> {
        let nq = self.num_queues();
        for (p, h) in handlers.iter().enumerate().take(self.device.pairs.len()) {
            let fd = std::os::fd::AsRawFd::as_raw_fd(self.device.tap.queue(p));
            h.register_listener(
                fd,
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                u64::from(WorkerEvent::Tap.id(nq)),
            )?;
            h.register_listener(
                std::os::fd::AsRawFd::as_raw_fd(&self.resume[p]),
                EventSet::IN,
                u64::from(WorkerEvent::Resume.id(nq)),
            )?;
            if let Some(t) = self.timers.get(p) {
                for (dir, ev) in [
                    (Dir::Rx, WorkerEvent::RxTimer),
                    (Dir::Tx, WorkerEvent::TxTimer),
                ] {
                    h.register_listener(t.of(dir).as_raw_fd(), EventSet::IN, u64::from(ev.id(nq)))?;
                }
            }
            self.resume[p].write(1)?;
        }
        Ok(())
    }

    /// Count the system calls the filter refused on this worker (pair
    /// `p`); log the first of each worker.
    fn report_refused(&self, p: usize, r: seccomp::Refused) {
        QueueCounters::add(&self.device.counters[p].syscalls_refused, r.count);
        if r.first {
            error!(
                "{}: queue {p}: seccomp refused system call {} on this worker (it failed with EPERM); \
                 a call missing from the allowlist or an attack (docs/security.md); \
                 further refusals of this worker are only counted (syscalls_refused)",
                self.device.settings.name, r.last
            );
        }
    }

    fn negotiated(&self) -> Negotiated {
        Negotiated::from_features(self.acked.load(Ordering::Acquire))
    }

    /// The guest memory for a pass, or `None` while there is none — or
    /// while a region of it has faulted (see `guest/fault.rs`): then every
    /// queue pair stops, with one log line, until a new memory table.
    fn memory(&self) -> Option<vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap<()>>> {
        let g = self.mem.read().unwrap_or_else(|p| p.into_inner());
        let m = g.as_ref()?;
        if let Some((host, len)) = m.fault.faulted() {
            self.memory_faulted(host, len);
            return None;
        }
        Some(m.mem.memory())
    }

    /// A region the frontend shrank under us: stop every queue, say so once.
    fn memory_faulted(&self, host: usize, len: usize) {
        // Relaxed: only one log line is at stake, not any other memory.
        if !self.fault_logged.swap(true, Ordering::Relaxed) {
            error!(
                "{}: the frontend shrank the file behind guest memory at host {host:#x} ({len} bytes) while it was in use (SIGBUS, contained: the region now reads as zeros); every queue stops until the frontend sends a new memory table or reconnects",
                self.device.settings.name
            );
            for p in 0..self.device.pairs.len() {
                QueueCounters::add(&self.device.counters[p].guest_memory_faults, 1);
            }
        }
    }

    /// `vrings`: this pair's RX and TX vrings (the worker's share).
    fn run_rx(&self, p: usize, vrings: &[VringRwLock<GuestMem>]) {
        let Some(mem) = self.memory() else { return };
        // Until the header size is known, frames wait in the kernel.
        if !self.features_acked.load(Ordering::Acquire) {
            return;
        }
        let neg = self.negotiated();
        let mut pair = self.device.pair(p);
        let mut vring = vrings[0].get_mut();
        // Not ready: the reader still fills the ring (and stops when it is full).
        let ready = vring.get_queue().ready() && vring.is_enabled();
        let pass = pair.rx_run(vring.get_queue_mut(), &mem, neg, ready);
        self.finish(p, Dir::Rx, pass, &vring, &pair.counters.rx_interrupts);
    }

    fn run_tx(&self, p: usize, vrings: &[VringRwLock<GuestMem>]) {
        let Some(mem) = self.memory() else { return };
        let neg = self.negotiated();
        let mut pair = self.device.pair(p);
        let mut vring = vrings[1].get_mut();
        if !(vring.get_queue().ready() && vring.is_enabled()) {
            return;
        }
        let pass = pair.tx_run(vring.get_queue_mut(), &mem, neg);
        self.finish(p, Dir::Tx, pass, &vring, &pair.counters.tx_interrupts);
    }

    /// After a pass: interrupt the guest if the data path decided it wants
    /// one, come back through `resume` if work was left, and through the
    /// direction's timer if the rate limit held frames back.
    fn finish(
        &self,
        p: usize,
        dir: Dir,
        pass: Pass,
        vring: &vhost_user_backend::VringState<GuestMem>,
        interrupts: &AtomicU64,
    ) {
        if pass.interrupt {
            QueueCounters::add(interrupts, 1);
            if let Err(e) = vring.signal_used_queue() {
                error!(
                    "{}: queue {p}: cannot signal the guest: {e}",
                    self.device.settings.name
                );
            }
        }
        if let (Some(wait), Some(t)) = (pass.wait, self.timers.get(p)) {
            // One-shot; re-armed by every held pass, so it fires once the
            // tokens the last pass asked for are there.
            if let Err(e) = t.of(dir).reset(wait, None) {
                error!(
                    "{}: queue {p}: cannot arm the rate-limit timer: {e}; resuming at once",
                    self.device.settings.name
                );
                let _ = self.resume[p].write(1);
            }
        }
        if pass.work_left {
            if let Err(e) = self.resume[p].write(1) {
                // Only an overflowing counter fails; then a wake-up is pending anyway.
                log::debug!(
                    "{}: queue {p}: resume event: {e}",
                    self.device.settings.name
                );
            }
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMem>;

    fn num_queues(&self) -> usize {
        self.device.settings.queue_pairs * 2
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.settings.queue_size)
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, f: u64) {
        self.acked.store(f, Ordering::Release);
        let name = &self.device.settings.name;
        let hdr = Negotiated::from_features(f).hdr_len;
        if let Err(e) = self.device.tap.set_vnet_hdr_size(hdr as i32) {
            error!("{name}: cannot set the TAP's vnet header size to {hdr}: {e}");
        }
        let off = tap_offloads(f);
        if let Err(e) = self.device.tap.set_offload(off) {
            error!("{name}: cannot set TAP offloads {off:#x}: {e}");
        }
        info!("{name}: guest acked features {f:#x}, TAP offloads {off:#x}, header {hdr} bytes");
        self.features_acked.store(true, Ordering::Release);
        // Frames may have waited for the header size to be known.
        for r in &self.resume {
            let _ = r.write(1);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Vrings 2p and 2p + 1 are pair p's RX and TX.
        let p = queue_index as usize / 2;
        if p >= self.device.pairs.len() {
            return Ok(());
        }
        let mut pair = self.device.pair(p);
        let (dir, was_broken) = if queue_index & 1 == 0 {
            ("RX", pair.reset_rx())
        } else {
            ("TX", pair.reset_tx())
        };
        if was_broken {
            info!(
                "{}: queue {p}: the guest reset its broken {dir} queue; it is served again once enabled",
                self.device.settings.name
            );
        }
        Ok(())
    }

    fn reset_device(&self) {
        for p in 0..self.device.pairs.len() {
            let mut pair = self.device.pair(p);
            let _ = pair.reset_rx();
            let _ = pair.reset_tx();
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let s = &self.device.settings;
        let mut cfg = Vec::with_capacity(12);
        cfg.extend_from_slice(&s.mac);
        cfg.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg.extend_from_slice(&(s.queue_pairs as u16).to_le_bytes());
        cfg.extend_from_slice(&s.mtu.to_le_bytes());
        let start = (offset as usize).min(cfg.len());
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        // Registered before it is used; the previous table's registration
        // drops (unregisters) after the swap.
        let fault = Registration::new(&mem.memory());
        let old = self
            .mem
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Memory { mem, fault });
        drop(old);
        self.fault_logged.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.settings.queue_pairs)
            .map(|p| 0b11u64 << (2 * p))
            .collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exits.get(thread_index)?;
        // vhost-user-backend 0.24 puts the consumer into its worker's epoll
        // with `into_raw_fd` and never closes it: a dup handed over here
        // leaked one fd per worker per connection (a daemon whose guest
        // reboots every few minutes ran out of fds within days). So the
        // library gets our own fd number, which `self.exits` keeps owning
        // and closes when this backend drops: after every worker is gone,
        // since each holds an `Arc` of the backend.
        // SAFETY: `c` owns an open eventfd for as long as `self` lives. The
        // library (pinned to =0.24.0 in the workspace manifest because of
        // this) only turns the lent consumer into a raw fd for epoll and
        // never closes it, so the fd is closed exactly once, by `c`.
        let lent = unsafe { EventConsumer::from_raw_fd(c.as_raw_fd()) };
        Some((lent, n.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // First of all, before anything a guest wrote is looked at.
        seccomp::confine_worker(&self.device.settings.name, thread_id);
        // One worker per queue pair: `vrings` holds that pair's RX and TX
        // vrings, and vring events carry indexes into it.
        if vrings.len() != 2 || thread_id >= self.device.pairs.len() {
            return Ok(());
        }
        let p = thread_id;
        let c = &self.device.counters[p];
        match device_event {
            RX_KICK => {
                QueueCounters::add(&c.rx_kicks, 1);
                self.run_rx(p, vrings);
            }
            TX_KICK => {
                QueueCounters::add(&c.tx_kicks, 1);
                self.run_tx(p, vrings);
            }
            id => match WorkerEvent::from_id(id, self.num_queues()) {
                Some(WorkerEvent::Tap) => {
                    // Edge-triggered: remember what it said.
                    {
                        let mut pair = self.device.pair(p);
                        if evset.contains(EventSet::IN) {
                            pair.tap_readable();
                        }
                        if evset.contains(EventSet::OUT) {
                            pair.tap_writable();
                        }
                    }
                    if evset.contains(EventSet::OUT) {
                        self.run_tx(p, vrings);
                    }
                    if evset.contains(EventSet::IN) {
                        self.run_rx(p, vrings);
                    }
                }
                Some(WorkerEvent::Resume) => {
                    let _ = self.resume[p].read();
                    self.run_tx(p, vrings);
                    self.run_rx(p, vrings);
                }
                Some(ev @ (WorkerEvent::RxTimer | WorkerEvent::TxTimer)) => {
                    let dir = if ev == WorkerEvent::RxTimer {
                        Dir::Rx
                    } else {
                        Dir::Tx
                    };
                    if let Some(t) = self.timers.get(p) {
                        // Expired: read its count so that epoll stops reporting
                        // it (EAGAIN if a pass re-armed it meanwhile).
                        let _ = t.of(dir).wait();
                    }
                    match dir {
                        Dir::Rx => self.run_rx(p, vrings),
                        Dir::Tx => self.run_tx(p, vrings),
                    }
                }
                None => {}
            },
        }
        if let Some(r) = seccomp::refused() {
            self.report_refused(p, r);
        }
        Ok(())
    }
}
