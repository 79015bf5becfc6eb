//! Process life: clean shutdown on SIGTERM, and precise configuration errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn sigterm_cleans_up_a_created_tap() {
    let mut d = Daemon::start_queues(1);
    let drv = d.connect();
    let st = d
        .terminate(Duration::from_secs(5))
        .expect("daemon still running 5 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(
        !d.socket.exists(),
        "socket {} left behind",
        d.socket.display()
    );
    assert!(
        wait_for(Duration::from_secs(2), || (!tap_exists(&d.tap))
            .then_some(()))
        .is_some(),
        "TAP {} still exists after the daemon exited",
        d.tap
    );
    assert!(
        d.log_text().contains("final counters"),
        "no final counters in the log"
    );
    drop(drv);
}

/// Deletes the TAP on drop (the test created it).
struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        if tap_exists(&self.0) {
            let _ = ip(&["link", "del", &self.0]);
        }
    }
}

#[test]
fn sigterm_leaves_a_preexisting_tap() {
    let name = unique_tap_name();
    let out = ip(&["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"]);
    assert!(out.status.success(), "ip tuntap add: {out:?}");
    let _guard = TapGuard(name.clone());
    let mut d = Daemon::start(Opts {
        tap: Some(name.clone()),
        ..Opts::default()
    });
    d.wait_log(&[&format!("TAP {name} attached")], Duration::from_secs(5))
        .expect("daemon did not say it attached");
    let mut drv = d.connect();
    check_both_ways(&d, &mut drv, 0);
    let st = d
        .terminate(Duration::from_secs(5))
        .expect("daemon still running 5 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(!d.socket.exists(), "socket left behind");
    assert!(tap_exists(&name), "the pre-existing TAP {name} was removed");
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running vhost-tap");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn config_errors_are_precise() {
    let dir = temp_dir();
    let file = dir.join("vt.toml");
    let f = file.display().to_string();

    std::fs::write(
        &file,
        "[[device]]\nsocket = \"/tmp/x.sock\"\ntap = \"vtix0\"\nqueus = 2\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "unknown key accepted: {err}");
    assert!(err.contains(&format!("{f}:4:")), "no file:line in: {err}");
    assert!(err.contains("queus"), "key not named in: {err}");

    std::fs::write(&file, "[[device]]\nsocket = \"/tmp/x.sock\"\n").unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "missing tap accepted: {err}");
    assert!(err.contains(&format!("{f}:1:")), "no file:line in: {err}");
    assert!(err.contains("tap"), "key not named in: {err}");

    std::fs::write(
        &file,
        "[[device]]\nsocket = \"/tmp/x.sock\"\ntap = \"vtix0\"\nqueue_size = 1000\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", &f]);
    assert_ne!(code, Some(0), "bad queue_size accepted: {err}");
    assert!(
        err.contains(&format!("{f}:4:")) && err.contains("queue_size"),
        "{err}"
    );

    let (code, err) = run(&["--config", &dir.join("missing.toml").display().to_string()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("missing.toml"), "file not named: {err}");

    let (code, err) = run(&["--socket", "/tmp/x.sock"]);
    assert_ne!(code, Some(0), "--socket without --tap accepted: {err}");
    assert!(err.contains("--tap"), "error does not name --tap: {err}");

    let (code, err) = run(&["--socket", "/tmp/x.sock", "--tap", "vtix0", "--queues", "0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--queues"), "{err}");
    assert!(!tap_exists("vtix0"), "a TAP was created despite the error");
    let _ = std::fs::remove_dir_all(&dir);
}
