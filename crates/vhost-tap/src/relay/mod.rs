//! A thin relay between the frontend and the vhost crate's request
//! dispatcher, accepting the message order QEMU really sends.
//!
//! QEMU 10 sends `SET_VRING_ENABLE` for a vhost-user net device before
//! `SET_FEATURES` whenever the backend *offers* `VHOST_USER_F_PROTOCOL_FEATURES`
//! (it looks at the offered features, not the acked ones). The vhost crate's
//! `BackendReqHandler` answers that message with
//! `InactiveFeature(PROTOCOL_FEATURES)` and the connection ends.
//!
//! The relay passes every message through unchanged (header, payload and the
//! file descriptors that ride on it), except that one case: a
//! `SET_VRING_ENABLE` that arrives before the frontend acked
//! `PROTOCOL_FEATURES` is remembered, acknowledged to the frontend if it asked
//! for a reply, and replayed to the dispatcher once `PROTOCOL_FEATURES` is
//! acked (rings then start disabled and `SET_VRING_ENABLE` is meaningful) and
//! that vring is set up: after its `SET_VRING_KICK` and the `SET_VRING_CALL`
//! that follows it (QEMU replaces an early call fd there; enabling the vring
//! before would let the worker interrupt the guest through the old one). A
//! later `SET_VRING_ENABLE` from the frontend supersedes a held one. If the
//! frontend acks features without `PROTOCOL_FEATURES`, the remembered
//! requests are dropped: rings are then enabled by `SET_FEATURES` itself.
//!
//! Replies from the dispatcher flow back unchanged. The control path carries
//! a few hundred messages per connection; the data path never crosses it.

//!
//! - `wire.rs`: messages on the socket, with their descriptors.
//! - `filter.rs`: what passes, what is held and replayed.
//! - `check.rs`: what is refused (and ends the connection).

mod check;
mod filter;
mod wire;

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use log::debug;

use check::Checker;
pub use check::Refusal;
use filter::{Action, Filter};
pub use wire::{read_message, write_message, Message};

/// What ended a relayed connection: which side, which step, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Duplicating a socket handle for the second direction failed.
    #[error("relay: cannot duplicate a socket: {0}")]
    CloneSocket(#[source] io::Error),
    /// The thread that carries replies back could not start.
    #[error("relay: cannot start the reply thread: {0}")]
    SpawnReplies(#[source] io::Error),
    /// Reading a request from the frontend failed (or it broke the protocol).
    #[error("relay: reading a request from the frontend: {0}")]
    ReadFrontend(#[source] io::Error),
    /// Passing a request on to the dispatcher failed.
    #[error("relay: passing a request to the dispatcher: {0}")]
    WriteDispatcher(#[source] io::Error),
    /// Reading a reply from the dispatcher failed.
    #[error("relay: reading a reply from the dispatcher: {0}")]
    ReadDispatcher(#[source] io::Error),
    /// Writing a reply (the dispatcher's or our own) to the frontend failed.
    #[error("relay: writing a reply to the frontend: {0}")]
    WriteFrontend(#[source] io::Error),
    /// The frontend sent something the relay refuses (see `check.rs`).
    #[error("refused a request from the frontend: {0}")]
    Refused(#[from] Refusal),
    /// The reply thread panicked.
    #[error("relay: the reply thread panicked")]
    RepliesPanicked,
}

/// What the device offers, for the checks of the frontend's requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Vrings of the device (two per queue pair).
    pub vrings: usize,
    /// The largest ring size offered.
    pub max_ring: u16,
}

/// Relay between `front` (the frontend) and `back` (the dispatcher) until
/// either side closes. Both sockets are shut down on return.
///
/// An error on the frontend's side (reading its requests, passing them on,
/// answering it directly) is returned, naming the side and the step; the
/// caller logs it. An error on the reply side only ends the relay: the
/// dispatcher closing first is how it reports a bad request, and it logged
/// why.
pub fn run(
    front: UnixStream,
    back: UnixStream,
    name: &str,
    limits: Limits,
) -> Result<(), RelayError> {
    let clone = |s: &UnixStream| s.try_clone().map_err(RelayError::CloneSocket);
    let front_w = Arc::new(Mutex::new(clone(&front)?));
    let back_r = clone(&back)?;
    let front_for_replies = front_w.clone();
    let front_shut = clone(&front)?;
    let back_shut = clone(&back)?;
    let tname = format!("{name}-replies");
    let replies = thread::Builder::new()
        .name(tname)
        .spawn(move || {
            let r = (|| -> Result<(), RelayError> {
                while let Some(m) = read_message(&back_r).map_err(RelayError::ReadDispatcher)? {
                    let sock = front_for_replies.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(&sock, &m).map_err(RelayError::WriteFrontend)?;
                }
                Ok(())
            })();
            let _ = front_shut.shutdown(std::net::Shutdown::Both);
            r
        })
        .map_err(RelayError::SpawnReplies)?;

    let mut filter = Filter::default();
    let mut checker = Checker::new(limits.vrings, limits.max_ring);
    let r = (|| -> Result<(), RelayError> {
        let to_back = |m: &Message| write_message(&back, m).map_err(RelayError::WriteDispatcher);
        while let Some(m) = read_message(&front).map_err(RelayError::ReadFrontend)? {
            checker.request(&m)?;
            match filter.on_request(m) {
                Action::Forward(m) => to_back(&m)?,
                Action::ForwardThen(m, then) => {
                    to_back(&m)?;
                    for t in &then {
                        to_back(t)?;
                    }
                }
                Action::Reply(reply) => {
                    let sock = front_w.lock().unwrap_or_else(|p| p.into_inner());
                    write_message(&sock, &reply).map_err(RelayError::WriteFrontend)?;
                }
                Action::Absorb => {}
            }
        }
        Ok(())
    })();
    let _ = back_shut.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let r2 = replies.join().unwrap_or(Err(RelayError::RepliesPanicked));
    r.and(r2.or_else(|e| {
        // The dispatcher closing first is how it reports a bad request; it logged why.
        debug!("{name}: {e}");
        Ok(())
    }))
}

#[cfg(test)]
mod tests;
