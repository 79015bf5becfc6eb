//! The vhost-user-net backend: features, config space, one worker per
//! queue pair, and the dispatch of vring kicks and TAP events to the
//! data path.
//!
//! A `NetBackend` lives for one frontend connection; the device's TAP,
//! queue pairs (with the frames waiting in their rings) and counters
//! outlive it in [`Device`], so a guest that reconnects finds them as they
//! were.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use log::{error, info};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::QueueCounters;
use crate::datapath::{Negotiated, QueuePair, RxOutcome};

/// Guest memory as the rust-vmm crates pass it around (no dirty bitmap: no live migration).
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// virtio-net and virtio feature bits.
pub mod features {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const MQ: u64 = 1 << 22;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
}

/// What a device is, independent of any connection.
#[derive(Clone, Debug)]
pub struct DeviceSettings {
    pub name: String,
    pub queue_pairs: usize,
    pub queue_size: u16,
    pub ring_size: usize,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// The queue mode in effect, after `auto` was resolved.
    pub mode: crate::config::Mode,
    /// FQ-CoDel parameters, for `Mode::FqCodel`.
    pub fq: crate::config::FqSettings,
}

impl DeviceSettings {
    /// The FQ-CoDel configuration of one queue pair, if the mode uses it.
    pub fn aqm(&self) -> Option<fq_codel::Config> {
        (self.mode == crate::config::Mode::FqCodel).then(|| fq_codel::Config {
            flows: self.fq.flows,
            limit: self.fq.limit,
            memory_limit: self.fq.memory_limit,
            quantum: usize::from(self.mtu) + 14,
            ecn: self.fq.ecn,
            seed: seed(),
            ..fq_codel::Config::default()
        })
    }
}

/// A per-process hash perturbation for FQ-CoDel's flow hashing, so flows
/// cannot be steered into one bucket by someone who knows the hash.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// A device: its TAP, queue pairs and counters. Shared by the connections
/// that come and go.
pub struct Device {
    pub settings: DeviceSettings,
    pub tap: Arc<tap::Tap>,
    pub pairs: Vec<Mutex<QueuePair>>,
    pub counters: Vec<Arc<QueueCounters>>,
}

impl Device {
    pub fn new(settings: DeviceSettings, tap: tap::Tap) -> Device {
        let tap = Arc::new(tap);
        let pairs: Vec<_> = (0..settings.queue_pairs)
            .map(|i| QueuePair::new(i, tap.clone(), settings.ring_size, settings.aqm()))
            .collect();
        let counters = pairs.iter().map(|p| p.counters.clone()).collect();
        Device {
            settings,
            tap,
            pairs: pairs.into_iter().map(Mutex::new).collect(),
            counters,
        }
    }

    /// Every queue's counters, then one line for the device: the mode and
    /// the kernel's tun tail drops (the TAP's `tx_dropped`).
    pub fn report(&self) -> String {
        let qs: Vec<&QueueCounters> = self.counters.iter().map(|c| &**c).collect();
        let mut r = crate::counters::report(&self.settings.name, &qs);
        let tail = self
            .tap
            .tx_dropped()
            .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
        r.push_str(&format!(
            "tap={} mode={} tap_tx_dropped={tail}\n",
            self.tap.name(),
            self.settings.mode.name()
        ));
        r
    }

    /// The structured form of [`Device::report`], for tools.
    pub fn report_json(
        &self,
        event: crate::counters::ReportEvent,
    ) -> crate::counters::DeviceReport {
        crate::counters::DeviceReport {
            event,
            device: self.settings.name.clone(),
            tap: self.tap.name().to_string(),
            mode: self.settings.mode.name().to_string(),
            tap_tx_dropped: self.tap.tx_dropped().ok(),
            queues: self
                .counters
                .iter()
                .enumerate()
                .map(|(i, c)| crate::counters::QueueReport::of(i, c))
                .collect(),
        }
    }

    /// Log both forms of the counters: the human lines, then the JSON line.
    pub fn log_report(&self, event: crate::counters::ReportEvent, title: &str) {
        info!("{title}:\n{}", self.report().trim_end());
        info!("{}", self.report_json(event).to_log_line());
    }

