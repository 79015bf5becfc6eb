//! Configuration: one device from the command line, or several from a TOML
//! file. The file is read into `FileConfig` (every unknown key is an error),
//! then checked into [`DeviceConfig`]s; every error names the file, the line
//! and the key.

#![deny(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::metrics::MetricsAddr;
use crate::privileges::{self, Privileges};
use crate::settings::{DeviceSettings, FqSettings, Mode, RateLimit, TokenBucket};
use crate::socket::{self, SocketAccess};

/// Defaults, named.
pub const DEFAULT_QUEUES: usize = 1;
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
pub const DEFAULT_RING_SIZE: usize = 256;
pub const DEFAULT_MTU: u16 = 1500;
pub const MAX_QUEUES: usize = 16;

pub const DEFAULT_FQ_FLOWS: usize = 1024;
pub const DEFAULT_FQ_LIMIT: usize = 10240;
pub const DEFAULT_FQ_MEMORY_LIMIT: usize = 32 << 20;
/// The daemon's floor for `fq_memory_limit`, above the AQM's own: room for
/// one 64 KiB GSO frame.
const MIN_FQ_MEMORY_LIMIT: i64 = 65536;

/// One checked device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub socket: PathBuf,
    /// Owner, group and mode of the socket file.
    pub socket_access: SocketAccess,
    /// Client mode: the frontend listens on `socket` and the daemon
    /// connects (and reconnects) to it.
    pub client: bool,
    /// The device as the backend runs it: `name` is the TAP's name, `mode`
    /// the mode asked for (`Auto` is resolved when the TAP is open).
    pub device: DeviceSettings,
    pub txqueuelen: Option<u32>,
    /// `ring_size` was given (else the mode may pick a shorter ring).
    pub ring_size_set: bool,
    /// Ask for `IFF_BACKPRESSURE` when the kernel offers it (default). Off
    /// only to measure the tun driver's tail drops as a baseline.
    pub iff_backpressure: bool,
}

/// A configuration error, located.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The raw values of one device, as given on the command line or in a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub socket: Option<Spanned<PathBuf>>,
    pub tap: Option<Spanned<String>>,
    pub queues: Option<Spanned<i64>>,
    pub queue_size: Option<Spanned<i64>>,
    pub ring_size: Option<Spanned<i64>>,
    pub mac: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub txqueuelen: Option<Spanned<i64>>,
    pub fq_flows: Option<Spanned<i64>>,
    pub fq_limit: Option<Spanned<i64>>,
    pub fq_memory_limit: Option<Spanned<i64>>,
    pub fq_ecn: Option<Spanned<bool>>,
    pub iff_backpressure: Option<Spanned<bool>>,
    pub socket_owner: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub client: Option<Spanned<bool>>,
    pub rx_rate_bytes: Option<Spanned<i64>>,
    pub rx_rate_frames: Option<Spanned<i64>>,
    pub rx_burst_bytes: Option<Spanned<i64>>,
    pub rx_burst_frames: Option<Spanned<i64>>,
    pub tx_rate_bytes: Option<Spanned<i64>>,
    pub tx_rate_frames: Option<Spanned<i64>>,
    pub tx_burst_bytes: Option<Spanned<i64>>,
    pub tx_burst_frames: Option<Spanned<i64>>,
}

/// Highest rate limits accepted: 1 TB/s and 1 G frames/s (far above any
/// TAP), and bursts of up to 1 TiB / 2^30 frames.
const MAX_RATE_BYTES: i64 = 1_000_000_000_000;
const MAX_RATE_FRAMES: i64 = 1_000_000_000;
const MAX_BURST_BYTES: i64 = 1 << 40;
const MAX_BURST_FRAMES: i64 = 1 << 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    metrics: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    seccomp: Option<Spanned<bool>>,
    device: Vec<Spanned<RawDevice>>,
}

