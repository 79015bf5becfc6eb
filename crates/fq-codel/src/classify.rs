//! Flow classification: which flow queue a frame belongs to.
//!
//! [`classify`] reads a frame into a [`FlowKey`]:
//!
//! - Ethernet, skipping up to [`MAX_VLAN_TAGS`] 802.1Q / 802.1ad tags (the
//!   VLAN ID is not part of the key: a tagged frame lands where the untagged
//!   one would);
//! - IPv4: addresses, protocol, and the ports of TCP, UDP, UDP-Lite, SCTP and
//!   DCCP. Fragments (MF set or a non-zero offset) use the 3-tuple only, so
//!   every fragment of a datagram lands in the same flow;
//! - IPv6: the same, after skipping Hop-by-Hop, Routing, Destination Options,
//!   Fragment and AH headers (at most [`MAX_IPV6_EXT_HEADERS`]); anything else
//!   (ESP, No Next Header, too many headers) ends the walk with a 3-tuple;
//! - anything else (ARP, LLDP, an IP header that does not parse): ethertype
//!   and both MAC addresses;
//! - a runt shorter than an Ethernet header: the bytes present.
//!
//! Classification never panics and never reads out of bounds: every access
//! goes through `slice::get`. A truncated transport header gives the 3-tuple.
//!
//! [`FlowKey::hash`] mixes the key with a per-instance perturbation. The mixer
//! is a fast non-cryptographic one (like the Linux `jhash` perturbation):
//! seed it unpredictably in production so that a remote sender cannot aim
//! many flows at one bucket.

/// 802.1Q / 802.1ad tags skipped before giving up on finding IP.
pub const MAX_VLAN_TAGS: usize = 4;

/// IPv6 extension headers skipped before giving up on finding ports.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ TPID still seen in the wild.
const ETH_P_QINQ_9100: u16 = 0x9100;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// What identifies a flow. Produced by [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// IPv4 or IPv6. Ports are 0 when the protocol has none, for fragments,
    /// and when the transport header is truncated.
    Ip {
        /// `true` for IPv6.
        v6: bool,
        /// Source address; IPv4 uses the first 4 bytes, the rest are zero.
        src: [u8; 16],
        /// Destination address, laid out like `src`.
        dst: [u8; 16],
        /// Transport protocol (IPv6: the first header after the extension
        /// headers that were skipped).
        proto: u8,
        /// Transport source port, or 0.
        src_port: u16,
        /// Transport destination port, or 0.
        dst_port: u16,
    },
    /// Not IP, or an IP header that does not parse.
    L2 {
        /// Ethertype after any VLAN tags.
        ethertype: u16,
        /// Source MAC.
        src_mac: [u8; 6],
        /// Destination MAC.
        dst_mac: [u8; 6],
    },
    /// Shorter than an Ethernet header.
    Runt {
        /// The bytes present, zero-padded.
        bytes: [u8; ETH_HLEN],
        /// How many of `bytes` were present.
        len: u8,
    },
}

/// Read a big-endian u16 at `off`, if the frame is long enough.
fn be16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_9100)
}

/// The ethertype after any VLAN tags and the offset of the network header.
///
/// `None` if the frame is shorter than an Ethernet header or a VLAN tag runs
/// past its end. After [`MAX_VLAN_TAGS`] tags the returned ethertype is still
/// a TPID, which callers treat as "not IP".
pub(crate) fn l3_offset(frame: &[u8]) -> Option<(u16, usize)> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan_tpid(ethertype) {
            break;
        }
        // The tag is TCI (2 bytes) then the next ethertype.
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    Some((ethertype, off))
}

/// Source and destination port of a transport header, or zeros.
fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_DCCP | IPPROTO_SCTP | IPPROTO_UDPLITE => {
            match (be16(l4, 0), be16(l4, 2)) {
                (Some(s), Some(d)) => (s, d),
                _ => (0, 0),
            }
        }
        _ => (0, 0),
    }
}

