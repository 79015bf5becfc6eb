//! Counters per device and queue pair.
//!
//! Every path that loses a frame increments exactly one `*_dropped_<reason>`
//! counter here, next to the one log line that reports it. In normal
//! operation every drop counter stays 0: the data path waits instead of
//! dropping. The counters are plain relaxed atomics: each is written by one
//! worker thread and read by the reporter, and no other memory is published
//! through them.
//!
//! Reports come in two forms from one snapshot: a line per queue for people
//! (`device=NAME queue=N key=value ...`) and one JSON object per device for
//! tools ([`DeviceReport`], logged after [`JSON_TAG`]), which the tests and
//! the benchmarks parse with [`parse_reports`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Defines the counter struct, its field list and the formatter in one place so
/// that a new counter cannot be forgotten in the report.
macro_rules! counters {
    ($(#[$doc:meta])* pub struct $name:ident { $($(#[$fdoc:meta])* $field:ident,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: AtomicU64,)*
        }

        impl $name {
            /// Every counter's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field),)*];

            /// `(name, value)` for every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Counters of one queue pair (one RX and one TX virtqueue, one TAP queue).
    pub struct QueueCounters {
        /// Frames written into guest RX buffers.
        rx_frames,
        /// Bytes (Ethernet frame, without the virtio-net header) written into guest RX buffers.
        rx_bytes,
        /// Frames taken from guest TX chains and accepted by the TAP.
        tx_frames,
        /// Bytes (Ethernet frame, without the virtio-net header) accepted by the TAP.
        tx_bytes,
        /// Frames read from the TAP shorter than a virtio-net header plus an Ethernet header.
        rx_dropped_too_short,
        /// Frames larger than the guest's buffers can hold (no MRG_RXBUF, or more than its whole descriptor table holds).
        rx_dropped_too_big,
        /// Frames the TAP returned truncated (larger than the reader's buffer).
        rx_dropped_truncated,
        /// Frames the TAP dequeued but could not copy out (read failed with EFAULT).
        rx_dropped_read_fault,
        /// Frames read from the TAP straight into guest buffers and lost because the guest's RX queue broke before they were published.
        rx_dropped_queue_broken,
        /// Frames still in the ring when the daemon shut down.
        rx_dropped_shutdown,
        /// Frames the FQ-CoDel queue still held when `auto` switched to backpressure mode at a frontend's connect (they waited for a guest that left).
        rx_dropped_mode_change,
        /// Frames lost to a broken internal invariant (the ring refused a slot it had offered): a bug, always 0.
        rx_dropped_internal,
        /// Guest TX chains shorter than a virtio-net header plus an Ethernet header (returned to the guest unsent).
        tx_dropped_too_short,
        /// Guest TX chains longer than the largest frame the TAP accepts.
        tx_dropped_too_big,
        /// Frames the TAP refused with an error other than those below or "try again" (e.g. a bad GSO header).
        tx_dropped_tap_error,
        /// Frames the guest sent while the TAP was down (EIO; the kernel drops them too, as a NIC without carrier).
        tx_dropped_link_down,
        /// Frames the guest sent after the TAP was deleted under the daemon (EBADFD), before the device stopped.
        tx_dropped_tap_gone,
        /// Times the RX queue was found broken by a malformed descriptor chain or avail index.
        rx_queue_broken,
        /// Times the TX queue was found broken by a malformed descriptor chain or avail index.
        tx_queue_broken,
        /// Frames read from the TAP straight into guest RX buffers (nothing was waiting; no copy of ours). Included in rx_frames.
        rx_direct_frames,
        /// Times the TAP reader stopped because the ring was full.
        rx_reader_stops,
        /// Times the RX filler woke the stopped TAP reader (half the ring free).
        rx_reader_wakes,
        /// Times the RX filler found frames waiting but no guest RX buffer.
        rx_no_guest_buffers,
        /// Highest ring occupancy seen (frames).
        rx_ring_high_water,
        /// Largest frame (bytes, without the virtio-net header) written into guest RX buffers: above the MTU when GSO frames cross.
        rx_frame_bytes_high_water,
        /// Largest frame (bytes, without the virtio-net header) the TAP accepted from the guest: above the MTU when the guest sends GSO frames.
        tx_frame_bytes_high_water,
        /// Times a TAP write returned EAGAIN/ENOBUFS and TX waited for EPOLLOUT.
        tx_tap_full,
        /// Kicks from the guest on the RX queue (it posted buffers while we waited for them).
        rx_kicks,
        /// Kicks from the guest on the TX queue (it queued frames while we waited for them).
        tx_kicks,
        /// Passes the RX rate limit held back (frames waited for tokens: in the ring and behind it, or in the AQM).
        rx_rate_limited,
        /// Passes the TX rate limit held back (frames waited for tokens in the guest's TX ring).
        tx_rate_limited,
        /// Queue 0 only: frontend connections that ended in an error (a request refused, the socket closed mid-message, ...), each with its log line.
        connection_errors,
        /// Times this pair found its TAP deleted under the daemon (EBADFD): the device then stops.
        tap_gone,
        /// Times this pair stopped because the frontend shrank the file behind a guest memory region while in use (the SIGBUS contained; every queue waits for a new memory table).
        guest_memory_faults,
        /// Guest interrupts raised for the RX queue.
        rx_interrupts,
        /// Guest interrupts raised for the TX queue.
        tx_interrupts,
        /// FQ-CoDel mode: frames CoDel dropped at the head of a standing queue (the AQM's job, as a qdisc's drops).
        rx_aqm_codel_drops,
        /// FQ-CoDel mode: frames dropped from the head of the fattest flow because the queue hit its packet or memory limit.
        rx_aqm_overlimit_drops,
        /// FQ-CoDel mode: ECT frames CoDel marked CE instead of dropping.
        rx_aqm_ecn_marks,
        /// FQ-CoDel mode: frames waiting in the queue (gauge).
        rx_aqm_backlog_frames,
        /// FQ-CoDel mode: bytes waiting in the queue (gauge).
        rx_aqm_backlog_bytes,
        /// FQ-CoDel mode: flows with frames waiting (gauge).
        rx_aqm_flows,
        /// System calls the worker's seccomp filter refused (each failed with EPERM): a call missing from the allowlist, or an attack; 0 in normal operation (docs/security.md).
        syscalls_refused,
    }
}

impl QueueCounters {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Raise a high-water mark to `value` if it is higher.
    #[inline]
    pub fn raise(counter: &AtomicU64, value: u64) {
        counter.fetch_max(value, Ordering::Relaxed);
    }

    /// Sum of every `*_dropped_*` counter.
    pub fn dropped(&self) -> u64 {
        self.snapshot()
            .into_iter()
            .filter(|(name, _)| is_drop(name))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Whether counter `name` counts frames the daemon lost (AQM decisions are
/// `rx_aqm_*_drops`, not these).
fn is_drop(name: &str) -> bool {
    name.contains("_dropped_")
}

/// What a device report is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportEvent {
    /// Asked for with SIGUSR1.
    Signal,
    /// A frontend went away.
    Disconnect,
    /// The daemon is shutting down (after the rings were emptied).
    Exit,
}

/// One device's counters, as tools read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub event: ReportEvent,
    /// The device's name (its TAP's name as configured).
    pub device: String,
    /// The TAP's name in the kernel.
    pub tap: String,
    /// The queue mode in effect.
    pub mode: String,
    /// The kernel's tun tail drops (the TAP's `tx_dropped`); `None` if unreadable.
    pub tap_tx_dropped: Option<u64>,
    pub queues: Vec<QueueReport>,
}

/// One queue pair's counters, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    pub queue: usize,
    #[serde(flatten)]
    pub counters: BTreeMap<String, u64>,
}

impl QueueReport {
    pub fn of(queue: usize, c: &QueueCounters) -> QueueReport {
        QueueReport {
            queue,
            counters: c
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// A counter by name (0 if this daemon has no such counter).
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Sum of every `*_dropped_*` counter.
    pub fn dropped(&self) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| is_drop(k))
            .map(|(_, v)| v)
            .sum()
    }
}

impl DeviceReport {
    /// A counter summed over the queues.
    pub fn total(&self, name: &str) -> u64 {
        self.queues.iter().map(|q| q.get(name)).sum()
    }

    /// Frames the daemon dropped, over all queues (AQM decisions excluded).
    pub fn dropped(&self) -> u64 {
        self.queues.iter().map(QueueReport::dropped).sum()
    }

    /// The report for people: one line per queue pair,
    /// `device=NAME queue=N key=value ...` in declaration order, then
    /// `tap=NAME mode=MODE tap_tx_dropped=N`.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for q in &self.queues {
            let _ = write!(out, "device={} queue={}", self.device, q.queue);
            for name in QueueCounters::NAMES {
                let _ = write!(out, " {name}={}", q.get(name));
            }
            out.push('\n');
        }
        let tail = self
            .tap_tx_dropped
            .map_or_else(|| "unknown".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "tap={} mode={} tap_tx_dropped={tail}",
            self.tap, self.mode
        );
        out
    }

    /// The log line: [`JSON_TAG`] and the report as one JSON object.
    pub fn to_log_line(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{JSON_TAG}{json}")
    }
}

