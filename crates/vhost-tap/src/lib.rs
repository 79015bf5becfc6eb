//! # vhost-tap
//!
//! A vhost-user-net backend that bridges a guest's virtio-net queues to a
//! host TAP device with backpressure instead of drops in both directions.
//!
//! ## Design
//! The arrows run one way: the daemon (CLI, config, server) starts the
//! control plane (relay, backend, device), which drives the data path,
//! which uses guest memory, the ring (`ptr-ring`), the TAP (`tap`) and the
//! AQM (`fq-codel`).
//!
//! - The daemon: `main.rs` (command line, signals), [`config`] (the
//!   command line and the TOML file, checked into [`config::DeviceConfig`]s;
//!   errors name file, line and key), [`acceptor`] (one thread, `accept`,
//!   waits on every device's vhost-user socket), [`server`] (a device:
//!   a connection thread per frontend, one frontend at a time; the socket
//!   goes back to the accept loop when it leaves).
//! - [`settings`]: what a device is (mode, sizes, FQ-CoDel parameters),
//!   below both the parser and the backend.
//! - The control plane: [`relay`] (sits between the frontend and the vhost
//!   crate's request dispatcher so that QEMU's real message order is
//!   accepted), [`backend`] (the `VhostUserBackend`: features, config
//!   space, one worker per queue pair, event dispatch), [`device`] (the TAP,
//!   queue pairs and counters that outlive connections).
//! - [`datapath`]: per queue pair, TAP reader → ring → RX filler, the
//!   direct RX path, and the TX drainer; one file per role.
//! - [`guest`]: guest memory on the per-frame path, descriptor chains
//!   checked before any byte moves (the guest is not trusted), iovecs.
//! - [`mode`]: which queue mode a device runs in and why (`auto` decided
//!   from the TAP's `IFF_BACKPRESSURE` and its qdiscs, [`qdisc`], read over
//!   rtnetlink), at start and again at every frontend connect.
//! - [`counters`]: per-queue counters; every drop has a reason.
//! - [`privileges`]: once the devices are open, the capabilities the daemon
//!   keeps and the user it runs as; [`seccomp`]: the data-path workers'
//!   filter, applied by each worker to itself.

pub mod acceptor;
pub mod backend;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod datapath;
pub mod device;
pub mod guest;
pub mod metrics;
pub mod mode;
pub mod notify;
pub mod privileges;
pub mod qdisc;
pub mod relay;
pub mod seccomp;
pub mod server;
pub mod settings;
pub mod socket;
pub mod status;
