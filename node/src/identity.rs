//! The node's key as libp2p sees it: the same ed25519 seed gives the protocol identity that signs
//! messages and the libp2p keypair (and so the PeerId) the swarm runs under.

use anyhow::Context;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::MemberId;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::path::Path;

/// Loads the node's key file, refusing one that others can read.
pub fn load_node_key(path: &Path) -> anyhow::Result<Identity> {
    Identity::load(path)
        .with_context(|| format!("setting `key`: cannot use key file {}", path.display()))
}

/// The libp2p keypair of `identity` (its PeerId equals `identity.member_id()`).
pub fn libp2p_keypair(identity: &Identity) -> anyhow::Result<Keypair> {
    // `ed25519_from_bytes` zeroizes the buffer it is given: pass a copy.
    let mut seed = identity.seed();
    Keypair::ed25519_from_bytes(&mut seed)
        .context("the key's seed is not a valid ed25519 secret key")
}

/// The PeerId under which a member's node runs.
pub fn peer_of_member(member: &MemberId) -> anyhow::Result<PeerId> {
    PeerId::from_bytes(&member.peer_id_bytes())
        .with_context(|| format!("member {member} has no valid PeerId"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_id_of_a_key_equals_its_member_id_string() {
        for _ in 0..20 {
            let identity = Identity::generate();
            let peer_id = libp2p_keypair(&identity).unwrap().public().to_peer_id();
            assert_eq!(peer_id.to_string(), identity.member_id().to_peer_id_string());
            assert_eq!(peer_of_member(&identity.member_id()).unwrap(), peer_id);
        }
    }
}
