//! What the daemon's integration tests share beyond the workspace's test
//! kit (`testkit`: the [`Daemon`] guard, its counters, waits, names): the
//! daemon with this package's binary ([`opts`], [`start_queues`]), a
//! [`vu_driver`] guest on its socket ([`Connect`]), an AF_PACKET
//! [`PacketSock`] for the host side of the TAP, frame builders and
//! guest-side helpers.
//!
//! Every test of these files needs root and /dev/net/tun (a real TAP): they
//! are `#[ignore]`d with that reason, and `tests/run.sh` runs them.

#![allow(dead_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vu_driver::{Driver, DriverConfig, RxFrame};

// What the test files use of the kit (each file uses some).
#[allow(unused_imports)]
pub use testkit::{
    ip, tap_exists, tap_stat, unique, unique_name, wait_for, Daemon, Opts, ReportExt, TapGuard,
    TempDir,
};

/// The daemon binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_vhost-tap");

/// Default daemon options, with this package's binary.
pub fn opts() -> Opts {
    Opts {
        bin: Some(BIN.into()),
        ..Opts::default()
    }
}

/// A daemon of this package with `queues` queue pairs.
pub fn start_queues(queues: usize) -> Daemon {
    Daemon::start(Opts {
        queues: Some(queues),
        ..opts()
    })
}

/// The guest side of a [`Daemon`]: a [`vu_driver`] frontend on its socket.
pub trait Connect {
    /// A driver config for this daemon's socket and queue pairs.
    fn driver_config(&self) -> DriverConfig;
    fn connect(&self) -> Driver;
    fn connect_with(&self, cfg: DriverConfig) -> Driver;
}

impl Connect for Daemon {
    fn driver_config(&self) -> DriverConfig {
        DriverConfig {
            socket: self.socket.clone(),
            queue_pairs: self.queues,
            ..DriverConfig::default()
        }
    }

    fn connect(&self) -> Driver {
        self.connect_with(self.driver_config())
    }

    fn connect_with(&self, cfg: DriverConfig) -> Driver {
        Driver::connect(cfg).unwrap_or_else(|e| {
            panic!(
                "connecting the driver failed: {e}; daemon log:\n{}",
                self.log_text()
            )
        })
    }
}

// ---------------------------------------------------------------- daemons

/// A daemon serving one device per entry of `devices` from a config file:
/// each entry (extra TOML lines for its `[[device]]`, may be empty) gets a
/// fresh TAP and socket. The (socket, TAP) of each, in order.
pub fn config_daemon(tag: &str, devices: &[&str]) -> (Daemon, Vec<(std::path::PathBuf, String)>) {
    let dir = TempDir::new(tag);
    let mut toml = String::new();
    let mut out = Vec::new();
    for (i, extra) in devices.iter().enumerate() {
        let (sock, tap) = (dir.join(format!("d{i}.sock")), unique_name("vtc"));
        toml.push_str(&format!(
            "[[device]]\nsocket = \"{}\"\ntap = \"{tap}\"\n{extra}\n\n",
            sock.display()
        ));
        out.push((sock, tap));
    }
    let cfg = dir.join("vhost-tap.toml");
    std::fs::write(&cfg, toml).unwrap();
    let d = Daemon::start_config(Some(BIN.into()), dir, &cfg, out.clone());
    (d, out)
}