/// A checked configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where to serve Prometheus metrics (top-level key `metrics`).
    pub metrics: Option<MetricsAddr>,
    /// Top-level keys `user`, `group`, `seccomp`.
    pub privileges: Privileges,
    pub devices: Vec<DeviceConfig>,
}

/// Where a value came from, to locate errors.
struct Origin<'a> {
    file: Option<&'a Path>,
    text: &'a str,
    /// Span of the whole `[[device]]` table, for "missing key" errors.
    table: Option<std::ops::Range<usize>>,
}

impl Origin<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, key: &str, message: String) -> ConfigError {
        let span = span.or_else(|| self.table.clone());
        ConfigError {
            file: self.file.map(Path::to_path_buf),
            line: if self.file.is_some() {
                span.map(|s| self.line_of(s.start))
            } else {
                None
            },
            key: Some(if self.file.is_some() {
                key.to_string()
            } else {
                format!("--{}", key.replace('_', "-"))
            }),
            message,
        }
    }

    fn int<T: TryFrom<i64>>(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: T,
        min: i64,
        max: i64,
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if n < min || n > max {
            return Err(self.err(
                Some(v.span()),
                key,
                format!("{n} is out of range ({min}..={max})"),
            ));
        }
        T::try_from(n).map_err(|_| self.err(Some(v.span()), key, format!("{n} is out of range")))
    }
}

impl Origin<'_> {
    /// One token bucket from its rate and burst keys; a burst without a rate is an error.
    fn bucket(
        &self,
        rate: &Option<Spanned<i64>>,
        burst: &Option<Spanned<i64>>,
        keys: (&str, &str),
        max: (i64, i64),
    ) -> Result<Option<TokenBucket>, ConfigError> {
        let Some(r) = rate else {
            return match burst {
                Some(b) => Err(self.err(
                    Some(b.span()),
                    keys.1,
                    format!("a burst needs a rate: set {} too", keys.0),
                )),
                None => Ok(None),
            };
        };
        let rate: u64 = self.int(&Some(r.clone()), keys.0, 0, 1, max.0)?;
        let b = TokenBucket::with_default_burst(rate);
        Ok(Some(TokenBucket {
            rate,
            burst: self.int(burst, keys.1, b.burst, 1, max.1)?,
        }))
    }
}

/// A socket mode: octal digits, at most 0777 (`"0660"`, `"660"`).
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "\"{s}\" is not a file mode (octal, at most 0777, e.g. \"0660\")"
        )),
    }
}

/// A MAC derived from the TAP name: stable across restarts, locally
/// administered, unicast.
pub fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a over the name.
    let mut h: u32 = 0x811c_9dc5;
    for b in tap.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    [0x52, 0x54, 0x00, b[1], b[2], b[3]]
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("\"{s}\" is not a MAC address like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a NIC needs a unicast MAC"
        ));
    }
    Ok(mac)
}

