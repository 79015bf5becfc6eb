//! Integration tests on real TAP devices (need CAP_NET_ADMIN and
//! /dev/net/tun). Every test uses its own interface name and a guard that
//! deletes the interface even when the test fails. Traffic goes only into
//! the TAPs the tests create. They are `#[ignore]`d (plain `cargo test`
//! runs without root) and run by `tests/run.sh`; the three that need
//! neither (argument checks, `TUNGETFEATURES`) always run.

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use tap::{
    BackpressureRequest, Error, Tap, TapConfig, IFF_BACKPRESSURE, IFF_MULTI_QUEUE, IFF_NO_PI,
    IFF_PERSIST, IFF_TAP, IFF_VNET_HDR, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN,
};
use testkit::{tap_exists, TapGuard};

const VNET_HDR: usize = 12;

/// A fresh interface name for this process and call.
fn unique_name() -> String {
    testkit::unique_name("tt")
}

fn sysfs(name: &str, attr: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join(attr))
        .unwrap_or_else(|e| panic!("read /sys/class/net/{name}/{attr}: {e}"))
        .trim()
        .to_owned()
}

fn sysfs_hex(name: &str, attr: &str) -> u32 {
    let text = sysfs(name, attr);
    u32::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

fn ip(args: &[&str]) {
    let out = testkit::ip(args);
    assert!(out.status.success(), "ip {args:?} failed: {out:?}");
}

fn config(name: &str, queues: usize) -> TapConfig {
    TapConfig {
        queues,
        ..TapConfig::new(name)
    }
}

/// An Ethernet broadcast frame with the local-experimental ethertype
/// 0x88b5, which no protocol handler on the host takes.
fn test_frame() -> [u8; 60] {
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    frame
}

/// Read from `tap`'s queue 0 until a frame with `ethertype` arrives.
fn read_until_ethertype(tap: &Tap, ethertype: u16, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tap.queue(0).as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        match tap.queue(0).read(&mut buf) {
            Ok(n) if n >= VNET_HDR + 14 => {
                let frame = &buf[VNET_HDR..n];
                if u16::from_be_bytes([frame[12], frame[13]]) == ethertype {
                    return Some(buf[..n].to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn create_single_queue_then_remove() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 1)).unwrap();
    assert!(tap.created());
    assert_eq!(tap.name(), name);
    assert_eq!(tap.queue_count(), 1);
    assert!(!tap.multi_queue());
    assert!(!tap.persistent());
    let flags = sysfs_hex(&name, "tun_flags");
    assert_eq!(
        flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR),
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    );
    assert_eq!(flags & (IFF_MULTI_QUEUE | IFF_PERSIST), 0);
    // O_NONBLOCK and O_CLOEXEC on the fd.
    let fd = tap.queue(0).as_raw_fd();
    // SAFETY: fcntl F_GETFL / F_GETFD on a valid fd, no pointers.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    assert_ne!(fl & libc::O_NONBLOCK, 0);
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
    assert_ne!(fdfl & libc::FD_CLOEXEC, 0);
    assert_eq!(tap.tx_dropped().unwrap(), 0);
    tap.close_and_remove().unwrap();
    assert!(!tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn create_four_queues_then_remove() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 4)).unwrap();
    assert!(tap.created());
    assert_eq!(tap.queue_count(), 4);
    assert!(tap.multi_queue());
    assert_ne!(sysfs_hex(&name, "tun_flags") & IFF_MULTI_QUEUE, 0);
    let mut fds: Vec<_> = tap.queues().iter().map(|q| q.as_raw_fd()).collect();
    fds.dedup();
    assert_eq!(fds.len(), 4);
    tap.close_and_remove().unwrap();
    assert!(!tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn drop_closes_a_created_tap() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 2)).unwrap();
    assert!(tap_exists(&name));
    drop(tap);
    assert!(!tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn kernel_picks_the_name_for_a_pattern() {
    let tap = Tap::open(&config("ttpat%d", 1)).unwrap();
    let _cleanup = TapGuard(tap.name().to_owned());
    assert!(tap.name().starts_with("ttpat"));
    assert_ne!(tap.name(), "ttpat%d");
    assert!(tap.created());
    assert!(tap_exists(tap.name()));
    let name = tap.name().to_owned();
    tap.close_and_remove().unwrap();
    assert!(!tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn attach_to_existing_persistent_multi_queue_tap() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    ip(&[
        "tuntap",
        "add",
        "dev",
        &name,
        "mode",
        "tap",
        "vnet_hdr",
        "multi_queue",
    ]);
    let tap = Tap::open(&config(&name, 2)).unwrap();
    assert!(!tap.created());
    assert_eq!(tap.queue_count(), 2);
    assert!(tap.persistent());
    tap.close_and_remove().unwrap();
    assert!(
        tap_exists(&name),
        "an attached TAP must survive close_and_remove"
    );
    assert_ne!(sysfs_hex(&name, "tun_flags") & IFF_PERSIST, 0);
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn one_queue_attaches_to_existing_multi_queue_tap() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tap", "multi_queue"]);
    let tap = Tap::open(&config(&name, 1)).unwrap();
    assert!(!tap.created());
    assert!(tap.multi_queue());
    assert_eq!(tap.queue_count(), 1);
    // `ip tuntap` made it without vnet_hdr; our attach set it.
    assert_ne!(tap.flags() & IFF_VNET_HDR, 0);
    tap.close_and_remove().unwrap();
    assert!(tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn attached_tap_persist_flag_is_restored() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"]);
    let cfg = TapConfig {
        persist: Some(false),
        ..config(&name, 1)
    };
    let tap = Tap::open(&cfg).unwrap();
    assert!(!tap.persistent());
    assert_eq!(sysfs_hex(&name, "tun_flags") & IFF_PERSIST, 0);
    tap.close_and_remove().unwrap();
    assert!(tap_exists(&name));
    assert_ne!(sysfs_hex(&name, "tun_flags") & IFF_PERSIST, 0);
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn created_persistent_tap_survives_drop_until_close_and_remove() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let cfg = TapConfig {
        persist: Some(true),
        ..config(&name, 1)
    };
    let tap = Tap::open(&cfg).unwrap();
    assert!(tap.created());
    assert!(tap.persistent());
    assert_ne!(sysfs_hex(&name, "tun_flags") & IFF_PERSIST, 0);
    tap.close_and_remove().unwrap();
    assert!(!tap_exists(&name));

    let tap = Tap::open(&cfg).unwrap();
    drop(tap);
    assert!(tap_exists(&name), "a persistent TAP outlives a plain drop");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn existing_single_queue_tap_rejects_multi_queue() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"]);
    let err = Tap::open(&config(&name, 4)).unwrap_err();
    assert!(matches!(err, Error::QueueModeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&name), "{msg}");
    assert!(msg.contains("single-queue"), "{msg}");
    assert!(msg.contains("multi-queue"), "{msg}");
    assert!(msg.contains(&format!("ip link del {name}")), "{msg}");
    assert!(tap_exists(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn existing_tun_device_is_rejected() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tun"]);
    let err = Tap::open(&config(&name, 1)).unwrap_err();
    assert!(matches!(err, Error::ExistsAsTun { .. }), "{err:?}");
    assert!(err.to_string().contains(&name));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn busy_single_queue_tap_is_reported() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let first = Tap::open(&config(&name, 1)).unwrap();
    let err = Tap::open(&config(&name, 1)).unwrap_err();
    match &err {
        Error::SetIff { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EBUSY)),
        other => panic!("expected SetIff EBUSY, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains("another process"),
        "{msg}"
    );
    first.close_and_remove().unwrap();
}

#[test]
fn name_too_long_is_rejected() {
    let err = Tap::open(&config("ttabcdefghijklmn", 1)).unwrap_err();
    assert!(matches!(err, Error::NameTooLong { len: 16, .. }), "{err:?}");
    assert!(err.to_string().contains("ttabcdefghijklmn"));
    assert!(!tap_exists("ttabcdefghijklm"));
}

#[test]
fn zero_queues_is_rejected() {
    let err = Tap::open(&config(&unique_name(), 0)).unwrap_err();
    assert!(
        matches!(err, Error::QueueCount { queues: 0, .. }),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn txqueuelen_and_mtu_are_applied_and_link_is_up() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let cfg = TapConfig {
        txqueuelen: Some(321),
        mtu: Some(1400),
        ..config(&name, 2)
    };
    let tap = Tap::open(&cfg).unwrap();
    assert_eq!(sysfs(&name, "tx_queue_len"), "321");
    assert_eq!(sysfs(&name, "mtu"), "1400");
    assert_ne!(sysfs_hex(&name, "flags") & libc::IFF_UP as u32, 0);
    assert_ne!(sysfs(&name, "operstate"), "down");
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn offload_flags_are_accepted_and_unknown_ones_rejected() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 2)).unwrap();
    tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
        .unwrap();
    tap.set_offload(0).unwrap();
    let err = tap.set_offload(0x8000_0000).unwrap_err();
    assert!(matches!(err, Error::SetOffload { .. }), "{err:?}");
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn vnet_hdr_size_below_ten_is_rejected() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 1)).unwrap();
    tap.set_vnet_hdr_size(10).unwrap();
    tap.set_vnet_hdr_size(12).unwrap();
    assert!(matches!(
        tap.set_vnet_hdr_size(4),
        Err(Error::SetVnetHdrSize { size: 4, .. })
    ));
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn empty_queue_read_would_block() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 1)).unwrap();
    // Bring-up may queue IPv6 frames; drain them, then expect WouldBlock.
    let mut buf = [0u8; 2048];
    let err = loop {
        match tap.queue(0).read(&mut buf) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn written_frame_reaches_the_host() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 2)).unwrap();
    let before = tap.statistic("rx_packets").unwrap();
    let hdr = [0u8; VNET_HDR];
    let frame = test_frame();
    let n = tap
        .queue(1)
        .writev(&[IoSlice::new(&hdr), IoSlice::new(&frame)])
        .unwrap();
    assert_eq!(n, VNET_HDR + frame.len());
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: both iovecs point to live locals of the stated length.
    let n = unsafe { tap.queue(0).writev_raw(&iov) }.unwrap();
    assert_eq!(n, VNET_HDR + frame.len());
    let after = tap.statistic("rx_packets").unwrap();
    assert_eq!(after - before, 2, "rx_packets {before} -> {after}");
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn host_arp_request_is_readable_with_vnet_header() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 1)).unwrap();
    // A /30 from the benchmarking range 198.18.0.0/15, per process and test.
    let third = (std::process::id() % 256) as u8;
    let fourth = (testkit::unique() % 64 * 4) as u8;
    let local = Ipv4Addr::new(198, 18, third, fourth + 1);
    let peer = Ipv4Addr::new(198, 18, third, fourth + 2);
    ip(&["addr", "add", &format!("{local}/30"), "dev", &name]);
    let sock = UdpSocket::bind((local, 0)).unwrap();
    sock.send_to(b"hello tap", (peer, 9)).unwrap();

    let got = read_until_ethertype(&tap, 0x0806, Duration::from_secs(3))
        .expect("no ARP request on the TAP within 3 s");
    let frame = &got[VNET_HDR..];
    assert_eq!(&frame[..6], &[0xff; 6], "ARP request goes to broadcast");
    let arp = &frame[14..];
    assert_eq!(u16::from_be_bytes([arp[6], arp[7]]), 1, "ARP op request");
    assert_eq!(&arp[14..18], &local.octets(), "sender IP");
    assert_eq!(&arp[24..28], &peer.octets(), "target IP");

    // And once more through readv_raw: a second request comes after ~1 s.
    let mut hdr = [0u8; VNET_HDR];
    let mut body = [0u8; 1600];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: body.as_mut_ptr() as *mut libc::c_void,
                iov_len: body.len(),
            },
        ];
        // SAFETY: both iovecs point to live, exclusively borrowed locals.
        match unsafe { tap.queue(0).readv_raw(&iov) } {
            Ok(n) if n > VNET_HDR + 14 && body[12..14] == [0x08, 0x06] => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no second ARP request");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("readv_raw: {e}"),
        }
    }
    tap.close_and_remove().unwrap();
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn readv_splits_header_and_frame() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let tap = Tap::open(&config(&name, 1)).unwrap();
    let third = (std::process::id() % 256) as u8;
    let fourth = (testkit::unique() % 64 * 4) as u8;
    let local = Ipv4Addr::new(198, 19, third, fourth + 1);
    let peer = Ipv4Addr::new(198, 19, third, fourth + 2);
    ip(&["addr", "add", &format!("{local}/30"), "dev", &name]);
    UdpSocket::bind((local, 0))
        .unwrap()
        .send_to(b"x", (peer, 9))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut hdr = [0u8; VNET_HDR];
    let mut body = [0u8; 1600];
    loop {
        let mut iov = [IoSliceMut::new(&mut hdr), IoSliceMut::new(&mut body)];
        match tap.queue(0).readv(&mut iov) {
            Ok(n) if n > VNET_HDR + 14 && body[12..14] == [0x08, 0x06] => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no ARP request");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("readv: {e}"),
        }
    }
    // No offloads requested: the kernel sends a plain header (no GSO).
    assert_eq!(hdr[1], 0, "gso_type VIRTIO_NET_HDR_GSO_NONE");
    tap.close_and_remove().unwrap();
}

