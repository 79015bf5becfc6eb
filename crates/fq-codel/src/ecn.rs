//! ECN (RFC 3168): reading the codepoint and setting Congestion Experienced.
//!
//! The ECN field is the low two bits of the IPv4 TOS byte / IPv6 Traffic
//! Class. CoDel marks CE instead of dropping when the packet is ECT(0) or
//! ECT(1). IPv4 protects the field with the header checksum, which is fixed
//! incrementally (RFC 1624, eqn. 3) rather than recomputed; IPv6 has no header
//! checksum. The frame is found the same way as in [`crate::classify`]
//! (Ethernet, VLAN tags skipped).

use crate::classify::l3_offset;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// An ECN codepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ecn {
    /// 00: the transport does not do ECN; congestion must be signalled by a
    /// drop.
    NotEct,
    /// 10: ECN-capable transport.
    Ect0,
    /// 01: ECN-capable transport (L4S uses this one).
    Ect1,
    /// 11: Congestion Experienced.
    Ce,
}

impl Ecn {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => Ecn::NotEct,
            0b10 => Ecn::Ect0,
            0b01 => Ecn::Ect1,
            _ => Ecn::Ce,
        }
    }
}

/// The IP header of `frame` and whether it is IPv6, if it is a plausible
/// IPv4 (≥ 20 bytes, version 4, IHL ≥ 5) or IPv6 (≥ 40 bytes, version 6)
/// header.
fn ip_header(frame: &[u8]) -> Option<(usize, bool)> {
    let (ethertype, off) = l3_offset(frame)?;
    let ip = frame.get(off..)?;
    let first = *ip.first()?;
    match ethertype {
        ETH_P_IPV4 if ip.len() >= 20 && first >> 4 == 4 && first & 0x0f >= 5 => Some((off, false)),
        ETH_P_IPV6 if ip.len() >= 40 && first >> 4 == 6 => Some((off, true)),
        _ => None,
    }
}

/// The ECN codepoint of an IPv4 / IPv6 frame; `None` if it is neither.
pub fn ecn(frame: &[u8]) -> Option<Ecn> {
    let (off, v6) = ip_header(frame)?;
    Some(if v6 {
        // Traffic Class straddles bytes 0 and 1; its low two bits are
        // bits 5..4 of byte 1.
        Ecn::from_bits(frame[off + 1] >> 4)
    } else {
        Ecn::from_bits(frame[off + 1])
    })
}

/// Set CE on an ECN-capable IPv4 / IPv6 frame.
///
/// Returns `true` if the frame now carries CE (ECT(0) and ECT(1) are changed;
/// CE is left as it is), `false` if the frame is Not-ECT or not IP, in which
/// case it is not modified.
pub fn set_ce(frame: &mut [u8]) -> bool {
    let Some((off, v6)) = ip_header(frame) else {
        return false;
    };
    if v6 {
        match Ecn::from_bits(frame[off + 1] >> 4) {
            Ecn::NotEct => false,
            Ecn::Ce => true,
            Ecn::Ect0 | Ecn::Ect1 => {
                frame[off + 1] |= 0b11 << 4;
                true
            }
        }
    } else {
        match Ecn::from_bits(frame[off + 1]) {
            Ecn::NotEct => false,
            Ecn::Ce => true,
            Ecn::Ect0 | Ecn::Ect1 => {
                let old = u16::from_be_bytes([frame[off], frame[off + 1]]);
                frame[off + 1] |= 0b11;
                let new = u16::from_be_bytes([frame[off], frame[off + 1]]);
                let hc = u16::from_be_bytes([frame[off + 10], frame[off + 11]]);
                let hc = checksum_update(hc, old, new);
                frame[off + 10..off + 12].copy_from_slice(&hc.to_be_bytes());
                true
            }
        }
    }
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` in one's complement
/// arithmetic, for a 16-bit word changing from `old` to `new`.
pub fn checksum_update(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    // Three 16-bit terms: at most two carries to fold.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Internet checksum (RFC 1071) of `bytes`; 0 over a header whose
/// checksum field is correct.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4/UDP 192.168.0.1 → 192.168.0.2, TOS 0x02 (ECT(0)), valid checksum.
    static ECT0_UDP4: [u8; 42] = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet
        0x45, 0x02, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa7, 0x47, // ..checksum
        192, 168, 0, 1, 192, 168, 0, 2, // addresses
        0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
    ];

    #[test]
    fn fixture_checksum_is_valid() {
        assert_eq!(internet_checksum(&ECT0_UDP4[14..34]), 0);
    }

    #[test]
    fn ect0_ipv4_marked_and_checksum_still_valid() {
        let mut f = ECT0_UDP4;
        assert_eq!(ecn(&f), Some(Ecn::Ect0));
        assert!(set_ce(&mut f));
        assert_eq!(ecn(&f), Some(Ecn::Ce));
        assert_eq!(f[15], 0x03);
        assert_eq!(internet_checksum(&f[14..34]), 0);
        // Only the TOS byte and the checksum changed.
        for (i, (a, b)) in f.iter().zip(ECT0_UDP4.iter()).enumerate() {
            if ![15, 24, 25].contains(&i) {
                assert_eq!(a, b, "byte {i}");
            }
        }
    }

    #[test]
    fn not_ect_ipv4_untouched() {
        let mut f = ECT0_UDP4;
        f[15] = 0xb8; // EF DSCP, Not-ECT
        let before = f;
        assert!(!set_ce(&mut f));
        assert_eq!(f, before);
    }

    #[test]
    fn checksum_update_matches_recompute_for_all_tos() {
        for tos in 0..=255u8 {
            let mut f = ECT0_UDP4;
            f[15] = tos;
            f[24] = 0;
            f[25] = 0;
            let c = internet_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            let marked = set_ce(&mut f);
            assert_eq!(marked, tos & 3 != 0, "tos {tos:#x}");
            assert_eq!(internet_checksum(&f[14..34]), 0, "tos {tos:#x}");
        }
    }

    #[test]
    fn non_ip_and_short_frames_are_not_ect() {
        let mut arp = [0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!set_ce(&mut arp));
        let mut short = ECT0_UDP4[..30].to_vec();
        assert!(!set_ce(&mut short));
        assert!(!set_ce(&mut []));
    }
}
