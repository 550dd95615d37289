//! The secret itself: its file format, and the keyring of a primary secret
//! plus the secrets still accepted during a rotation.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use sha2::Sha256;

/// Why a secret or keyring could not be had. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file's content is not a secret. The message never repeats the
    /// content: a wrong file may hold something else worth keeping quiet.
    #[error("secret file {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("secret file {path} already exists; not overwriting it")]
    Exists { path: PathBuf },
    #[error("cannot make a secret: no randomness from the operating system: {0}")]
    Random(String),
}

/// 32 bytes shared by every node and client of one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    /// Never the bytes: logs and panics must not leak the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(id {})", hex(&self.key_id()))
    }
}

impl Secret {
    /// A new secret from the operating system's randomness.
    pub fn generate() -> Result<Secret, SecretError> {
        let mut bytes = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|e| SecretError::Random(format!("{e:?}")))?;
        Ok(Secret(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes)
    }

    /// Parse a secret file's text: 64 hex characters, surrounding
    /// whitespace allowed. `reason` in the error says what is wrong.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let t = text.trim();
        if t.len() != 64 {
            return Err(format!("expected 64 hex characters (32 bytes), found {} characters", t.chars().count()));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in t.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h * 16 + l) as u8,
                _ => return Err(format!("character {} is not a hex digit", 2 * i + 1)),
            }
        }
        Ok(Secret(bytes))
    }

    /// Write a new secret to `path` (mode 0600), never replacing a file.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        write_private(path, &format!("{}\n", hex(&self.0)), false)
    }

    /// 32 bytes for one purpose. Labels are versioned ("idunno v1 …"), so
    /// a later scheme can derive different keys from the same secret.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"idunno cluster secret"), &self.0);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 8160: cannot fail.
        hk.expand(label.as_bytes(), &mut out).expect("HKDF output of 32 bytes");
        out
    }

    /// [`Secret::key_id`] in hex, as `status` shows it.
    pub fn key_id_hex(&self) -> String {
        hex(&self.key_id())
    }

    /// A short public name of the secret: says which key sealed a
    /// datagram without saying anything about the key.
    pub fn key_id(&self) -> [u8; 4] {
        let d = self.derive("idunno v1 key id");
        [d[0], d[1], d[2], d[3]]
    }
}

/// The secrets one process holds: the primary, which it seals and signs
/// with, and others it still accepts (a rotation in progress).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    pub primary: Secret,
    pub accepted: Vec<Secret>,
}

impl Keyring {
    pub fn new(primary: Secret) -> Keyring {
        Keyring { primary, accepted: Vec::new() }
    }

    /// Parse a secret file: one secret per line, 64 hex characters each,
    /// the first the primary and any others accepted; blank lines and
    /// lines starting with `#` are skipped. A file of one line is the
    /// plain secret `idunno secret new` writes.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut secrets = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let s = Secret::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
        let mut it = secrets.into_iter();
        let primary = it.next().ok_or("no secret in it (expected 64 hex characters)")?;
        Ok(Keyring { primary, accepted: it.collect() })
    }

    /// Read one secret file.
    pub fn read_file(path: &Path) -> Result<Keyring, SecretError> {
        let io = |source| SecretError::Io { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        // A secret is 65 bytes; refusing big files early keeps a wrong
        // path (a model, a disk image) from being read whole.
        if meta.len() > 64 * 1024 {
            return Err(SecretError::Malformed {
                path: path.to_path_buf(),
                reason: format!("{} bytes is too long for a secret file", meta.len()),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| SecretError::Malformed { path: path.to_path_buf(), reason: "not text".into() })?;
        Keyring::parse(text).map_err(|reason| SecretError::Malformed { path: path.to_path_buf(), reason })
    }

    /// The keyring of `primary` (its first secret is the primary) plus
    /// every secret of the `accepted` files.
    pub fn read(primary: &Path, accepted: &[PathBuf]) -> Result<Keyring, SecretError> {
        let mut ring = Keyring::read_file(primary)?;
        for p in accepted {
            for s in Keyring::read_file(p)?.all() {
                if *s != ring.primary && !ring.accepted.contains(s) {
                    ring.accepted.push(s.clone());
                }
            }
        }
        Ok(ring)
    }

    /// Replace the file at `path` with this keyring (mode 0600; written
    /// aside and renamed, so a reader sees the old file or the new one).
    pub fn write(&self, path: &Path) -> Result<(), SecretError> {
        let mut text = String::from("# idunno cluster secrets: the first is the primary, the others are accepted\n");
        for s in self.all() {
            text.push_str(&hex(&s.0));
            text.push('\n');
        }
        write_private(path, &text, true)
    }

    /// Every secret, the primary first.
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.primary).chain(self.accepted.iter())
    }

    /// The secret whose key id (hex) is `id`.
    pub fn find(&self, id: &str) -> Option<&Secret> {
        self.all().find(|s| s.key_id_hex() == id)
    }
}

