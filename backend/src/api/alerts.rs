//! The reads: devices, alerts (filtered, paged, one by id), the overview, gaps, refusals and
//! policy results.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bad_request, query, Api, ApiError};
use crate::ingest::now_ms;
use crate::store::filter;

/// The longest text filter (`q`) accepted, in characters.
pub const MAX_TEXT: usize = 200;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn to_json<T: serde::Serialize>(v: T) -> Json<Value> {
    Json(serde_json::to_value(v).unwrap_or_default())
}

/// `GET /api/devices`.
pub(crate) async fn devices(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let timeout = api.heartbeat_timeout;
    let rows = query(&api, move |s| s.devices(now_ms(), timeout)).await?;
    Ok(to_json(rows))
}

fn check_device(id: &str) -> Result<(), ApiError> {
    picket_proto::topic::check_device_id(id).map_err(|e| bad_request(e.to_string()))
}

/// `GET /api/devices/{id}/gaps`.
pub(crate) async fn device_gaps(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_device(&id)?;
    let rows = query(&api, move |s| s.gaps(Some(&id))).await?;
    Ok(to_json(rows))
}

/// `GET /api/devices/{id}/presence`: the device's presence changes, newest first (at most
/// 1000, what the store keeps).
pub(crate) async fn device_presence(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_device(&id)?;
    let limit = crate::store::presence::MAX_CHANGES_PER_DEVICE;
    let rows = query(&api, move |s| s.presence_changes(Some(&id), limit)).await?;
    Ok(to_json(rows))
}

/// `GET /api/gaps`.
pub(crate) async fn gaps(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let rows = query(&api, |s| s.gaps(None)).await?;
    Ok(to_json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertParams {
    device: Option<String>,
    since: Option<String>,
    until: Option<String>,
    kind: Option<String>,
    severity: Option<String>,
    q: Option<String>,
    triage: Option<String>,
    before: Option<u64>,
    limit: Option<u64>,
    format: Option<String>,
}

/// `GET /api/alerts`: newest first, filtered; `before` pages on.
pub(crate) async fn alerts(
    State(api): State<Api>,
    params: QueryResult<AlertParams>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let ocsf = match p.format.as_deref() {
        None | Some("picket") => false,
        Some("ocsf") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "unknown format `{other}` (picket or ocsf)"
            )))
        }
    };
    let empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let now = now_ms();
    let mut filter = filter::alert_filter(
        empty(p.device),
        empty(p.since).as_deref(),
        empty(p.kind),
        empty(p.severity),
        p.limit,
        now,
    )
    .map_err(bad_request)?;
    filter.until_ms = empty(p.until)
        .map(|u| filter::parse_since(&u, now).map_err(|e| e.replace("since", "until")))
        .transpose()
        .map_err(bad_request)?;
    // Bounded: a text filter is a scan of four columns of every alert the other filters let
    // through, under the store's lock.
    if p.q.as_ref().is_some_and(|q| q.chars().count() > MAX_TEXT) {
        return Err(bad_request(format!(
            "the text filter `q` is longer than {MAX_TEXT} characters"
        )));
    }
    filter.text = empty(p.q);
    if let Some(t) = empty(p.triage) {
        filter::check_triage(&t).map_err(bad_request)?;
        filter.triage = Some(t);
    }
    filter.before = p.before;
    let rows = query(&api, move |s| s.stored_alerts(&filter)).await?;
    Ok(if ocsf {
        Json(Value::Array(
            rows.iter()
                .map(|a| crate::export::ocsf::finding(&a.alert))
                .collect(),
        ))
    } else {
        to_json(rows)
    })
}

/// An alert id of a path.
pub(crate) fn alert_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| bad_request(format!("`{id}` is not an alert id")))
}

/// `GET /api/alerts/{id}`: the row, with its OCSF finding.
pub(crate) async fn alert(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let row = query(&api, move |s| s.alert(id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no alert {id}")))?;
    let mut value = serde_json::to_value(&row).unwrap_or_default();
    value["ocsf"] = crate::export::ocsf::finding(&row.alert);
    Ok(Json(value))
}

/// `GET /api/overview`: devices by state, alerts by severity, and the last 24 hours by hour.
pub(crate) async fn overview(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let timeout = api.heartbeat_timeout;
    let now = now_ms();
    const HOUR: u64 = 3_600_000;
    let since = (now - now % HOUR).saturating_sub(23 * HOUR);
    let (devices, severities, counts) = query(&api, move |s| {
        Ok((
            s.devices(now, timeout)?,
            s.severity_counts()?,
            s.alert_counts(since)?,
        ))
    })
    .await?;
    let mut states: BTreeMap<&str, u64> = ["online", "offline", "lost", "timed_out", "unknown"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for d in &devices {
        *states.entry(d.state).or_default() += 1;
    }
    let total: u64 = severities.iter().map(|(_, n)| n).sum();
    let by_severity: BTreeMap<String, u64> = severities.into_iter().collect();
    Ok(Json(json!({
        "devices": states,
        "alerts_by_severity": by_severity,
        "alerts_total": total,
        "alerts_over_time": counts,
    })))
}

/// `GET /api/refused`.
pub(crate) async fn refused(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let rows = query(&api, |s| s.refused()).await?;
    Ok(to_json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceParam {
    device: Option<String>,
}

/// `GET /api/policy-results`.
pub(crate) async fn policy_results(
    State(api): State<Api>,
    params: QueryResult<DeviceParam>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    if let Some(d) = &p.device {
        check_device(d)?;
    }
    let rows = query(&api, move |s| s.policy_results(p.device.as_deref())).await?;
    Ok(to_json(rows))
}
