//! A node's ed25519 identity: generating it, its key file (saved owner-only, refused when others
//! can read it), and signing.
//!
//! Key file format (UTF-8 text, at most [`MAX_KEY_FILE_BYTES`]):
//!
//! ```text
//! fedmesh ed25519 secret key v1
//! member 12D3KooW...            (the PeerId of the key, checked on load)
//! seed 0f1e...                  (the 32-byte ed25519 seed, 64 hex characters)
//! ```
//!
//! The seed is the same one libp2p's `identity::Keypair::ed25519_from_bytes` takes, so the node's
//! PeerId and its [`MemberId`] name the same key.

use crate::ids::{ContentHash, MemberId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

/// The first line of every key file.
pub const KEY_FILE_HEADER: &str = "fedmesh ed25519 secret key v1";

/// Key files larger than this are refused before they are read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// A node's signing key.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte seed (secret): what libp2p's `Keypair::ed25519_from_bytes` takes.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key, as a member id.
    pub fn member_id(&self) -> MemberId {
        MemberId(self.key.verifying_key().to_bytes())
    }

    /// Signs a 32-byte digest (the crate signs hashes, never large payloads directly).
    pub(crate) fn sign_digest(&self, digest: &ContentHash) -> [u8; 64] {
        self.key.sign(&digest.0).to_bytes()
    }

    /// The key file text for this key.
    pub fn to_key_file(&self) -> String {
        let seed: String = self.seed().iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_FILE_HEADER}\nmember {}\nseed {seed}\n", self.member_id())
    }

    /// Parses key file text (see the module docs for the format).
    pub fn parse_key_file(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyError::Format(format!("the first line must be `{KEY_FILE_HEADER}`")));
        }
        let member = field(lines.next(), "member")?;
        let seed = field(lines.next(), "seed")?;
        if lines.next().is_some() {
            return Err(KeyError::Format("unexpected text after the `seed` line".into()));
        }
        let seed = ContentHash::from_hex(seed)
            .map_err(|_| KeyError::Format("`seed` must be 64 hex characters".into()))?;
        let identity = Self::from_seed(seed.0);
        let declared: MemberId =
            member.parse().map_err(|e| KeyError::Format(format!("`member`: {e}")))?;
        if declared != identity.member_id() {
            return Err(KeyError::Format(format!(
                "`member` says {declared} but the seed is the key of {}",
                identity.member_id()
            )));
        }
        Ok(identity)
    }

    /// Writes a new key file readable and writable by its owner only (created with mode 0600).
    /// Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        file.write_all(self.to_key_file().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Loads a key file, refusing one that anyone but its owner may read or write.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        check_owner_only(&metadata, &shown)?;
        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Format(format!(
                "{shown} is {} bytes, a key file is at most {MAX_KEY_FILE_BYTES}",
                metadata.len()
            )));
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text).map_err(io)?;
        Self::parse_key_file(&text).map_err(|error| match error {
            KeyError::Format(reason) => KeyError::Format(format!("{shown}: {reason}")),
            other => other,
        })
    }
}

/// The value of a `name value` line.
fn field<'a>(line: Option<&'a str>, name: &str) -> Result<&'a str, KeyError> {
    line.and_then(|line| line.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix(' '))
        .map(str::trim)
        .ok_or_else(|| KeyError::Format(format!("expected a `{name} ...` line")))
}

#[cfg(unix)]
fn check_owner_only(metadata: &std::fs::Metadata, path: &str) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_: &std::fs::Metadata, _: &str) -> Result<(), KeyError> {
    Ok(())
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.member_id())
    }
}

/// Checks an ed25519 signature over a 32-byte digest, strictly (no malleable signatures, no weak
/// keys).
pub(crate) fn verify_digest(
    signer: &MemberId,
    digest: &ContentHash,
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(&signer.0).map_err(|_| SignatureError::BadKey)?;
    key.verify_strict(&digest.0, &Signature::from_bytes(signature))
        .map_err(|_| SignatureError::Mismatch)
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signer is not a valid ed25519 public key")]
    BadKey,
    #[error("the signature does not match the signer and the message")]
    Mismatch,
}

/// Why a key could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "key file {path} can be read or written by others (mode {mode:o}); \
         it must be private to its owner: run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("not a fedmesh key file: {0}")]
    Format(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_key_loads_back_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let identity = Identity::generate();
        identity.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.seed(), identity.seed());
        assert_eq!(loaded.member_id(), identity.member_id());
    }

    #[test]
    fn saving_never_overwrites_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::generate().save(&path).unwrap();
        let error = Identity::generate().save(&path).unwrap_err();
        assert!(matches!(error, KeyError::Io { .. }), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        Identity::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load(&path).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("mode 644") && message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn malformed_key_files_are_refused_with_a_reason() {
        let good = Identity::from_seed([3; 32]).to_key_file();
        assert_eq!(Identity::parse_key_file(&good).unwrap().seed(), [3; 32]);
        let cases = [
            ("", "first line"),
            ("fedmesh ed25519 secret key v2\n", "first line"),
            (&good.replace("seed ", "sed "), "`seed"),
            (&good.replace("seed 03", "seed zz"), "64 hex"),
            (&format!("{good}extra\n"), "unexpected text"),
            (
                &good.replace(
                    &Identity::from_seed([3; 32]).member_id().to_string(),
                    &Identity::from_seed([4; 32]).member_id().to_string(),
                ),
                "the seed is the key of",
            ),
        ];
        for (text, expected) in cases {
            let error = Identity::parse_key_file(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_seed_gives_the_libp2p_key_and_peer_id() {
        // The ed25519 vector of libp2p-identity's protobuf tests and the libp2p peer-id spec.
        let seed = ContentHash::from_hex(
            "7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d",
        )
        .unwrap();
        let identity = Identity::from_seed(seed.0);
        let public = ContentHash(identity.member_id().0).to_hex();
        assert_eq!(public, "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e");
        assert_eq!(
            identity.member_id().to_string(),
            "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
        );
    }

    #[test]
    fn signatures_verify_strictly_against_the_signer_only() {
        let identity = Identity::from_seed([5; 32]);
        let digest = ContentHash::of(b"message");
        let signature = identity.sign_digest(&digest);
        assert_eq!(verify_digest(&identity.member_id(), &digest, &signature), Ok(()));
        let other = Identity::from_seed([6; 32]).member_id();
        assert_eq!(verify_digest(&other, &digest, &signature), Err(SignatureError::Mismatch));
        let wrong = ContentHash::of(b"other message");
        assert_eq!(
            verify_digest(&identity.member_id(), &wrong, &signature),
            Err(SignatureError::Mismatch)
        );
    }
}
