//! The HTTP token: what a browser (through `idunno dashboard-url`) or a
//! scraper presents to a node's HTTP server, derived from the secret so
//! that every node accepts the same one.

use crate::Keyring;

/// The tokens of a keyring: the primary's is handed out, all are accepted.
#[derive(Clone)]
pub struct TokenCheck {
    tokens: Vec<String>,
}

impl TokenCheck {
    pub fn new(ring: &Keyring) -> TokenCheck {
        TokenCheck { tokens: ring.all().map(|s| crate::secret::hex(&s.derive("idunno v1 http token")[..16])).collect() }
    }

    /// The token to hand out (32 hex characters).
    pub fn primary(&self) -> &str {
        &self.tokens[0]
    }

    /// Whether `given` is one of the accepted tokens, compared in time
    /// that does not depend on where it differs.
    pub fn accepts(&self, given: &str) -> bool {
        self.tokens.iter().fold(false, |ok, t| ok | constant_time_eq(t.as_bytes(), given.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    #[test]
    fn accepts_every_key_of_the_ring_and_nothing_else() {
        let mut ring = Keyring::new(Secret::from_bytes([1; 32]));
        let old = TokenCheck::new(&ring).primary().to_string();
        ring.accepted.push(Secret::from_bytes([2; 32]));
        let check = TokenCheck::new(&ring);
        assert_eq!(check.primary(), old);
        assert_eq!(check.primary().len(), 32);
        assert!(check.accepts(&old));
        assert!(check.accepts(TokenCheck::new(&Keyring::new(Secret::from_bytes([2; 32]))).primary()));
        assert!(!check.accepts(TokenCheck::new(&Keyring::new(Secret::from_bytes([3; 32]))).primary()));
        assert!(!check.accepts(""));
        assert!(!check.accepts(&old[..31]));
    }
}