impl RawDevice {
    fn check(&self, o: &Origin<'_>) -> Result<DeviceConfig, ConfigError> {
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| o.err(None, "socket", "is required".into()))?;
        if socket.get_ref().as_os_str().is_empty() {
            return Err(o.err(Some(socket.span()), "socket", "must not be empty".into()));
        }
        let tap = self
            .tap
            .as_ref()
            .ok_or_else(|| o.err(None, "tap", "is required".into()))?;
        let name = tap.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ':', ' ', '%', '\0']) {
            return Err(o.err(
                Some(tap.span()),
                "tap",
                format!("\"{name}\" is not a valid interface name (1 to 15 characters, no '/', ':', '%' or spaces)"),
            ));
        }
        let queues = o.int(&self.queues, "queues", DEFAULT_QUEUES, 1, MAX_QUEUES as i64)?;
        let queue_size: u16 = o.int(
            &self.queue_size,
            "queue_size",
            DEFAULT_QUEUE_SIZE,
            64,
            32768,
        )?;
        if !queue_size.is_power_of_two() {
            let span = self.queue_size.as_ref().map(|v| v.span());
            return Err(o.err(
                span,
                "queue_size",
                format!("{queue_size} is not a power of two"),
            ));
        }
        let ring_size = o.int(&self.ring_size, "ring_size", DEFAULT_RING_SIZE, 4, 65536)?;
        let mtu = o.int(&self.mtu, "mtu", DEFAULT_MTU, 68, 65535)?;
        let txqueuelen = match &self.txqueuelen {
            Some(_) => Some(o.int(&self.txqueuelen, "txqueuelen", 0u32, 1, 1 << 20)?),
            None => None,
        };
        let mac = match &self.mac {
            Some(m) => parse_mac(m.get_ref()).map_err(|e| o.err(Some(m.span()), "mac", e))?,
            None => default_mac(name),
        };
        let mode = match &self.mode {
            Some(m) => Mode::parse(m.get_ref()).map_err(|e| o.err(Some(m.span()), "mode", e))?,
            None => Mode::Auto,
        };
        let fq = FqSettings {
            flows: o.int(
                &self.fq_flows,
                "fq_flows",
                DEFAULT_FQ_FLOWS,
                fq_codel::MIN_FLOWS as i64,
                fq_codel::MAX_FLOWS as i64,
            )?,
            limit: o.int(
                &self.fq_limit,
                "fq_limit",
                DEFAULT_FQ_LIMIT,
                fq_codel::MIN_LIMIT as i64,
                fq_codel::MAX_LIMIT as i64,
            )?,
            // At least 64 KiB: below that a single GSO frame could never be queued.
            memory_limit: o.int(
                &self.fq_memory_limit,
                "fq_memory_limit",
                DEFAULT_FQ_MEMORY_LIMIT,
                MIN_FQ_MEMORY_LIMIT,
                fq_codel::MAX_MEMORY_LIMIT as i64,
            )?,
            ecn: self.fq_ecn.as_ref().is_none_or(|v| *v.get_ref()),
        };
        let socket_access = SocketAccess {
            owner: match &self.socket_owner {
                Some(v) => Some(
                    socket::user_id(v.get_ref())
                        .map_err(|e| o.err(Some(v.span()), "socket_owner", e))?,
                ),
                None => None,
            },
            group: match &self.socket_group {
                Some(v) => Some(
                    socket::group_id(v.get_ref())
                        .map_err(|e| o.err(Some(v.span()), "socket_group", e))?,
                ),
                None => None,
            },
            mode: match &self.socket_mode {
                Some(v) => Some(
                    parse_mode(v.get_ref()).map_err(|e| o.err(Some(v.span()), "socket_mode", e))?,
                ),
                None => None,
            },
        };
        let rx_limit = RateLimit {
            bytes: o.bucket(
                &self.rx_rate_bytes,
                &self.rx_burst_bytes,
                ("rx_rate_bytes", "rx_burst_bytes"),
                (MAX_RATE_BYTES, MAX_BURST_BYTES),
            )?,
            frames: o.bucket(
                &self.rx_rate_frames,
                &self.rx_burst_frames,
                ("rx_rate_frames", "rx_burst_frames"),
                (MAX_RATE_FRAMES, MAX_BURST_FRAMES),
            )?,
        };
        let tx_limit = RateLimit {
            bytes: o.bucket(
                &self.tx_rate_bytes,
                &self.tx_burst_bytes,
                ("tx_rate_bytes", "tx_burst_bytes"),
                (MAX_RATE_BYTES, MAX_BURST_BYTES),
            )?,
            frames: o.bucket(
                &self.tx_rate_frames,
                &self.tx_burst_frames,
                ("tx_rate_frames", "tx_burst_frames"),
                (MAX_RATE_FRAMES, MAX_BURST_FRAMES),
            )?,
        };
        let client = self.client.as_ref().is_some_and(|v| *v.get_ref());
        if client && socket_access != SocketAccess::default() {
            let span = [&self.socket_owner, &self.socket_group, &self.socket_mode]
                .into_iter()
                .flatten()
                .map(|v| v.span())
                .next();
            return Err(o.err(
                span,
                "client",
                "in client mode the socket is the frontend's: socket_owner, socket_group and socket_mode do not apply".into(),
            ));
        }
        Ok(DeviceConfig {
            socket: socket.get_ref().clone(),
            socket_access,
            client,
            device: DeviceSettings {
                name: name.clone(),
                queue_pairs: queues,
                queue_size,
                ring_size,
                mac,
                mtu,
                mode,
                fq,
                rx_limit,
                tx_limit,
            },
            txqueuelen,
            ring_size_set: self.ring_size.is_some(),
            iff_backpressure: self.iff_backpressure.as_ref().is_none_or(|v| *v.get_ref()),
        })
    }

    /// Check a device given on the command line.
    pub fn check_cli(&self) -> Result<DeviceConfig, ConfigError> {
        self.check(&Origin {
            file: None,
            text: "",
            table: None,
        })
    }
}