#[test]
fn kernel_features_include_what_we_need() {
    let features = Tap::kernel_features().unwrap();
    let needed = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    assert_eq!(features & needed, needed, "features {features:#x}");
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn backpressure_is_set_exactly_when_the_kernel_offers_it() {
    let name = unique_name();
    let _cleanup = TapGuard(name.clone());
    let cfg = TapConfig {
        backpressure: BackpressureRequest::IfAvailable,
        ..config(&name, 2)
    };
    let tap = Tap::open(&cfg).unwrap();
    let offered = Tap::kernel_features().unwrap() & IFF_BACKPRESSURE != 0;
    assert_eq!(tap.backpressure(), offered);
    tap.close_and_remove().unwrap();

    let tap = Tap::open(&config(&name, 2)).unwrap();
    assert!(!tap.backpressure(), "Off never sets it");
    tap.close_and_remove().unwrap();
}

/// Our `TUNSETIFF` rewrites the device's flags (here it adds IFF_VNET_HDR;
/// on Linux 7.3 also IFF_BACKPRESSURE, checked in the 7.3 VM test): an
/// attached TAP gets the flags it had back, whether the handle is dropped
/// or closed with `close_and_remove`, single- or multi-queue.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN) and /dev/net/tun: run by tests/run.sh"]
fn attached_tap_gets_its_flags_back() {
    for (multi, close) in [(false, false), (false, true), (true, false)] {
        let name = unique_name();
        let _cleanup = TapGuard(name.clone());
        let mut args = vec!["tuntap", "add", "dev", &name, "mode", "tap"];
        if multi {
            args.push("multi_queue");
        }
        ip(&args);
        let before = sysfs_hex(&name, "tun_flags");
        assert_eq!(before & IFF_VNET_HDR, 0, "ip tuntap sets no vnet_hdr");
        let tap = Tap::open(&config(&name, 1)).unwrap();
        assert_ne!(sysfs_hex(&name, "tun_flags") & IFF_VNET_HDR, 0);
        if close {
            tap.close_and_remove().unwrap();
        } else {
            drop(tap);
        }
        assert_eq!(
            sysfs_hex(&name, "tun_flags"),
            before,
            "flags of {name} (multi_queue {multi}, close_and_remove {close})"
        );
    }
}
