//! Host network devices as tests see them: sysfs statistics, `ip(8)`, and a
//! guard that deletes a TAP the test created.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Whether a network device `name` exists in this namespace.
pub fn tap_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `/sys/class/net/DEV/statistics/COUNTER`; panics (naming the file) if it
/// cannot be read: a statistic of a device that is gone is a test bug, not 0.
pub fn tap_stat(dev: &str, counter: &str) -> u64 {
    let p = format!("/sys/class/net/{dev}/statistics/{counter}");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {p}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parsing {p}: {e}"))
}

/// Disable IPv6 on `name` so that the host sends no stray frames into it
/// (router solicitations, DAD, MLD). A test that wants IPv6 turns it on.
pub fn quiet_tap(name: &str) {
    let p = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if Path::new(&p).exists() {
        let _ = std::fs::write(&p, "1");
    }
}

/// Run `ip ARGS...`; its output (the caller checks the status).
pub fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"))
}

/// Deletes the network device on drop, whatever the test's outcome.
pub struct TapGuard(pub String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        if tap_exists(&self.0) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
}
