//! What the fuzz targets share: a byte reader that turns the fuzzer's input
//! into choices (and its writer, for the seed corpora), a TAP that reads and
//! writes from a script behind the daemon's `TapIo` seam, and a guest driver
//! for one split virtqueue that knows what it posted, so the targets can
//! check what the data path gave back.
//!
//! - [`input`]: `Input` (choices out of bytes) and `Seed` (bytes out of choices).
//! - [`tap`]: `ScriptedTap`, which also checks that every iovec the data
//!   path hands it lies inside one guest mapping or outside all of them.
//! - [`guest`]: `Guest`, one vring in its own guest memory, driven as a
//!   well-behaved driver would, plus raw writes for a hostile one.
//! - [`harness`]: a queue pair on the scripted TAP with an RX and a TX
//!   vring, checked after every pass and at the end.
//! - [`ledger`]: the RX/TX bookkeeping both data-path targets check:
//!   every frame delivered, dropped and counted, or waiting.

pub mod guest;
pub mod harness;
pub mod input;
pub mod ledger;
pub mod tap;