fn ipv4_key(ip: &[u8]) -> Option<FlowKey> {
    let ver_ihl = *ip.first()?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip[12..16]);
    dst[..4].copy_from_slice(&ip[16..20]);
    let proto = ip[9];
    // MF flag or a non-zero fragment offset: a fragment, 3-tuple only.
    let fragment = be16(ip, 6)? & 0x3fff != 0;
    let (src_port, dst_port) = if fragment {
        (0, 0)
    } else {
        ports(proto, &ip[ihl..])
    };
    Some(FlowKey::Ip {
        v6: false,
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

fn ipv6_key(ip: &[u8]) -> Option<FlowKey> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);

    let mut proto = ip[6];
    let mut off = 40usize;
    let mut fragment = false;
    // `Some(l4 offset)` once a non-extension header is reached.
    let mut l4 = None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                ip.get(off + 1).map(|&l| (usize::from(l) + 1) * 8)
            }
            IPPROTO_AH => ip.get(off + 1).map(|&l| (usize::from(l) + 2) * 4),
            IPPROTO_FRAGMENT => {
                // Offset (13 bits) | res (2) | M (1): a fragment unless both
                // offset and M are zero (an "atomic fragment").
                match be16(ip, off + 2) {
                    Some(v) => {
                        fragment |= v & 0xfff9 != 0;
                        Some(8)
                    }
                    None => None,
                }
            }
            _ => {
                l4 = Some(off);
                break;
            }
        };
        match (len, ip.get(off)) {
            (Some(len), Some(&next)) => {
                proto = next;
                off += len;
            }
            // Truncated extension header: stop with a 3-tuple.
            _ => break,
        }
    }
    let (src_port, dst_port) = match l4 {
        Some(off) if !fragment => ports(proto, ip.get(off..).unwrap_or(&[])),
        _ => (0, 0),
    };
    Some(FlowKey::Ip {
        v6: true,
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

/// Classify an Ethernet frame (starting at the destination MAC).
///
/// Never panics, whatever the bytes.
pub fn classify(frame: &[u8]) -> FlowKey {
    let Some((ethertype, off)) = l3_offset(frame) else {
        if frame.len() < ETH_HLEN {
            let mut bytes = [0u8; ETH_HLEN];
            bytes[..frame.len()].copy_from_slice(frame);
            return FlowKey::Runt {
                bytes,
                len: frame.len() as u8,
            };
        }
        // A VLAN tag truncated the frame: classify on the outer header.
        return l2_key(frame, be16(frame, 12).unwrap_or(0));
    };
    let l3 = frame.get(off..).unwrap_or(&[]);
    let ip = match ethertype {
        ETH_P_IPV4 => ipv4_key(l3),
        ETH_P_IPV6 => ipv6_key(l3),
        _ => None,
    };
    ip.unwrap_or_else(|| l2_key(frame, ethertype))
}

/// Caller guarantees `frame.len() >= ETH_HLEN`.
fn l2_key(frame: &[u8], ethertype: u16) -> FlowKey {
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    FlowKey::L2 {
        ethertype,
        src_mac,
        dst_mac,
    }
}

/// The murmur3 / splitmix64 finaliser: a bijection on u64 with full
/// avalanche.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, byte) in w.iter_mut().enumerate() {
        *byte = b.get(off + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

impl FlowKey {
    /// The key as five words, the first tagged with the variant.
    fn words(&self) -> [u64; 5] {
        match *self {
            FlowKey::Ip {
                v6,
                src,
                dst,
                proto,
                src_port,
                dst_port,
            } => [
                (1 << 56)
                    | (u64::from(v6) << 48)
                    | (u64::from(proto) << 32)
                    | (u64::from(src_port) << 16)
                    | u64::from(dst_port),
                u64_at(&src, 0),
                u64_at(&src, 8),
                u64_at(&dst, 0),
                u64_at(&dst, 8),
            ],
            FlowKey::L2 {
                ethertype,
                src_mac,
                dst_mac,
            } => [
                (2 << 56) | u64::from(ethertype),
                u64_at(&src_mac, 0),
                u64_at(&dst_mac, 0),
                0,
                0,
            ],
            FlowKey::Runt { bytes, len } => [
                (3 << 56) | u64::from(len),
                u64_at(&bytes, 0),
                u64_at(&bytes, 8),
                0,
                0,
            ],
        }
    }

    /// Hash the key, perturbed by `seed`. Different seeds give independent
    /// bucket assignments; the same seed always gives the same hash.
    pub fn hash(&self, seed: u64) -> u64 {
        let mut h = mix64(seed ^ 0x9e37_79b9_7f4a_7c15);
        for w in self.words() {
            h = mix64(h ^ w);
        }
        h
    }

    /// The bucket in `0..buckets` for this key (`buckets` ≥ 1).
    pub fn bucket(&self, seed: u64, buckets: usize) -> usize {
        // Multiply-shift range reduction (Linux `reciprocal_scale`), on the
        // full 64-bit hash.
        ((u128::from(self.hash(seed)) * buckets as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 802.1Q-tagged IPv4/UDP 10.0.0.1:1234 → 10.0.0.2:53, VLAN 5.
    static VLAN_UDP4: [u8; 46] = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, // MACs
        0x81, 0x00, 0x00, 0x05, // 802.1Q, VID 5
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // ..proto 17
        10, 0, 0, 1, 10, 0, 0, 2, // addresses
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
    ];

    #[test]
    fn vlan_udp4_fixture_gives_five_tuple() {
        let key = classify(&VLAN_UDP4);
        let FlowKey::Ip {
            v6,
            src,
            dst,
            proto,
            src_port,
            dst_port,
        } = key
        else {
            panic!("expected an IP key, got {key:?}");
        };
        assert!(!v6);
        assert_eq!(&src[..4], &[10, 0, 0, 1]);
        assert_eq!(&dst[..4], &[10, 0, 0, 2]);
        assert_eq!((proto, src_port, dst_port), (17, 1234, 53));
    }

    #[test]
    fn ipv4_fragment_uses_three_tuple() {
        let mut f = VLAN_UDP4;
        f[18 + 6] = 0x20; // MF
        match classify(&f) {
            FlowKey::Ip {
                src_port, dst_port, ..
            } => assert_eq!((src_port, dst_port), (0, 0)),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn arp_hashes_on_l2() {
        let mut f = [0u8; 42];
        f[12] = 0x08;
        f[13] = 0x06;
        f[6] = 7;
        match classify(&f) {
            FlowKey::L2 {
                ethertype, src_mac, ..
            } => {
                assert_eq!(ethertype, 0x0806);
                assert_eq!(src_mac[0], 7);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn runt_and_empty_frames() {
        assert!(matches!(classify(&[]), FlowKey::Runt { len: 0, .. }));
        assert!(matches!(classify(&[1, 2, 3]), FlowKey::Runt { len: 3, .. }));
        // A VLAN TPID with the tag cut off falls back to L2.
        let mut f = [0u8; 15];
        f[12] = 0x81;
        assert!(matches!(
            classify(&f),
            FlowKey::L2 {
                ethertype: 0x8100,
                ..
            }
        ));
    }

    #[test]
    fn seed_changes_the_bucket_assignment() {
        let key = classify(&VLAN_UDP4);
        assert_eq!(key.hash(1), key.hash(1));
        assert_ne!(key.hash(1), key.hash(2));
        assert!(key.bucket(1, 1024) < 1024);
        assert_eq!(key.bucket(1, 1), 0);
    }
}
