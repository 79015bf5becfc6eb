//! The relay's one decision: which frontend messages pass through as they
//! are, and which early `SET_VRING_ENABLE` is held, answered and replayed.

use std::collections::{BTreeMap, BTreeSet};

use log::debug;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserProtocolFeatures, VhostUserVirtioFeatures, VhostUserVringState,
};
use vm_memory::ByteValued;

use super::wire::{Message, NEED_REPLY, REPLY, VERSION_1};

/// Bits in feature words.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
pub const REPLY_ACK: u64 = VhostUserProtocolFeatures::REPLY_ACK.bits();
/// The vring index in the u64 payload of SET_VRING_KICK/CALL (the low byte;
/// bit 8 says "no descriptor").
const VRING_INDEX_MASK: u64 = 0xff;

/// The relay's view of the negotiation, enough to recognise the early
/// `SET_VRING_ENABLE`.
#[derive(Debug, Default)]
pub struct Filter {
    protocol_features_acked: bool,
    reply_ack: bool,
    /// vring index → enable, as last requested before SET_FEATURES.
    pub(super) early_enables: BTreeMap<u32, u32>,
    /// Held enables whose vring has had its SET_VRING_KICK since SET_FEATURES.
    kicked: BTreeSet<u32>,
}

/// The vring index in the u64 payload of SET_VRING_KICK/CALL.
fn vring_of_fd_message(m: &Message) -> Option<u32> {
    m.u64_payload().map(|v| (v & VRING_INDEX_MASK) as u32)
}

/// The `VhostUserVringState` (index, num) at the start of a payload, if it
/// is long enough.
pub(super) fn vring_state(payload: &[u8]) -> Option<(u32, u32)> {
    let bytes = payload.get(..std::mem::size_of::<VhostUserVringState>())?;
    let state = *VhostUserVringState::from_slice(bytes)?;
    Some((state.index, state.num))
}

fn enable_message(index: u32, num: u32) -> Message {
    Message {
        request: FrontendReq::SET_VRING_ENABLE.into(),
        flags: VERSION_1,
        payload: VhostUserVringState::new(index, num).as_slice().to_vec(),
        fds: Vec::new(),
    }
}

/// What to do with one frontend message.
#[derive(Debug)]
pub enum Action {
    /// Pass it on to the dispatcher.
    Forward(Message),
    /// Answer the frontend directly with this reply (and forward nothing).
    Reply(Message),
    /// Forward it, then send these messages to the dispatcher (they expect no reply).
    ForwardThen(Message, Vec<Message>),
    /// Nothing to forward and no reply wanted.
    Absorb,
}

impl Filter {
    pub fn on_request(&mut self, m: Message) -> Action {
        // Codes the vhost crate does not know pass through untouched.
        let Ok(request) = FrontendReq::try_from(m.request) else {
            return Action::Forward(m);
        };
        match request {
            FrontendReq::SET_PROTOCOL_FEATURES => {
                self.reply_ack = m.u64_payload().unwrap_or(0) & REPLY_ACK != 0;
                Action::Forward(m)
            }
            FrontendReq::RESET_OWNER => {
                *self = Filter::default();
                Action::Forward(m)
            }
            FrontendReq::SET_VRING_ENABLE if !self.protocol_features_acked => {
                let Some((index, num)) = vring_state(&m.payload) else {
                    return self.superseding_enable(m);
                };
                debug!("relay: SET_VRING_ENABLE({index}, {num}) before SET_FEATURES: held until features are acked");
                self.early_enables.insert(index, num);
                if self.reply_ack && m.flags & NEED_REPLY != 0 {
                    Action::Reply(Message {
                        request: m.request,
                        flags: VERSION_1 | REPLY,
                        payload: 0u64.to_ne_bytes().to_vec(),
                        fds: Vec::new(),
                    })
                } else {
                    Action::Absorb
                }
            }
            FrontendReq::SET_FEATURES => {
                let features = m.u64_payload().unwrap_or(0);
                self.protocol_features_acked = features & PROTOCOL_FEATURES != 0;
                if !self.protocol_features_acked {
                    // Rings start enabled without PROTOCOL_FEATURES.
                    self.early_enables.clear();
                }
                self.kicked.clear();
                Action::Forward(m)
            }
            // A held enable is replayed once its vring is fully set up: after
            // its SET_VRING_KICK *and* a SET_VRING_CALL that follows it.
            // Replaying earlier would let the worker start on the vring and
            // interrupt the guest through a call fd QEMU is about to replace
            // (QEMU sends KICK, then the final CALL), losing that interrupt;
            // with EVENT_IDX the guest would then wait forever.
            FrontendReq::SET_VRING_KICK if self.protocol_features_acked => {
                if let Some(i) = vring_of_fd_message(&m) {
                    if self.early_enables.contains_key(&i) {
                        self.kicked.insert(i);
                    }
                }
                Action::Forward(m)
            }
            FrontendReq::SET_VRING_CALL if self.protocol_features_acked => {
                let Some(i) = vring_of_fd_message(&m) else {
                    return Action::Forward(m);
                };
                if !self.kicked.remove(&i) {
                    return Action::Forward(m);
                }
                match self.early_enables.remove(&i) {
                    Some(num) => {
                        debug!(
                            "relay: vring {i} set up: replaying its early SET_VRING_ENABLE({num})"
                        );
                        Action::ForwardThen(m, vec![enable_message(i, num)])
                    }
                    None => Action::Forward(m),
                }
            }
            FrontendReq::SET_VRING_ENABLE => self.superseding_enable(m),
            _ => Action::Forward(m),
        }
    }

    /// The frontend's own enable supersedes a held one.
    fn superseding_enable(&mut self, m: Message) -> Action {
        if let Some(i) = m.payload.get(0..4).and_then(|b| b.try_into().ok()) {
            let i = u32::from_ne_bytes(i);
            self.early_enables.remove(&i);
            self.kicked.remove(&i);
        }
        Action::Forward(m)
    }
}
