//! The configuration file parser (`config::parse_file`) on arbitrary text.
//!
//! Checked: it never panics; an error names the file, carries a line
//! inside the text (every error but "no [[device]] defined", which is
//! about the whole file) and prints; a configuration it accepts has at
//! least one device, no two devices with one socket or one TAP, and every
//! value in the range `docs/config.md` gives, with FQ-CoDel parameters
//! the AQM accepts. Parsing is deterministic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vhost_tap::config::{parse_file, MAX_QUEUES};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/vhost-tap/fuzz.toml");
    let r = parse_file(path, &text);
    assert_eq!(r, parse_file(path, &text), "parsing is deterministic");
    match r {
        Err(e) => {
            assert_eq!(e.file.as_deref(), Some(path));
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            match e.line {
                Some(l) => assert!(
                    (1..=lines).contains(&l),
                    "line {l} of a text of {lines} lines: {e}"
                ),
                None => assert_eq!(
                    (e.key.as_deref(), e.message.as_str()),
                    (Some("device"), "no [[device]] defined"),
                    "an error without a line: {e}"
                ),
            }
            assert!(!e.message.is_empty());
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/vhost-tap/fuzz.toml"), "{shown}");
        }
        Ok(c) => {
            assert!(!c.devices.is_empty());
            for (k, d) in c.devices.iter().enumerate() {
                let s = &d.device;
                for other in &c.devices[k + 1..] {
                    assert_ne!(d.socket, other.socket, "two devices on one socket");
                    assert_ne!(s.name, other.device.name, "two devices on one TAP");
                }
                assert!(!d.socket.as_os_str().is_empty());
                assert!((1..=15).contains(&s.name.len()), "TAP name {:?}", s.name);
                assert!((1..=MAX_QUEUES).contains(&s.queue_pairs));
                assert!(s.queue_size.is_power_of_two() && (64..=32768).contains(&s.queue_size));
                assert!((4..=65536).contains(&s.ring_size));
                assert!(s.mtu >= 68);
                assert_eq!(s.mac[0] & 1, 0, "a multicast MAC");
                assert!(s.fq.memory_limit >= 65536);
                s.aqm()
                    .validate()
                    .expect("FQ-CoDel parameters the AQM accepts");
                for b in [&s.rx_limit, &s.tx_limit]
                    .into_iter()
                    .flat_map(|l| [l.bytes, l.frames])
                    .flatten()
                {
                    assert!(b.rate >= 1 && b.burst >= 1, "{b:?}");
                }
                if d.client {
                    assert_eq!(d.socket_access, Default::default());
                }
                if let Some(mode) = d.socket_access.mode {
                    assert!(mode <= 0o777);
                }
            }
        }
    }
});
