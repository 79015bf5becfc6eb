//! The virtio-net header, as both the vring and the TAP carry it in front of
//! every frame, and the frame sizes the data path works with.
//!
//! A leaf: the rest of the data path (and the backend, which sets the TAP's
//! header size) take the layout from here, and here takes it from
//! `virtio-bindings`.
//!
//! The header is `virtio_net_hdr_v1` (12 bytes) with VERSION_1 or
//! MRG_RXBUF, else the legacy `virtio_net_hdr` (10 bytes, no
//! `num_buffers`). The TAP is told the same size, so the kernel reads and
//! writes the header in the same layout as the guest.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{virtio_net_hdr, virtio_net_hdr_v1, VIRTIO_NET_F_MRG_RXBUF};

/// The legacy header (no VERSION_1, no MRG_RXBUF).
pub const HDR_LEN_LEGACY: usize = size_of::<virtio_net_hdr>();
/// The header with `num_buffers` (VERSION_1 or MRG_RXBUF); the largest one.
pub const HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
/// Where `num_buffers` sits in the header (the last field, little-endian u16).
pub const NUM_BUFFERS_AT: usize = offset_of!(virtio_net_hdr_v1, num_buffers);

/// Largest frame the TAP hands us or accepts: a 64 KiB GSO frame plus
/// Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_536 + 14 + 4;
/// Smallest frame worth delivering: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Room for the largest header and the largest frame, with one spare byte
/// so that a truncated read is recognisable.
pub const BUF_SIZE: usize = HDR_LEN + MAX_FRAME + 1;
/// Guest RX buffer room for a header and a 1500-byte frame with a VLAN
/// tag: what the direct path gathers while frames are small.
pub const SMALL_FRAME_ROOM: usize = HDR_LEN + 1518;

/// The length of the last frame read from the TAP, by either RX path.
/// Frames come in runs of a kind (a bulk GSO flow, then small ones), so
/// both paths size their next read by the last one: the direct path
/// gathers guest buffers for the largest frame after one longer than
/// [`SMALL_FRAME_ROOM`], the ring reader reads straight into a slot's large
/// buffer after one longer than its compact buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastFrame(usize);

impl LastFrame {
    /// A frame of `len` bytes (header included) was read.
    pub fn saw(&mut self, len: usize) {
        self.0 = len;
    }

    /// Whether the last frame was longer than `room` bytes.
    pub fn longer_than(self, room: usize) -> bool {
        self.0 > room
    }
}

/// What the guest and the backend agreed on, as far as the data path cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Length of the virtio-net header on both the vring and the TAP.
    pub hdr_len: usize,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several RX chains.
    pub mrg_rxbuf: bool,
}

impl Default for Negotiated {
    fn default() -> Negotiated {
        Negotiated::from_features(0)
    }
}

impl Negotiated {
    /// From the virtio features the guest acked.
    pub fn from_features(features: u64) -> Negotiated {
        let v1 = features & (1 << VIRTIO_F_VERSION_1) != 0;
        let mrg_rxbuf = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        Negotiated {
            hdr_len: if v1 || mrg_rxbuf {
                HDR_LEN
            } else {
                HDR_LEN_LEGACY
            },
            mrg_rxbuf,
        }
    }

    /// Shortest read or chain that holds a header and a frame.
    pub fn min_len(self) -> usize {
        self.hdr_len + MIN_FRAME
    }

    /// Longest chain the TAP can take: a header and the largest frame.
    pub fn max_len(self) -> usize {
        self.hdr_len + MAX_FRAME
    }

    /// The `num_buffers` field for a frame spread over `chains` RX chains,
    /// or `None` when the header has no such field.
    pub fn num_buffers(self, chains: usize) -> Option<[u8; 2]> {
        (self.hdr_len >= NUM_BUFFERS_AT + 2).then(|| {
            let n = if self.mrg_rxbuf { chains as u16 } else { 1 };
            n.to_le_bytes()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_spec() {
        assert_eq!((HDR_LEN_LEGACY, HDR_LEN, NUM_BUFFERS_AT), (10, 12, 10));
        let legacy = Negotiated::from_features(0);
        assert_eq!(legacy.hdr_len, 10);
        assert_eq!(legacy.num_buffers(3), None);
        let mrg = Negotiated::from_features(1 << VIRTIO_NET_F_MRG_RXBUF);
        assert_eq!((mrg.hdr_len, mrg.mrg_rxbuf), (12, true));
        assert_eq!(mrg.num_buffers(3), Some([3, 0]));
        let v1 = Negotiated::from_features(1 << VIRTIO_F_VERSION_1);
        assert_eq!((v1.hdr_len, v1.mrg_rxbuf), (12, false));
        // Without MRG_RXBUF a frame is always in one buffer.
        assert_eq!(v1.num_buffers(3), Some([1, 0]));
        assert_eq!((v1.min_len(), v1.max_len()), (26, 12 + MAX_FRAME));
    }
}