/// The marker in front of a JSON device report in the daemon's log.
pub const JSON_TAG: &str = "counters-json ";

/// Every JSON device report in a daemon log, in order. Lines that do not
/// parse (a report cut off by a crash) are skipped.
pub fn parse_reports(log: &str) -> Vec<DeviceReport> {
    log.lines()
        .filter_map(|line| {
            let at = line.find(JSON_TAG)?;
            serde_json::from_str(&line[at + JSON_TAG.len()..]).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_every_counter_and_sums_drops() {
        let q = QueueCounters::default();
        QueueCounters::add(&q.rx_frames, 3);
        QueueCounters::add(&q.rx_dropped_too_short, 2);
        QueueCounters::add(&q.tx_dropped_tap_error, 1);
        QueueCounters::raise(&q.rx_ring_high_water, 7);
        QueueCounters::raise(&q.rx_ring_high_water, 5);
        let r = DeviceReport {
            event: ReportEvent::Signal,
            device: "vm0".into(),
            tap: "vt0".into(),
            mode: "fq-codel".into(),
            tap_tx_dropped: None,
            queues: vec![QueueReport::of(0, &q)],
        };
        let line = r.human();
        assert!(line.starts_with("device=vm0 queue=0 rx_frames=3 "));
        assert!(line.contains(" rx_ring_high_water=7"));
        assert!(line.contains(" tx_tap_full=0"));
        assert!(line.ends_with("\ntap=vt0 mode=fq-codel tap_tx_dropped=unknown\n"));
        assert_eq!(q.dropped(), 3);
        assert_eq!(r.dropped(), 3);
    }

    #[test]
    fn json_report_round_trips_through_a_log() {
        let q = QueueCounters::default();
        QueueCounters::add(&q.rx_frames, 5);
        QueueCounters::add(&q.rx_dropped_truncated, 1);
        QueueCounters::add(&q.rx_aqm_codel_drops, 4);
        let r = DeviceReport {
            event: ReportEvent::Signal,
            device: "vm0".into(),
            tap: "vt0".into(),
            mode: "fq-codel".into(),
            tap_tx_dropped: Some(9),
            queues: vec![QueueReport::of(0, &q), QueueReport::of(1, &q)],
        };
        let log = format!(
            "[t INFO vhost_tap] starting\n[t INFO vhost_tap] {}\n[t INFO vhost_tap] {JSON_TAG}{{\"cut",
            r.to_log_line()
        );
        let got = parse_reports(&log);
        assert_eq!(got, vec![r.clone()]);
        assert!(got[0].to_log_line().contains(r#""event":"signal""#));
        assert_eq!(got[0].total("rx_frames"), 10);
        // AQM decisions are not daemon drops.
        assert_eq!(got[0].dropped(), 2);
        assert_eq!(got[0].queues[1].get("no_such_counter"), 0);
    }
}
