//! # vhost-tap
//!
//! A vhost-user-net backend that bridges a guest's virtio-net queues to a
//! host TAP device with backpressure instead of drops in both directions.
//!
//! ## Design
//! - [`config`]: the command line and the TOML file, checked into
//!   [`config::DeviceConfig`]s; errors name file, line and key.
//! - [`server`]: one thread per device; listens on the vhost-user socket,
//!   serves one frontend at a time, listens again when it leaves.
//! - [`relay`]: sits between the frontend and the vhost crate's request
//!   dispatcher so that QEMU's real message order (`SET_VRING_ENABLE` before
//!   `SET_FEATURES`) is accepted.
//! - [`backend`]: the `VhostUserBackend`: features, config space, one worker
//!   thread per queue pair, event dispatch.
//! - [`datapath`]: per queue pair, TAP reader → `ptr-ring` → RX filler, and
//!   the TX drainer that `writev`s guest chains to the TAP.
//! - [`chain`]: descriptor chains checked before any byte moves (the guest
//!   is not trusted).
//! - [`counters`]: per-queue counters; every drop has a reason.
//!
//! The ring lives in the `ptr-ring` crate, the TAP in `tap`, the guest-side
//! test driver in `vu-driver`.

pub mod backend;
pub mod chain;
pub mod config;
pub mod counters;
pub mod datapath;
pub mod guestmap;
pub mod relay;
pub mod server;
pub mod slots;
