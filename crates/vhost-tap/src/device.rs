//! A device: its TAP, its queue pairs (with the frames waiting in their
//! rings) and their counters. It outlives frontend connections: a guest
//! that reconnects finds it as it was.

use std::sync::{Arc, Mutex, MutexGuard};

use log::info;

use crate::counters::{DeviceReport, QueueCounters, QueueReport, ReportEvent};
use crate::datapath::{QueuePair, TapQueue};
use crate::settings::DeviceSettings;

/// Why a device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("FQ-CoDel parameters: {0}")]
    Aqm(#[from] fq_codel::ConfigError),
}

/// A device, shared by the connections that come and go.
pub struct Device {
    pub settings: DeviceSettings,
    pub tap: Arc<tap::Tap>,
    pub pairs: Vec<Mutex<QueuePair>>,
    pub counters: Vec<Arc<QueueCounters>>,
}

impl Device {
    pub fn new(settings: DeviceSettings, tap: tap::Tap) -> Result<Device, DeviceError> {
        let tap = Arc::new(tap);
        let mut pairs = Vec::with_capacity(settings.queue_pairs);
        for i in 0..settings.queue_pairs {
            let aqm = settings.aqm().map(fq_codel::FqCodel::try_new).transpose()?;
            let io = Arc::new(TapQueue::new(tap.clone(), i));
            pairs.push(QueuePair::new(i, io, settings.ring_size, aqm));
        }
        let counters = pairs.iter().map(|p| p.counters.clone()).collect();
        Ok(Device {
            settings,
            tap,
            pairs: pairs.into_iter().map(Mutex::new).collect(),
            counters,
        })
    }

    /// One snapshot of every queue's counters, with the device's mode and
    /// the kernel's tun tail drops (the TAP's `tx_dropped`).
    pub fn report(&self, event: ReportEvent) -> DeviceReport {
        DeviceReport {
            event,
            device: self.settings.name.clone(),
            tap: self.tap.name().to_string(),
            mode: self.settings.mode.name().to_string(),
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

    /// Lock a queue pair, recovering it if a worker panicked while holding it.
    pub fn pair(&self, i: usize) -> MutexGuard<'_, QueuePair> {
        self.pairs[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}
