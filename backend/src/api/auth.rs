//! Who may use the API: users (passwords hashed with Argon2id), sessions (a random cookie and
//! CSRF token, kept in the store as the SHA-256 of the cookie), API tokens (random, kept as
//! their SHA-256), roles, the login rate limits, and the layer that checks all of it on every
//! endpoint but the login.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;

use super::{query, Api, ApiError};
use crate::config::HttpConfig;
use crate::ingest::now_ms;
use crate::store::AuditRow;

/// The session cookie's name.
pub const COOKIE: &str = "picket_session";
/// The header that carries the session's CSRF token on unsafe methods.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a user may do; each role may do what the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything.
    Viewer,
    /// And triage alerts.
    Operator,
    /// And push policies, manage users, read the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// 32 random bytes, URL-safe base64 (no padding): session cookies, CSRF and API tokens,
/// generated passwords.
pub fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a secret (hex): what the store keeps of session cookies and API tokens.
pub fn sha256_hex(secret: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An Argon2id hash (default parameters) of a password, as a PHC string.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

/// Whether `password` is the one `hash` (a PHC string) was made of. Slow by design: call it
/// on a blocking thread.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, verified for unknown users so that they take as long as
/// known ones.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| secret().and_then(|s| hash_password(&s)).unwrap_or_default())
}

/// Sessions' lifetimes and the login limits.
pub(crate) struct Auth {
    idle: Duration,
    lifetime: Duration,
    secure: bool,
    per_user: u32,
    per_address: u32,
    window: Duration,
    /// Failed logins within the window, by `user:NAME` and `addr:IP`. In memory: a restart
    /// forgets them, and each `serve` process sharing a store counts its own.
    failures: Mutex<HashMap<String, VecDeque<u64>>>,
    /// Password verifications running at once: each holds Argon2's memory (19 MiB) and a
    /// blocking thread, which the store's queries need too.
    verifying: tokio::sync::Semaphore,
}

/// How many passwords are verified at once; further logins wait their turn.
const VERIFYING_AT_ONCE: usize = 2;

impl Auth {
    pub(crate) fn new(http: &HttpConfig) -> Auth {
        // Computed now rather than by the first login of an unknown user, which would take
        // twice as long as others.
        dummy_hash();
        Auth {
            idle: http.session_idle,
            lifetime: http.session_lifetime,
            secure: http.tls().is_some(),
            per_user: http.login_failures_per_user,
            per_address: http.login_failures_per_address,
            window: http.login_window,
            failures: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(VERIFYING_AT_ONCE),
        }
    }

    /// An attempt to log in as `user_key` from `address_key`: refused when either is at its
    /// limit, else counted as a failure at once, under the same lock, so that attempts sent
    /// together cannot all pass the check before the first one fails; [`Auth::succeeded`]
    /// takes it back.
    fn attempt(&self, user_key: &str, address_key: &str, now: u64) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window.as_millis() as u64;
        failures.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= window)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let at =
            |key: &str, limit: u32| failures.get(key).is_some_and(|t| t.len() >= limit as usize);
        if at(user_key, self.per_user) || at(address_key, self.per_address) {
            return false;
        }
        for key in [user_key, address_key] {
            failures.entry(key.to_string()).or_default().push_back(now);
        }
        true
    }

    /// The attempt of [`Auth::attempt`] at `now` succeeded: the user's failures are forgotten,
    /// and the address's count loses this attempt.
    fn succeeded(&self, user_key: &str, address_key: &str, now: u64) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(user_key);
        if let Some(times) = failures.get_mut(address_key) {
            if let Some(i) = times.iter().rposition(|t| *t == now) {
                times.remove(i);
            }
        }
    }

    pub(crate) fn expired(&self, created_ms: u64, last_ms: u64, now: u64) -> bool {
        now.saturating_sub(last_ms) >= self.idle.as_millis() as u64
            || now.saturating_sub(created_ms) >= self.lifetime.as_millis() as u64
    }
}

/// Who is calling, set by [`authorize`] for the handlers.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub user: String,
    pub role: Role,
    /// The session's CSRF token and cookie hash; `None` for an API token.
    pub session: Option<(String, String)>,
    /// The API token's hash; `None` for a session.
    pub token: Option<String>,
}

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "authentication required".into())
}

fn forbidden(e: &str) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, e.into())
}