/// Parse and check a configuration file's text.
pub fn parse_file(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start.min(text.len()));
        let line = start.map(|at| text[..at].bytes().filter(|&b| b == b'\n').count() + 1);
        // The toml crate has errors without a description (a stray carriage
        // return, for one): say at least where the TOML stops being TOML.
        let message = match (e.message(), start) {
            ("", Some(at)) => {
                let column = text[..at].chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!("not valid TOML at column {column}")
            }
            ("", None) => "not valid TOML".to_string(),
            (m, _) => m.to_string(),
        };
        ConfigError {
            file: Some(path.to_path_buf()),
            line,
            key: None,
            message,
        }
    })?;
    if file.device.is_empty() {
        return Err(ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            key: Some("device".into()),
            message: "no [[device]] defined".into(),
        });
    }
    let mut out: Vec<DeviceConfig> = Vec::new();
    for d in &file.device {
        let o = Origin {
            file: Some(path),
            text,
            table: Some(d.span()),
        };
        let dev = d.get_ref().check(&o)?;
        if let Some(prev) = out.iter().find(|p| p.socket == dev.socket) {
            return Err(o.err(
                d.get_ref().socket.as_ref().map(|s| s.span()),
                "socket",
                format!(
                    "{} is used by two devices (TAP {} too)",
                    dev.socket.display(),
                    prev.device.name
                ),
            ));
        }
        if let Some(prev) = out.iter().find(|p| p.device.name == dev.device.name) {
            return Err(o.err(
                d.get_ref().tap.as_ref().map(|s| s.span()),
                "tap",
                format!(
                    "{} is used by two devices (socket {} too)",
                    dev.device.name,
                    prev.socket.display()
                ),
            ));
        }
        out.push(dev);
    }
    let metrics = match &file.metrics {
        Some(m) => Some(MetricsAddr::parse(m.get_ref()).map_err(|e| {
            Origin {
                file: Some(path),
                text,
                table: None,
            }
            .err(Some(m.span()), "metrics", e)
        })?),
        None => None,
    };
    let top = Origin {
        file: Some(path),
        text,
        table: None,
    };
    let privileges = Privileges {
        user: match &file.user {
            Some(u) => Some(
                privileges::user(u.get_ref()).map_err(|e| top.err(Some(u.span()), "user", e))?,
            ),
            None => None,
        },
        group: match &file.group {
            Some(g) => Some(
                socket::group_id(g.get_ref()).map_err(|e| top.err(Some(g.span()), "group", e))?,
            ),
            None => None,
        },
        seccomp: file.seccomp.as_ref().is_none_or(|v| *v.get_ref()),
    };
    privileges
        .check()
        .map_err(|e| top.err(file.user.as_ref().map(|u| u.span()), "user", e))?;
    Ok(Config {
        metrics,
        privileges,
        devices: out,
    })
}

