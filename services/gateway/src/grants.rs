//! What one grant (one app user) may do at once: open sessions, sessions opened per minute and
//! request bodies in flight. Past a limit the answer is 429 with `Retry-After`, which the vtx
//! client honours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;
use vtx_infra::db;

use crate::{ApiError, ApiResult, AppState};

/// Refuses a new session for `grant` past its open-session or per-minute limit.
pub(crate) async fn admit_session(state: &AppState, grant: Option<Uuid>) -> ApiResult<()> {
    let Some(grant) = grant else {
        return Ok(()); // an internal service: its own limits are its business
    };
    let (open, last_minute, oldest_ages_in) = db::grant_usage(&state.pool, grant).await?;
    let limits = &state.limits;
    if open.max(0) as u64 >= limits.grant_max_open_uploads {
        return Err(ApiError::too_many(
            "too-many-open-uploads",
            format!(
                "a grant may hold {} open upload sessions; complete or abort one",
                limits.grant_max_open_uploads
            ),
            30,
        ));
    }
    if last_minute.max(0) as u64 >= limits.grant_uploads_per_minute {
        return Err(ApiError::too_many(
            "too-many-uploads",
            format!(
                "a grant may open {} upload sessions a minute",
                limits.grant_uploads_per_minute
            ),
            oldest_ages_in.ceil().max(1.0) as u64,
        ));
    }
    Ok(())
}

/// Request bodies in flight per grant, in this process.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<Uuid, u64>>>);

/// `bytes` of one body counted against its grant until dropped.
pub(crate) struct InFlightBytes {
    table: InFlight,
    grant: Uuid,
    bytes: u64,
}

impl Drop for InFlightBytes {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().expect("in-flight lock");
        if let Some(n) = t.get_mut(&self.grant) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                t.remove(&self.grant);
            }
        }
    }
}

/// Counts a body of `bytes` against `grant`, or refuses it (429) past the grant's limit.
pub(crate) fn admit_body(
    state: &AppState,
    grant: Option<Uuid>,
    bytes: u64,
) -> ApiResult<Option<InFlightBytes>> {
    let Some(grant) = grant else {
        return Ok(None);
    };
    let max = state.limits.grant_max_inflight_bytes;
    let mut t = state.inflight.0.lock().expect("in-flight lock");
    let now = t.entry(grant).or_insert(0);
    if *now > 0 && *now + bytes > max {
        return Err(ApiError::too_many(
            "too-many-bytes-in-flight",
            format!("a grant may send at most {max} bytes at once; wait for a request to end"),
            2,
        ));
    }
    *now += bytes;
    Ok(Some(InFlightBytes {
        table: state.inflight.clone(),
        grant,
        bytes,
    }))
}
