//! `GET /v1/videos/{id}/playback`: which rendition a player should load, chosen by
//! `vtx_domain::playback` from where it plays (`form`), its network, its screen and the codecs
//! it decodes.

use axum::Json;
use axum::extract::{Path, Query, State};
use vtx_domain::VideoId;
use vtx_domain::api::{PlaybackChoice, RenditionView};
use vtx_domain::playback::{Candidate, Form, Network, Viewer, choose};
use vtx_infra::db;

use crate::auth::Caller;
use crate::status::{MediaUrls, playback_of, rendition_view};
use crate::{ApiError, ApiResult, AppState, parse_id};

#[derive(Debug, Default, serde::Deserialize)]
pub struct PlaybackQuery {
    form: Option<String>,
    network: Option<String>,
    /// `WxH` in CSS pixels.
    screen: Option<String>,
    dpr: Option<String>,
    /// Codecs decoded beyond H.264, comma-separated (`hevc,av1`).
    codecs: Option<String>,
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("invalid-query", message)
}

/// The viewer a query describes; every value is bounded.
fn viewer(q: &PlaybackQuery) -> ApiResult<Viewer> {
    let form = match q.form.as_deref() {
        None => Form::Fullscreen,
        Some(f) => f
            .parse()
            .map_err(|_| invalid(format!("form is feed or fullscreen, not {f:.32?}")))?,
    };
    let network = match q.network.as_deref() {
        None => Network::Wifi,
        Some(n) => n
            .parse()
            .map_err(|_| invalid(format!("network is wifi or cellular, not {n:.32?}")))?,
    };
    let screen = q
        .screen
        .as_deref()
        .ok_or_else(|| invalid("screen=WxH (CSS pixels) is required".into()))?;
    let side = |v: &str| v.parse::<u32>().ok().filter(|v| (1..=16_384).contains(v));
    let screen = screen
        .split_once('x')
        .and_then(|(w, h)| Some((side(w)?, side(h)?)))
        .ok_or_else(|| invalid(format!("screen is WxH, 1 to 16384 each, not {screen:.32?}")))?;
    let dpr = match q.dpr.as_deref() {
        None => 1.0,
        Some(d) => d
            .parse::<f64>()
            .ok()
            .filter(|d| (0.5..=5.0).contains(d))
            .ok_or_else(|| invalid(format!("dpr is 0.5 to 5, not {d:.32?}")))?,
    };
    let codecs: Vec<String> = q
        .codecs
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(c) = codecs
        .iter()
        .find(|c| !["h264", "hevc", "av1"].contains(&c.as_str()))
    {
        return Err(invalid(format!("codecs are h264, hevc, av1, not {c:.32?}")));
    }
    Ok(Viewer {
        form,
        network,
        screen,
        dpr,
        codecs,
    })
}

#[utoipa::path(
    get,
    path = "/v1/videos/{id}/playback",
    tag = "status",
    summary = "The rendition a player should load (service token).",
    params(("id" = String, Path, description = "The video id (a UUID)."), ("form" = Option<vtx_domain::playback::Form>, Query, description = "Where it plays (default fullscreen)."), ("network" = Option<vtx_domain::playback::Network>, Query, description = "Default wifi."), ("screen" = String, Query, description = "Screen in CSS pixels, `WxH`, 1 to 16384 each."), ("dpr" = Option<f64>, Query, description = "Device pixels per CSS pixel, 0.5 to 5 (default 1)."), ("codecs" = Option<String>, Query, description = "Codecs decoded beyond H.264: `hevc,av1`.")),
    responses(
        (status = 200, body = vtx_domain::api::PlaybackChoice),
        (status = 400, description = "Malformed request: `invalid-request` (body, query or path), `invalid-query`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::AuthFailures,
        (status = 404, description = "`video-not-found`.", body = vtx_domain::api::ErrorBody),
        (status = 409, description = "`video-not-published`.", body = vtx_domain::api::ErrorBody),
        crate::openapi::Unavailable,
    )
)]
pub async fn choose_rendition(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PlaybackQuery>,
) -> ApiResult<Json<PlaybackChoice>> {
    caller.require_service()?;
    let id: VideoId = parse_id(&id, "video-not-found", "video")?;
    let viewer = viewer(&q)?;
    let s = db::video_status(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("video-not-found", "video"))?;
    let not_playable = || ApiError::conflict("video-not-published", "the video is not published");
    let playback = playback_of(&state, id, &s, q.codecs.as_deref()).ok_or_else(not_playable)?;
    let v = &s.video;
    let mut renditions: Vec<RenditionView> = playback.mp4;
    if renditions.is_empty() {
        // A live-ingest fast tier before its MP4s: its HLS media playlists.
        let urls = MediaUrls::of(&state, id, v.signed_playback);
        renditions = s.live.iter().map(|r| rendition_view(&urls, r)).collect();
    }
    renditions.extend(playback.alternatives);
    renditions.sort_by_key(|r| r.bitrate);
    let candidates: Vec<Candidate> = renditions
        .iter()
        .map(|r| Candidate {
            codec: r.codec.clone(),
            width: r.width,
            height: r.height,
            bitrate: r.bitrate,
        })
        .collect();
    let picture = match (v.width, v.height) {
        (Some(w), Some(h)) => (w.max(0) as u32, h.max(0) as u32),
        _ => renditions
            .iter()
            .map(|r| (r.width, r.height))
            .max_by_key(|(_, h)| *h)
            .unwrap_or((0, 0)),
    };
    let choice = choose(&candidates, picture, &viewer, &state.playback).ok_or_else(not_playable)?;
    let chosen = renditions.remove(choice.index);
    renditions.retain(|r| viewer.codecs.contains(&r.codec) || r.codec == "h264");
    Ok(Json(PlaybackChoice {
        video_id: id,
        chosen,
        hls: playback.hls,
        cover: playback.cover,
        alternatives: renditions,
        player_width: choice.player.0,
        player_height: choice.player.1,
        shown_height: choice.shown_height,
        capped: choice.capped,
    }))
}
