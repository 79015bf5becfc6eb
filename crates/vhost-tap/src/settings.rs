//! What a device is, as the control plane and the data path need it: the
//! queue mode and its FQ-CoDel parameters, queue counts and sizes, the MAC
//! and MTU the guest sees.
//!
//! These types sit below both the configuration parser (which produces them
//! from the command line or a file) and the backend (which runs a device by
//! them), so the backend never reaches back up into the daemon's parser.

#![deny(unsafe_code)]

/// How the daemon keeps the queue of host → guest traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stop reading the TAP while the ring is full (IFF_BACKPRESSURE when the kernel has it).
    Backpressure,
    /// Keep draining the TAP; the standing queue waits in a userspace FQ-CoDel.
    FqCodel,
    /// Backpressure if the kernel offers IFF_BACKPRESSURE and the TAP has a qdisc, else FQ-CoDel.
    Auto,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "backpressure" => Ok(Mode::Backpressure),
            "fq-codel" => Ok(Mode::FqCodel),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!(
                "unknown mode \"{s}\"; expected \"auto\", \"fq-codel\" or \"backpressure\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Backpressure => "backpressure",
            Mode::FqCodel => "fq-codel",
            Mode::Auto => "auto",
        }
    }
}

/// With `IFF_BACKPRESSURE` the qdisc holds only what does not fit the FIFOs
/// behind it: the tun ring (txqueuelen), the daemon's ring and the guest's
/// buffers. In backpressure mode with the flag, the daemon keeps the first
/// two short — a TAP it created gets this txqueuelen, and the ring this
/// size, unless configured — so that the standing queue forms in the qdisc
/// (fq_codel, cake), which manages it. Measured in the Linux 7.3 VM
/// (`tests/tests/kernel73.rs`): with 1000 + 256 frames the ping's p99 under
/// 4 bulk flows is the FIFO's drain time, flag or not; with 64 + 32 it fell
/// about 6×. Without the flag short FIFOs only mean more tail drops, so
/// nothing changes there.
pub const BACKPRESSURE_TXQUEUELEN: u32 = 64;
/// The daemon's ring in backpressure mode with `IFF_BACKPRESSURE` (see above).
pub const BACKPRESSURE_RING_SIZE: usize = 32;

/// FQ-CoDel parameters (RFC 8290 defaults; target 5 ms and interval 100 ms are fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqSettings {
    pub flows: usize,
    pub limit: usize,
    pub memory_limit: usize,
    pub ecn: bool,
}

/// One token bucket: `rate` units (bytes or frames) per second, at most
/// `burst` of them saved up while the direction is idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Units per second, at least 1.
    pub rate: u64,
    /// Units saved up at most, at least 1.
    pub burst: u64,
}

impl TokenBucket {
    /// The burst when none is configured: what the rate gives in
    /// [`DEFAULT_BURST_MS`], so that a worker that wakes a few milliseconds
    /// late (a busy 2-core host) loses none of the rate.
    pub fn with_default_burst(rate: u64) -> TokenBucket {
        TokenBucket {
            rate,
            burst: (rate.saturating_mul(DEFAULT_BURST_MS) / 1000).max(1),
        }
    }
}

/// The default burst, in milliseconds of the rate.
pub const DEFAULT_BURST_MS: u64 = 50;

/// The rate limit of one direction of a device, shared by its queue pairs:
/// a frame goes only while every bucket given has tokens. Enforced by not
/// moving frames (see `datapath/rate.rs`), so it creates backpressure,
/// never loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Ethernet bytes (the virtio-net header not counted) per second.
    pub bytes: Option<TokenBucket>,
    pub frames: Option<TokenBucket>,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.frames.is_none()
    }

    /// For the log: "12500000 bytes/s (burst 625000), 1000 frames/s (burst 50)".
    pub fn describe(&self) -> String {
        [(self.bytes, "bytes"), (self.frames, "frames")]
            .into_iter()
            .filter_map(|(b, unit)| b.map(|b| format!("{} {unit}/s (burst {})", b.rate, b.burst)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a device is, independent of any connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    pub name: String,
    pub queue_pairs: usize,
    pub queue_size: u16,
    pub ring_size: usize,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// The queue mode asked for (`Auto` is resolved by the device, see
    /// [`crate::mode`]).
    pub mode: Mode,
    /// FQ-CoDel parameters, for `Mode::FqCodel`.
    pub fq: FqSettings,
    /// Host → guest (RX): frames into the guest's buffers.
    pub rx_limit: RateLimit,
    /// Guest → host (TX): frames taken from the guest's TX ring.
    pub tx_limit: RateLimit,
}

impl DeviceSettings {
    /// The FQ-CoDel configuration of one queue pair (in FQ-CoDel mode).
    pub fn aqm(&self) -> fq_codel::Config {
        fq_codel::Config {
            flows: self.fq.flows,
            limit: self.fq.limit,
            memory_limit: self.fq.memory_limit,
            // DRR quantum: one full frame (MTU + Ethernet header), as RFC 8290 sets it.
            quantum: usize::from(self.mtu) + 14,
            ecn: self.fq.ecn,
            seed: seed(),
            ..fq_codel::Config::default()
        }
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
