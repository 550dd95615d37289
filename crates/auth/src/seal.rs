//! Sealed SWIM datagrams: authenticated, encrypted, fresh.
//!
//! A sealed datagram is `version (1) ‖ key id (4) ‖ nonce (24) ‖
//! ciphertext`, where the ciphertext is XChaCha20-Poly1305 over
//! `sent_at_ms (8, big-endian) ‖ payload` with the header (and the
//! caller's associated data, the cluster tag) authenticated too. A random
//! 24-byte nonce per datagram is safe with XChaCha (no counter to keep
//! across restarts). The receiver opens with the key the id names, then
//! refuses a datagram stamped outside its window of the receiver's clock
//! or one it has already seen inside the window: a captured datagram
//! cannot be replayed, now or later.
//!
//! Pure: the caller passes the time and the nonce.

use std::collections::BTreeSet;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::Keyring;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 24;
const TAG: usize = 16;
/// Bytes a sealed datagram adds to its payload.
pub const OVERHEAD: usize = HEADER + 8 + TAG;

/// How far a datagram's stamp may be from the receiver's clock, either
/// way. Nodes' clocks must agree within this (NTP does far better); a
/// datagram takes milliseconds to arrive, so this is all clock skew.
pub const WINDOW_MS: u64 = 30_000;

/// At most this many datagrams are remembered for replay detection; at
/// SWIM's rates (a few datagrams per second per peer) a window holds a few
/// thousand. Past the cap the oldest are forgotten, and datagrams stamped
/// before the oldest remembered one are refused, so a flood cannot make
/// room for a replay.
pub const MAX_REMEMBERED: usize = 200_000;

/// Why a datagram was dropped. Nothing was decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("too short to be a sealed datagram")]
    TooShort,
    #[error("unknown format version")]
    Version,
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    #[error("does not verify (forged, corrupt, or another cluster's)")]
    Forged,
    #[error("stamped outside the freshness window")]
    Stale,
    #[error("already received (a replay)")]
    Replayed,
}

/// The keys of a keyring, ready to seal and open.
pub struct SwimKeys {
    /// The primary first: it seals; all open.
    keys: Vec<([u8; 4], XChaCha20Poly1305)>,
}

impl SwimKeys {
    pub fn new(ring: &Keyring) -> SwimKeys {
        let keys = ring
            .all()
            .map(|s| (s.key_id(), XChaCha20Poly1305::new(&s.derive("idunno v1 swim datagrams").into())))
            .collect();
        SwimKeys { keys }
    }

    /// Seal `payload`, stamped `now_ms`, under the primary key.
    pub fn seal(&self, aad: &[u8], payload: &[u8], now_ms: u64, nonce: [u8; 24]) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        let mut plain = Vec::with_capacity(8 + payload.len());
        plain.extend_from_slice(&now_ms.to_be_bytes());
        plain.extend_from_slice(payload);
        let header_aad = [aad, &out[..HEADER]].concat();
        // Encryption fails only for messages beyond 256 GiB.
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &header_aad })
            .expect("datagram below XChaCha's size limit");
        out.extend_from_slice(&sealed);
        out
    }

    /// Open a sealed datagram received at `now_ms`; the payload, or why
    /// it was dropped. `seen` is the receiver's replay memory.
    pub fn open(&self, aad: &[u8], datagram: &[u8], now_ms: u64, seen: &mut ReplayGuard) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::TooShort);
        }
        if datagram[0] != VERSION {
            return Err(OpenError::Version);
        }
        let id = &datagram[1..5];
        let (_, cipher) = self.keys.iter().find(|(k, _)| k == id).ok_or(OpenError::UnknownKey)?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&datagram[5..HEADER]);
        let header_aad = [aad, &datagram[..HEADER]].concat();
        let plain = cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &datagram[HEADER..], aad: &header_aad })
            .map_err(|_| OpenError::Forged)?;
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&plain[..8]);
        seen.admit(u64::from_be_bytes(stamp), nonce, now_ms)?;
        Ok(plain[8..].to_vec())
    }
}

/// The datagrams received within the window, by stamp and nonce.
#[derive(Default)]
pub struct ReplayGuard {
    seen: BTreeSet<(u64, [u8; 24])>,
    /// Stamps at or below this are refused: the window has passed them,
    /// or the cap pushed them out.
    floor: u64,
}

