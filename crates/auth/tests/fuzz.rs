//! Property fuzzing of what the secret's code reads from outside: sealed
//! datagrams (random bytes, and real ones with bytes flipped, cut or
//! appended) never open and never panic; secret files of any text either
//! parse to what they say or are refused.
//!
//! The long run is `PROPTEST_CASES=1000000 cargo test --release -p
//! idunno-auth --test fuzz`.

use idunno_auth::seal::{OVERHEAD, ReplayGuard, SwimKeys, WINDOW_MS};
use idunno_auth::{Keyring, Secret};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;

fn keys() -> SwimKeys {
    SwimKeys::new(&Keyring::new(Secret::from_bytes([42; 32])))
}

proptest! {
    #[test]
    fn random_bytes_never_open(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut seen = ReplayGuard::default();
        prop_assert!(keys().open(b"tag", &data, NOW, &mut seen).is_err());
        prop_assert!(seen.is_empty());
    }

    #[test]
    fn a_changed_datagram_never_opens(
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8),
        stamp_offset in 0..WINDOW_MS,
    ) {
        let k = keys();
        let d = k.seal(b"tag", &payload, NOW - stamp_offset, [9; 24]);
        let mut flipped = d.clone();
        flipped[at.index(d.len())] ^= flip;
        let cut = &d[..cut.index(d.len())];
        let longer = [&d[..], &extra].concat();
        for bad in [&flipped[..], cut, &longer[..]] {
            prop_assert!(k.open(b"tag", bad, NOW, &mut ReplayGuard::default()).is_err());
        }
        // The untouched one opens, once.
        let mut seen = ReplayGuard::default();
        prop_assert_eq!(k.open(b"tag", &d, NOW, &mut seen).unwrap(), payload.clone());
        prop_assert!(k.open(b"tag", &d, NOW, &mut seen).is_err());
        prop_assert_eq!(d.len(), OVERHEAD + payload.len());
    }

    #[test]
    fn secret_files_parse_to_what_they_say_or_are_refused(text in "[0-9a-fA-F#\\n é]{0,200}") {
        match Keyring::parse(&text) {
            Ok(ring) => {
                // Every secret came from a 64-hex-character line.
                let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| l.len() == 64).collect();
                prop_assert!(ring.all().count() <= lines.len());
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
