//! The virtio-net header: its layout from the negotiated features
//! (`datapath/vnet.rs`), the TAP offloads that follow from them
//! (`backend::tap_offloads`: the checksum and GSO work the TAP may leave
//! to the guest), and the header's trip through the data path with
//! arbitrary flags, GSO type and size, header length and checksum
//! start/offset.
//!
//! The daemon does not interpret the checksum and GSO fields: the kernel
//! checks them on TX (a frame it refuses is `tx_dropped_tap_error`) and
//! writes them on RX. What must hold, and is checked:
//! - `Negotiated::from_features`: a 12-byte header with VERSION_1 or
//!   MRG_RXBUF, else 10; `num_buffers` only in the 12-byte one, the
//!   number of chains with MRG_RXBUF and 1 without;
//! - `tap_offloads`: the TAP is never allowed a checksum or GSO offload the
//!   guest did not accept (it would hand the guest frames it cannot
//!   take), TSO only with checksum offload (the kernel refuses otherwise),
//!   and every offload the guest accepted is used;
//! - a TX header reaches the TAP byte for byte; an RX header reaches the
//!   guest byte for byte but `num_buffers`; FQ-CoDel's ECN marking never
//!   touches it (with the ring path, the direct path and FQ-CoDel mode).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_tap::backend::tap_offloads;
use vhost_tap::datapath::vnet::{Negotiated, HDR_LEN, HDR_LEN_LEGACY, MAX_FRAME, MIN_FRAME};
use vhost_tap_fuzz::guest::{ChainSpec, Guest, Kind};
use vhost_tap_fuzz::harness::Harness;
use vhost_tap_fuzz::input::Input;
use vhost_tap_fuzz::tap::Step;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF,
};

/// TUNSETOFFLOAD flags, from the kernel's `linux/if_tun.h`.
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_UFO: u32 = 0x10;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

fn check_layout(features: u64) -> Negotiated {
    let has = |bit: u32| features & (1 << bit) != 0;
    let neg = Negotiated::from_features(features);
    let long = has(VIRTIO_F_VERSION_1) || has(VIRTIO_NET_F_MRG_RXBUF);
    assert_eq!(neg.hdr_len, if long { HDR_LEN } else { HDR_LEN_LEGACY });
    assert_eq!(neg.mrg_rxbuf, has(VIRTIO_NET_F_MRG_RXBUF));
    assert_eq!(neg.min_len(), neg.hdr_len + MIN_FRAME);
    assert_eq!(neg.max_len(), neg.hdr_len + MAX_FRAME);
    for chains in [0usize, 1, 2, 17, 65_535, 65_536, usize::MAX] {
        let nb = neg.num_buffers(chains);
        match (long, neg.mrg_rxbuf) {
            (false, _) => assert_eq!(nb, None),
            (true, false) => assert_eq!(nb, Some([1, 0])),
            (true, true) => assert_eq!(nb, Some((chains as u16).to_le_bytes())),
        }
    }
    neg
}

fn check_offloads(features: u64) {
    let has = |bit: u32| features & (1 << bit) != 0;
    let off = tap_offloads(features);
    let csum = has(VIRTIO_NET_F_GUEST_CSUM);
    // Nothing the guest did not accept.
    assert_eq!(off & TUN_F_CSUM != 0, csum, "checksum offload {off:#x}");
    assert_eq!(off & TUN_F_TSO4 != 0, csum && has(VIRTIO_NET_F_GUEST_TSO4));
    assert_eq!(off & TUN_F_TSO6 != 0, csum && has(VIRTIO_NET_F_GUEST_TSO6));
    let tso = off & (TUN_F_TSO4 | TUN_F_TSO6) != 0;
    assert_eq!(off & TUN_F_TSO_ECN != 0, tso && has(VIRTIO_NET_F_GUEST_ECN));
    // Not offered, never asked of the TAP.
    assert_eq!(off & (TUN_F_UFO | TUN_F_USO4 | TUN_F_USO6), 0);
    let _ = VIRTIO_NET_F_GUEST_UFO;
    assert_eq!(off & !0x0f, 0, "unknown offload bits {off:#x}");
}

/// A frame with a header from the input (every field arbitrary) and an
/// Ethernet frame after it.
fn frame(i: &mut Input, hdr_len: usize) -> Vec<u8> {
    let mut f = i.bytes(hdr_len).to_vec();
    f.resize(hdr_len, 0);
    let body = if i.u8().is_multiple_of(8) {
        let len = usize::from(i.u16()) + 1500;
        (0..len).map(|k| k as u8).collect()
    } else {
        i.blob(1600).to_vec()
    };
    f.extend_from_slice(&body);
    f
}

fuzz_target!(|data: &[u8]| {
    let mut i = Input::new(data);
    let features = i.u64();
    // Layout and offloads for the input's features and a few near them.
    for f in [
        features,
        features ^ (1 << VIRTIO_F_VERSION_1),
        !features,
        0,
        u64::MAX,
    ] {
        check_layout(f);
        check_offloads(f);
    }
    let neg = check_layout(features);

    let rx = Guest::new(Kind::Rx, 1 << (i.u8() % 7), i.bool(), i.bool());
    let tx = Guest::new(Kind::Tx, 1 << (i.u8() % 7), i.bool(), i.bool());
    let mut h = Harness::new(neg, 2 + i.below(63), rx, tx);
    if i.bool() {
        // FQ-CoDel with a target of 0: CoDel marks ECN-capable frames as soon
        // as it can, which must never change the virtio-net header.
        let cfg = fq_codel::Config {
            flows: 1 + i.below(8),
            quantum: 1 + i.below(3000),
            target_ns: 0,
            interval_ns: 1,
            ..fq_codel::Config::default()
        };
        h.set_aqm(Some(fq_codel::FqCodel::try_new(cfg).unwrap()));
    }
    let n = 1 + i.below(8);
    for _ in 0..n {
        let f = frame(&mut i, neg.hdr_len);
        h.tap.push_read(Step::Frame(f.clone()));
        let spec = ChainSpec {
            lens: (0..1 + i.below(4))
                .map(|_| 1 + u32::from(i.u16()))
                .collect(),
            offset: u32::from(i.u8()),
            indirect: i.bool(),
            wrong_direction: false,
        };
        h.tx.post(&spec, &f);
        let rx_spec = ChainSpec {
            lens: (0..1 + i.below(4))
                .map(|_| 1 + u32::from(i.u16()))
                .collect(),
            offset: u32::from(i.u8()),
            indirect: i.bool(),
            wrong_direction: false,
        };
        h.rx.post(&rx_spec, &[]);
    }
    while !i.is_empty() {
        match i.u8() % 3 {
            0 => h.rx(true),
            1 => h.tx(),
            _ => {
                h.qp.tap_readable();
                h.qp.tap_writable();
            }
        }
    }
    h.finish();
});
