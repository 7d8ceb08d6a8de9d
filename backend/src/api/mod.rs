//! The HTTP JSON API of `serve`, documented in `docs/BACKEND.md`: the endpoints ([`ENDPOINTS`],
//! each with the role it needs), the router, and the shared state and errors. By folder:
//! [`auth`] (login, sessions, API tokens, CSRF, the authorization layer), [`alerts`] (the
//! reads), [`triage`] (triage and the audit log), [`events`] (live events), [`policy`] (policy
//! push), [`integrations`] (the state of the webhooks and syslog receivers).

mod alerts;
pub mod auth;
mod events;
mod integrations;
mod policy;
#[cfg(test)]
mod tests;
mod triage;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::newest::Newest;
use crate::store::Store;

pub use auth::Role;

/// An endpoint of the API and the role it needs (`None`: open to anyone, only the login).
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub role: Option<Role>,
}

const fn endpoint(method: Method, path: &'static str, role: Option<Role>) -> Endpoint {
    Endpoint { method, path, role }
}

/// Every endpoint of the API, in one place: the router is built from it, and the tests walk it.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint(Method::POST, "/api/login", None),
    endpoint(Method::POST, "/api/logout", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/me", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/overview", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/devices", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/devices/{id}/gaps", Some(Role::Viewer)),
    endpoint(
        Method::GET,
        "/api/devices/{id}/presence",
        Some(Role::Viewer),
    ),
    endpoint(Method::GET, "/api/gaps", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/alerts", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/alerts/{id}", Some(Role::Viewer)),
    endpoint(
        Method::POST,
        "/api/alerts/{id}/triage",
        Some(Role::Operator),
    ),
    endpoint(Method::GET, "/api/events", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/refused", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/policy-results", Some(Role::Viewer)),
    endpoint(Method::GET, "/api/audit", Some(Role::Admin)),
    endpoint(Method::POST, "/api/policy/push", Some(Role::Admin)),
    endpoint(Method::GET, "/api/integrations", Some(Role::Admin)),
];

/// The handler of an endpoint of [`ENDPOINTS`].
fn handler(e: &Endpoint) -> MethodRouter<Api> {
    match e.path {
        "/api/login" => post(auth::login),
        "/api/logout" => post(auth::logout),
        "/api/me" => get(auth::me),
        "/api/overview" => get(alerts::overview),
        "/api/devices" => get(alerts::devices),
        "/api/devices/{id}/gaps" => get(alerts::device_gaps),
        "/api/devices/{id}/presence" => get(alerts::device_presence),
        "/api/gaps" => get(alerts::gaps),
        "/api/alerts" => get(alerts::alerts),
        "/api/alerts/{id}" => get(alerts::alert),
        "/api/alerts/{id}/triage" => post(triage::set),
        "/api/events" => get(events::events),
        "/api/refused" => get(alerts::refused),
        "/api/policy-results" => get(alerts::policy_results),
        "/api/audit" => get(triage::audit),
        "/api/policy/push" => post(policy::push),
        "/api/integrations" => get(integrations::list),
        other => unreachable!("no handler for {other}"),
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    store: Arc<Mutex<Box<dyn Store>>>,
    heartbeat_timeout: Duration,
    auth: Arc<auth::Auth>,
    events: events::Hub,
    /// The configuration, for policy push (its `[mqtt]`) and the integrations.
    config: Arc<Config>,
}

/// An error answered as `{"error": "..."}`.
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(e: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    log::error!("API: {e:#}");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// Runs a query on a blocking thread (SQLite is synchronous).
async fn query<T, F>(api: &Api, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Store) -> anyhow::Result<T> + Send + 'static,
{
    run_query(&api.store, f).await.map_err(internal)
}

/// [`query`] on a store (also the integrations' way to it: `crate::forward`).
pub(crate) async fn run_query<T, F>(store: &Arc<Mutex<Box<dyn Store>>>, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Store) -> anyhow::Result<T> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(crate::store::lock(&store).as_mut())).await?
}

/// The API over `store` (the reader connection of `serve`), with the sessions and login
/// limits of the configuration's `[http]` (session cookies are `Secure` when it has TLS) and
/// its `[mqtt]` for policy push, and the console's pages; every response has the console's
/// security headers. Starts the task that feeds the live events, woken by `newest` for the
/// alerts, so it is called in a tokio runtime.
pub fn router(
    store: Arc<Mutex<Box<dyn Store>>>,
    config: &Config,
    newest: Newest,
) -> anyhow::Result<Router> {
    let http = config
        .http
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the configuration has no [http] section"))?;
    let api = Api {
        events: events::Hub::start(store.clone(), newest),
        store,
        heartbeat_timeout: config.devices.heartbeat_timeout,
        auth: Arc::new(auth::Auth::new(http)),
        config: Arc::new(config.clone()),
    };
    let mut router = Router::new();
    for e in ENDPOINTS {
        let mut route = handler(e);
        if let Some(role) = e.role {
            route = route.route_layer(axum::middleware::from_fn_with_state(
                (api.clone(), role),
                auth::authorize,
            ));
        }
        router = router.route(e.path, route);
    }
    Ok(router
        .fallback(|| async { bad_path() })
        .with_state(api)
        // The console's page and assets need no authentication: all its data comes from here.
        .merge(crate::console::router())
        .layer(axum::middleware::map_response(|r: Response| async move {
            crate::console::add_security_headers(r)
        })))
}

fn bad_path() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/BACKEND.md)".into(),
    )
}
