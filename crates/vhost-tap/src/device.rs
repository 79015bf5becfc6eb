//! A device: its TAP, its queue pairs (with the frames waiting in their
//! rings) and their counters, and the queue mode in effect. It outlives
//! frontend connections: a guest that reconnects finds it as it was.

use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};

use crate::counters::{DeviceReport, QueueCounters, QueueReport, ReportEvent};
use crate::datapath::{Limiter, QueuePair, TapQueue};
use crate::mode::{self, Resolution};
use crate::qdisc::Qdiscs;
use crate::settings::{DeviceSettings, Mode};

/// Why a device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("FQ-CoDel parameters: {0}")]
    Aqm(#[from] fq_codel::ConfigError),
}

/// The tun ring's length by mode, for a TAP the daemon created without a
/// configured txqueuelen (see [`crate::settings::BACKPRESSURE_TXQUEUELEN`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunRing {
    /// In backpressure mode with `IFF_BACKPRESSURE`.
    pub backpressure: u32,
    /// Otherwise (the kernel's default the TAP was created with).
    pub other: u32,
}

/// A device, shared by the connections that come and go.
pub struct Device {
    /// As configured; `settings.mode` is the mode asked for.
    pub settings: DeviceSettings,
    pub tap: Arc<tap::Tap>,
    pub pairs: Vec<Mutex<QueuePair>>,
    pub counters: Vec<Arc<QueueCounters>>,
    /// The mode in effect and why. `auto` is decided again at every
    /// frontend connect ([`Device::decide_mode_again`]), while no worker runs.
    mode: Mutex<Resolution>,
    /// `Some`: the daemon sets the tun ring's length by mode.
    tun_ring: Option<TunRing>,
}

/// Decide the mode from the TAP's flags and, where it matters, its qdiscs.
fn decide(requested: Mode, tap: &tap::Tap) -> Resolution {
    let flag_on = tap.backpressure();
    let qdiscs = if requested != Mode::FqCodel && flag_on {
        Qdiscs::of(tap.name())
    } else {
        Ok(Qdiscs::default())
    };
    mode::resolve(mode::Inputs {
        requested,
        flag_on,
        kernel_offers: tap::Tap::kernel_features().is_ok_and(|f| f & tap::IFF_BACKPRESSURE != 0),
        qdiscs: &qdiscs,
    })
}

impl Device {
    pub fn new(
        settings: DeviceSettings,
        tap: tap::Tap,
        tun_ring: Option<TunRing>,
    ) -> Result<Device, DeviceError> {
        // Checked once here, whatever the mode, so that a switch later cannot fail.
        settings.aqm().validate()?;
        let first = decide(settings.mode, &tap);
        let tap = Arc::new(tap);
        let mut pairs = Vec::with_capacity(settings.queue_pairs);
        // One limiter per direction, shared by the queue pairs: the limit is the device's.
        let rx_limit = Limiter::new(settings.rx_limit);
        let tx_limit = Limiter::new(settings.tx_limit);
        for (dir, l) in [
            ("host → guest", settings.rx_limit),
            ("guest → host", settings.tx_limit),
        ] {
            if !l.is_unlimited() {
                info!("{}: {dir} rate limit {}", settings.name, l.describe());
            }
        }
        for i in 0..settings.queue_pairs {
            let io = Arc::new(TapQueue::new(tap.clone(), i));
            let mut pair = QueuePair::new(i, io, settings.ring_size, None);
            pair.set_limits(rx_limit.clone(), tx_limit.clone());
            if first.mode == Mode::FqCodel {
                pair.set_aqm(Some(fq_codel::FqCodel::try_new(settings.aqm())?));
            }
            pairs.push(pair);
        }
        let counters = pairs.iter().map(|p| p.counters.clone()).collect();
        let device = Device {
            settings,
            tap,
            pairs: pairs.into_iter().map(Mutex::new).collect(),
            counters,
            mode: Mutex::new(first.clone()),
            tun_ring,
        };
        device.size_tun_ring(first.mode);
        Ok(device)
    }

