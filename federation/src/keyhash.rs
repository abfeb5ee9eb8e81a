//! The hasher of the membership's and the shared pools' hash maps: eight bytes at a time, each
//! mixed into a secret drawn once per process (SipHash over every member's 32-byte key took a
//! sixth of a 10,000-member join burst's CPU, where every machine looks up every joining member).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

/// Builds [`KeyHasher`]s from the process's secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHashing;

/// A hash of words mixed one at a time (splitmix64's finalizer) into the process's secret.
pub struct KeyHasher {
    state: u64,
}

/// The secret the hashes of this process start from (drawn once, so maps' layouts are not
/// predictable from outside).
fn secret() -> u64 {
    static SECRET: OnceLock<u64> = OnceLock::new();
    *SECRET.get_or_init(|| RandomState::new().hash_one(0x6b65_7968_6173_6821_u64))
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: secret() }
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = mix(self.state ^ u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.state = mix(self.state ^ word);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::MemberId;

    #[test]
    fn equal_keys_hash_alike_and_keys_differing_in_any_byte_apart() {
        let hash = |key: MemberId| KeyHashing.hash_one(key);
        assert_eq!(hash(MemberId([7; 32])), hash(MemberId([7; 32])));
        for byte in 0..32 {
            let mut other = [7; 32];
            other[byte] = 8;
            assert_ne!(hash(MemberId([7; 32])), hash(MemberId(other)), "byte {byte}");
        }
    }
}