/// Write `text` to `path` with mode 0600: replacing it (through a
/// temporary file and a rename) or only if it does not exist.
fn write_private(path: &Path, text: &str, replace: bool) -> Result<(), SecretError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SecretError::Io { path: path.to_path_buf(), source };
    let target = if replace { path.with_extension("tmp") } else { path.to_path_buf() };
    if replace {
        let _ = std::fs::remove_file(&target);
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(|source| {
            if !replace && source.kind() == std::io::ErrorKind::AlreadyExists {
                SecretError::Exists { path: path.to_path_buf() }
            } else {
                SecretError::Io { path: target.clone(), source }
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    if replace {
        std::fs::rename(&target, path).map_err(io)?;
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_refuses_without_echoing() {
        let s = Secret::from_bytes([0xab; 32]);
        assert_eq!(Secret::parse(&format!("  {}\n", hex(&s.0))).unwrap(), s);
        let err = Secret::parse("hunter2").unwrap_err();
        assert!(err.contains("found 7 characters"), "{err}");
        assert!(!err.contains("hunter2"));
        let mut bad = hex(&s.0);
        bad.replace_range(10..11, "z");
        assert_eq!(Secret::parse(&bad).unwrap_err(), "character 11 is not a hex digit");
        // Multi-byte characters are counted, never sliced through.
        assert!(Secret::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn keyring_files_list_the_primary_first() {
        let (a, b) = (hex(&[1; 32]), hex(&[2; 32]));
        let ring = Keyring::parse(&format!("# comment\n\n{a}\n  {b}  \n{a}\n")).unwrap();
        assert_eq!(ring.primary, Secret::from_bytes([1; 32]));
        assert_eq!(ring.accepted, vec![Secret::from_bytes([2; 32])]);
        assert_eq!(Keyring::parse("# nothing\n").unwrap_err(), "no secret in it (expected 64 hex characters)");
        assert!(Keyring::parse(&format!("{a}\nxyz\n")).unwrap_err().starts_with("line 2:"));
    }

    #[test]
    fn derivations_differ_by_label_and_secret() {
        let a = Secret::from_bytes([1; 32]);
        let b = Secret::from_bytes([2; 32]);
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), b.derive("x"));
        assert_eq!(a.derive("x"), Secret::from_bytes([1; 32]).derive("x"));
        assert!(!format!("{a:?}").contains("0101"));
    }

    #[test]
    fn write_new_is_private_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("idunno-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        let s = Secret::generate().unwrap();
        s.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Keyring::read_file(&path).unwrap(), Keyring::new(s.clone()));
        assert!(matches!(Secret::generate().unwrap().write_new(&path), Err(SecretError::Exists { .. })));
        assert_eq!(Keyring::read_file(&path).unwrap().primary, s);
        // A keyring replaces the file, still private, and reads back.
        let mut ring = Keyring::new(Secret::generate().unwrap());
        ring.accepted.push(s.clone());
        ring.write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Keyring::read_file(&path).unwrap(), ring);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
