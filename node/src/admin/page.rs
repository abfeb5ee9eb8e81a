//! The node's web page at `/`: one self-contained HTML file (no CDN) that asks for the admin
//! token once (or takes it from `#token=...`), keeps it in the browser's localStorage, and shows
//! the node's peers, its jobs, each job's rounds with a live accuracy and loss plot, and the
//! members and their states, refreshed every two seconds through the admin API.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("page.html");

/// `GET /`: the page itself, which holds no data.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}