/// Send UDP frames into `tap` at `fps`, paced, until `stop`: frame `n` has
/// `size(n)` payload bytes and source port `base_port + n % flows`.
/// Returns the frames sent.
pub fn paced_udp(
    tap: String,
    fps: u64,
    (base_port, flows): (u16, u64),
    size: impl Fn(u64) -> usize + Send + 'static,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sock = PacketSock::open(&tap, false);
        let tag = fresh_tag();
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Frames due by now; then sleep a millisecond (pacing, not a
            // wait for a condition).
            let due = (start.elapsed().as_secs_f64() * fps as f64) as u64;
            while sent < due {
                let port = base_port + (sent % flows) as u16;
                sock.send(&udp_frame(tag, sent as u32, port, size(sent)));
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

// ---------------------------------------------------------------- process

/// Open descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the daemon's fd table")
        .count()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

// ---------------------------------------------------------------- AF_PACKET

const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An AF_PACKET raw socket bound to one interface: `send` makes the kernel
/// transmit the frame into the TAP (→ daemon → guest); `recv` sees what the
/// TAP received (guest → daemon → host). Our own transmissions are ignored.
pub struct PacketSock {
    fd: OwnedFd,
    pub vnet_hdr: bool,
}

fn check(r: libc::c_int, what: &str) -> OwnedFd {
    if r < 0 {
        panic!("{what}: {}", io::Error::last_os_error());
    }
    // SAFETY: r is a fresh descriptor returned by socket(2) just now.
    unsafe { OwnedFd::from_raw_fd(r) }
}

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: `v` is a live c_int and we pass its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert!(
        r == 0,
        "setsockopt({level}, {opt}): {}",
        io::Error::last_os_error()
    );
}

impl PacketSock {
    pub fn open(ifname: &str, vnet_hdr: bool) -> PacketSock {
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: cname is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex != 0, "no interface {ifname}");
        // SAFETY: plain socket(2) call.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                )
            },
            "socket(AF_PACKET)",
        );
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20);
        setsockopt_int(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        if vnet_hdr {
            setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1);
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(
            r == 0,
            "bind AF_PACKET to {ifname}: {}",
            io::Error::last_os_error()
        );
        PacketSock { fd, vnet_hdr }
    }

    /// Transmit one frame (with the 10-byte virtio_net_hdr in front if `vnet_hdr`).
    pub fn send(&self, buf: &[u8]) {
        loop {
            // SAFETY: `buf` is a live slice and we pass its length.
            let r = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if r >= 0 {
                assert_eq!(r as usize, buf.len(), "short AF_PACKET send");
                return;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The qdisc / device queue is full: the frame was not taken.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                _ => panic!("AF_PACKET send of {} bytes: {e}", buf.len()),
            }
        }
    }

    /// Receive one frame, waiting until `deadline`.
    pub fn recv(&self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: `buf` is live and writable for its whole length.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if r >= 0 {
                let n = r as usize;
                assert!(n <= buf.len(), "frame of {n} bytes truncated");
                buf.truncate(n);
                return Some(buf);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {}
                _ => panic!("AF_PACKET recv: {e}"),
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let ms = (deadline - now).as_millis().clamp(1, 60_000) as i32;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    /// Receive frames until `pred` accepted `n` of them or `timeout` passed;
    /// returns the accepted ones (without the vnet header if any, which is
    /// returned separately).
    pub fn recv_matching(
        &self,
        n: usize,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let hl = if self.vnet_hdr { 10 } else { 0 };
        let mut out = Vec::new();
        while out.len() < n {
            let Some(b) = self.recv(deadline) else { break };
            if b.len() < hl {
                continue;
            }
            let (h, f) = b.split_at(hl);
            if pred(f) {
                out.push((h.to_vec(), f.to_vec()));
            }
        }
        out
    }
}

// ---------------------------------------------------------------- frames

/// Ethertype of our test frames (IEEE local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;
pub const MAGIC: &[u8; 4] = b"VTIT";
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// A test frame: Ethernet header (ethertype 0x88b5), magic, tag, seq, then a
/// pattern that depends on tag and seq. `len` ≥ 26.
pub fn test_frame(src: [u8; 6], dst: [u8; 6], tag: u32, seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 26);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&tag.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = tag.wrapping_mul(0x9e37_79b9) ^ seq.wrapping_mul(0x85eb_ca6b);
    while f.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        f.push((x >> 16) as u8);
    }
    f
}

/// (tag, seq) of a test frame, if it is one.
pub fn test_frame_id(f: &[u8]) -> Option<(u32, u32)> {
    if f.len() < 26 || f[12..14] != TEST_ETHERTYPE.to_be_bytes() || &f[14..18] != MAGIC {
        return None;
    }
    let tag = u32::from_be_bytes(f[18..22].try_into().unwrap());
    let seq = u32::from_be_bytes(f[22..26].try_into().unwrap());
    Some((tag, seq))
}

pub fn has_tag(f: &[u8], tag: u32) -> bool {
    test_frame_id(f).is_some_and(|(t, _)| t == tag)
}

/// A fresh tag for this process.
pub fn fresh_tag() -> u32 {
    0x5000_0000 | (std::process::id() << 8) ^ unique() as u32
}

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in h.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4_header(proto: u8, payload_len: usize, id: u16) -> Vec<u8> {
    let total = 20 + payload_len;
    assert!(total <= 65535);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]); // DF, TTL 64
    h.extend_from_slice(&[198, 18, 0, 1]);
    h.extend_from_slice(&[198, 19, 0, 1]);
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A UDP/IPv4 frame 198.18.0.1:sport → 198.19.0.1:9 whose payload carries
/// magic, tag and seq (so [`test_frame_id`]-like parsing works via [`udp_frame_id`]).
pub fn udp_frame(tag: u32, seq: u32, sport: u16, payload_len: usize) -> Vec<u8> {
    assert!(payload_len >= 12);
    let mut payload = Vec::with_capacity(payload_len);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&tag.to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());
    while payload.len() < payload_len {
        payload.push((payload.len() as u32 ^ seq) as u8);
    }
    let mut f = Vec::new();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ipv4_header(17, 8 + payload_len, seq as u16));
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&payload);
    f
}