/// Read, parse and check a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<DeviceConfig>, ConfigError> {
        parse_file(Path::new("/etc/vt.toml"), text).map(|c| c.devices)
    }

    #[test]
    fn metrics_address_is_checked_with_its_line() {
        let dev = "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\n";
        let c = parse_file(
            Path::new("/x.toml"),
            &format!("metrics = \"127.0.0.1:9101\"\n{dev}"),
        )
        .unwrap();
        assert_eq!(
            c.metrics,
            Some(MetricsAddr::Tcp("127.0.0.1:9101".parse().unwrap()))
        );
        let e = parse_file(
            Path::new("/x.toml"),
            &format!("metrics = \"nowhere\"\n{dev}"),
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("metrics")));
    }

    #[test]
    fn toml_errors_without_a_description_still_say_where() {
        // Found by the config_parser fuzz target: the toml crate describes
        // a stray carriage return with an empty message, and the error read
        // "/etc/vt.toml:2: " and nothing more.
        let e = parse("[[device]]\n\rsocket = \"/a\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.message, "not valid TOML at column 1");
        let e = parse("\r").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(1), "not valid TOML at column 1")
        );
    }

    #[test]
    fn user_group_and_seccomp_are_top_level_keys() {
        let dev = "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\n";
        let c = parse_file(Path::new("/x.toml"), dev).unwrap();
        assert_eq!(c.privileges, Privileges::default());
        assert!(c.privileges.seccomp);
        let c = parse_file(
            Path::new("/x.toml"),
            &format!("user = \"root\"\ngroup = \"0\"\nseccomp = false\n{dev}"),
        )
        .unwrap();
        let p = &c.privileges;
        assert_eq!(
            (p.user.as_ref().map(|u| u.uid), p.group, p.seccomp),
            (Some(0), Some(0), false)
        );
        for (line, key) in [
            ("user = \"no-such-user-vt\"", "user"),
            ("group = \"no-such-group-vt\"", "group"),
            // A uid without a passwd entry has no primary group.
            ("user = \"4000000000\"", "user"),
        ] {
            let e = parse_file(Path::new("/x.toml"), &format!("{line}\n{dev}")).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(1), Some(key)), "{e}");
        }
    }

    #[test]
    fn two_devices_with_defaults() {
        let d = parse(
            "[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt0\"\n\n[[device]]\nsocket = \"/run/b.sock\"\ntap = \"vt1\"\nqueues = 2\nmac = \"52:54:00:aa:bb:cc\"\n",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].device.queue_pairs, 1);
        assert_eq!(d[0].device.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(d[0].device.mac, default_mac("vt0"));
        assert_eq!(d[1].device.queue_pairs, 2);
        assert_eq!(d[1].device.mac, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e =
            parse("[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt0\"\nqueus = 2\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/vt.toml:4:"), "{s}");
        assert!(s.contains("queus"), "{s}");
    }

    #[test]
    fn bad_value_names_its_line_and_key() {
        let e = parse("[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt0\"\n\nqueue_size = 1000\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("queue_size"));
        assert!(e.message.contains("power of two"));
        let e = parse(
            "[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt0\"\nmac = \"01:00:5e:00:00:01\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("mac")));
        let e = parse("[[device]]\nsocket = \"/run/a.sock\"\ntap = \"a-name-far-too-long\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("tap")));
        // A `%d` pattern would be expanded by the kernel, past the check
        // that no two devices share a TAP.
        let e = parse("[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt%d\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("tap")));
        assert!(e.message.contains("'%'"), "{}", e.message);
    }

    #[test]
    fn missing_key_and_duplicates_are_located() {
        let e = parse("[[device]]\nsocket = \"/run/a.sock\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("tap")));
        let e = parse(
            "[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt0\"\n[[device]]\nsocket = \"/run/a.sock\"\ntap = \"vt1\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("socket")));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../examples/vhost-tap.toml");
        let d = parse_file(Path::new("examples/vhost-tap.toml"), text)
            .unwrap()
            .devices;
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].device.queue_pairs, 2);
        assert_eq!(d[1].device.mode, Mode::Auto);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("[[device]]\nsocket = \"/run/a.sock\ntap = \"vt0\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn modes_and_fq_settings() {
        let d = parse("[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\n").unwrap();
        assert_eq!(d[0].device.mode, Mode::Auto);
        assert_eq!(d[0].device.fq.limit, DEFAULT_FQ_LIMIT);
        let d = parse(
            "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nmode = \"fq-codel\"\nfq_limit = 500\nfq_ecn = false\n",
        )
        .unwrap();
        assert_eq!(
            (d[0].device.mode, d[0].device.fq.limit, d[0].device.fq.ecn),
            (Mode::FqCodel, 500, false)
        );
        let e =
            parse("[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nmode = \"codel\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("mode")));
        let e = parse("[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nfq_flows = 0\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("fq_flows")));
    }

    #[test]
    fn socket_access_is_checked_with_its_key() {
        let d = parse(
            "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nsocket_owner = \"0\"\nsocket_group = \"root\"\nsocket_mode = \"0660\"\n",
        )
        .unwrap();
        assert_eq!(
            d[0].socket_access,
            SocketAccess {
                owner: Some(0),
                group: Some(0),
                mode: Some(0o660)
            }
        );
        for (line, want) in [
            ("socket_mode = \"0999\"", "is not a file mode"),
            ("socket_mode = \"01777\"", "is not a file mode"),
            ("socket_owner = \"no-such-user-vt\"", "no user"),
            ("socket_group = \"no-such-group-vt\"", "no group"),
        ] {
            let e = parse(&format!(
                "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\n{line}\n"
            ))
            .unwrap_err();
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn client_mode_refuses_socket_permissions() {
        let dev = "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\nclient = true\n";
        assert!(parse(dev).unwrap()[0].client);
        let e = parse(&format!("{dev}socket_mode = \"0660\"\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("client")));
        assert!(
            e.to_string().contains("the socket is the frontend's"),
            "{e}"
        );
    }

    #[test]
    fn rate_limits_with_default_and_given_bursts() {
        let dev = "[[device]]\nsocket = \"/a\"\ntap = \"vt0\"\n";
        let d = parse(dev).unwrap();
        assert!(d[0].device.rx_limit.is_unlimited() && d[0].device.tx_limit.is_unlimited());
        let d = parse(&format!(
            "{dev}rx_rate_bytes = 12500000\ntx_rate_frames = 1000\ntx_burst_frames = 8\n"
        ))
        .unwrap();
        let s = &d[0].device;
        assert_eq!(
            s.rx_limit.bytes,
            Some(TokenBucket {
                rate: 12_500_000,
                burst: 625_000
            })
        );
        assert_eq!(s.rx_limit.frames, None);
        assert_eq!(
            s.tx_limit.frames,
            Some(TokenBucket {
                rate: 1000,
                burst: 8
            })
        );
        let e = parse(&format!("{dev}rx_burst_bytes = 9000\n")).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("rx_burst_bytes"))
        );
        assert!(e.message.contains("set rx_rate_bytes too"), "{e}");
        let e = parse(&format!("{dev}tx_rate_bytes = 0\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("tx_rate_bytes")));
    }

    #[test]
    fn cli_errors_name_the_flag() {
        let raw = RawDevice {
            socket: Some(Spanned::new(0..0, "/a".into())),
            tap: Some(Spanned::new(0..0, "vt0".into())),
            queues: Some(Spanned::new(0..0, 0)),
            ..Default::default()
        };
        let e = raw.check_cli().unwrap_err();
        assert_eq!(e.to_string(), "--queues: 0 is out of range (1..=16)");
    }
}
