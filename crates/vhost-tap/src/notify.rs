//! Notifications to the service manager (systemd `Type=notify`, through
//! `$NOTIFY_SOCKET`; nothing happens without it): `READY=1` once every
//! device listens, a `STATUS=` line whenever a frontend connects or leaves,
//! `STOPPING=1` at shutdown.
//!
//! The counts are process-wide: the daemon has one set of devices, and the
//! device threads report to the same service manager. `RELOADING=1` then
//! `READY=1` frame a reload (SIGHUP).

use std::sync::atomic::{AtomicUsize, Ordering};

use log::warn;
use sd_notify::NotifyState;

/// Devices listening. Relaxed: the counts only feed the status text, and
/// each send reads both afresh; no other memory depends on them.
static DEVICES: AtomicUsize = AtomicUsize::new(0);
/// Frontends connected now (Relaxed, as above).
static FRONTENDS: AtomicUsize = AtomicUsize::new(0);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("service manager notification failed: {e}");
    }
}

fn status() -> String {
    format!(
        "{} device(s) listening, {} frontend(s) connected",
        DEVICES.load(Ordering::Relaxed),
        FRONTENDS.load(Ordering::Relaxed)
    )
}

/// Every device listens: the daemon is ready.
pub fn ready(devices: usize) {
    DEVICES.store(devices, Ordering::Relaxed);
    send(&[NotifyState::Ready, NotifyState::Status(&status())]);
}

/// A frontend connected to a device.
pub fn frontend_connected() {
    FRONTENDS.fetch_add(1, Ordering::Relaxed);
    send(&[NotifyState::Status(&status())]);
}

/// A frontend left a device.
pub fn frontend_gone() {
    // Saturating: a miscount must not wrap into a huge number.
    let _ = FRONTENDS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(1))
    });
    send(&[NotifyState::Status(&status())]);
}

/// The daemon reloads its configuration (SIGHUP); `ready` follows.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        // systemd 253+ wants the monotonic time with RELOADING=1.
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!("service manager notification: no monotonic time: {e}"),
    }
}

/// The daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}