/// (tag, seq) of a frame built by [`udp_frame`].
pub fn udp_frame_id(f: &[u8]) -> Option<(u32, u32)> {
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 17 || &f[42..46] != MAGIC {
        return None;
    }
    let tag = u32::from_be_bytes(f[46..50].try_into().unwrap());
    let seq = u32::from_be_bytes(f[50..54].try_into().unwrap());
    Some((tag, seq))
}

/// A TCP/IPv4 frame with `payload` (one big GSO frame when longer than the
/// MSS), TCP sequence number `seq0`, and a partial (pseudo-header) checksum
/// as the kernel leaves it for CHECKSUM_PARTIAL. Header lengths: 14 + 20 + 20.
pub fn tcp_frame(payload: &[u8], seq0: u32) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ipv4_header(6, tcp_len, 0x1234));
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5001u16.to_be_bytes());
    f.extend_from_slice(&seq0.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x50, 0x18]); // 5 words, PSH|ACK
    f.extend_from_slice(&65535u16.to_be_bytes());
    // Pseudo-header sum, not complemented (CHECKSUM_PARTIAL convention).
    let mut s: u32 = 0;
    for w in [[198u8, 18], [0, 1], [198, 19], [0, 1]] {
        s += u32::from(u16::from_be_bytes(w));
    }
    s += 6 + tcp_len as u32;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f.extend_from_slice(&(s as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // urgent
    f.extend_from_slice(payload);
    f
}

/// A virtio_net_hdr (10 bytes) for a TCPv4 GSO frame built by [`tcp_frame`].
pub fn tso4_hdr(gso_size: u16) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    h
}

/// Simple deterministic pseudo-random sizes.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
}

// ---------------------------------------------------------------- guest side

/// Receive on `pair` until `want` frames accepted by `pred` arrived or
/// `timeout` passed, re-posting `buf_len`-byte RX buffers as they are used.
pub fn guest_recv(
    drv: &mut Driver,
    pair: usize,
    want: usize,
    buf_len: usize,
    timeout: Duration,
    mut pred: impl FnMut(&RxFrame) -> bool,
) -> Vec<RxFrame> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        drv.post_rx(pair, usize::MAX, buf_len);
        let left = deadline.saturating_duration_since(Instant::now());
        let got = drv.recv_wait(pair, 1, left.min(Duration::from_millis(50)));
        out.extend(got.into_iter().filter(|f| pred(f)));
        if out.len() >= want || Instant::now() >= deadline {
            return out;
        }
    }
}

/// Guest sends `frame` on `pair` (zero virtio-net header), waiting for room.
pub fn guest_send(drv: &mut Driver, pair: usize, hdr: &[u8; 12], frame: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match drv.send(pair, hdr, frame) {
            Ok(()) => return,
            Err(vu_driver::Error::QueueFull) => {
                let done = drv.tx_completed(pair);
                assert!(
                    Instant::now() < deadline,
                    "TX queue of pair {pair} stayed full for 10 s"
                );
                drv.tx_wait(pair, done + 1, Duration::from_millis(100));
            }
            Err(e) => panic!("guest send on pair {pair}: {e}"),
        }
    }
}

/// One frame each way on `pair`; panics with context if either is lost.
pub fn check_both_ways(d: &Daemon, drv: &mut Driver, pair: usize) {
    d.assert_no_panic();
    let sock = PacketSock::open(&d.tap, false);
    let tag = fresh_tag();
    // guest → host
    let f = test_frame(GUEST_MAC, HOST_MAC, tag, 0, 100);
    guest_send(drv, pair, &[0; 12], &f);
    let got = sock.recv_matching(1, Duration::from_secs(5), |b| has_tag(b, tag));
    assert_eq!(
        got.len(),
        1,
        "guest→host frame on pair {pair} did not reach the TAP"
    );
    assert_eq!(got[0].1, f, "guest→host frame altered");
    // host → guest: on several queue pairs the TAP picks the queue by flow
    // hash, so send 64 UDP flows and expect at least one on `pair`.
    let (n, want) = if d.queues == 1 { (1, 1) } else { (64, 1) };
    for i in 0..n {
        sock.send(&udp_frame(tag, i as u32, 1024 + i as u16, 64));
    }
    let got = guest_recv(drv, pair, want, 2048, Duration::from_secs(5), |f| {
        udp_frame_id(&f.data).is_some_and(|(t, _)| t == tag)
    });
    assert!(
        got.len() >= want,
        "host→guest: no frame arrived on pair {pair}"
    );
    for g in &got {
        let (_, seq) = udp_frame_id(&g.data).unwrap();
        assert_eq!(
            g.data,
            udp_frame(tag, seq, 1024 + seq as u16, 64),
            "host→guest frame altered"
        );
    }
    d.assert_no_panic();
}
