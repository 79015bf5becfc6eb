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
