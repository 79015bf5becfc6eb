//! Feature bit numbers (not masks), as in the virtio spec and Linux headers.
//!
//! Re-exported from `virtio-bindings`, and vhost-user's own bit from the vhost
//! crate; turn a bit number into a mask with [`bit`]:
//! `acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0`.

use vhost::vhost_user::VhostUserVirtioFeatures;

pub use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_SPEED_DUPLEX, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
pub use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

/// vhost-user's own feature bit in the virtio feature word
/// (`VHOST_USER_F_PROTOCOL_FEATURES`, bit 30): the vhost crate's
/// `VhostUserVirtioFeatures::PROTOCOL_FEATURES` mask, as a bit number.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = VhostUserVirtioFeatures::PROTOCOL_FEATURES
    .bits()
    .trailing_zeros();

/// The mask for feature bit `n`.
pub const fn bit(n: u32) -> u64 {
    1u64 << n
}

/// Features the driver acks whenever the backend offers them, whatever the config.
/// (No control virtqueue: this driver lays out only data vrings.)
pub const ALWAYS_ACKED: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_RING_F_INDIRECT_DESC);

/// Offloads acked when `DriverConfig::offloads` is set (and offered).
pub const OFFLOADS: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN);
