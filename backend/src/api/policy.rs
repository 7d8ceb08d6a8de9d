//! `POST /api/policy/push` (admins): publishes a signed bundle to devices as `policy push` does,
//! with `serve`'s MQTT settings, and answers once the broker took it; what each device did with
//! it reaches `/api/policy-results` through the ingest.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{audit, Caller};
use super::{bad_request, Api, ApiError};

/// How long the broker has to acknowledge the bundles.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The most devices of one push.
pub const MAX_DEVICES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushBody {
    /// The signed bundle file, base64.
    bundle: String,
    devices: Vec<String>,
}

pub(crate) async fn push(
    State(api): State<Api>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Result<Json<PushBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(body.bundle.trim())
        .map_err(|e| bad_request(format!("bundle: not base64: {e}")))?;
    // Not verified here (the backend holds no trust store): the devices verify it. Read for its
    // serial, and so that what is not a bundle at all is refused.
    let (policy, _) =
        picket_policy::bundle::inspect(&bundle).map_err(|e| bad_request(format!("bundle: {e}")))?;
    if body.devices.is_empty() || body.devices.len() > MAX_DEVICES {
        return Err(bad_request(format!(
            "devices: name 1 to {MAX_DEVICES} devices"
        )));
    }
    let mut devices = body.devices;
    devices.sort();
    devices.dedup();
    for d in &devices {
        picket_proto::topic::check_device_id(d).map_err(|e| bad_request(e.to_string()))?;
    }
    if api.config.mqtt.is_none() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy push needs the configuration's [mqtt] section".into(),
        ));
    }
    let serial = policy.metadata.serial;
    let sha256 = crate::cmd::push::sha256_hex(&bundle);
    // Before it is published: the devices' results for it are stored only then.
    {
        let (devices, bundle) = (devices.clone(), bundle.clone());
        super::query(&api, move |s| {
            crate::cmd::push::record(s, &devices, &bundle, crate::ingest::now_ms())
        })
        .await?;
    }
    // The audit's target: the devices, or how many when they would not fit.
    let target = if devices.len() <= 10 {
        devices.join(",")
    } else {
        format!("{} devices", devices.len())
    };
    let published =
        match crate::cmd::push::publish(&api.config, &devices, &bundle, PUBLISH_TIMEOUT).await {
            Ok(p) => p,
            Err(e) => {
                // Some devices may have the bundle already (published, not all acknowledged):
                // the push is audited all the same.
                let detail = format!("serial {serial}, sha256 {sha256}, failed: {e:#}");
                audit(&api, &caller.user, "policy_push", &target, &detail).await?;
                return Err(ApiError(StatusCode::BAD_GATEWAY, format!("{e:#}")));
            }
        };
    let refused: serde_json::Map<String, Value> = published
        .iter()
        .filter_map(|(d, r)| r.as_ref().map(|r| (d.clone(), Value::String(r.clone()))))
        .collect();
    let detail = format!(
        "serial {serial}, sha256 {sha256}{}",
        if refused.is_empty() {
            String::new()
        } else {
            format!(", refused by the broker for {}", refused.len())
        }
    );
    audit(&api, &caller.user, "policy_push", &target, &detail).await?;
    let mut answer = json!({"serial": serial, "devices": devices});
    if !refused.is_empty() {
        answer["refused"] = Value::Object(refused);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
