//! Frames through the daemon, both ways, with vu-driver as the guest and an
//! AF_PACKET socket on the TAP as the host.

mod common;

use std::time::Duration;

use common::*;
use vu_driver::features::*;
use vu_driver::{DriverConfig, RxFrame};

const N: usize = 1000;
const SEC5: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn qemu_message_order_is_accepted() {
    let d = start_queues(1);
    let mut drv = d.connect_with(DriverConfig {
        qemu_order: true,
        ..d.driver_config()
    });
    assert_ne!(
        drv.acked_features() & bit(VHOST_USER_F_PROTOCOL_FEATURES),
        0,
        "PROTOCOL_FEATURES not acked: the early SET_VRING_ENABLE path was not exercised"
    );
    check_both_ways(&d, &mut drv, 0);
    // The spec order works as well.
    drv.disconnect().unwrap();
    let mut drv = d.connect_with(DriverConfig {
        qemu_order: false,
        ..d.driver_config()
    });
    check_both_ways(&d, &mut drv, 0);
}

fn host_to_guest(mrg_rxbuf: bool, event_idx: bool) {
    let mut d = start_queues(1);
    let mut drv = d.connect_with(DriverConfig {
        mrg_rxbuf,
        event_idx,
        ..d.driver_config()
    });
    let acked = drv.acked_features();
    assert_eq!(acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0, mrg_rxbuf);
    assert_eq!(acked & bit(VIRTIO_RING_F_EVENT_IDX) != 0, event_idx);
    // With MRG_RXBUF, small buffers make large frames span several of them.
    let buf_len = if mrg_rxbuf { 512 } else { 2048 };
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    let mut rng = Lcg(u64::from(tag));
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let len = match i {
                0 => 60,
                1 => 1514,
                _ => rng.range(60, 1514),
            };
            test_frame(HOST_MAC, GUEST_MAC, tag, i as u32, len)
        })
        .collect();
    let mut got: Vec<RxFrame> = Vec::new();
    // A window of 32 frames in flight: the guest keeps up, nothing may be
    // lost anywhere (the tun ring alone holds 500).
    for chunk in frames.chunks(32) {
        for f in chunk {
            sock.send(f);
        }
        let want = got.len() + chunk.len();
        let more = guest_recv(&mut drv, 0, chunk.len(), buf_len, SEC5, |f| {
            has_tag(&f.data, tag)
        });
        got.extend(more);
        assert!(
            got.len() >= want,
            "only {} of {want} frames reached the guest",
            got.len()
        );
    }
    assert_eq!(got.len(), N);
    for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(
            test_frame_id(&g.data),
            Some((tag, i as u32)),
            "frame {i} out of order"
        );
        assert_eq!(g.data.len(), f.len(), "frame {i}: length");
        assert!(g.data == *f, "frame {i}: content differs");
        if !mrg_rxbuf {
            assert_eq!(g.num_buffers, 1);
        }
        // No offloads negotiated: flags and gso_type are 0.
        assert_eq!(g.hdr[..2], [0, 0], "frame {i}: header {:?}", g.hdr);
    }
    if mrg_rxbuf {
        assert!(
            got.iter().any(|g| g.num_buffers > 1),
            "no frame spanned several buffers"
        );
    }
    assert_eq!(drv.rx_malformed(), 0);
    let c = d.counters();
    c.assert_no_drops();
    // The guest kept buffers posted: frames went straight from the TAP into
    // them (the direct path), not through the ring.
    let direct = c.sum("rx_direct_frames");
    eprintln!(
        "{direct} of {} frames read directly into guest buffers",
        c.sum("rx_frames")
    );
    assert!(
        direct >= N as u64 / 2,
        "only {direct} of {N} frames took the direct path"
    );
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn host_to_guest_frames_arrive_byte_exact_mrg_eventidx() {
    host_to_guest(true, true);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn host_to_guest_frames_arrive_byte_exact_mrg_no_eventidx() {
    host_to_guest(true, false);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn host_to_guest_frames_arrive_byte_exact_no_mrg_eventidx() {
    host_to_guest(false, true);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn host_to_guest_frames_arrive_byte_exact_no_mrg_no_eventidx() {
    host_to_guest(false, false);
}

fn guest_to_host(event_idx: bool) {
    let mut d = start_queues(1);
    let mut drv = d.connect_with(DriverConfig {
        event_idx,
        ..d.driver_config()
    });
    assert_eq!(
        drv.acked_features() & bit(VIRTIO_RING_F_EVENT_IDX) != 0,
        event_idx
    );
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    let mut rng = Lcg(u64::from(tag) + 1);
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| test_frame(GUEST_MAC, HOST_MAC, tag, i as u32, rng.range(60, 1514)))
        .collect();
    for (i, f) in frames.iter().enumerate() {
        // Every other frame split in two segments, to exercise gathering.
        if i % 2 == 0 {
            guest_send(&mut drv, 0, &[0; 12], f);
        } else {
            loop {
                let (a, b) = f.split_at(f.len() / 2);
                match drv.send_chain(0, &[0; 12], &[a, b], i % 4 == 1) {
                    Ok(()) => break,
                    Err(vu_driver::Error::QueueFull) => {
                        let done = drv.tx_completed(0);
                        drv.tx_wait(0, done + 1, Duration::from_millis(100));
                    }
                    Err(e) => panic!("send_chain: {e}"),
                }
            }
        }
    }
    assert_eq!(drv.tx_wait(0, N, SEC5), N, "TX chains not all used");
    let got = sock.recv_matching(N, SEC5, |b| has_tag(b, tag));
    assert_eq!(got.len(), N, "frames seen on the TAP");
    for (i, ((_, g), f)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(
            test_frame_id(g),
            Some((tag, i as u32)),
            "frame {i} out of order"
        );
        assert!(g == f, "frame {i}: content differs");
    }
    let c = d.counters();
    assert_eq!(c.sum("tx_frames"), N as u64, "{c:?}");
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(c.sum("tx_bytes"), bytes as u64, "{c:?}");
    c.assert_no_drops();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn guest_to_host_frames_arrive_byte_exact_eventidx() {
    guest_to_host(true);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn guest_to_host_frames_arrive_byte_exact_no_eventidx() {
    guest_to_host(false);
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn tso_64k_frames_cross_both_ways_with_offloads() {
    let mut d = start_queues(1);
    let mut drv = d.connect_with(DriverConfig {
        offloads: true,
        ..d.driver_config()
    });
    let acked = drv.acked_features();
    for (b, n) in [
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
    ] {
        assert_ne!(acked & bit(b), 0, "{n} not negotiated (acked {acked:#x})");
    }
    d.wait_log(&["guest acked features", "TAP offloads"], SEC5)
        .expect("daemon did not log the acked features");
    let sock = PacketSock::open(&d.tap, true);
    let mss = 1448usize;
    let payload: Vec<u8> = (0..mss * 44).map(|i| (i * 7 + i / 251) as u8).collect();

    // host → guest: one 64 KiB GSO frame.
    let frame = tcp_frame(&payload, 1000);
    let mut out = tso4_hdr(mss as u16).to_vec();
    out.extend_from_slice(&frame);
    sock.send(&out);
    let got = guest_recv(&mut drv, 0, 1, 4096, SEC5, |f| {
        f.data.len() > 54 && f.data[12..14] == [8, 0] && f.data[23] == 6
    });
    assert_eq!(got.len(), 1, "no TCP frame reached the guest");
    let g = &got[0];
    assert_eq!(
        g.data.len(),
        frame.len(),
        "guest got a {}-byte frame, not the {}-byte GSO frame (segmented?)",
        g.data.len(),
        frame.len()
    );
    assert_eq!(g.hdr[1] & 0x7f, 1, "gso_type not TCPV4: {:?}", g.hdr);
    assert_eq!(
        u16::from_le_bytes([g.hdr[4], g.hdr[5]]),
        mss as u16,
        "gso_size"
    );
    assert_eq!(g.hdr[0] & 1, 1, "NEEDS_CSUM not set: {:?}", g.hdr);
    assert_eq!(u16::from_le_bytes([g.hdr[6], g.hdr[7]]), 34, "csum_start");
    assert_eq!(u16::from_le_bytes([g.hdr[8], g.hdr[9]]), 16, "csum_offset");
    assert!(g.data[54..] == payload[..], "payload differs");
    assert_eq!(g.data[..50], frame[..50], "headers differ");

    // guest → host: one 64 KiB GSO frame with a valid header.
    let seq0 = 5_000_000u32;
    let frame = tcp_frame(&payload, seq0);
    let mut hdr = [0u8; 12];
    hdr[..10].copy_from_slice(&tso4_hdr(mss as u16));
    guest_send(&mut drv, 0, &hdr, &frame);
    assert_eq!(drv.tx_wait(0, 1, SEC5), 1);
    // Whole or segmented: put every TCP payload at its offset.
    let mut seen = vec![false; payload.len()];
    let mut total = 0usize;
    let mut whole = false;
    let deadline = std::time::Instant::now() + SEC5;
    while total < payload.len() {
        let Some(b) = sock.recv(deadline) else { break };
        let (h, f) = b.split_at(10);
        if f.len() < 54 || f[12..14] != [8, 0] || f[23] != 6 || f[36..38] != 5001u16.to_be_bytes() {
            continue;
        }
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        let off = seq.wrapping_sub(seq0) as usize;
        let data = &f[54..];
        // Frames of this test's other direction (sequence numbers elsewhere,
        // e.g. a copy of the host's own GSO frame) are not ours to check.
        if off + data.len() > payload.len() {
            continue;
        }
        assert!(
            data == &payload[off..off + data.len()],
            "payload differs at {off}"
        );
        for s in &mut seen[off..off + data.len()] {
            assert!(!*s, "byte {off} received twice");
            *s = true;
        }
        total += data.len();
        whole |= data.len() == payload.len() && h[1] & 0x7f == 1;
    }
    assert_eq!(
        total,
        payload.len(),
        "TCP payload bytes received on the host"
    );
    eprintln!(
        "guest→host GSO frame arrived {}",
        if whole { "whole" } else { "segmented" }
    );
    let c = d.counters();
    c.assert_no_drops();
    assert_eq!(c.sum("tx_frames"), 1);
    assert_eq!(c.sum("tx_bytes"), frame.len() as u64);
}

/// One queue pair, a guest with offloads (and MRG_RXBUF) whose features the
/// daemon has applied to the TAP, and a vnet-header packet socket on the TAP.
fn with_offloads() -> (Daemon, vu_driver::Driver, PacketSock) {
    let d = start_queues(1);
    let drv = d.connect_with(DriverConfig {
        offloads: true,
        ..d.driver_config()
    });
    d.wait_log(&["guest acked features", "TAP offloads"], SEC5)
        .expect("daemon did not log the acked features");
    let sock = PacketSock::open(&d.tap, true);
    (d, drv, sock)
}

/// Host → guest with offloads and mergeable buffers, the guest's buffers
/// posted ahead: a 64 KiB GSO frame does not fit the buffers the direct
/// path gathers for a small frame, spills into a slot buffer and arrives
/// whole through the ring; the next large frames go direct (room for the
/// largest frame is gathered after a large one), and small frames after
/// them too. Every frame byte-exact, in order, with its `num_buffers`.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn large_frames_spill_once_then_go_direct() {
    let (mut d, mut drv, sock) = with_offloads();
    let mss = 1448usize;
    let buf_len = 4096;
    assert_eq!(drv.post_rx(0, 200, buf_len), 200);
    let before = d.counters();
    let tag = fresh_tag();
    // One frame at a time, each received before the next is sent: which
    // path a frame takes depends only on the frames before it.
    let is_ours = |f: &RxFrame| {
        (f.data.len() > 54 && f.data[12..14] == [8, 0] && f.data[23] == 6) || has_tag(&f.data, tag)
    };
    for i in 0..3u32 {
        let payload: Vec<u8> = (0..mss * 44).map(|j| (j * 7 + i as usize) as u8).collect();
        let frame = tcp_frame(&payload, 1000 + i);
        let mut out = tso4_hdr(mss as u16).to_vec();
        out.extend_from_slice(&frame);
        sock.send(&out);
        let got = guest_recv(&mut drv, 0, 1, buf_len, SEC5, is_ours);
        assert_eq!(got.len(), 1, "large frame {i} did not reach the guest");
        let g = &got[0];
        assert!(
            g.data == frame,
            "large frame {i} differs (len {})",
            g.data.len()
        );
        assert_eq!(g.hdr[1] & 0x7f, 1, "large frame {i}: gso_type {:?}", g.hdr);
        let need = (12 + frame.len()).div_ceil(buf_len);
        assert_eq!(
            usize::from(g.num_buffers),
            need,
            "large frame {i}: num_buffers"
        );
    }
    for i in 0..3u32 {
        let f = test_frame(HOST_MAC, GUEST_MAC, tag, i, 100 + 300 * i as usize);
        let mut out = vec![0u8; 10];
        out.extend_from_slice(&f);
        sock.send(&out);
        let got = guest_recv(&mut drv, 0, 1, buf_len, SEC5, is_ours);
        assert_eq!(got.len(), 1, "small frame {i} did not reach the guest");
        assert!(got[0].data == f, "small frame {i} differs");
        assert_eq!(got[0].num_buffers, 1, "small frame {i}: num_buffers");
    }
    assert_eq!(drv.rx_malformed(), 0);
    let c = d.counters();
    c.assert_no_drops();
    let delta = |k: &str| c.sum(k) - before.sum(k);
    let (frames, direct) = (delta("rx_frames"), delta("rx_direct_frames"));
    assert!(frames >= 6, "rx_frames {frames}");
    assert!(
        frames - direct >= 1,
        "the first large frame did not spill ({direct} of {frames} direct)"
    );
    assert!(direct >= 5, "only {direct} of {frames} frames went direct");
}

/// The ring path with long and short frames mixed: frames that arrive while
/// the guest has no buffers wait in the ring (long ones in their slot's large
/// buffer, short ones in the compact arena) and reach the guest byte-exact
/// once it posts buffers.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn long_and_short_frames_wait_in_the_ring_intact() {
    let (mut d, mut drv, sock) = with_offloads();
    let tag = fresh_tag();
    let mss = 1448usize;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for i in 0..8u32 {
        // long, short, long, long, short, short, long, short
        let long = [0, 2, 3, 6].contains(&i);
        let (hdr, frame) = if long {
            let payload: Vec<u8> = (0..mss * (10 + 4 * i as usize))
                .map(|j| (j * 5 + i as usize) as u8)
                .collect();
            (tso4_hdr(mss as u16).to_vec(), tcp_frame(&payload, 7000 + i))
        } else {
            (
                vec![0u8; 10],
                test_frame(HOST_MAC, GUEST_MAC, tag, i, 60 + 200 * i as usize),
            )
        };
        let mut out = hdr;
        out.extend_from_slice(&frame);
        sock.send(&out);
        sent.push(frame);
    }
    // No buffers yet: everything waits in the daemon.
    let waiting = wait_for(SEC5, || {
        let c = d.counters();
        (c.at(0, "rx_no_guest_buffers") >= 1).then_some(())
    });
    assert!(waiting.is_some(), "the frames never waited for buffers");
    let got = guest_recv(&mut drv, 0, sent.len(), 4096, SEC5, |f| {
        (f.data.len() > 54 && f.data[12..14] == [8, 0] && f.data[23] == 6) || has_tag(&f.data, tag)
    });
    assert_eq!(got.len(), sent.len(), "frames reaching the guest");
    // Byte-exact and in order within each flow (fq-codel mode may
    // interleave the two flows differently from how they were sent).
    let long = |f: &[u8]| f.len() > 54 && f[23] == 6;
    let sent_long: Vec<&Vec<u8>> = sent.iter().filter(|f| long(f)).collect();
    let got_long: Vec<&Vec<u8>> = got.iter().map(|g| &g.data).filter(|f| long(f)).collect();
    let sent_short: Vec<&Vec<u8>> = sent.iter().filter(|f| !long(f)).collect();
    let got_short: Vec<&Vec<u8>> = got.iter().map(|g| &g.data).filter(|f| !long(f)).collect();
    assert!(got_long == sent_long, "long frames altered or out of order");
    assert!(
        got_short == sent_short,
        "short frames altered or out of order"
    );
    let c = d.counters();
    c.assert_no_drops();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn two_queue_pairs_both_carry_traffic() {
    let mut d = start_queues(2);
    let mut drv = d.connect();
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    // guest → host on both pairs.
    for pair in 0..2 {
        for i in 0..10u32 {
            let f = test_frame(GUEST_MAC, HOST_MAC, tag, pair as u32 * 100 + i, 80);
            guest_send(&mut drv, pair, &[0; 12], &f);
        }
        assert_eq!(drv.tx_wait(pair, 10, SEC5), 10, "pair {pair}: TX not used");
    }
    let got = sock.recv_matching(20, SEC5, |b| has_tag(b, tag));
    assert_eq!(got.len(), 20, "guest→host frames on the TAP");
    // host → guest: 64 UDP flows; tun spreads them by flow hash.
    let flows = 64usize;
    for i in 0..flows {
        sock.send(&udp_frame(tag, i as u32, 1024 + i as u16, 64));
    }
    let mut per_pair = [0usize; 2];
    let deadline = std::time::Instant::now() + SEC5;
    while per_pair.iter().sum::<usize>() < flows && std::time::Instant::now() < deadline {
        for (pair, n) in per_pair.iter_mut().enumerate() {
            let got = guest_recv(&mut drv, pair, 1, 2048, Duration::from_millis(20), |f| {
                udp_frame_id(&f.data).is_some_and(|(t, _)| t == tag)
            });
            *n += got.len();
        }
    }
    assert_eq!(
        per_pair.iter().sum::<usize>(),
        flows,
        "per pair {per_pair:?}"
    );
    let c = d.counters();
    for (q, qc) in c.queues.iter().enumerate() {
        assert!(c.at(q, "tx_frames") >= 10, "queue {q}: tx_frames {qc:?}");
        assert!(
            c.at(q, "rx_frames") > 0,
            "queue {q} got no RX frame: per pair {per_pair:?}"
        );
    }
    c.assert_no_drops();
}

#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn reconnect_after_disconnect() {
    let mut d = start_queues(1);
    let pid = d.pid;
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    drv.disconnect().expect("disconnect");
    d.wait_log(&["frontend gone (connection 1)"], SEC5)
        .expect("daemon did not notice the disconnect");

    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    // Abrupt close: no GET_VRING_BASE, the socket just goes away.
    drop(drv);
    d.wait_log(&["frontend gone (connection 2)"], SEC5)
        .expect("daemon did not notice the abrupt close");

    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    assert!(d.alive(), "daemon died");
    assert_eq!(d.pid, pid);
    let c = d.counters();
    assert_eq!(c.sum("tx_frames"), 3);
    c.assert_no_drops();
}

/// Whether `fd` becomes readable within `ms` milliseconds (and clear it).
fn fired(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r > 0 {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes from an eventfd into a live 8-byte buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
    }
    r > 0
}

/// The guest is interrupted (call eventfd) for received frames and for
/// completed transmissions, with and without EVENT_IDX: a guest that sleeps
/// until its interrupt must not wait forever.
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn guest_gets_interrupts_for_rx_and_tx() {
    for event_idx in [true, false] {
        let d = start_queues(1);
        let mut drv = d.connect_with(DriverConfig {
            event_idx,
            ..d.driver_config()
        });
        let sock = PacketSock::open(&d.tap, false);
        let tag = fresh_tag();
        assert!(drv.post_rx(0, 64, 2048) > 0);
        for round in 0..3u32 {
            // Arm: reap what is there (this publishes used_event), clear the fd.
            drv.recv(0);
            fired(drv.call_fd(0), 0);
            sock.send(&test_frame(HOST_MAC, GUEST_MAC, tag, round, 100));
            assert!(
                fired(drv.call_fd(0), 3000),
                "no RX interrupt (event_idx={event_idx}, round {round})"
            );
            drv.tx_completed(0);
            fired(drv.call_fd(1), 0);
            drv.send(
                0,
                &[0u8; 12],
                &test_frame(GUEST_MAC, HOST_MAC, tag, round, 100),
            )
            .unwrap();
            assert!(
                fired(drv.call_fd(1), 3000),
                "no TX interrupt (event_idx={event_idx}, round {round})"
            );
        }
    }
}

/// CPU time (user + system, seconds) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A 64 KiB GSO frame with mergeable buffers when the guest has posted too
/// few of them: the daemon waits (no spinning), asks for a kick past the
/// buffers it saw, and delivers the frame whole once the guest posts more.
/// (It used to spin forever: "enable notification, avail != next_avail, retry".)
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn big_frame_waits_for_enough_mergeable_buffers_without_spinning() {
    for event_idx in [true, false] {
        let mut d = start_queues(1);
        let mut drv = d.connect_with(DriverConfig {
            offloads: true,
            event_idx,
            ..d.driver_config()
        });
        d.wait_log(&["guest acked features"], SEC5).unwrap();
        let sock = PacketSock::open(&d.tap, true);
        let mss = 1448usize;
        let payload: Vec<u8> = (0..mss * 44).map(|i| (i * 13 + i / 97) as u8).collect();
        let frame = tcp_frame(&payload, 77);
        // 8 buffers of 2 KiB: far too few for ~64 KiB.
        assert_eq!(drv.post_rx(0, 8, 2048), 8);
        let mut out = tso4_hdr(mss as u16).to_vec();
        out.extend_from_slice(&frame);
        sock.send(&out);
        // The daemon has the frame and waits for buffers; it must be idle.
        let waiting = wait_for(SEC5, || {
            let c = d.counters();
            (c.at(0, "rx_no_guest_buffers") >= 1).then_some(())
        });
        assert!(waiting.is_some(), "the frame never waited for buffers");
        let t0 = cpu_seconds(d.pid);
        std::thread::sleep(Duration::from_millis(1000));
        let used = cpu_seconds(d.pid) - t0;
        assert!(
            used < 0.3,
            "daemon used {used:.2} s of CPU in 1 s while waiting (event_idx={event_idx}): spinning"
        );
        assert!(
            !drv.recv(0)
                .iter()
                .any(|f| f.data.len() > 54 && f.data[23] == 6),
            "a partial frame reached the guest"
        );
        // More buffers: the kick wakes the daemon, the frame arrives whole.
        let got = guest_recv(&mut drv, 0, 1, 2048, SEC5, |f| {
            f.data.len() > 54 && f.data[23] == 6
        });
        assert_eq!(
            got.len(),
            1,
            "frame not delivered after more buffers (event_idx={event_idx})"
        );
        assert_eq!(got[0].data, frame, "frame altered");
        assert!(got[0].num_buffers > 8, "num_buffers {}", got[0].num_buffers);
    }
}

/// A guest RX chain scattered over more buffers than one `readv` may take
/// (an indirect table of 1100 two-byte buffers; the kernel's limit is 1024
/// iovecs): the frame still arrives, through the ring path, byte-exact.
/// (The direct path used to hand all of them to `readv`, which failed with
/// EINVAL for every frame: RX stalled.)
#[test]
#[ignore = "needs root and /dev/net/tun: run by tests/run.sh"]
fn rx_chain_of_more_buffers_than_readv_takes_still_receives() {
    use vu_driver::features::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vu_driver::RawDesc;
    let mut d = start_queues(1);
    let mut drv = d.connect();
    d.wait_log(&["guest acked features"], SEC5).unwrap();
    let (scratch, room) = drv.scratch();
    const N: usize = 1100;
    let table = scratch;
    let data = scratch + (N * 16) as u64;
    assert!(N * 16 + N * 4 <= room, "scratch area too small");
    let mut raw = Vec::with_capacity(N * 16);
    for i in 0..N {
        let last = i == N - 1;
        raw.extend_from_slice(&(data + 4 * i as u64).to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        let flags = VRING_DESC_F_WRITE as u16 | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
        raw.extend_from_slice(&flags.to_le_bytes());
        raw.extend_from_slice(&(if last { 0 } else { i as u16 + 1 }).to_le_bytes());
    }
    drv.write_guest(table, &raw).unwrap();
    let head = RawDesc {
        addr: table,
        len: (N * 16) as u32,
        flags: VRING_DESC_F_INDIRECT as u16,
        next: 0,
    };
    drv.raw_post(0, &[head], &[0]);
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    let frame = udp_frame(tag, 1, 4000, 900);
    sock.send(&frame);
    let used = wait_for(SEC5, || {
        let u = drv.raw_used(0);
        (!u.is_empty()).then_some(u)
    })
    .unwrap_or_else(|| panic!("no used entry; log:\n{}", d.log_text()));
    assert_eq!(used[0].id, 0);
    let len = used[0].len as usize;
    // Host frames other than ours (e.g. IPv6 router solicitations) may come
    // first; the chain then holds that frame. Ours must be byte-exact if it is the one.
    let mut got = Vec::with_capacity(len);
    for i in 0..len.div_ceil(2) {
        got.extend_from_slice(&drv.read_guest(data + 4 * i as u64, 2).unwrap());
    }
    got.truncate(len);
    if udp_frame_id(&got[12..]).is_some() {
        assert!(got[12..] == frame[..], "frame differs");
    }
    assert_eq!(len, 12 + got[12..].len());
    let c = d.counters();
    c.assert_no_drops();
    assert_eq!(c.at(0, "rx_queue_broken"), 0, "{:?}", c.queues[0]);
    assert!(c.at(0, "rx_frames") >= 1, "{:?}", c.queues[0]);
}
