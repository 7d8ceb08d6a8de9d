//! The HTTP JSON API of `serve` (read-only), documented in `docs/BACKEND.md`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ingest::now_ms;
use crate::store::Store;

#[derive(Clone)]
struct Api {
    store: Arc<Mutex<Box<dyn Store>>>,
    heartbeat_timeout: Duration,
}

/// An error answered as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(e: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e)
}

/// Runs a query on a blocking thread (SQLite is synchronous).
async fn query<T, F>(api: &Api, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Store) -> anyhow::Result<T> + Send + 'static,
{
    let store = api.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .map_err(|_| anyhow::anyhow!("the store lock is poisoned"))?;
        f(store.as_mut())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        log::error!("API query failed: {e:#}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    })
}

pub fn router(store: Box<dyn Store>, heartbeat_timeout: Duration) -> Router {
    let api = Api {
        store: Arc::new(Mutex::new(store)),
        heartbeat_timeout,
    };
    Router::new()
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}/gaps", get(device_gaps))
        .route("/api/gaps", get(gaps))
        .route("/api/alerts", get(alerts))
        .route("/api/refused", get(refused))
        .route("/api/policy-results", get(policy_results))
        .fallback(|| async { bad_path() })
        .with_state(api)
}

fn bad_path() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/BACKEND.md)".into(),
    )
}

async fn devices(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let timeout = api.heartbeat_timeout;
    let rows = query(&api, move |s| s.devices(now_ms(), timeout)).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}

fn check_device(id: &str) -> Result<(), ApiError> {
    picket_proto::topic::check_device_id(id).map_err(|e| bad_request(e.to_string()))
}

async fn device_gaps(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_device(&id)?;
    let rows = query(&api, move |s| s.gaps(Some(&id))).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}

async fn gaps(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let rows = query(&api, |s| s.gaps(None)).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertParams {
    device: Option<String>,
    since: Option<String>,
    kind: Option<String>,
    severity: Option<String>,
    limit: Option<u64>,
    format: Option<String>,
}

async fn alerts(
    State(api): State<Api>,
    params: Result<Query<AlertParams>, axum::extract::rejection::QueryRejection>,
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
    let filter = crate::store::filter::alert_filter(
        empty(p.device),
        empty(p.since).as_deref(),
        empty(p.kind),
        empty(p.severity),
        p.limit,
        now_ms(),
    )
    .map_err(bad_request)?;
    let rows = query(&api, move |s| s.alerts(&filter)).await?;
    Ok(Json(if ocsf {
        Value::Array(rows.iter().map(crate::export::ocsf::finding).collect())
    } else {
        serde_json::to_value(rows).unwrap_or_default()
    }))
}

async fn refused(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let rows = query(&api, |s| s.refused()).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceParam {
    device: Option<String>,
}

async fn policy_results(
    State(api): State<Api>,
    params: Result<Query<DeviceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    if let Some(d) = &p.device {
        check_device(d)?;
    }
    let rows = query(&api, move |s| s.policy_results(p.device.as_deref())).await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}
