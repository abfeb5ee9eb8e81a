//! Which peers may send this node large requests (updates): the members, owner and coordinator
//! of each job it runs, as its machines know them. The set lives in the network, which reads it
//! before reserving any of the bulk budget for a frame; the engine rebuilds it whenever a run's
//! membership may have changed (a run started or ended, or its member count moved).

use crate::engine::Engine;
use crate::identity::peer_of_member;
use fedmesh_protocol::ids::{JobId, MemberId};
use libp2p::PeerId;
use std::collections::HashSet;

/// What the set was last built from: each active run and its member count.
pub type BulkPeersBuiltFrom = Vec<(JobId, usize)>;

impl Engine {
    /// Rebuilds the network's set of peers that may send large frames, if the active runs or
    /// their memberships changed since it was last built.
    pub(in crate::engine) fn refresh_bulk_peers(&mut self) {
        let built_from: BulkPeersBuiltFrom = self
            .runs
            .iter()
            .filter(|(_, run)| run.is_active())
            .map(|(id, run)| (*id, run.machine.state().members.len()))
            .collect();
        if built_from == self.bulk_peers_built_from {
            return;
        }
        self.bulk_peers_built_from = built_from;
        let me = self.identity.member_id();
        let peers: HashSet<PeerId> = self
            .runs
            .values()
            .filter(|run| run.is_active())
            .flat_map(|run| {
                let spec = run.machine.spec();
                let members = run.machine.state().members.ids();
                members.chain([spec.owner]).chain(spec.coordinator)
            })
            .filter(|member| *member != me)
            .filter_map(|member: MemberId| peer_of_member(&member).ok())
            .collect();
        tracing::debug!(peers = peers.len(), "peers that may send large frames");
        self.network.set_large_frame_peers(peers);
    }
}
