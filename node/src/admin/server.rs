//! The admin API's routes: node status, jobs (announce, join, leave, stop, model), the model
//! registry, blobs (a job's initial weights), a coordinator's jobs (submit, status), and
//! `/metrics`, behind the bearer token; the web page at `/` (which asks for the token); and the
//! metrics address's own server, without a token.

use crate::engine::{EngineError, EngineHandle};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fedmesh_admin_api::{
    AdmitRequest, Admitted, Announced, CoordinationView, Endpoint, ErrorAnswer, JobView,
    JoinRequest, Joined, Left, ModelEntry, ModelExport, StatusView, StopRequest, Stopped,
    StoredBlob,
};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest request body (a job's initial weights can be large).
const MAX_BODY_BYTES: usize = 512 << 20;

#[derive(Clone)]
struct AdminState {
    engine: EngineHandle,
    token_hash: blake3::Hash,
    metrics_address: Option<std::net::SocketAddr>,
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    engine: EngineHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AdminState {
        engine,
        token_hash: blake3::hash(endpoint.token.as_bytes()),
        metrics_address: endpoint.metrics,
    };
    let api = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/jobs", get(list_jobs).post(announce_job))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/join", post(join_job))
        .route("/v1/jobs/{id}/admit", post(admit_member))
        .route("/v1/jobs/{id}/leave", post(leave_job))
        .route("/v1/jobs/{id}/stop", post(stop_job))
        .route("/v1/coordinator/jobs", get(coordinated_jobs).post(submit_job))
        .route("/v1/coordinator/jobs/{id}", get(coordinated_job))
        .route("/v1/jobs/{id}/model", get(job_model))
        .route("/v1/models", get(list_models))
        .route("/v1/blobs", post(put_blob))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(Arc::new(state));
    // The page holds no data: it asks for the token and calls the API above with it.
    let router = Router::new().route("/", get(super::page::page)).merge(api);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Serves `GET /metrics` on `listener` without a token, as Prometheus scrapes, until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    engine: EngineHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route("/metrics", get(open_metrics)).with_state(engine);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn open_metrics(State(engine): State<EngineHandle>) -> Response {
    render_metrics(&engine).await
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    // blake3::Hash compares in constant time.
    match presented {
        Some(token) if blake3::hash(token.as_bytes()) == state.token_hash => {
            next.run(request).await
        }
        _ => (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response(),
    }
}

/// An engine error as an HTTP answer.
struct ApiError(EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorAnswer { error: self.0.to_string() })).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        Self(error)
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn status(State(state): State<Arc<AdminState>>) -> ApiResult<StatusView> {
    let mut status = state.engine.status().await?;
    status.metrics_address = state.metrics_address.map(|address| address.to_string());
    Ok(Json(status))
}

async fn list_jobs(State(state): State<Arc<AdminState>>) -> ApiResult<Vec<JobView>> {
    Ok(Json(state.engine.jobs().await?))
}

async fn show_job(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<JobView> {
    Ok(Json(state.engine.job(&id).await?))
}

async fn announce_job(
    State(state): State<Arc<AdminState>>,
    body: axum::body::Bytes,
) -> ApiResult<Announced> {
    let id = state.engine.announce(body.to_vec()).await?;
    Ok(Json(Announced { id: id.to_string() }))
}

async fn join_job(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Joined> {
    let JoinRequest { ticket } = optional_json(&body, "{\"ticket\": …}")?;
    let id = state.engine.join(&id, ticket).await?;
    Ok(Json(Joined { id: id.to_string(), joined: true }))
}

async fn admit_member(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Json(AdmitRequest { member }): Json<AdmitRequest>,
) -> ApiResult<Admitted> {
    let ticket = state.engine.admit(&id, &member).await?;
    Ok(Json(Admitted { member, ticket }))
}

async fn leave_job(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<Left> {
    let id = state.engine.leave(&id).await?;
    Ok(Json(Left { id: id.to_string(), left: true }))
}

/// An optional JSON request body: the default when empty, else `shape` or a clear refusal.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(EngineError::Invalid(format!("the request body is not {shape}: {e}")))
    })
}

async fn stop_job(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Stopped> {
    let body: StopRequest = optional_json(&body, "{\"reason\": …}")?;
    let reason = body.reason.unwrap_or_else(|| "stopped by its operator".to_owned());
    let id = state.engine.stop(&id, &reason).await?;
    Ok(Json(Stopped { id: id.to_string(), stopped: true }))
}

async fn submit_job(
    State(state): State<Arc<AdminState>>,
    body: axum::body::Bytes,
) -> ApiResult<Announced> {
    let id = state.engine.submit(body.to_vec()).await?;
    Ok(Json(Announced { id: id.to_string() }))
}

async fn coordinated_jobs(
    State(state): State<Arc<AdminState>>,
) -> ApiResult<Vec<CoordinationView>> {
    Ok(Json(state.engine.coordinated(None).await?))
}

async fn coordinated_job(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<CoordinationView> {
    let views = state.engine.coordinated(Some(id.clone())).await?;
    match <[_; 1]>::try_from(views) {
        Ok([view]) => Ok(Json(view)),
        Err(_) => Err(ApiError(EngineError::Invalid(format!(
            "`{id}` names several jobs; give more of the id"
        )))),
    }
}

/// `?round=N` picks one round's model from the registry; without it, the current model.
#[derive(serde::Deserialize)]
struct RoundQuery {
    round: Option<u64>,
}

async fn job_model(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(query): Query<RoundQuery>,
) -> ApiResult<ModelExport> {
    Ok(Json(state.engine.model(&id, query.round).await?))
}

/// `?job=ID` (or a prefix) limits the list to one job.
#[derive(serde::Deserialize)]
struct JobQuery {
    job: Option<String>,
}

async fn list_models(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<JobQuery>,
) -> ApiResult<Vec<ModelEntry>> {
    Ok(Json(state.engine.models(query.job).await?))
}

async fn put_blob(
    State(state): State<Arc<AdminState>>,
    body: axum::body::Bytes,
) -> ApiResult<StoredBlob> {
    let hash = state.engine.put_blob(body.to_vec()).await?;
    Ok(Json(StoredBlob { hash: hash.to_hex() }))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    render_metrics(&state.engine).await
}

/// The node's metrics with its jobs' round metrics, as OpenMetrics text.
async fn render_metrics(engine: &EngineHandle) -> Response {
    match engine.jobs().await {
        Ok(jobs) => {
            let text = engine.metrics().render(&jobs);
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
        }
        Err(error) => ApiError(error).into_response(),
    }
}
