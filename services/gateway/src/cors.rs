//! Browsers: CORS by tower-http's `CorsLayer`. Playback objects are for any origin (players on
//! any site fetch them, with `Range`); the uploads API, tus and the status API answer only the
//! origins in `VTX_CORS_ORIGINS`, with the tus headers a browser client must read exposed.
//!
//! `CorsLayer` answers every `OPTIONS` itself; a plain `OPTIONS` (no
//! `Access-Control-Request-Method`: tus's discovery request) goes to the route instead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderName, Method, Request, Response, header};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, Any, Cors, CorsLayer};

fn names(list: &[&'static str]) -> Vec<HeaderName> {
    list.iter().map(|n| HeaderName::from_static(n)).collect()
}

/// Playback objects: any origin, `GET`/`HEAD` with `Range`.
pub fn playback() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD])
        .allow_headers([header::RANGE, header::IF_NONE_MATCH, header::IF_RANGE])
        .expose_headers([
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
            header::ETAG,
        ])
        .max_age(Duration::from_secs(24 * 3600))
}

/// The API, for the configured origins (`*` for any).
pub fn api(origins: &[String]) -> ApiCorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    ApiCorsLayer(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::HEAD,
                Method::DELETE,
            ])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "if-none-match",
                "tus-resumable",
                "upload-length",
                "upload-offset",
                "upload-metadata",
                "upload-defer-length",
                "upload-concat",
                "upload-checksum",
                "x-http-method-override",
                "x-requested-with",
                crate::uploads::CHUNK_CRC32C_HEADER,
                crate::uploads::CHUNK_SHA256_HEADER,
            ]))
            .expose_headers(names(&[
                "location",
                "etag",
                "retry-after",
                "tus-resumable",
                "tus-version",
                "tus-extension",
                "tus-max-size",
                "tus-checksum-algorithm",
                "upload-offset",
                "upload-length",
                "upload-metadata",
                "upload-expires",
            ]))
            .max_age(Duration::from_secs(3600)),
    )
}

#[derive(Clone)]
pub struct ApiCorsLayer(CorsLayer);

impl<S: Clone> Layer<S> for ApiCorsLayer {
    type Service = ApiCors<S>;
    fn layer(&self, inner: S) -> ApiCors<S> {
        ApiCors {
            cors: self.0.layer(inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Clone)]
pub struct ApiCors<S> {
    cors: Cors<S>,
    plain: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for ApiCors<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    // Readiness is checked on the clone each call drives (`oneshot`).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let discovery = req.method() == Method::OPTIONS
            && !req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if discovery {
            Box::pin(self.plain.clone().oneshot(req))
        } else {
            Box::pin(self.cors.clone().oneshot(req))
        }
    }
}
