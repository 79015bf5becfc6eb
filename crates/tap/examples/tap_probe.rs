//! Print what `Tap::open` reports for a name: `cargo run --example tap_probe -- NAME QUEUES`.
fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "vt0".into());
    let queues = args.next().and_then(|q| q.parse().ok()).unwrap_or(1);
    println!(
        "kernel features: {:#x}",
        tap::Tap::kernel_features().unwrap()
    );
    let cfg = tap::TapConfig {
        queues,
        ..tap::TapConfig::new(name)
    };
    match tap::Tap::open(&cfg) {
        Ok(t) => println!(
            "opened {} created={} flags={:#x}",
            t.name(),
            t.created(),
            t.flags()
        ),
        Err(e) => println!("error: {e}"),
    }
}
