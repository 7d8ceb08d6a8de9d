//! `GET /api/events`: Server-Sent Events of the alerts stored and the triage changes. One task
//! polls the store for alerts of an id above the last it saw, and for triage changes (audit
//! entries) likewise, and hands them to every subscriber through a broadcast channel: what a
//! subscriber gets is what was stored, whichever `serve` process stored it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures_util::Stream;
use tokio::sync::{broadcast, Notify};

use super::auth::Caller;
use super::{bad_request, run_query, Api, ApiError};
use crate::store::{Store, StoredAlert, TriageChange};

/// How often the store is polled.
pub const POLL: Duration = Duration::from_millis(250);
/// Alerts read per query.
const PAGE: u64 = 500;
/// How often a comment line keeps an idle stream alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream checks that its session or token is still valid: an expired session, a
/// removed user or token ends it within this time, and no event is sent past it unchecked. A
/// logout through this process ends the session's streams at once ([`Hub::end_session`]).
pub const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) enum Change {
    Alert(Box<StoredAlert>),
    Triage(TriageChange),
    /// The session of this cookie hash was logged out: its streams end at once.
    Ended(String),
}

type Shared = Arc<Mutex<Box<dyn Store>>>;

/// The poller's channel, and a way to make it poll now (after a triage by this process).
#[derive(Clone)]
pub(crate) struct Hub {
    sender: broadcast::Sender<Change>,
    wake: Arc<Notify>,
    store: Shared,
}

impl Hub {
    /// Starts the poller from what is stored now.
    pub(crate) fn start(store: Shared) -> Hub {
        let (sender, _) = broadcast::channel(4096);
        let hub = Hub {
            sender,
            wake: Arc::new(Notify::new()),
            store,
        };
        let poller = hub.clone();
        tokio::spawn(async move { poller.poll().await });
        hub
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ends the streams of the session whose cookie hash is `hash` (at its logout), before
    /// anything stored after it is sent to them.
    pub(crate) fn end_session(&self, hash: &str) {
        let _ = self.sender.send(Change::Ended(hash.to_string()));
    }

    async fn poll(self) {
        let start = run_query(&self.store, |s| {
            Ok((s.last_alert_id()?, s.last_audit_id()?))
        })
        .await;
        let (mut alerts, mut audit) = match start {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("live events: {e:#}; none will be sent");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.notified() => {}
            }
            let (a, t) = (alerts, audit);
            let read = run_query(&self.store, move |s| {
                Ok((s.alerts_after(a, PAGE)?, s.triage_changes(t, PAGE)?))
            })
            .await;
            let (new, changes) = match read {
                Ok(v) => v,
                Err(e) => {
                    log::error!("live events: {e:#}");
                    continue;
                }
            };
            for row in new {
                alerts = alerts.max(row.id);
                let _ = self.sender.send(Change::Alert(Box::new(row)));
            }
            for change in changes {
                audit = audit.max(change.audit_id);
                let _ = self.sender.send(Change::Triage(change));
            }
        }
    }
}

fn alert_event(row: &StoredAlert) -> Event {
    Event::default()
        .event("alert")
        .id(row.id.to_string())
        .data(serde_json::to_string(row).unwrap_or_default())
}

fn triage_event(change: &TriageChange) -> Event {
    Event::default()
        .event("triage")
        .data(serde_json::json!({"id": change.alert_id, "triage": change.triage}).to_string())
}

/// A subscriber: the alerts of an id above `sent` not sent yet, then what the hub sends.
struct Subscriber {
    api: Api,
    hub: Hub,
    /// The caller's session or token, checked again every [`RECHECK`].
    caller: Arc<Caller>,
    checked: tokio::time::Instant,
    receiver: broadcast::Receiver<Change>,
    sent: u64,
    /// Read from the store, not sent yet.
    backlog: std::collections::VecDeque<StoredAlert>,
    /// The backlog is read up to what is stored.
    caught_up: bool,
}

impl Subscriber {
    /// Whether the caller's session (not expired) or token still exists.
    async fn still_allowed(&self) -> bool {
        let now = crate::ingest::now_ms();
        match (&self.caller.session, &self.caller.token) {
            (Some((_, hash)), _) => {
                let hash = hash.clone();
                match run_query(&self.hub.store, move |s| s.session(&hash)).await {
                    Ok(Some(session)) => {
                        !self
                            .api
                            .auth
                            .expired(session.created_ms, session.last_ms, now)
                    }
                    _ => false,
                }
            }
            (None, Some(hash)) => {
                let hash = hash.clone();
                matches!(
                    run_query(&self.hub.store, move |s| s.token_user(&hash)).await,
                    Ok(Some(_))
                )
            }
            (None, None) => false,
        }
    }

    /// The next event, or `None` to end the stream: the caller is no longer allowed, or the
    /// hub stopped.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.checked.elapsed() >= RECHECK {
                if !self.still_allowed().await {
                    return None;
                }
                self.checked = tokio::time::Instant::now();
            }
            // Idle: check again when due, and end the stream if the caller is gone. (Both
            // halves may be dropped midway: the broadcast's `recv` is cancel-safe, and a
            // backlog read not finished is made again.)
            let due = self.checked + RECHECK;
            let event = tokio::select! {
                event = self.produce() => event?,
                _ = tokio::time::sleep_until(due) => continue,
            };
            if self.checked.elapsed() >= RECHECK && !self.still_allowed().await {
                return None;
            }
            return Some(event);
        }
    }

    async fn produce(&mut self) -> Option<Event> {
        loop {
            if let Some(row) = self.backlog.pop_front() {
                self.sent = self.sent.max(row.id);
                return Some(alert_event(&row));
            }
            if !self.caught_up {
                let after = self.sent;
                let page = run_query(&self.hub.store, move |s| s.alerts_after(after, PAGE))
                    .await
                    .ok()?;
                self.caught_up = (page.len() as u64) < PAGE;
                self.backlog.extend(page);
                continue;
            }
            match self.receiver.recv().await {
                Ok(Change::Alert(row)) if row.id > self.sent => {
                    self.sent = row.id;
                    return Some(alert_event(&row));
                }
                Ok(Change::Alert(_)) => {}
                Ok(Change::Triage(change)) => return Some(triage_event(&change)),
                Ok(Change::Ended(hash)) => {
                    if self
                        .caller
                        .session
                        .as_ref()
                        .is_some_and(|(_, own)| *own == hash)
                    {
                        return None;
                    }
                }
                // Too slow for the channel: read again from the store what it missed.
                Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /api/events`, resuming after `Last-Event-ID` when given.
pub(crate) async fn events(
    State(api): State<Api>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribed before the store is read: nothing stored in between is missed.
    let receiver = api.events.sender.subscribe();
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_request("Last-Event-ID is not an alert id".into()))?,
        ),
        None => None,
    };
    let sent = match resume {
        Some(id) => id,
        None => super::query(&api, |s| s.last_alert_id()).await?,
    };
    let subscriber = Subscriber {
        hub: api.events.clone(),
        api: api.clone(),
        caller,
        checked: tokio::time::Instant::now(),
        receiver,
        sent,
        backlog: Default::default(),
        caught_up: false,
    };
    let stream = futures_util::stream::unfold(subscriber, |mut s| async move {
        s.next().await.map(|e| (Ok(e), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
