//! The handshake as a raw backend sees it: message order, payloads, memory table.

mod common;

use common::*;
use vu_driver::features::*;
use vu_driver::{Driver, DriverConfig};

fn cfg(path: &std::path::Path, pairs: usize, qemu_order: bool) -> DriverConfig {
    DriverConfig {
        socket: path.to_path_buf(),
        queue_pairs: pairs,
        qemu_order,
        mem_size: 16 << 20,
        ..Default::default()
    }
}

/// The sequence QEMU 10 sends, for `n` vrings.
fn expected(n: u32, qemu_order: bool) -> Vec<u32> {
    let mut v = vec![
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
        GET_QUEUE_NUM,
        SET_OWNER,
    ];
    if qemu_order {
        v.extend(vec![SET_VRING_ENABLE; n as usize]);
    }
    v.push(SET_FEATURES);
    v.push(SET_MEM_TABLE);
    for _ in 0..n {
        v.extend([
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
        ]);
    }
    v.extend(vec![SET_VRING_ENABLE; n as usize]);
    v
}

#[test]
fn qemu_order_enables_before_set_features() {
    let mut be = RawBackend::start(BackendSpec::default());
    let drv = Driver::connect(cfg(&be.path, 2, true)).expect("connect");
    assert_eq!(be.reqs(), expected(4, true));

    let msgs = be.msgs();
    // The early enables: vrings 0..4, enable = 1, with NEED_REPLY (REPLY_ACK acked).
    let early: Vec<_> = msgs[5..9].to_vec();
    for (i, m) in early.iter().enumerate() {
        assert_eq!(m.req, SET_VRING_ENABLE);
        assert_eq!(m.payload.len(), 8);
        assert_eq!((m.u32_at(0), m.u32_at(4)), (i as u32, 1));
        assert_eq!(m.flags & 0x3, 1, "version 1");
        assert_ne!(m.flags & NEED_REPLY, 0, "need_reply with REPLY_ACK");
    }
    // Protocol features: MQ|REPLY_ACK|CONFIG, not LOG_SHMFD although offered.
    assert_eq!(msgs[2].u64_at(0), PROTO_MQ | PROTO_REPLY_ACK | PROTO_CONFIG);
    assert_eq!(
        msgs[2].flags & NEED_REPLY,
        0,
        "no ack before REPLY_ACK is on"
    );
    drv.disconnect().unwrap();
    be.join();
    let tail: Vec<u32> = be.reqs()[expected(4, true).len()..].to_vec();
    assert_eq!(tail, vec![GET_VRING_BASE; 4]);
}

#[test]
fn non_qemu_order_enables_only_at_the_end() {
    let mut be = RawBackend::start(BackendSpec::default());
    let drv = Driver::connect(cfg(&be.path, 1, false)).expect("connect");
    assert_eq!(be.reqs(), expected(2, false));
    drop(drv);
    be.join();
}