impl ReplayGuard {
    fn admit(&mut self, stamp: u64, nonce: [u8; 24], now_ms: u64) -> Result<(), OpenError> {
        if stamp.abs_diff(now_ms) > WINDOW_MS {
            return Err(OpenError::Stale);
        }
        // Forget what the window has passed.
        let cutoff = now_ms.saturating_sub(WINDOW_MS);
        if cutoff > self.floor {
            self.floor = cutoff;
            self.seen = self.seen.split_off(&(cutoff + 1, [0; 24]));
        }
        if stamp <= self.floor && self.floor > 0 {
            return Err(OpenError::Stale);
        }
        if !self.seen.insert((stamp, nonce)) {
            return Err(OpenError::Replayed);
        }
        while self.seen.len() > MAX_REMEMBERED {
            if let Some(oldest) = self.seen.pop_first() {
                self.floor = self.floor.max(oldest.0);
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    fn keys(bytes: &[u8]) -> SwimKeys {
        let mut ring = Keyring::new(Secret::from_bytes([bytes[0]; 32]));
        ring.accepted = bytes[1..].iter().map(|b| Secret::from_bytes([*b; 32])).collect();
        SwimKeys::new(&ring)
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn opens_what_it_sealed_once() {
        let k = keys(&[1]);
        let d = k.seal(b"tag", b"hello", NOW, [7; 24]);
        assert_eq!(d.len(), 5 + OVERHEAD);
        assert!(!d.windows(5).any(|w| w == b"hello"), "payload is encrypted");
        let mut seen = ReplayGuard::default();
        assert_eq!(k.open(b"tag", &d, NOW + 5, &mut seen).unwrap(), b"hello");
        assert_eq!(k.open(b"tag", &d, NOW + 6, &mut seen), Err(OpenError::Replayed));
        // Still refused once the window has passed it.
        assert_eq!(k.open(b"tag", &d, NOW + WINDOW_MS + 10, &mut seen), Err(OpenError::Stale));
    }

    #[test]
    fn refuses_forgeries_other_keys_and_other_clusters() {
        let k = keys(&[1]);
        let mut seen = ReplayGuard::default();
        let d = k.seal(b"tag", b"hello", NOW, [7; 24]);
        assert_eq!(k.open(b"other", &d, NOW, &mut seen), Err(OpenError::Forged));
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 1;
            assert!(k.open(b"tag", &bad, NOW, &mut seen).is_err(), "flipped byte {i} accepted");
        }
        assert_eq!(keys(&[2]).open(b"tag", &d, NOW, &mut seen), Err(OpenError::UnknownKey));
        assert_eq!(k.open(b"tag", &d[..OVERHEAD - 1], NOW, &mut seen), Err(OpenError::TooShort));
        assert!(seen.is_empty(), "nothing that failed was remembered");
    }

    #[test]
    fn stale_and_future_stamps_are_refused() {
        let k = keys(&[1]);
        let mut seen = ReplayGuard::default();
        let old = k.seal(b"", b"x", NOW - WINDOW_MS - 1, [1; 24]);
        let future = k.seal(b"", b"x", NOW + WINDOW_MS + 1, [2; 24]);
        assert_eq!(k.open(b"", &old, NOW, &mut seen), Err(OpenError::Stale));
        assert_eq!(k.open(b"", &future, NOW, &mut seen), Err(OpenError::Stale));
    }

    #[test]
    fn a_rotation_opens_both_and_seals_with_the_primary() {
        let old = keys(&[1]);
        let both_old_primary = keys(&[1, 2]);
        let both_new_primary = keys(&[2, 1]);
        let new = keys(&[2]);
        let mut seen = ReplayGuard::default();
        let from_new = both_new_primary.seal(b"", b"n", NOW, [3; 24]);
        assert!(both_old_primary.open(b"", &from_new, NOW, &mut seen).is_ok());
        assert!(new.open(b"", &from_new, NOW, &mut ReplayGuard::default()).is_ok());
        assert_eq!(old.open(b"", &from_new, NOW, &mut seen), Err(OpenError::UnknownKey));
    }

    #[test]
    fn memory_is_bounded_and_the_floor_keeps_evicted_datagrams_out() {
        let k = keys(&[1]);
        let mut seen = ReplayGuard::default();
        let first = k.seal(b"", b"x", NOW, [0; 24]);
        assert!(k.open(b"", &first, NOW, &mut seen).is_ok());
        for i in 1..=MAX_REMEMBERED as u64 {
            let mut nonce = [0u8; 24];
            nonce[..8].copy_from_slice(&i.to_be_bytes());
            seen.admit(NOW + 1, nonce, NOW).unwrap();
        }
        assert_eq!(seen.len(), MAX_REMEMBERED);
        assert_eq!(k.open(b"", &first, NOW, &mut seen), Err(OpenError::Stale));
    }
}