/// The session cookie of a request.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The layer over every endpoint but the login: an API token (`Authorization: Bearer`) or a
/// live session cookie, the session's CSRF token on unsafe methods, and at least `role`.
pub(crate) async fn authorize(
    State((api, role)): State<(Api, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let caller = if let Some(token) = bearer(request.headers()) {
        let hash = sha256_hex(&token);
        let h = hash.clone();
        let (user, role) = query(&api, move |s| s.token_user(&h))
            .await?
            .ok_or_else(unauthorized)?;
        Caller {
            user,
            role: Role::parse(&role).ok_or_else(unauthorized)?,
            session: None,
            token: Some(hash),
        }
    } else if let Some(cookie) = session_cookie(request.headers()) {
        let hash = sha256_hex(&cookie);
        let h = hash.clone();
        let session = query(&api, move |s| s.session(&h))
            .await?
            .ok_or_else(unauthorized)?;
        if api.auth.expired(session.created_ms, session.last_ms, now) {
            let h = hash.clone();
            query(&api, move |s| s.delete_session(&h)).await?;
            return Err(unauthorized());
        }
        if unsafe_method(request.method()) {
            let given = request
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            let same: bool = subtle::ConstantTimeEq::ct_eq(given, session.csrf.as_bytes()).into();
            if !same {
                return Err(forbidden("missing or wrong CSRF token"));
            }
        }
        // The idle time counts from the last request, written at most once a minute.
        if now.saturating_sub(session.last_ms) >= 60_000 {
            let h = hash.clone();
            query(&api, move |s| s.touch_session(&h, now)).await?;
        }
        Caller {
            user: session.user,
            role: Role::parse(&session.role).ok_or_else(unauthorized)?,
            session: Some((session.csrf, hash)),
            token: None,
        }
    } else {
        return Err(unauthorized());
    };
    if caller.role < role {
        return Err(forbidden(&format!("this needs the role {}", role.name())));
    }
    request.extensions_mut().insert(Arc::new(caller));
    Ok(next.run(request).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    user: String,
    password: String,
}

/// Writes an entry of the audit log.
pub(crate) async fn audit(
    api: &Api,
    user: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), ApiError> {
    let entry = AuditRow {
        time_ms: now_ms(),
        user: user.chars().take(100).collect(),
        action: action.into(),
        target: target.chars().take(200).collect(),
        detail: detail.chars().take(2000).collect(),
    };
    query(api, move |s| s.audit(&entry)).await
}

/// `POST /api/login`.
pub(crate) async fn login(
    State(api): State<Api>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(login) = body.map_err(|e| super::bad_request(e.body_text()))?;
    let address: Option<IpAddr> = connect.map(|Extension(ConnectInfo(a))| a.ip());
    let address_text = address.map(|a| a.to_string()).unwrap_or_default();
    // Bounded: the memory of the limits does not grow with what a client sends.
    let user_key = format!("user:{}", login.user.chars().take(100).collect::<String>());
    let address_key = format!("addr:{address_text}");
    let now = now_ms();
    let auth = &api.auth;
    if !auth.attempt(&user_key, &address_key, now) {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins: try again later".into(),
        ));
    }
    let name = login.user.clone();
    let user = query(&api, move |s| s.user(&name)).await?;
    let known = user.is_some();
    let hash = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let password = login.password;
    let good = {
        let _turn = auth.verifying.acquire().await.map_err(super::internal)?;
        tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(super::internal)?
    };
    let user = match user.filter(|_| good) {
        Some(u) => u,
        None => {
            // What was typed as the name of an unknown user may be a password typed in the
            // wrong field: it is not kept.
            let name = if known {
                login.user.as_str()
            } else {
                "(unknown user)"
            };
            audit(&api, name, "login_failed", name, &address_text).await?;
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong user name or password".into(),
            ));
        }
    };
    auth.succeeded(&user_key, &address_key, now);
    let role = Role::parse(&user.role).ok_or_else(|| {
        super::internal(format!(
            "user {} has an unknown role {}",
            user.name, user.role
        ))
    })?;
    let cookie = secret().map_err(super::internal)?;
    let csrf = secret().map_err(super::internal)?;
    let (hash, name, token) = (sha256_hex(&cookie), user.name.clone(), csrf.clone());
    let (idle, lifetime) = (
        auth.idle.as_millis() as u64,
        auth.lifetime.as_millis() as u64,
    );
    query(&api, move |s| {
        s.expire_sessions(now.saturating_sub(idle), now.saturating_sub(lifetime))?;
        s.add_session(&hash, &name, &token, now)
    })
    .await?;
    audit(&api, &user.name, "login", &user.name, &address_text).await?;
    let mut set_cookie = format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/");
    if auth.secure {
        set_cookie.push_str("; Secure");
    }
    let mut response =
        Json(json!({"user": user.name, "role": role.name(), "csrf": csrf})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&set_cookie).map_err(super::internal)?,
    );
    Ok(response)
}

/// `POST /api/logout`: the session is deleted from the store.
pub(crate) async fn logout(
    State(api): State<Api>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<Response, ApiError> {
    if let Some((_, hash)) = caller.session.clone() {
        api.events.end_session(&hash);
        query(&api, move |s| s.delete_session(&hash)).await?;
        audit(&api, &caller.user, "logout", &caller.user, "").await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("picket_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

/// `GET /api/me`.
pub(crate) async fn me(Extension(caller): Extension<Arc<Caller>>) -> Json<serde_json::Value> {
    Json(json!({
        "user": caller.user,
        "role": caller.role.name(),
        "csrf": caller.session.as_ref().map(|(csrf, _)| csrf.as_str()),
    }))
}