    /// Give the tun ring the length the mode wants (if the daemon manages it).
    fn size_tun_ring(&self, mode: Mode) {
        let Some(tr) = self.tun_ring else {
            return;
        };
        let (len, why) = if mode == Mode::Backpressure && self.tap.backpressure() {
            (tr.backpressure, "backpressure with IFF_BACKPRESSURE: a short FIFO behind the qdisc, which holds the queue")
        } else {
            (tr.other, "the kernel's default")
        };
        if self.tap.txqueuelen().ok() == Some(len) {
            return;
        }
        match self.tap.set_txqueuelen(len) {
            Ok(()) => info!("{}: txqueuelen {len} ({why})", self.settings.name),
            Err(e) => warn!("{}: {e}", self.settings.name),
        }
    }

    /// Whether the daemon sets the tun ring's length with the mode (a
    /// created TAP without a configured txqueuelen, see [`TunRing`]).
    pub fn manages_tun_ring(&self) -> bool {
        self.tun_ring.is_some()
    }

    /// The mode in effect and why.
    pub fn mode(&self) -> Resolution {
        self.mode.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Decide `auto` again, as a frontend connects: since the last decision
    /// the operator may have attached or removed a qdisc, or brought the TAP
    /// up (a TAP the daemon created is down, qdisc `noop`, until then).
    /// Switches every queue pair and logs a change. Call only while no
    /// worker runs (between connections).
    pub fn decide_mode_again(&self) {
        if self.settings.mode != Mode::Auto {
            return;
        }
        let now = decide(self.settings.mode, &self.tap);
        let mut current = self.mode.lock().unwrap_or_else(|p| p.into_inner());
        if now.mode == current.mode {
            *current = now;
            return;
        }
        info!(
            "{}: mode {} -> {} ({})",
            self.settings.name,
            current.mode.name(),
            now.mode.name(),
            now.reason
        );
        for i in 0..self.pairs.len() {
            let aqm = match now.mode {
                Mode::FqCodel => match fq_codel::FqCodel::try_new(self.settings.aqm()) {
                    Ok(fq) => Some(fq),
                    Err(e) => {
                        // Checked in `new`; cannot happen, but never panic.
                        warn!(
                            "{}: FQ-CoDel: {e}; staying in {}",
                            self.settings.name,
                            current.mode.name()
                        );
                        return;
                    }
                },
                _ => None,
            };
            self.pair(i).set_aqm(aqm);
        }
        self.size_tun_ring(now.mode);
        *current = now;
    }

    /// One snapshot of every queue's counters, with the device's mode and
    /// the kernel's tun tail drops (the TAP's `tx_dropped`).
    pub fn report(&self, event: ReportEvent) -> DeviceReport {
        DeviceReport {
            event,
            device: self.settings.name.clone(),
            tap: self.tap.name().to_string(),
            mode: self.mode().mode.name().to_string(),
            tap_tx_dropped: self.tap.tx_dropped().ok(),
            queues: self
                .counters
                .iter()
                .enumerate()
                .map(|(i, c)| QueueReport::of(i, c))
                .collect(),
        }
    }

    /// Log one snapshot in both forms: the human lines, then the JSON line.
    pub fn log_report(&self, event: ReportEvent, title: &str) {
        let r = self.report(event);
        info!("{title}:\n{}", r.human().trim_end());
        info!("{}", r.to_log_line());
    }

    /// Whether a queue found the TAP deleted under the daemon (EBADFD):
    /// the device can no longer carry a frame and should be stopped.
    pub fn tap_gone(&self) -> bool {
        self.counters
            .iter()
            .any(|c| c.tap_gone.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }

    /// Lock a queue pair, recovering it if a worker panicked while holding it.
    pub fn pair(&self, i: usize) -> MutexGuard<'_, QueuePair> {
        self.pairs[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}
