//! Prometheus metrics over HTTP (`--metrics ADDR`, config key `metrics`):
//! every queue counter of every device, the drops by reason and by place
//! (the daemon, its AQM, the kernel's tun ring, the TAP's qdisc), the
//! qdisc's backlog, and an info metric with each device's mode and why.
//!
//! A scrape reads the same relaxed atomics the counter reports read: the
//! data path takes no lock and does no extra work for it. The qdisc figures
//! come from one rtnetlink dump per device per scrape ([`crate::qdisc`]).
//! Encoding is the `prometheus-client` crate's Prometheus text format; the
//! HTTP side is `tiny_http` on its own thread.
//!
//! Label `direction`: `rx` is host → guest (the guest's receive queue),
//! `tx` guest → host. Label `place` of `vhost_tap_dropped_frames_total`:
//! `daemon` (a `*_dropped_<reason>` counter), `aqm` (the daemon's FQ-CoDel:
//! `codel` head drops, `overlimit`), `tun` (the kernel's tail drops when the
//! tun ring is full, the TAP's `tx_dropped`), `qdisc` (the TAP's qdisc).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use log::{info, warn};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::qdisc::Qdiscs;
use crate::server::DeviceServer;
use crate::socket::{self, SocketAccess};

/// Where the metrics endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl MetricsAddr {
    /// `127.0.0.1:9101`, `[::1]:9101` or `unix:/run/vhost-tap/metrics.sock`.
    pub fn parse(s: &str) -> Result<MetricsAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("\"unix:\" needs a path".into());
            }
            return Ok(MetricsAddr::Unix(path.into()));
        }
        s.parse().map(MetricsAddr::Tcp).map_err(|_| {
            format!("\"{s}\" is not ADDR:PORT (127.0.0.1:9101, [::1]:9101) or unix:PATH")
        })
    }
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "http://{a}/metrics"),
            MetricsAddr::Unix(p) => write!(f, "unix:{} (GET /metrics)", p.display()),
        }
    }
}

/// The devices a scrape reports: the daemon sets the list at start and
/// after every reload.
#[derive(Default)]
pub struct Exporter {
    servers: Mutex<Vec<Arc<DeviceServer>>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exporter({} device(s))", self.servers().len())
    }
}

impl Exporter {
    pub fn set(&self, servers: Vec<Arc<DeviceServer>>) {
        *self.servers.lock().unwrap_or_else(|p| p.into_inner()) = servers;
    }

    /// Forget one device (it is being stopped: its TAP must close).
    pub fn remove(&self, server: &Arc<DeviceServer>) {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(s, server));
    }

    fn servers(&self) -> Vec<Arc<DeviceServer>> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The whole exposition, as a scrape gets it.
    pub fn render(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One family's samples, gathered before encoding (each family's
/// descriptor is written once, then all its samples).
struct Family {
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, u64)>,
}

/// Help text of `vhost_tap_dropped_frames_total`.
const DROPPED_HELP: &str = "Frames lost, by direction, reason and place (daemon, aqm, tun, qdisc)";

/// Where a queue counter goes: family, kind, labels beyond device/queue.
fn classify(name: &str) -> (String, Kind, Labels, &'static str) {
    let (direction, rest) = match name.split_once('_') {
        Some((d @ ("rx" | "tx"), rest)) => (d, rest),
        _ => ("", name),
    };
    let mut labels: Labels = Vec::new();
    if !direction.is_empty() {
        labels.push(("direction", direction.to_string()));
    }
    let dropped = |reason: &str, place: &str, mut l: Labels| {
        l.push(("reason", reason.to_string()));
        l.push(("place", place.to_string()));
        ("dropped_frames".to_string(), Kind::Counter, l, DROPPED_HELP)
    };
    match rest {
        "frames" => (
            "frames".into(),
            Kind::Counter,
            labels,
            "Frames delivered (rx: into the guest; tx: into the TAP)",
        ),
        "bytes" => (
            "bytes".into(),
            Kind::Counter,
            labels,
            "Bytes of Ethernet frames delivered, without the virtio-net header",
        ),
        "aqm_codel_drops" => dropped("codel", "aqm", labels),
        "aqm_overlimit_drops" => dropped("overlimit", "aqm", labels),
        r if r.starts_with("dropped_") => dropped(&r["dropped_".len()..], "daemon", labels),
        r if r.ends_with("_high_water") || r.starts_with("aqm_backlog") || r == "aqm_flows" => (
            r.to_string(),
            Kind::Gauge,
            labels,
            "A level (high-water marks and FQ-CoDel backlog); see docs/architecture.md, Counters",
        ),
        r => (
            r.to_string(),
            Kind::Counter,
            labels,
            "An event count; see docs/architecture.md, Counters",
        ),
    }
}

