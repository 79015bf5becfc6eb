//! Helpers shared by the benchmark programs (`bare-tap`, `vu-guest`) that
//! `bench/run.sh` drives: test frames, a stop flag set by SIGTERM/SIGINT, and
//! the progress lines the harness reads.
//!
//! Every program prints, to stdout, one line per 100 ms:
//! `stats t=<CLOCK_MONOTONIC seconds> frames=<n> bytes=<n> [key=value ...]`
//! with cumulative counts, so the harness can take the counts at the start
//! and end of its measurement window with the same clock (Python's
//! `time.monotonic()` is CLOCK_MONOTONIC too).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bytes of `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame the GSO mode sends: 64 KiB (Ethernet header included).
pub const GSO_FRAME: usize = 65_536;
/// TCP MSS the GSO frames carry (gso_size).
pub const GSO_MSS: u16 = 1448;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGTERM and SIGINT set the stop flag (the programs then print a last
/// stats line and exit 0).
pub fn install_stop_handler() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `on_signal` has the signature signal(2) expects.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether SIGTERM/SIGINT arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// CLOCK_MONOTONIC in seconds.
pub fn now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Prints one `stats` line (cumulative counts) and flushes.
pub fn print_stats(frames: u64, bytes: u64, extra: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "stats t={:.6} frames={frames} bytes={bytes}{}{extra}",
        now(),
        if extra.is_empty() { "" } else { " " }
    );
    let _ = out.flush();
}

/// Interval between two stats lines.
pub const STATS_EVERY: Duration = Duration::from_millis(100);

fn csum16(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet header to a MAC that is not the TAP's (the host stack drops
/// the frame early as PACKET_OTHERHOST, the same for every system under test).
fn eth(buf: &mut Vec<u8>, ethertype: u16) {
    buf.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst
    buf.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src
    buf.extend_from_slice(&ethertype.to_be_bytes());
}

fn ipv4(buf: &mut Vec<u8>, total_len: u16, proto: u8) {
    let start = buf.len();
    buf.extend_from_slice(&[0x45, 0]);
    buf.extend_from_slice(&total_len.to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    buf.extend_from_slice(&[198, 18, 40, 1, 198, 18, 40, 2]);
    let c = csum16(&buf[start..start + 20]);
    buf[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP/IPv4 frame of `len` bytes (Ethernet header included, no FCS;
/// at least 42), source port `sport`, destination port 9.
pub fn udp_frame(len: usize, sport: u16) -> Vec<u8> {
    let len = len.max(42);
    let mut b = Vec::with_capacity(len);
    eth(&mut b, 0x0800);
    ipv4(&mut b, (len - 14) as u16, 17);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&((len - 34) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]); // no UDP checksum
    b.resize(len, 0x41);
    b
}

/// A 64 KiB TCP/IPv4 frame for GSO (`GSO_FRAME` bytes, Ethernet header included).
pub fn tcp_gso_frame(sport: u16) -> Vec<u8> {
    let len = GSO_FRAME;
    let mut b = Vec::with_capacity(len);
    eth(&mut b, 0x0800);
    ipv4(&mut b, (len - 14) as u16, 6);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&5001u16.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes()); // seq
    b.extend_from_slice(&0u32.to_be_bytes()); // ack
    b.extend_from_slice(&[0x50, 0x18]); // data offset 5, PSH|ACK
    b.extend_from_slice(&65535u16.to_be_bytes());
    // Checksum field: the pseudo-header sum, as a sender with CHECKSUM_PARTIAL leaves it.
    let mut ph = Vec::new();
    ph.extend_from_slice(&[198, 18, 40, 1, 198, 18, 40, 2, 0, 6]);
    ph.extend_from_slice(&((len - 34) as u16).to_be_bytes());
    let pseudo = !csum16(&ph);
    b.extend_from_slice(&pseudo.to_be_bytes());
    b.extend_from_slice(&[0, 0]); // urgent
    b.resize(len, 0x42);
    b
}

/// The 12-byte virtio-net header: none for plain frames, or TCPv4 GSO with
/// partial checksum for [`tcp_gso_frame`].
pub fn vnet_hdr(gso: bool) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    if gso {
        h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len: eth + ip + tcp
        h[4..6].copy_from_slice(&GSO_MSS.to_le_bytes()); // gso_size
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    h
}

/// A tiny `--key value` argument parser (no dependencies).
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn from_env() -> Args {
        Args {
            rest: std::env::args().skip(1).collect(),
        }
    }

    /// The value of `--name VALUE`, parsed, or `default`.
    pub fn get<T: std::str::FromStr>(&mut self, name: &str, default: T) -> T {
        let key = format!("--{name}");
        if let Some(i) = self.rest.iter().position(|a| *a == key) {
            if i + 1 < self.rest.len() {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                return v.parse().unwrap_or_else(|_| {
                    eprintln!("bad value for {key}: {v}");
                    std::process::exit(2)
                });
            }
        }
        default
    }

    /// Whether the flag `--name` is present.
    pub fn flag(&mut self, name: &str) -> bool {
        let key = format!("--{name}");
        if let Some(i) = self.rest.iter().position(|a| *a == key) {
            self.rest.remove(i);
            return true;
        }
        false
    }

    /// Exits with an error if arguments are left that nobody asked for.
    pub fn finish(self, usage: &str) {
        if !self.rest.is_empty() {
            eprintln!("unknown arguments: {:?}\n{usage}", self.rest);
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_sizes_and_valid_ip_checksums() {
        let f = udp_frame(64, 1024);
        assert_eq!(f.len(), 64);
        assert_eq!(csum16(&f[14..34]), 0);
        let g = tcp_gso_frame(1);
        assert_eq!(g.len(), GSO_FRAME);
        assert_eq!(u16::from_be_bytes([g[16], g[17]]) as usize, GSO_FRAME - 14);
        assert_eq!(csum16(&g[14..34]), 0);
        assert_eq!(vnet_hdr(true)[1], 1);
    }
}
