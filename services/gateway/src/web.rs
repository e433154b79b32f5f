//! The page at `/`: pick a file, upload it with tus-js-client, follow its status from the
//! video's event stream, and play it with hls.js as soon as the first tier is live (then the
//! swap to the high tier). The page is plain static files in `web/`, built into the binary; the
//! two libraries come from npm (`deploy/local/setup.sh` puts them under `.vtx/web`) and are
//! served from `VTX_WEB_VENDOR_DIR`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

const INDEX: &str = include_str!("../../../web/index.html");
const APP: &str = include_str!("../../../web/app.js");

pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

pub async fn app() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP,
    )
        .into_response()
}

/// The libraries the page loads, by name only (nothing else under the directory is served).
pub async fn vendor(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let file = match name.as_str() {
        "tus.min.js" => "tus-js-client/dist/tus.min.js",
        "hls.min.js" => "hls.js/dist/hls.min.js",
        _ => return ApiError::not_found("object-not-found", "file").into_response(),
    };
    match tokio::fs::read(state.web_vendor_dir.join(file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "web-library-missing",
            format!(
                "{file} is not under {}: run deploy/local/setup.sh or set VTX_WEB_VENDOR_DIR",
                state.web_vendor_dir.display()
            ),
        )
        .into_response(),
    }
}
