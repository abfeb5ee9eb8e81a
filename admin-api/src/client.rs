//! The one client of a node's admin API: found through the endpoint file in the node's data
//! directory, with a typed method for every route, and errors that name the route.

use crate::endpoint::{Endpoint, EndpointError};
use crate::requests::{
    AdmitRequest, Admitted, Announced, ErrorAnswer, JoinRequest, Joined, Left, StopRequest,
    Stopped, StoredBlob,
};
use crate::{CoordinationView, JobView, ModelEntry, ModelExport, StatusView};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// How long one call may take, the transfer of a model included.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the admin API failed; each names the route (`GET /v1/jobs`...).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("cannot create an HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("{route}: cannot reach the node's admin API at {base}: {source}")]
    Unreachable { route: String, base: String, source: reqwest::Error },
    #[error("{route}: the node answered {status}: {message}")]
    Refused { route: String, status: u16, message: String },
    #[error("{route}: the node's answer is not the expected JSON: {source}")]
    Json { route: String, source: serde_json::Error },
}

/// A connection to one node's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the node that wrote its endpoint file into `data_dir`.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, ApiError> {
        Self::new(&Endpoint::read(data_dir)?)
    }

    /// A client of the API at `endpoint`.
    pub fn new(endpoint: &Endpoint) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(ApiError::Client)?;
        Ok(Self {
            base: format!("http://{}", endpoint.address),
            token: endpoint.token.clone(),
            http,
        })
    }

    /// `GET /v1/status`: the node itself.
    pub async fn status(&self) -> Result<StatusView, ApiError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/jobs`: every job the node knows.
    pub async fn jobs(&self) -> Result<Vec<JobView>, ApiError> {
        self.get("/v1/jobs").await
    }

    /// `GET /v1/jobs/{id}`: one job (`id` may be a unique prefix).
    pub async fn job(&self, id: &str) -> Result<JobView, ApiError> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// `POST /v1/jobs`: announces the job whose spec (JSON) is `spec`, signed by this node.
    pub async fn announce(&self, spec: Vec<u8>) -> Result<Announced, ApiError> {
        self.post_bytes("/v1/jobs", spec).await
    }

    /// `POST /v1/jobs/{id}/join`, with the owner's ticket for a job that admits by ticket.
    pub async fn join(&self, id: &str, ticket: Option<String>) -> Result<Joined, ApiError> {
        self.post(&format!("/v1/jobs/{id}/join"), &JoinRequest { ticket }).await
    }

    /// `POST /v1/jobs/{id}/admit`: signs a ticket admitting `member` (a PeerId) to the job.
    pub async fn admit(&self, id: &str, member: &str) -> Result<Admitted, ApiError> {
        let body = AdmitRequest { member: member.to_owned() };
        self.post(&format!("/v1/jobs/{id}/admit"), &body).await
    }

    /// `POST /v1/jobs/{id}/leave`.
    pub async fn leave(&self, id: &str) -> Result<Left, ApiError> {
        self.post_bytes(&format!("/v1/jobs/{id}/leave"), Vec::new()).await
    }

    /// `POST /v1/jobs/{id}/stop`, for the reason given (the node names one if none is).
    pub async fn stop(&self, id: &str, reason: Option<String>) -> Result<Stopped, ApiError> {
        self.post(&format!("/v1/jobs/{id}/stop"), &StopRequest { reason }).await
    }

    /// `GET /v1/jobs/{id}/model[?round=N]`: the job's current model, or round `round`'s.
    pub async fn model(&self, id: &str, round: Option<u64>) -> Result<ModelExport, ApiError> {
        match round {
            Some(round) => self.get(&format!("/v1/jobs/{id}/model?round={round}")).await,
            None => self.get(&format!("/v1/jobs/{id}/model")).await,
        }
    }

    /// `GET /v1/models[?job=ID]`: the model registry, of every job or of one.
    pub async fn models(&self, job: Option<&str>) -> Result<Vec<ModelEntry>, ApiError> {
        match job {
            Some(job) => self.get(&format!("/v1/models?job={job}")).await,
            None => self.get("/v1/models").await,
        }
    }

    /// `POST /v1/blobs`: stores `bytes` (a job's initial weights) and answers their hash.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<StoredBlob, ApiError> {
        self.post_bytes("/v1/blobs", bytes).await
    }

    /// `POST /v1/coordinator/jobs`: submits the orchestrated job whose spec (JSON) is `spec`.
    pub async fn submit(&self, spec: Vec<u8>) -> Result<Announced, ApiError> {
        self.post_bytes("/v1/coordinator/jobs", spec).await
    }

    /// `GET /v1/coordinator/jobs`: every job this node coordinates.
    pub async fn coordinated(&self) -> Result<Vec<CoordinationView>, ApiError> {
        self.get("/v1/coordinator/jobs").await
    }

    /// `GET /v1/coordinator/jobs/{id}`: one job this node coordinates.
    pub async fn coordinated_job(&self, id: &str) -> Result<CoordinationView, ApiError> {
        self.get(&format!("/v1/coordinator/jobs/{id}")).await
    }

    /// `GET /metrics`: the node's metrics as OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let route = "GET /metrics";
        self.send(self.http.get(format!("{}/metrics", self.base)), route).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let route = format!("GET {path}");
        let body = self.send(self.http.get(format!("{}{path}", self.base)), &route).await?;
        parse(&route, &body)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ApiError> {
        let route = format!("POST {path}");
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        parse(&route, &self.send(request, &route).await?)
    }

    async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ApiError> {
        let route = format!("POST {path}");
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        parse(&route, &self.send(request, &route).await?)
    }

    /// Sends `request` with the token; the answer's body, or the node's refusal.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        route: &str,
    ) -> Result<String, ApiError> {
        let unreachable = |source| ApiError::Unreachable {
            route: route.to_owned(),
            base: self.base.clone(),
            source,
        };
        let response = request.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(body);
        }
        let message = match serde_json::from_str::<ErrorAnswer>(&body) {
            Ok(answer) => answer.error,
            Err(_) => body.trim().to_owned(),
        };
        Err(ApiError::Refused { route: route.to_owned(), status: status.as_u16(), message })
    }
}

fn parse<T: DeserializeOwned>(route: &str, body: &str) -> Result<T, ApiError> {
    serde_json::from_str(body).map_err(|source| ApiError::Json { route: route.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_of(address: std::net::SocketAddr) -> AdminClient {
        AdminClient::new(&Endpoint { address, token: "secret".into(), metrics: None }).unwrap()
    }

    /// A client of a node that answers one request with `status` and `body`; the request the
    /// node received comes out of the returned channel.
    async fn answering(
        status: &'static str,
        body: &'static str,
    ) -> (AdminClient, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sent, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let read = stream.read(&mut request).await.unwrap();
            let _ = sent.send(String::from_utf8_lossy(&request[..read]).into_owned());
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        (client_of(address), received)
    }

    #[tokio::test]
    async fn a_call_carries_the_token_and_reads_the_typed_answer() {
        let (client, request) = answering("200 OK", r#"{"id": "abc", "left": true}"#).await;
        let left = client.leave("abc").await.unwrap();
        assert_eq!(left, Left { id: "abc".into(), left: true });
        let request = request.await.unwrap().to_lowercase();
        assert!(request.starts_with("post /v1/jobs/abc/leave "), "{request}");
        assert!(request.contains("authorization: bearer secret"), "{request}");
    }

    #[tokio::test]
    async fn a_refusal_names_the_route_and_the_nodes_message() {
        let (client, _) = answering("404 Not Found", r#"{"error": "not found: job abc"}"#).await;
        let error = client.job("abc").await.unwrap_err();
        assert!(matches!(error, ApiError::Refused { status: 404, .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "GET /v1/jobs/abc: the node answered 404: not found: job abc"
        );
    }

    #[tokio::test]
    async fn an_answer_of_another_shape_names_the_route() {
        let (client, _) = answering("200 OK", r#"{"id": 7}"#).await;
        let error = client.announce(b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(error, ApiError::Json { .. }), "{error}");
        let expected = "POST /v1/jobs: the node's answer is not the expected JSON";
        assert!(error.to_string().starts_with(expected), "{error}");
    }

    #[tokio::test]
    async fn a_node_that_does_not_listen_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = client_of(address).status().await.unwrap_err();
        assert!(matches!(error, ApiError::Unreachable { .. }), "{error}");
        assert!(error.to_string().starts_with("GET /v1/status: cannot reach"), "{error}");
    }
}
