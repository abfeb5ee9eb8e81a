//! A job's first global model as a joining member makes it: from the job's seed, or, for an
//! external model shipped with `init.safetensors`, from that blob, fetched by hash from the job's
//! owner (then from any connected peer) when this node's store lacks it.

use super::LocalData;
use super::models::fetch_blob;
use crate::engine::{Engine, EngineError};
use fedmesh_protocol::ids::{ContentHash, MemberId};
use fedmesh_protocol::model::{ExternalInit, ModelSpec};
use fedmesh_protocol::spec::JobSpec;

/// The f32 bytes of an external model's layout: what its initial weights weigh (bar the
/// safetensors header), for the fetch's timeout.
fn layout_bytes(spec: &JobSpec) -> usize {
    match &spec.model {
        ModelSpec::External(external) => external.layout().num_params() * 4,
        _ => 0,
    }
}

impl Engine {
    /// The job's initial parameters for `local`'s model.
    pub(super) async fn initial_model(
        &mut self,
        spec: &JobSpec,
        local: &LocalData,
    ) -> Result<Vec<f32>, EngineError> {
        let blob = match &spec.model {
            ModelSpec::External(external) => match &external.init {
                ExternalInit::Safetensors(hex) => Some(self.init_blob(spec, hex).await?),
                ExternalInit::Seed(_) => None,
            },
            _ => None,
        };
        local
            .initial_params(spec, blob.as_deref())
            .map_err(|e| EngineError::Invalid(format!("model.external.init: {e:#}")))
    }

    /// The blob `hex` names: from the store, or fetched from the owner or a peer and stored.
    async fn init_blob(&mut self, spec: &JobSpec, hex: &str) -> Result<Vec<u8>, EngineError> {
        let hash = ContentHash::from_hex(hex)
            .map_err(|e| EngineError::Invalid(format!("model.external.init.safetensors: {e}")))?;
        if let Some(bytes) = self.store.blob(&hash)? {
            return Ok(bytes);
        }
        let status = self.network.status().await?;
        let peers = status
            .connected_peers
            .iter()
            .filter_map(|peer| MemberId::from_peer_id_string(&peer.to_string()).ok());
        let mut last_error = "no peer to fetch it from".to_owned();
        for source in std::iter::once(spec.owner).chain(peers) {
            if source == self.identity.member_id() {
                continue;
            }
            match fetch_blob(&self.network, source, hash, layout_bytes(spec)).await {
                Ok(blob) => {
                    let mut batch = self.store.batch();
                    batch.put_checked_blob(&blob)?;
                    batch.commit()?;
                    tracing::info!(%hash, %source, "fetched the job's initial weights");
                    return Ok(blob.into_bytes());
                }
                Err(error) => last_error = error,
            }
        }
        Err(EngineError::NotFound(format!(
            "the job's initial weights {hash} (model.external.init.safetensors): {last_error}"
        )))
    }
}
