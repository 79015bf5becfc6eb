//! The daemon's counters as tests read them: its JSON device reports
//! (`counters-json {...}` in the log, on SIGUSR1, at each frontend
//! disconnect and at exit), parsed by the daemon's own
//! [`vhost_tap::counters::parse_reports`]. The human `counters:` lines are
//! not read.

use std::collections::BTreeMap;

use vhost_tap::counters::{parse_reports, DeviceReport};

/// The reports in `log` of the device whose TAP is `tap`, in order.
pub fn reports_of(log: &str, tap: &str) -> Vec<DeviceReport> {
    parse_reports(log)
        .into_iter()
        .filter(|r| r.tap == tap || r.device == tap)
        .collect()
}

/// Counters that are levels, not totals: over queues the highest, over
/// time the latest (not a difference).
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("high_water") || name.contains("backlog") || name == "rx_aqm_flows"
}

/// Strict access to a report: a counter name the daemon does not report is
/// a test bug (a typo, a renamed counter), so these panic instead of
/// reading 0 as [`vhost_tap::counters::QueueReport::get`] does.
pub trait ReportExt {
    /// Counter `name` of queue pair `queue`.
    fn at(&self, queue: usize, name: &str) -> u64;
    /// Counter `name` summed over the queue pairs.
    fn sum(&self, name: &str) -> u64;
    /// Every `*_dropped_*` counter that is not 0, as (queue, name, value).
    fn nonzero_drops(&self) -> Vec<(usize, String, u64)>;
    /// Panics, naming them, if any `*_dropped_*` counter is not 0.
    fn assert_no_drops(&self);
    /// Every counter over the queue pairs: totals summed, gauges the highest.
    fn summed(&self) -> BTreeMap<String, u64>;
    /// [`ReportExt::summed`] of this report less that of `before` (gauges:
    /// as they are now).
    fn since(&self, before: &DeviceReport) -> BTreeMap<String, u64>;
}

impl ReportExt for DeviceReport {
    fn at(&self, queue: usize, name: &str) -> u64 {
        let q = self.queues.get(queue).unwrap_or_else(|| {
            panic!(
                "device {} reports {} queue pairs, not {}: {self:?}",
                self.device,
                self.queues.len(),
                queue + 1
            )
        });
        *q.counters.get(name).unwrap_or_else(|| {
            panic!(
                "no counter {name} in queue {queue} of device {}: {:?}",
                self.device,
                q.counters.keys().collect::<Vec<_>>()
            )
        })
    }

    fn sum(&self, name: &str) -> u64 {
        (0..self.queues.len()).map(|i| self.at(i, name)).sum()
    }

    fn nonzero_drops(&self) -> Vec<(usize, String, u64)> {
        let mut v = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            for (k, &n) in &q.counters {
                if k.contains("_dropped_") && n != 0 {
                    v.push((i, k.clone(), n));
                }
            }
        }
        v
    }

    fn assert_no_drops(&self) {
        let drops = self.nonzero_drops();
        assert!(
            drops.is_empty(),
            "daemon drops (queue, counter, frames): {drops:?}; report {self:?}"
        );
    }

    fn summed(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for q in &self.queues {
            for (k, &v) in &q.counters {
                let e = out.entry(k.clone()).or_insert(0u64);
                *e = if is_gauge(k) { (*e).max(v) } else { *e + v };
            }
        }
        out
    }

    fn since(&self, before: &DeviceReport) -> BTreeMap<String, u64> {
        let a = before.summed();
        self.summed()
            .into_iter()
            .map(|(k, v)| {
                let d = if is_gauge(&k) {
                    v
                } else {
                    v.saturating_sub(a.get(&k).copied().unwrap_or(0))
                };
                (k, d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost_tap::counters::{QueueReport, ReportEvent, JSON_TAG};

    fn queue(i: usize, kv: &[(&str, u64)]) -> QueueReport {
        QueueReport {
            queue: i,
            counters: kv.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn report(tap: &str, queues: Vec<QueueReport>) -> DeviceReport {
        DeviceReport {
            event: ReportEvent::Signal,
            device: tap.into(),
            tap: tap.into(),
            mode: "backpressure".into(),
            tap_tx_dropped: Some(0),
            queues,
        }
    }

    #[test]
    fn reports_of_one_device_among_others() {
        let a = report("vta", vec![queue(0, &[("rx_frames", 1)])]);
        let b = report("vtb", vec![queue(0, &[("rx_frames", 2)])]);
        let log = format!(
            "x INFO counters:\nx INFO {}\nx INFO {}\nx INFO {JSON_TAG}{{\"cut\n",
            a.to_log_line(),
            b.to_log_line()
        );
        assert_eq!(reports_of(&log, "vtb"), vec![b]);
        assert_eq!(reports_of(&log, "vta"), vec![a]);
    }

    #[test]
    fn strict_access_sums_and_deltas() {
        let r0 = report(
            "vt",
            vec![
                queue(0, &[("rx_frames", 1), ("rx_ring_high_water", 9)]),
                queue(1, &[("rx_frames", 2), ("rx_ring_high_water", 3)]),
            ],
        );
        let r1 = report(
            "vt",
            vec![
                queue(
                    0,
                    &[
                        ("rx_frames", 10),
                        ("rx_ring_high_water", 4),
                        ("rx_dropped_too_big", 1),
                    ],
                ),
                queue(
                    1,
                    &[
                        ("rx_frames", 20),
                        ("rx_ring_high_water", 5),
                        ("rx_dropped_too_big", 0),
                    ],
                ),
            ],
        );
        assert_eq!(r1.at(1, "rx_frames"), 20);
        assert_eq!(r1.sum("rx_frames"), 30);
        let s = r1.summed();
        assert_eq!((s["rx_frames"], s["rx_ring_high_water"]), (30, 5));
        let d = r1.since(&r0);
        assert_eq!((d["rx_frames"], d["rx_ring_high_water"]), (27, 5));
        assert_eq!(
            r1.nonzero_drops(),
            vec![(0, "rx_dropped_too_big".to_string(), 1)]
        );
        let dropped = std::panic::catch_unwind(|| r1.assert_no_drops());
        assert!(dropped.is_err(), "a drop must fail assert_no_drops");
        r0.assert_no_drops();
        let typo = std::panic::catch_unwind(|| r1.at(0, "rx_frame"));
        assert!(typo.is_err(), "a missing counter must not read as 0");
    }
}
