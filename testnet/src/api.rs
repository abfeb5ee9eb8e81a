//! A client for one node's admin API, found through the endpoint file the node writes into its
//! data directory, as the `fedmesh` CLI finds it.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The admin endpoint file a node writes (`admin.json` in its data directory).
#[derive(Debug, Clone, Deserialize)]
struct Endpoint {
    address: SocketAddr,
    token: String,
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no admin endpoint yet in {0}")]
    NoEndpoint(String),
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// A node's admin API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// Reads the endpoint file in `data_dir`, if the node has written it.
    pub fn from_data_dir(data_dir: &Path) -> Result<Self, ApiError> {
        let path = data_dir.join("admin.json");
        let missing = || ApiError::NoEndpoint(data_dir.display().to_string());
        let bytes = std::fs::read(&path).map_err(|_| missing())?;
        let endpoint: Endpoint = serde_json::from_slice(&bytes).map_err(|_| missing())?;
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| {
                ApiError::Http { url: endpoint.address.to_string(), detail: e.to_string() }
            })?;
        Ok(Self { base: format!("http://{}", endpoint.address), token: endpoint.token, http })
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<String, ApiError> {
        let http_error =
            |e: reqwest::Error| ApiError::Http { url: url.to_owned(), detail: e.to_string() };
        let response = request.bearer_auth(&self.token).send().await.map_err(http_error)?;
        let status = response.status();
        let body = response.text().await.map_err(http_error)?;
        if !status.is_success() {
            return Err(ApiError::Status { url: url.to_owned(), status: status.as_u16(), body });
        }
        Ok(body)
    }

    fn parse<T: DeserializeOwned>(url: &str, body: &str) -> Result<T, ApiError> {
        serde_json::from_str(body)
            .map_err(|e| ApiError::Http { url: url.to_owned(), detail: format!("bad JSON: {e}") })
    }

    /// GETs a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let body = self.send(self.http.get(&url), &url).await?;
        Self::parse(&url, &body)
    }

    /// POSTs a JSON body and reads a JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let body = self.send(self.http.post(&url).json(body), &url).await?;
        Self::parse(&url, &body)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let url = format!("{}/metrics", self.base);
        self.send(self.http.get(&url), &url).await
    }
}

/// The value of one Prometheus sample, by its full name with labels, e.g.
/// `fedmesh_messages_rejected_total{kind="announce",reason="bad_signature"}`; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}
