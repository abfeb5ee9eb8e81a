//! The CLI's side of the admin API: finds the local node through its data directory and calls it.

use super::Endpoint;
use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// A connection to the local node's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Reads the endpoint the node wrote into `data_dir`.
    pub fn for_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let endpoint = Endpoint::read(data_dir)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot create an HTTP client")?;
        Ok(Self { base: format!("http://{}", endpoint.address), token: endpoint.token, http })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let response = request.bearer_auth(&self.token).send().await.with_context(|| {
            format!("cannot reach the node's admin API at {} ({what})", self.base)
        })?;
        let status = response.status();
        let body =
            response.text().await.with_context(|| format!("{what}: the answer broke off"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("{what}: {message}");
        }
        serde_json::from_str(&body).with_context(|| {
            format!("{what}: the node answered something that is not the expected JSON")
        })
    }

    /// GETs a JSON document from `path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), path).await
    }

    /// POSTs raw bytes to `path` and reads a JSON answer.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        self.send(request, path).await
    }
}
