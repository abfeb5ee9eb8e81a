//! Identifiers: content hashes, job ids and member ids (ed25519 public keys).
//!
//! In binary encodings (bincode) they are raw bytes; in human-readable ones (JSON) a content hash
//! is 64 lowercase hex characters and a member id is its libp2p PeerId string (`12D3KooW...`).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Inputs at least this large are hashed on all cores (BLAKE3's rayon mode).
const PARALLEL_HASH_THRESHOLD: usize = 1 << 20;

/// A BLAKE3 hash of some bytes: how models, deltas and announcements are named.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes `bytes` (on all cores when they are large).
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        if bytes.len() >= PARALLEL_HASH_THRESHOLD {
            hasher.update_rayon(bytes);
        } else {
            hasher.update(bytes);
        }
        Self(*hasher.finalize().as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Self, IdError> {
        let bad = || IdError::Hex(text.chars().take(80).collect());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(bad);
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..12])
    }
}

impl FromStr for ContentHash {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::from_hex(text)
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Self::from_hex(&text).map_err(D::Error::custom)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(Self)
        }
    }
}

/// A job's id: the content hash of its signed announcement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub ContentHash);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", &self.0.to_hex()[..12])
    }
}

impl FromStr for JobId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        ContentHash::from_hex(text).map(Self)
    }
}

/// A member (node, organization): its ed25519 public key.
///
/// Displays (and parses) as the libp2p PeerId of that key: base58btc of the identity multihash of
/// the protobuf-encoded public key, `12D3KooW...`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub [u8; 32]);

/// The identity multihash and protobuf header in front of an ed25519 key in a PeerId: multihash
/// code 0x00 (identity), length 36, then field 1 (key type) = 1 (Ed25519), field 2 (32 bytes).
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

impl MemberId {
    /// The PeerId bytes: the identity multihash of the protobuf-encoded public key.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// The PeerId string, as libp2p prints it.
    pub fn to_peer_id_string(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }

    /// Parses a PeerId string of an ed25519 key.
    pub fn from_peer_id_string(text: &str) -> Result<Self, IdError> {
        let shown = || text.chars().take(80).collect::<String>();
        if text.len() > 64 {
            return Err(IdError::PeerId(shown(), "too long"));
        }
        let bytes =
            bs58::decode(text).into_vec().map_err(|_| IdError::PeerId(shown(), "not base58btc"))?;
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return Err(IdError::PeerId(shown(), "not the PeerId of an ed25519 key"));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Ok(Self(key))
    }

    /// The last 8 characters of the PeerId (the first ones, `12D3KooW`, are the same for every
    /// ed25519 key), for compact logs.
    pub fn short(&self) -> String {
        let full = self.to_peer_id_string();
        full.chars().skip(full.len().saturating_sub(8)).collect()
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_peer_id_string())
    }
}

impl FromStr for MemberId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::from_peer_id_string(text)
    }
}

impl Serialize for MemberId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_peer_id_string())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Self::from_peer_id_string(&text).map_err(D::Error::custom)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(Self)
        }
    }
}

/// A round number within a job, starting at 1.
pub type Round = u64;

/// Why an id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a content hash: expected 64 hex characters")]
    Hex(String),
    #[error("`{0}` is not a member id (PeerId): {1}")]
    PeerId(String, &'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_displays_as_a_libp2p_peer_id_and_parses_back() {
        let id = MemberId([7; 32]);
        let text = id.to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<MemberId>(), Ok(id));
    }

    #[test]
    fn malformed_peer_ids_are_refused_with_a_reason() {
        let error = "12D3KooW0OIl".parse::<MemberId>().unwrap_err();
        assert!(error.to_string().contains("not base58btc"), "{error}");
        // A valid base58 string of the wrong shape (a secp256k1-style or sha256 PeerId).
        let other =
            bs58::encode([0x12, 0x20].iter().chain(&[1u8; 32]).copied().collect::<Vec<_>>())
                .into_string();
        let error = other.parse::<MemberId>().unwrap_err();
        assert!(error.to_string().contains("ed25519"), "{error}");
    }

    #[test]
    fn ids_are_strings_in_json_and_bytes_in_bincode() {
        let id = MemberId([9; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<MemberId>(&json).unwrap(), id);
        let bytes = bincode::serde::encode_to_vec(id, bincode::config::standard()).unwrap();
        assert_eq!(bytes, [9; 32]);

        let hash = ContentHash::of(b"abc");
        let json = serde_json::to_string(&JobId(hash)).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), JobId(hash));
    }

    #[test]
    fn content_hash_hex_round_trips_and_rejects_garbage() {
        let hash = ContentHash::of(b"hello");
        assert_eq!(hash.to_hex().parse::<ContentHash>(), Ok(hash));
        assert!("zz".parse::<ContentHash>().is_err());
        assert!("é".repeat(32).parse::<ContentHash>().is_err());
        assert!("+f".repeat(32).parse::<ContentHash>().is_err());
    }

    #[test]
    fn large_inputs_hash_the_same_on_all_cores() {
        let bytes: Vec<u8> = (0..3 * PARALLEL_HASH_THRESHOLD).map(|i| (i % 251) as u8).collect();
        assert_eq!(ContentHash::of(&bytes).0, *blake3::hash(&bytes).as_bytes());
    }
}
