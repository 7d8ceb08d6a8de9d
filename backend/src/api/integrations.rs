//! `GET /api/integrations`: each configured receiver of the integrations
//! (`docs/INTEGRATIONS.md`) with its delivery state, as the store keeps it.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{query, Api, ApiError};

/// `GET /api/integrations` (admin): name, kind, cursor, alerts behind, last success, last
/// error, in the configuration's order. A receiver that has not started yet has no cursor.
pub(crate) async fn list(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let configured = crate::forward::configured(&api.config);
    let out = query(&api, move |s| {
        let rows = s.forward_rows()?;
        let mut out = Vec::new();
        for (name, kind) in configured {
            let row = rows.iter().find(|r| r.name == name);
            let behind = match row {
                Some(r) => Some(s.alerts_behind(r.last_id)?),
                None => None,
            };
            out.push(json!({
                "name": name,
                "kind": kind,
                "cursor": row.map(|r| r.last_id),
                "behind": behind,
                "last_success_ms": row.and_then(|r| r.success_ms),
                "last_error": row.and_then(|r| r.error.clone()),
                "last_error_ms": row.and_then(|r| r.error_ms),
            }));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(Value::Array(out)))
}