#[test]
fn features_acked_follow_config_and_offer() {
    let mut be = RawBackend::start(BackendSpec::default());
    let drv = Driver::connect(DriverConfig {
        offloads: true,
        mrg_rxbuf: false,
        ..cfg(&be.path, 1, true)
    })
    .unwrap();
    let set = be
        .msgs()
        .into_iter()
        .find(|m| m.req == SET_FEATURES)
        .unwrap();
    let acked = set.u64_at(0);
    assert_eq!(acked, drv.acked_features());
    let offered = BackendSpec::default().features;
    assert_eq!(acked & !offered, 0, "acked only what is offered");
    for b in [
        VIRTIO_F_VERSION_1,
        VHOST_USER_F_PROTOCOL_FEATURES,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_STATUS,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(acked & bit(b), 0, "bit {b} acked");
    }
    // Not wanted: MRG_RXBUF (config off), CTRL_VQ (no control queue).
    assert_eq!(acked & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(acked & bit(VIRTIO_NET_F_CTRL_VQ), 0);
    drop(drv);
    be.join();
}

#[test]
fn memory_table_and_vring_addresses() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mem_size = 16 << 20;
    let drv = Driver::connect(cfg(&be.path, 2, true)).unwrap();
    assert_eq!(drv.guest_mem_size(), mem_size);
    let msgs = be.msgs();
    let mt = msgs.iter().find(|m| m.req == SET_MEM_TABLE).unwrap();
    assert!(mt.has_fd, "memfd passed");
    assert_eq!(mt.u32_at(0), 1);
    assert_eq!(mt.u64_at(8), 0, "guest phys addr");
    assert_eq!(mt.u64_at(16), mem_size, "region covers mem_size");

    let s = be.state.lock().unwrap();
    let mut spans = Vec::new();
    for v in 0..4 {
        assert_eq!(s.num[v], 256);
        let (desc, used, avail) = s.addrs[v].unwrap();
        assert_eq!(desc % 16, 0);
        assert_eq!(avail % 2, 0);
        assert_eq!(used % 4, 0);
        // Rings (with the event words) inside guest memory.
        assert!(desc + 16 * 256 <= mem_size);
        assert!(avail + 6 + 2 * 256 <= mem_size);
        assert!(used + 6 + 8 * 256 <= mem_size);
        spans.push((desc, desc + 16 * 256));
        spans.push((avail, avail + 6 + 2 * 256));
        spans.push((used, used + 6 + 8 * 256));
        assert!(
            s.kick[v].is_some() && s.call[v].is_some(),
            "eventfds passed"
        );
        // The driver reports the same layout.
        let l = drv.vring_layout(v);
        assert_eq!((l.desc, l.used, l.avail), (desc, used, avail));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "ring areas overlap: {w:?}");
    }
    drop(s);
    drop(drv);
    be.join();
}

#[test]
fn config_space_is_read_with_get_config() {
    let mut be = RawBackend::start(BackendSpec::default());
    let mut drv = Driver::connect(cfg(&be.path, 1, true)).unwrap();
    let c = drv.config_space().unwrap();
    // MTU offered: QEMU asks for 12 bytes (mac, status, pairs, mtu).
    assert_eq!(c, BackendSpec::default().config);
    let m = be.msgs().into_iter().find(|m| m.req == GET_CONFIG).unwrap();
    assert_eq!((m.u32_at(0), m.u32_at(4)), (0, 12));
    drop(drv);
    be.join();
}

#[test]
fn too_few_queues_is_an_error() {
    let mut be = RawBackend::start(BackendSpec {
        queue_num: 2,
        ..Default::default()
    });
    let r = Driver::connect(cfg(&be.path, 2, true));
    assert!(matches!(
        r,
        Err(vu_driver::Error::TooFewQueues {
            needed: 4,
            offered: 2
        })
    ));
    be.join();
}

#[test]
fn refused_early_enable_fails_the_connect() {
    // A backend that acks the early SET_VRING_ENABLE with an error value.
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let path = sock_path("nack");
    let l = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        loop {
            let mut h = [0u8; 12];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let req = u32::from_le_bytes(h[0..4].try_into().unwrap());
            let flags = u32::from_le_bytes(h[4..8].try_into().unwrap());
            let size = u32::from_le_bytes(h[8..12].try_into().unwrap());
            let mut p = vec![0u8; size as usize];
            s.read_exact(&mut p).unwrap();
            let val: Option<u64> = match req {
                GET_FEATURES => Some(BackendSpec::default().features),
                GET_PROTOCOL_FEATURES => Some(PROTO_MQ | PROTO_REPLY_ACK),
                GET_QUEUE_NUM => Some(2),
                SET_VRING_ENABLE => Some(1),
                _ if flags & NEED_REPLY != 0 => Some(0),
                _ => None,
            };
            if let Some(v) = val {
                let mut m = req.to_le_bytes().to_vec();
                m.extend_from_slice(&5u32.to_le_bytes());
                m.extend_from_slice(&8u32.to_le_bytes());
                m.extend_from_slice(&v.to_le_bytes());
                s.write_all(&m).unwrap();
            }
        }
    });
    let r = Driver::connect(cfg(&path, 1, true));
    assert!(
        matches!(
            r,
            Err(vu_driver::Error::BackendNack {
                request: 18,
                value: 1
            })
        ),
        "{:?}",
        r.err()
    );
    t.join().unwrap();
    let _ = std::fs::remove_file(&path);
}