    /// Lock a queue pair, recovering it if a worker panicked while holding it.
    pub fn pair(&self, i: usize) -> std::sync::MutexGuard<'_, QueuePair> {
        self.pairs[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `VhostUserBackend` of one connection.
pub struct NetBackend {
    device: Arc<Device>,
    mem: RwLock<Option<GuestMem>>,
    acked: AtomicU64,
    features_acked: AtomicBool,
    /// One per queue pair: written when a worker leaves work for later.
    resume: Vec<EventFd>,
    /// One per worker thread: the library writes it to stop the worker.
    exits: Vec<(EventConsumer, EventNotifier)>,
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
        Ok(NetBackend {
            exits,
            device,
            mem: RwLock::new(None),
            acked: AtomicU64::new(0),
            features_acked: AtomicBool::new(false),
            resume,
        })
    }

    fn event_base(&self) -> u16 {
        // Ids 0..num_queues are the vrings, num_queues is the exit event.
        (self.num_queues() + 1) as u16
    }

    /// Add the TAP queue fds and resume eventfds to the workers' epolls.
    pub fn register(&self, handlers: &[Arc<VringEpollHandler<Arc<NetBackend>>>]) -> io::Result<()> {
        let base = u64::from(self.event_base());
        for (p, h) in handlers.iter().enumerate().take(self.device.pairs.len()) {
            let fd = std::os::fd::AsRawFd::as_raw_fd(self.device.tap.queue(p));
            h.register_listener(
                fd,
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                base + 2 * p as u64,
            )?;
            h.register_listener(
                std::os::fd::AsRawFd::as_raw_fd(&self.resume[p]),
                EventSet::IN,
                base + 2 * p as u64 + 1,
            )?;
        }
        Ok(())
    }

    fn negotiated(&self) -> Negotiated {
        let f = self.acked.load(Ordering::Acquire);
        Negotiated {
            hdr_len: if f & (features::VERSION_1 | features::MRG_RXBUF) != 0 {
                12
            } else {
                10
            },
            mrg_rxbuf: f & features::MRG_RXBUF != 0,
        }
    }

    fn memory(&self) -> Option<vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap<()>>> {
        self.mem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.memory())
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
        let (outcome, signal) = pair.rx_run(vring.get_queue_mut(), &mem, neg, ready);
        if signal {
            self.notify(&vring, &pair.counters.rx_interrupts);
        }
        if outcome == RxOutcome::MoreWork {
            let _ = self.resume[p].write(1);
        }
    }

    fn run_tx(&self, p: usize, vrings: &[VringRwLock<GuestMem>]) {
        let Some(mem) = self.memory() else { return };
        let neg = self.negotiated();
        let mut pair = self.device.pair(p);
        let mut vring = vrings[1].get_mut();
        if !(vring.get_queue().ready() && vring.is_enabled()) {
            return;
        }
        let (outcome, signal) = pair.tx_run(vring.get_queue_mut(), &mem, neg);
        if signal {
            self.notify(&vring, &pair.counters.tx_interrupts);
        }
        if outcome == RxOutcome::MoreWork {
            let _ = self.resume[p].write(1);
        }
    }

    /// Interrupt the guest (the data path decided it wants one).
    fn notify(&self, vring: &vhost_user_backend::VringState<GuestMem>, counter: &AtomicU64) {
        QueueCounters::add(counter, 1);
        if let Err(e) = vring.signal_used_queue() {
            error!(
                "{}: cannot signal the guest: {e}",
                self.device.settings.name
            );
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
        use features::*;
        VERSION_1
            | MAC
            | STATUS
            | MTU
            | MQ
            | MRG_RXBUF
            | RING_EVENT_IDX
            | RING_INDIRECT_DESC
            | CSUM
            | GUEST_CSUM
            | HOST_TSO4
            | HOST_TSO6
            | HOST_ECN
            | GUEST_TSO4
            | GUEST_TSO6
            | GUEST_ECN
            | PROTOCOL_FEATURES
    }

    fn acked_features(&self, f: u64) {
        use features::*;
        self.acked.store(f, Ordering::Release);
        let name = &self.device.settings.name;
        let hdr = if f & (VERSION_1 | MRG_RXBUF) != 0 {
            12
        } else {
            10
        };
        if let Err(e) = self.device.tap.set_vnet_hdr_size(hdr) {
            error!("{name}: cannot set the TAP's vnet header size to {hdr}: {e}");
        }
        // What the TAP may hand us is what the guest accepts.
        let mut off = 0;
        if f & GUEST_CSUM != 0 {
            off |= tap::TUN_F_CSUM;
            if f & GUEST_TSO4 != 0 {
                off |= tap::TUN_F_TSO4;
            }
            if f & GUEST_TSO6 != 0 {
                off |= tap::TUN_F_TSO6;
            }
            if f & GUEST_ECN != 0 && f & (GUEST_TSO4 | GUEST_TSO6) != 0 {
                off |= tap::TUN_F_TSO_ECN;
            }
        }
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

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let s = &self.device.settings;
        let mut cfg = Vec::with_capacity(12);
        cfg.extend_from_slice(&s.mac);
        cfg.extend_from_slice(&1u16.to_le_bytes()); // status: VIRTIO_NET_S_LINK_UP
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
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.settings.queue_pairs)
            .map(|p| 0b11u64 << (2 * p))
            .collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exits.get(thread_index)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // One worker per queue pair: `vrings` holds that pair's RX and TX
        // vrings, and vring events carry indexes into it.
        if vrings.len() != 2 || thread_id >= self.device.pairs.len() {
            return Ok(());
        }
        if usize::from(device_event) < vrings.len() {
            let p = thread_id;
            let c = &self.device.counters[p];
            if device_event == 0 {
                QueueCounters::add(&c.rx_kicks, 1);
                self.run_rx(p, vrings);
            } else {
                QueueCounters::add(&c.tx_kicks, 1);
                self.run_tx(p, vrings);
            }
            return Ok(());
        }
        let Some(rel) = device_event.checked_sub(self.event_base()) else {
            return Ok(());
        };
        let p = usize::from(rel / 2);
        if p != thread_id {
            return Ok(());
        }
        if rel % 2 == 0 {
            // TAP queue fd: edge-triggered, so remember what it said.
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
        } else {
            let _ = self.resume[p].read();
            self.run_tx(p, vrings);
            self.run_rx(p, vrings);
        }
        Ok(())
    }
}
