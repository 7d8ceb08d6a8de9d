//! Triage (operators and admins mark alerts acknowledged or resolved, with a note) and the
//! audit log (admins).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::alerts::alert_id;
use super::auth::Caller;
use super::{bad_request, query, Api, ApiError};
use crate::ingest::now_ms;
use crate::store::filter;

/// The longest note kept, in characters.
pub const MAX_NOTE: usize = 4000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriageBody {
    state: String,
    #[serde(default)]
    note: String,
}

/// `POST /api/alerts/{id}/triage`: stored with who and when, audited, sent on the live events.
pub(crate) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: Result<Json<TriageBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    filter::check_triage(&body.state).map_err(bad_request)?;
    if body.note.chars().count() > MAX_NOTE {
        return Err(bad_request(format!(
            "the note is longer than {MAX_NOTE} characters"
        )));
    }
    let user = caller.user.clone();
    let triage = query(&api, move |s| {
        s.set_triage(id, &body.state, &body.note, &user, now_ms())
    })
    .await?
    .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no alert {id}")))?;
    api.events.wake();
    Ok(Json(serde_json::to_value(triage).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    limit: Option<u64>,
}

/// `GET /api/audit`: newest first.
pub(crate) async fn audit(
    State(api): State<Api>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let limit = p.limit.unwrap_or(filter::DEFAULT_LIMIT);
    if limit == 0 || limit > filter::MAX_LIMIT {
        return Err(bad_request(format!(
            "limit must be between 1 and {}",
            filter::MAX_LIMIT
        )));
    }
    let rows = query(&api, move |s| s.audit_log(limit)).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}
