//! The API's OpenAPI 3.1 description, served at `GET /v1/openapi.json`. It is generated from the
//! handlers' `#[utoipa::path]` annotations and the body types: the router is built from the same
//! list (`utoipa_axum::routes!`), so a route cannot exist without its description.

use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vtx",
        description = "Distributed video transcoding for short-video upload: uploads (chunks, tus), \
                       status and playback, plays, webhooks. Errors are `{\"error\": {\"code\", \
                       \"message\"}}` with a stable `code`.",
        license(name = "Apache-2.0"),
    ),
    paths(crate::media::serve_doc),
    components(schemas(
        vtx_domain::api::ErrorBody,
        vtx_domain::webhooks::EventBody,
        vtx_domain::playback::Form,
        vtx_domain::playback::Network,
        vtx_domain::DeliveryState,
    )),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "uploads", description = "Chunked uploads (apps, `vtx upload`)."),
        (name = "tus", description = "tus 1.0 resumable uploads of whole files."),
        (name = "status", description = "Jobs, videos and what to play."),
        (name = "media", description = "Playback objects (no credentials; CORS for any origin)."),
        (name = "plays", description = "Play counts and the most played videos."),
        (name = "webhooks", description = "Signed event deliveries (Standard Webhooks)."),
        (name = "experiments", description = "A/B experiments on encoder profiles and delivery rules, judged by what players report."),
        (name = "health", description = "Probes."),
    )
)]
pub struct ApiDoc;

/// Every call takes `Authorization: Bearer <token>`: a service token, a grant token or an
/// upload's own token, as each operation says.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// 401 and 403: the credential, on every call that takes one.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AuthFailures {
    /// No valid credential: `auth-missing`, `auth-invalid`, `auth-expired`.
    #[response(status = 401)]
    Unauthorized(vtx_domain::api::ErrorBody),
    /// The credential may not do this: `auth-scope`.
    #[response(status = 403)]
    Forbidden(vtx_domain::api::ErrorBody),
}

/// 503: a dependency is down (`database-unavailable`, `storage-unavailable`); try again.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Unavailable {
    /// A dependency is down: `database-unavailable`, `storage-unavailable`.
    #[response(status = 503)]
    Unavailable(vtx_domain::api::ErrorBody),
}
