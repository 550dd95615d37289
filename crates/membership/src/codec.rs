//! foca's wire codec with a sanity bound on every identity it decodes.
//!
//! A generation is the wall clock in milliseconds when a node started, or
//! one more per self-renewal. One claiming to be from the far future (say
//! `u64::MAX`) beats every real incarnation at the same address for good
//! and overflows the renewal that should answer it, so a datagram naming
//! such an identity is refused whole, before foca believes any of it.
//! This holds with or without a cluster secret: it bounds what even an
//! authenticated peer with a broken clock can do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, PostcardCodec};

use crate::identity::NodeIdentity;

/// How far ahead of this node's clock a generation may be: clocks of
/// members may disagree by this much, and a node renews its identity
/// (+1 each time) far fewer than this many times.
pub const MAX_GENERATION_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// The ceiling before any clock reading: anything a renewal cannot
/// overflow.
const NO_CLOCK_CEILING: u64 = u64::MAX >> 1;

/// Why a datagram's identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("identity {0:?} has a generation beyond this node's clock + 24 h")]
    FutureGeneration(NodeIdentity),
}

/// [`PostcardCodec`] plus the generation bound. The ceiling is shared with
/// the owning [`crate::Swim`], which moves it as time passes
/// ([`crate::Swim::set_now_ms`]).
pub struct BoundedCodec {
    ceiling: Arc<AtomicU64>,
}

impl BoundedCodec {
    pub fn new() -> (BoundedCodec, Arc<AtomicU64>) {
        let ceiling = Arc::new(AtomicU64::new(NO_CLOCK_CEILING));
        (BoundedCodec { ceiling: ceiling.clone() }, ceiling)
    }

    fn check(&self, id: &NodeIdentity) -> Result<(), CodecError> {
        if id.generation > self.ceiling.load(Ordering::Relaxed) {
            return Err(CodecError::FutureGeneration(id.clone()));
        }
        Ok(())
    }
}

/// The ceiling for a clock reading.
pub fn ceiling_at(now_ms: u64) -> u64 {
    now_ms.saturating_add(MAX_GENERATION_AHEAD_MS).min(NO_CLOCK_CEILING)
}

impl Codec<NodeIdentity> for BoundedCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &Header<NodeIdentity>, buf: impl BufMut) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        let header = PostcardCodec.decode_header(buf)?;
        self.check(&header.src)?;
        self.check(&header.dst)?;
        match &header.message {
            Message::PingReq { target: id, .. }
            | Message::IndirectPing { origin: id, .. }
            | Message::IndirectAck { target: id, .. }
            | Message::ForwardedAck { origin: id, .. } => self.check(id)?,
            _ => {}
        }
        Ok(header)
    }

    fn encode_member(&mut self, member: &Member<NodeIdentity>, buf: impl BufMut) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        let member = PostcardCodec.decode_member(buf)?;
        self.check(member.id())?;
        Ok(member)
    }
}
