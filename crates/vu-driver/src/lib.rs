//! # vu-driver — a vhost-user-net frontend that plays the guest's driver
//!
//! For tests and benchmarks of a vhost-user-net backend without a VM: it
//! connects to the backend's socket, runs the handshake in QEMU 10's order,
//! shares a memfd as "guest memory", lays out split virtqueues in it, and then
//! acts as the guest's virtio-net driver: posts RX buffers, injects TX frames,
//! and reaps used rings, woken by the call eventfds.
//!
//! ## Design
//! - [`features`]: feature bit numbers and the sets we ack. Spec numbers and
//!   layouts come from `virtio-bindings` (feature bits, descriptor flags,
//!   `vring_*` and `virtio_net_hdr_v1` layouts) and the vhost crate (request
//!   codes, header flags, vhost-user feature bits), not from literals.
//! - `vring`: the driver side of one split virtqueue (descriptor free pool,
//!   avail publishing with the EVENT_IDX kick decision, used reaping). All ring
//!   accesses go through vm-memory with explicit orderings; each barrier names
//!   its partner on the device side.
//! - `driver`: [`Driver`] — the handshake (the vhost crate's `Frontend`, plus
//!   one raw `SET_VRING_ENABLE` writer for QEMU's early enable, which the
//!   `Frontend` refuses to send), guest memory layout, and the net-level API.
//!
//! Guest memory layout (guest physical address 0 = memfd offset 0): one
//! unused page, then each vring's rings (4 KiB aligned), then a scratch area
//! for raw tests (`mem_size / 16`), then per-vring buffer areas, each cut into
//! one slot per descriptor index.
//!
//! One thread drives a `Driver`; the backend is the only other party touching
//! the rings.

mod driver;
pub mod features;
mod vring;

use std::path::PathBuf;

use virtio_bindings::virtio_net::virtio_net_hdr_v1;

pub use driver::{Driver, VringLayout};
pub use vring::UsedElem;

/// How to connect and what to negotiate.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The backend's vhost-user unix socket.
    pub socket: PathBuf,
    /// Queue pairs; vrings = 2 * queue_pairs, laid out rx0, tx0, rx1, tx1, ...
    pub queue_pairs: usize,
    /// Entries per vring (a power of two, up to 32768).
    pub queue_size: u16,
    /// Ack VIRTIO_NET_F_MRG_RXBUF if offered.
    pub mrg_rxbuf: bool,
    /// Ack VIRTIO_RING_F_EVENT_IDX if offered.
    pub event_idx: bool,
    /// Ack CSUM, GUEST_CSUM, HOST/GUEST TSO4/TSO6/ECN if offered.
    pub offloads: bool,
    /// Guest memory bytes (one memfd region at guest physical address 0).
    pub mem_size: usize,
    /// Replay QEMU 10's order: SET_VRING_ENABLE(1) for every vring right after
    /// SET_PROTOCOL_FEATURES (and SET_OWNER), before SET_FEATURES.
    pub qemu_order: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            socket: PathBuf::from("/tmp/vhost-tap.sock"),
            queue_pairs: 1,
            queue_size: 256,
            mrg_rxbuf: true,
            event_idx: true,
            offloads: false,
            mem_size: 64 << 20,
            qemu_order: true,
        }
    }
}

/// Bytes of the `virtio_net_hdr_v1` in front of every frame (12): the driver
/// acks VERSION_1, so the header has `num_buffers` whether or not MRG_RXBUF
/// is negotiated.
pub const NET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();

/// One frame received on an RX queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The 12-byte `virtio_net_hdr_v1` as the device wrote it.
    pub hdr: [u8; NET_HDR_LEN],
    /// The Ethernet frame (all buffers of a mergeable frame, concatenated).
    pub data: Vec<u8>,
    /// Used entries that made up this frame (1 unless MRG_RXBUF).
    pub num_buffers: u16,
}

/// A split-ring descriptor, for raw (untrusted-guest) tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Errors of the driver; each says what failed and keeps the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to vhost-user socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vhost-user {what}: {source}")]
    Vhost {
        what: &'static str,
        source: vhost::Error,
    },
    #[error("raw vhost-user message {request}: {source}")]
    RawMessage {
        request: u32,
        source: std::io::Error,
    },
    #[error("backend's reply to raw vhost-user message {request} is malformed: {why}")]
    BadReply { request: u32, why: String },
    #[error("backend refused vhost-user message {request} (ack value {value})")]
    BackendNack { request: u32, value: u64 },
    #[error("backend does not offer {0}, which this driver requires")]
    MissingFeature(&'static str),
    #[error("need {needed} vrings, backend supports {offered}")]
    TooFewQueues { needed: u64, offered: u64 },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("queue full: not enough free descriptors")]
    QueueFull,
    #[error("chain of {len} bytes does not fit a buffer slot of {slot} bytes")]
    FrameTooLarge { len: usize, slot: usize },
}