#[derive(Debug)]
struct Scrape(Arc<Exporter>);

impl Scrape {
    fn gather(&self) -> BTreeMap<String, Family> {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut put = |family: String, kind, help, labels: Labels, v: u64| {
            families
                .entry(family)
                .or_insert_with(|| Family {
                    help,
                    kind,
                    samples: Vec::new(),
                })
                .samples
                .push((labels, v));
        };
        // One rtnetlink dump for every device's qdisc figures.
        let qdiscs = crate::qdisc::dump()
            .inspect_err(|e| warn!("metrics: no qdisc figures in this scrape: {e}"))
            .ok();
        for s in self.0.servers() {
            let dev = &s.device;
            let name = dev.settings.name.clone();
            let m = dev.mode();
            put(
                "device".into(),
                Kind::Gauge,
                "Always 1: the device's TAP, queue mode, data path and why",
                vec![
                    ("device", name.clone()),
                    ("tap", dev.tap.name().to_string()),
                    ("mode", m.mode.name().to_string()),
                    ("datapath", "userspace".into()),
                    ("reason", m.reason),
                ],
                1,
            );
            put(
                "frontend_connected".into(),
                Kind::Gauge,
                "1 while a frontend (QEMU) is connected",
                vec![("device", name.clone())],
                u64::from(s.connected()),
            );
            put(
                "frontend_connections".into(),
                Kind::Counter,
                "Frontend connections accepted",
                vec![("device", name.clone())],
                s.connections(),
            );
            for (q, c) in dev.counters.iter().enumerate() {
                for (counter, v) in c.snapshot() {
                    let (family, kind, extra, help) = classify(counter);
                    let mut labels = vec![("device", name.clone()), ("queue", q.to_string())];
                    labels.extend(extra);
                    put(family, kind, help, labels, v);
                }
            }
            let rx_drop = |place: &str, reason: &str| {
                vec![
                    ("device", name.clone()),
                    ("direction", "rx".to_string()),
                    ("reason", reason.to_string()),
                    ("place", place.to_string()),
                ]
            };
            if let Ok(n) = dev.tap.tx_dropped() {
                let l = rx_drop("tun", "ring_full");
                put("dropped_frames".into(), Kind::Counter, DROPPED_HELP, l, n);
            }
            let mine = qdiscs
                .as_ref()
                .map(|all| crate::qdisc::ifindex(dev.tap.name()).map(|i| Qdiscs::select(all, i)));
            match mine {
                Some(Ok(Qdiscs {
                    root: Some(root), ..
                })) => {
                    let l = rx_drop("qdisc", &root.kind);
                    put(
                        "dropped_frames".into(),
                        Kind::Counter,
                        DROPPED_HELP,
                        l,
                        root.drops,
                    );
                    let l = vec![("device", name.clone()), ("qdisc", root.kind.clone())];
                    put(
                        "qdisc_backlog_frames".into(),
                        Kind::Gauge,
                        "Frames waiting in the TAP's root qdisc",
                        l.clone(),
                        root.qlen,
                    );
                    put(
                        "qdisc_backlog_bytes".into(),
                        Kind::Gauge,
                        "Bytes waiting in the TAP's root qdisc",
                        l,
                        root.backlog_bytes,
                    );
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => warn!("metrics: {name}: {e}"),
            }
        }
        families
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, f) in self.gather() {
            let full = format!("vhost_tap_{name}");
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut m = encoder.encode_descriptor(&full, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let e = m.encode_family(labels)?;
                match f.kind {
                    Kind::Counter => ConstCounter::new(*v).encode(e)?,
                    Kind::Gauge => {
                        ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(e)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The endpoint's socket, bound but not served yet: bound before the
/// daemon lowers its privileges (a port below 1024, a socket in a
/// directory only root may write), served once its threads may start.
pub struct MetricsListener {
    addr: MetricsAddr,
    listener: tiny_http::Listener,
}

impl MetricsListener {
    /// Bind `addr`.
    pub fn bind(addr: &MetricsAddr) -> io::Result<MetricsListener> {
        let listener = match addr {
            MetricsAddr::Tcp(a) => std::net::TcpListener::bind(a)?.into(),
            MetricsAddr::Unix(p) => socket::bind(p, &SocketAccess::default())?.into(),
        };
        Ok(MetricsListener {
            addr: addr.clone(),
            listener,
        })
    }

    /// Answer `GET /metrics` from `exporter`.
    pub fn serve(self, exporter: Arc<Exporter>) -> io::Result<MetricsServer> {
        let server =
            tiny_http::Server::from_listener(self.listener, None).map_err(io::Error::other)?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&s, &exporter))?;
        info!("metrics: {}", self.addr);
        Ok(MetricsServer { server, thread })
    }
}

/// The running endpoint.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: thread::JoinHandle<()>,
}

impl MetricsServer {
    /// Stop answering and wait for the thread.
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

fn serve(server: &tiny_http::Server, exporter: &Arc<Exporter>) {
    for req in server.incoming_requests() {
        let (status, body, kind) = match (req.method(), req.url()) {
            (tiny_http::Method::Get, "/metrics") => match exporter.render() {
                Ok(body) => (200, body, "text/plain; version=0.0.4; charset=utf-8"),
                Err(e) => (500, format!("encoding failed: {e}\n"), "text/plain"),
            },
            (tiny_http::Method::Get, _) => (404, "only /metrics here\n".into(), "text/plain"),
            _ => (405, "GET /metrics only\n".into(), "text/plain"),
        };
        let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes()) {
            resp = resp.with_header(h);
        }
        if let Err(e) = req.respond(resp) {
            warn!("metrics: answering a scrape failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::QueueCounters;

    #[test]
    fn every_queue_counter_has_a_family_and_every_drop_a_place() {
        for name in QueueCounters::NAMES {
            let (family, kind, labels, _) = classify(name);
            assert!(
                family.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name} -> {family}"
            );
            let is_drop = name.contains("_dropped_") || name.ends_with("_drops");
            assert_eq!(family == "dropped_frames", is_drop, "{name}");
            if is_drop {
                assert_eq!(kind, Kind::Counter);
                assert!(labels.iter().any(|(k, _)| *k == "place"), "{name}");
                assert!(labels.iter().any(|(k, _)| *k == "reason"), "{name}");
            }
        }
        let (f, _, l, _) = classify("rx_dropped_too_big");
        assert_eq!(f, "dropped_frames");
        assert!(
            l.contains(&("reason", "too_big".into())) && l.contains(&("place", "daemon".into()))
        );
        let (f, k, _, _) = classify("rx_aqm_backlog_frames");
        assert_eq!((f.as_str(), k), ("aqm_backlog_frames", Kind::Gauge));
        let (f, k, l, _) = classify("tx_kicks");
        assert_eq!((f.as_str(), k), ("kicks", Kind::Counter));
        assert_eq!(l, vec![("direction", "tx".to_string())]);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            MetricsAddr::parse("127.0.0.1:9101"),
            Ok(MetricsAddr::Tcp("127.0.0.1:9101".parse().unwrap()))
        );
        assert!(matches!(
            MetricsAddr::parse("[::1]:9101"),
            Ok(MetricsAddr::Tcp(_))
        ));
        assert_eq!(
            MetricsAddr::parse("unix:/run/m.sock"),
            Ok(MetricsAddr::Unix("/run/m.sock".into()))
        );
        assert!(MetricsAddr::parse("unix:").is_err());
        assert!(MetricsAddr::parse("localhost").is_err());
    }
}
