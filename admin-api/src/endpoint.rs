//! Where a node's admin API listens and the bearer token that opens it: written by the node into
//! its data directory (owner-only), read by the CLI and the testnet.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const ENDPOINT_FILE: &str = "admin.json";

/// The admin API's address and token, and where the metrics are served (without a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub token: String,
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// Why the endpoint file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source} (is a fedmesh node running with this data directory?)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid admin endpoint file: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl Endpoint {
    /// A new endpoint with a random 256-bit token.
    pub fn with_random_token(address: SocketAddr, metrics: Option<SocketAddr>) -> Self {
        let token: [u8; 32] = rand::random();
        Self { address, token: token.iter().map(|b| format!("{b:02x}")).collect(), metrics }
    }

    /// The file under `data_dir` that holds the endpoint.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(ENDPOINT_FILE)
    }

    /// Writes the endpoint file, readable by its owner only.
    pub fn write(&self, data_dir: &Path) -> Result<(), EndpointError> {
        let path = Self::path_in(data_dir);
        let write_error = |source| EndpointError::Write { path: path.clone(), source };
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| write_error(std::io::Error::other(e)))?;
        let _ = std::fs::remove_file(&path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(write_error)?;
        file.write_all(&json).map_err(write_error)
    }

    /// Reads the endpoint file a node wrote into `data_dir`.
    pub fn read(data_dir: &Path) -> Result<Self, EndpointError> {
        let path = Self::path_in(data_dir);
        let bytes = std::fs::read(&path)
            .map_err(|source| EndpointError::Read { path: path.clone(), source })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EndpointError::Parse { path, detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_file_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::with_random_token(
            "127.0.0.1:7070".parse().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap()),
        );
        endpoint.write(dir.path()).unwrap();
        assert_eq!(Endpoint::read(dir.path()).unwrap(), endpoint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(Endpoint::path_in(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_file_says_whether_a_node_runs() {
        let dir = tempfile::tempdir().unwrap();
        let error = Endpoint::read(dir.path()).unwrap_err();
        assert!(error.to_string().contains("is a fedmesh node running"), "{error}");
    }
}
