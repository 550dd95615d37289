//! Everything derived from one keyring, and the cell a process keeps it in
//! so that a reload (SIGHUP after a rotation step) swaps it whole.

use std::sync::{Arc, RwLock};

use crate::seal::SwimKeys;
use crate::tls::{ClientCredentials, OperatorCert, Role, ServerCredentials, TlsError};
use crate::{Keyring, TokenCheck};

/// A process's keys. Built once per keyring (deriving the authorities and
/// issuing a leaf costs about a millisecond), then only read.
pub struct Keys {
    pub ring: Keyring,
    /// The role this process presents as a client.
    pub role: Role,
    pub swim: SwimKeys,
    pub client: ClientCredentials,
    /// A node's servers; `None` in a client process.
    pub server: Option<ServerCredentials>,
    pub tokens: TokenCheck,
}

impl Keys {
    /// A node's keys: it serves, and calls other nodes as a node.
    pub fn for_node(ring: Keyring) -> Result<Keys, TlsError> {
        Keys::for_node_with(ring, None)
    }

    /// [`Keys::for_node`] with an operator's certificate for HTTPS.
    pub fn for_node_with(ring: Keyring, http: Option<&OperatorCert>) -> Result<Keys, TlsError> {
        Ok(Keys {
            swim: SwimKeys::new(&ring),
            client: ClientCredentials::new(&ring, Role::Node)?,
            server: Some(ServerCredentials::new(&ring, http)?),
            tokens: TokenCheck::new(&ring),
            role: Role::Node,
            ring,
        })
    }

    /// A client command's keys: it only calls, as a client.
    pub fn for_client(ring: Keyring) -> Result<Keys, TlsError> {
        Ok(Keys {
            swim: SwimKeys::new(&ring),
            client: ClientCredentials::new(&ring, Role::Client)?,
            server: None,
            tokens: TokenCheck::new(&ring),
            role: Role::Client,
            ring,
        })
    }
}

/// The current keys of a process, shared by its servers and clients:
/// readers take an `Arc` of the keys as of now; a reload replaces them.
/// Connections already made keep the keys they were made with.
#[derive(Clone)]
pub struct KeysCell(Arc<RwLock<Arc<Keys>>>);

impl KeysCell {
    pub fn new(keys: Keys) -> KeysCell {
        KeysCell(Arc::new(RwLock::new(Arc::new(keys))))
    }

    pub fn current(&self) -> Arc<Keys> {
        // A poisoned lock only means a writer panicked after the swap or
        // before it: the value inside is whole either way.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, keys: Keys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}

impl std::fmt::Debug for KeysCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeysCell({:?})", self.current().ring.primary)
    }
}
