//! Shared test helpers: frame builders, a packet type that keeps a
//! virtio-net header in front of the frame (as the daemon does), a
//! deterministic PRNG.
#![allow(dead_code)]

use fq_codel::{Config, FqCodel, Packet};

/// A queue with `cfg`, which the test knows to be valid.
pub fn new_queue<P: Packet>(cfg: Config) -> FqCodel<P> {
    FqCodel::try_new(cfg).expect("test configuration in range")
}

pub const US: u64 = 1_000;
pub const MS: u64 = 1_000_000;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Length of the virtio-net header the daemon keeps before each frame.
pub const VNET_HDR_LEN: usize = 12;

/// A queued frame as the daemon stores it: virtio-net header, then the
/// Ethernet frame. `id` lets tests follow individual packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPkt {
    pub buf: Vec<u8>,
    pub id: u64,
}

impl TestPkt {
    pub fn new(frame: &[u8], id: u64) -> Self {
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf.extend_from_slice(frame);
        TestPkt { buf, id }
    }
}

impl Packet for TestPkt {
    fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }
    fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buf[VNET_HDR_LEN..]
    }
}

/// A flow's addresses and ports.
#[derive(Clone, Copy, Debug)]
pub struct Tuple {
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

pub fn udp(src_port: u16, dst_port: u16) -> Tuple {
    Tuple {
        proto: UDP,
        src_port,
        dst_port,
    }
}

pub fn tcp(src_port: u16, dst_port: u16) -> Tuple {
    Tuple {
        proto: TCP,
        src_port,
        dst_port,
    }
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP (20 bytes) or UDP (8 bytes) header; checksums left zero.
fn l4(t: Tuple, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&t.src_port.to_be_bytes());
    h.extend_from_slice(&t.dst_port.to_be_bytes());
    if t.proto == TCP {
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
    }
    h.resize(h.len() + payload, 0xab);
    h
}

pub fn internet_checksum(bytes: &[u8]) -> u16 {
    fq_codel::ecn::internet_checksum(bytes)
}

/// Ethernet + IPv4 (10.0.0.1 → 10.0.0.2 unless `src_host` differs) + TCP/UDP,
/// `frame_len` bytes in all (≥ 42 for UDP, 54 for TCP), TOS `tos`, valid
/// header checksum.
pub fn ipv4(t: Tuple, tos: u8, frame_len: usize) -> Vec<u8> {
    ipv4_from(t, tos, frame_len, 1)
}

pub fn ipv4_from(t: Tuple, tos: u8, frame_len: usize, src_host: u8) -> Vec<u8> {
    let l4_hdr = if t.proto == TCP { 20 } else { 8 };
    let payload = frame_len - 14 - 20 - l4_hdr;
    let l4 = l4(t, payload);
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, t.proto, 0, 0]);
    ip.extend_from_slice(&[10, 0, 0, src_host, 10, 0, 0, 2]);
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    assert_eq!(f.len(), frame_len);
    f
}

/// Ethernet + IPv6 (fd00::1 → fd00::2) + `ext` (already-encoded extension
/// headers, the first of type `first_ext`) + TCP/UDP. `tclass` is the Traffic
/// Class (ECN in its low 2 bits).
pub fn ipv6_ext(
    t: Tuple,
    tclass: u8,
    payload: usize,
    first_ext: Option<u8>,
    ext: &[u8],
) -> Vec<u8> {
    let l4 = l4(t, payload);
    let mut ip = vec![0x60 | (tclass >> 4), (tclass << 4) | 0x0a, 0xbc, 0xde];
    ip.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    ip.push(first_ext.unwrap_or(t.proto));
    ip.push(64);
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    let mut f = ethernet(0x86dd);
    f.extend_from_slice(&ip);
    f.extend_from_slice(ext);
    f.extend_from_slice(&l4);
    f
}

pub fn ipv6(t: Tuple, tclass: u8, payload: usize) -> Vec<u8> {
    ipv6_ext(t, tclass, payload, None, &[])
}

/// Insert a VLAN tag (`tpid` 0x8100 or 0x88a8) after the MAC addresses; the
/// outermost tag is the last one pushed.
pub fn push_vlan(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// xorshift64*: deterministic, no dependencies.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `count` UDP/IPv4 tuples whose flows land in pairwise different buckets
/// of `q`.
pub fn distinct_flows<P: Packet>(q: &fq_codel::FqCodel<P>, count: usize) -> Vec<Tuple> {
    let mut out: Vec<Tuple> = Vec::new();
    let mut buckets = Vec::new();
    let mut port = 10_000u16;
    while out.len() < count {
        let t = udp(port, 5001);
        let b = q.flow_of(&ipv4(t, 0, 60));
        if !buckets.contains(&b) {
            buckets.push(b);
            out.push(t);
        }
        port += 1;
    }
    out
}
