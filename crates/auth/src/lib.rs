//! The cluster secret and everything derived from it.
//!
//! One secret (32 random bytes, 64 hex characters in a file) is the root
//! of the cluster's trust. From it, with HKDF-SHA256 under fixed labels,
//! every node and client derives the same:
//!
//! - SWIM key: XChaCha20-Poly1305 over every membership datagram, with a
//!   timestamp and a replay window (`seal.rs`);
//! - two certificate authorities, one for nodes and one for clients, whose
//!   Ed25519 keys are derived, so every holder of the secret issues itself
//!   a certificate that every other holder trusts (`tls.rs`); the role of
//!   a TLS peer is the authority that issued its certificate;
//! - the HTTP token a browser or scraper presents (`token.rs`).
//!
//! A [`Keyring`] holds the primary secret (what this process encrypts and
//! signs with) and the secrets it still accepts, which is how keys rotate
//! without downtime. [`Keys`] is everything derived from a keyring, built
//! once per keyring and swapped whole when the keyring is reloaded.
//!
//! This crate does no networking and knows nothing of nodes; it depends on
//! no other idunno crate. Time enters as an argument.

mod keys;
pub mod seal;
mod secret;
pub mod tls;
mod token;

pub use keys::{Keys, KeysCell};
pub use secret::{Keyring, Secret, SecretError};
pub use tls::Role;
pub use token::TokenCheck;
