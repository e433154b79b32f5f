//! Webhooks: endpoints a service registers (`/v1/webhooks`, service token), and the dispatcher
//! that delivers the events recorded with each state change (`dispatch.rs`), signed as Standard
//! Webhooks define (`sign.rs`).

pub mod dispatch;
pub mod sign;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use vtx_domain::DeliveryState;
use vtx_domain::webhooks::{
    DeliveryList, DeliveryView, EndpointList, EndpointRequest, EndpointView,
};
use vtx_infra::db::webhooks::{self as db, EndpointRow};

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState, rfc3339};

/// Endpoints one vtx keeps at most.
const MAX_ENDPOINTS: i64 = 100;
/// Deliveries one listing returns at most.
const MAX_LISTED: i64 = 200;

fn view(row: EndpointRow, with_secret: bool) -> EndpointView {
    EndpointView {
        id: row.id,
        url: row.url,
        event_types: row.event_types,
        secret: with_secret.then_some(row.secret),
        description: row.description,
        enabled: row.enabled,
        created_at: rfc3339(row.created_at),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-webhook", message)
}

fn check_url(url: &str) -> ApiResult<()> {
    let ok = url.len() <= 2048
        && reqwest::Url::parse(url).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.username().is_empty()
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "url is an http(s) URL of at most 2048 bytes, without credentials",
        ))
    }
}

fn check_description(d: &str) -> ApiResult<()> {
    if d.len() <= 512 {
        Ok(())
    } else {
        Err(invalid("description is at most 512 bytes"))
    }
}

fn endpoint_id(raw: &str) -> ApiResult<uuid::Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found("webhook-not-found", "webhook endpoint"))
}

/// `POST /v1/webhooks`: 201 with the endpoint and its secret.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "create_webhook",
    tag = "webhooks",
    summary = "Register a webhook endpoint (service token).",
    request_body(content = vtx_domain::webhooks::EndpointRequest, content_type = "application/json"),
    responses(
        (status = 201, body = vtx_domain::webhooks::EndpointView),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-webhook`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 409, description = "`too-many-webhooks`.", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<EndpointRequest>,
) -> ApiResult<(StatusCode, Json<EndpointView>)> {
    caller.require_service()?;
    let url = req
        .url
        .as_deref()
        .ok_or_else(|| invalid("url is required"))?;
    check_url(url)?;
    let description = req.description.as_deref().unwrap_or("");
    check_description(description)?;
    let secret = match req.secret {
        Some(s) if sign::key_of(&s).is_some() => s,
        Some(_) => {
            return Err(invalid(
                "secret is whsec_ followed by base64 of 24 to 64 bytes",
            ));
        }
        None => sign::new_secret(),
    };
    if db::count_endpoints(&state.pool).await? >= MAX_ENDPOINTS {
        return Err(ApiError::conflict(
            "too-many-webhooks",
            format!("at most {MAX_ENDPOINTS} endpoints; delete one first"),
        ));
    }
    let row = db::create_endpoint(
        &state.pool,
        url,
        req.event_types.as_deref().unwrap_or(&[]),
        &secret,
        description,
        req.enabled.unwrap_or(true),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(row, true))))
}

/// `GET /v1/webhooks`: every endpoint, without secrets.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    summary = "Every webhook endpoint, without secrets.",
    responses(
        (status = 200, body = vtx_domain::webhooks::EndpointList),
        crate::openapi::AuthFailures,
        crate::openapi::Unavailable,
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<EndpointList>> {
    caller.require_service()?;
    let endpoints = db::endpoints(&state.pool)
        .await?
        .into_iter()
        .map(|r| view(r, false))
        .collect();
    Ok(Json(EndpointList { endpoints }))
}

/// `GET /v1/webhooks/{id}`: one endpoint, with its secret.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "show_webhook",
    tag = "webhooks",
    summary = "One webhook endpoint, with its secret.",
    params(("id" = String, Path, description = "The endpoint id (a UUID).")),
    responses(
        (status = 200, body = vtx_domain::webhooks::EndpointView),
        crate::openapi::AuthFailures,
        (status = 404, description = "`webhook-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointView>> {
    caller.require_service()?;
    let row = db::endpoint(&state.pool, endpoint_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook-not-found", "webhook endpoint"))?;
    Ok(Json(view(row, true)))
}

/// `PATCH /v1/webhooks/{id}`: url, event types, description, enabled (the secret stays).
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    operation_id = "update_webhook",
    tag = "webhooks",
    summary = "Change an endpoint: url, event types, description, enabled.",
    params(("id" = String, Path, description = "The endpoint id (a UUID).")),
    request_body(content = vtx_domain::webhooks::EndpointRequest, content_type = "application/json"),
    responses(
        (status = 200, body = vtx_domain::webhooks::EndpointView),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-webhook`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`webhook-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 415, description = "Not JSON: `invalid-request`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<EndpointRequest>,
) -> ApiResult<Json<EndpointView>> {
    caller.require_service()?;
    let id = endpoint_id(&id)?;
    if req.secret.is_some() {
        return Err(invalid("the secret cannot be changed; make a new endpoint"));
    }
    if let Some(url) = &req.url {
        check_url(url)?;
    }
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    let row = db::update_endpoint(
        &state.pool,
        id,
        req.url.as_deref(),
        req.event_types.as_deref(),
        req.description.as_deref(),
        req.enabled,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("webhook-not-found", "webhook endpoint"))?;
    Ok(Json(view(row, false)))
}

/// `DELETE /v1/webhooks/{id}`: 204; its deliveries go with it.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    summary = "Delete an endpoint and its deliveries.",
    params(("id" = String, Path, description = "The endpoint id (a UUID).")),
    responses(
        (status = 204, description = "Deleted."),
        crate::openapi::AuthFailures,
        (status = 404, description = "`webhook-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_service()?;
    if db::delete_endpoint(&state.pool, endpoint_id(&id)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook-not-found", "webhook endpoint"))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    state: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries?state=failed`: the newest deliveries first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    operation_id = "webhook_deliveries",
    tag = "webhooks",
    summary = "An endpoint's deliveries, newest first.",
    params(("id" = String, Path, description = "The endpoint id (a UUID)."), ("state" = Option<vtx_domain::DeliveryState>, Query, description = "Only those in this state.")),
    responses(
        (status = 200, body = vtx_domain::webhooks::DeliveryList),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-query`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`webhook-not-found`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    caller.require_service()?;
    let id = endpoint_id(&id)?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<DeliveryState>().map_err(|_| {
            ApiError::bad_request("invalid-query", "state is pending, delivered or failed")
        })?),
    };
    if db::endpoint(&state.pool, id).await?.is_none() {
        return Err(ApiError::not_found("webhook-not-found", "webhook endpoint"));
    }
    let deliveries = db::deliveries(&state.pool, id, wanted, MAX_LISTED)
        .await?
        .into_iter()
        .map(|d| DeliveryView {
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts.max(0) as u32,
            last_status: d.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: d.last_error,
            next_attempt_at: (d.state == DeliveryState::Pending)
                .then(|| rfc3339(d.next_attempt_at)),
            created_at: rfc3339(d.created_at),
            finished_at: d.finished_at.map(rfc3339),
        })
        .collect();
    Ok(Json(DeliveryList { deliveries }))
}
