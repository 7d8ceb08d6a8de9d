//! `GET /api/events`: Server-Sent Events of the alerts stored, the triage changes and the policy
//! results. One task reads the store for alerts of an id above the last it saw when the newest
//! alert id stored moves ([`crate::newest`]), and polls it for triage changes (audit entries)
//! likewise, and for policy results received since a little before the newest it saw (they have
//! no id: they are told apart by their key), and hands them to every subscriber through a
//! broadcast channel: what a subscriber gets is what was stored, whichever `serve` process
//! stored it.
//!
//! An event's id is the stream's position, `<alert id>.<ms>`: the last alert sent and the time
//! received of the last policy result sent (or of the stream's start). A stream resumed from it
//! (`Last-Event-ID`) sends the alerts after that id and the policy results received at or after
//! that time first.

use std::collections::{BTreeMap, HashSet, VecDeque};
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
use crate::ingest::now_ms;
use crate::newest::{Newest, POLL};
use crate::store::{PolicyResultRow, Store, StoredAlert, TriageChange};

/// Alerts read per query.
const PAGE: u64 = 500;
/// Policy results read per query (a push to many devices brings many at once).
const POLICY_PAGE: u64 = 2000;
/// How far before the newest policy result seen the poller reads again: a result stored late
/// (by another `serve` on the same store, whose clock may be a little behind) is still found.
pub const POLICY_LOOKBACK_MS: u64 = 10_000;
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
    Policy(Box<PolicyResultRow>),
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
    /// Starts the poller from what is stored now, woken by `newest` for the alerts.
    pub(crate) fn start(store: Shared, newest: Newest) -> Hub {
        let (sender, _) = broadcast::channel(4096);
        let hub = Hub {
            sender,
            wake: Arc::new(Notify::new()),
            store,
        };
        let poller = hub.clone();
        tokio::spawn(async move { poller.poll(newest).await });
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

    async fn poll(self, mut newest: Newest) {
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
        // The results stored before the start are not sent: read once, as seen.
        let mut policy = PolicyWatch::new(now_ms());
        if let Err(e) = policy.read(&self.store).await {
            log::error!("live events: {e:#}; none will be sent");
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.notified() => {}
                changed = newest.changed() => {
                    if changed.is_err() {
                        log::error!("live events: the newest alert id is not read; none sent");
                        return;
                    }
                }
            }
            // The alerts only when there are new ones (a page at a time: the rest at the next
            // turn).
            let (a, t) = (alerts, audit);
            let stored = *newest.borrow_and_update();
            let read = run_query(&self.store, move |s| {
                let new = match stored > a {
                    true => s.alerts_after(a, PAGE)?,
                    false => Vec::new(),
                };
                Ok((new, s.triage_changes(t, PAGE)?))
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
            match policy.read(&self.store).await {
                Ok(rows) => {
                    for row in rows {
                        let _ = self.sender.send(Change::Policy(Box::new(row)));
                    }
                }
                Err(e) => log::error!("live events: {e:#}"),
            }
        }
    }
}

/// What identifies a policy result (the table's key).
type PolicyKey = (String, String, u64);

fn policy_key(row: &PolicyResultRow) -> PolicyKey {
    (
        row.device_id.clone(),
        row.bundle_sha256.clone(),
        row.time_ms,
    )
}

/// The policy results received from a time on, each given once: the keys of those given lately
/// are kept for [`POLICY_LOOKBACK_MS`] after the newest, and each read starts that long before it.
struct PolicyWatch {
    /// The newest time received seen (or the start).
    newest_ms: u64,
    /// Nothing received before this time is read.
    floor_ms: u64,
    /// The keys given, by time received.
    given: BTreeMap<u64, HashSet<PolicyKey>>,
}

impl PolicyWatch {
    /// The hub's: from [`POLICY_LOOKBACK_MS`] before `now_ms` on.
    fn new(now_ms: u64) -> PolicyWatch {
        PolicyWatch {
            newest_ms: now_ms,
            floor_ms: 0,
            given: BTreeMap::new(),
        }
    }

    /// Reading from `from_ms` on (not before it).
    fn resumed(from_ms: u64) -> PolicyWatch {
        PolicyWatch {
            newest_ms: from_ms,
            floor_ms: from_ms,
            given: BTreeMap::new(),
        }
    }

    /// Reads the store from [`POLICY_LOOKBACK_MS`] before the newest result seen; returns the
    /// results not given yet, oldest first.
    async fn read(&mut self, store: &Shared) -> anyhow::Result<Vec<PolicyResultRow>> {
        let mut from = self
            .newest_ms
            .saturating_sub(POLICY_LOOKBACK_MS)
            .max(self.floor_ms);
        let mut new = Vec::new();
        loop {
            let page = run_query(store, move |s| s.policy_results_since(from, POLICY_PAGE)).await?;
            let full = page.len() as u64 == POLICY_PAGE;
            let last = page.last().map(|r| r.received_ms);
            new.extend(page.into_iter().filter(|r| self.give(r)));
            match last {
                // The next page from the last time read (its results again, already given).
                Some(ms) if full && ms > from => from = ms,
                _ => break,
            }
        }
        self.forget_old();
        Ok(new)
    }

    /// Forgets the keys of results received more than [`POLICY_LOOKBACK_MS`] before the newest.
    fn forget_old(&mut self) {
        let horizon = self.newest_ms.saturating_sub(POLICY_LOOKBACK_MS);
        if self
            .given
            .first_key_value()
            .is_some_and(|(&ms, _)| ms < horizon)
        {
            self.given = self.given.split_off(&horizon);
        }
    }

    /// Whether `row` was not given yet; notes it given.
    fn give(&mut self, row: &PolicyResultRow) -> bool {
        self.newest_ms = self.newest_ms.max(row.received_ms);
        let new = self
            .given
            .entry(row.received_ms)
            .or_default()
            .insert(policy_key(row));
        self.forget_old();
        new
    }
}

/// How far back a resumed stream sends the policy results it missed.
const POLICY_RESUME_MS: u64 = 3_600_000;

/// The position of a stream: the last alert sent, the time received of the last policy result
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    alert: u64,
    policy_ms: u64,
}

impl Position {
    fn id(&self) -> String {
        format!("{}.{}", self.alert, self.policy_ms)
    }

    /// `ALERT.MS`, or an alert id alone (the policy results from now on).
    fn parse(id: &str, now_ms: u64) -> Option<Position> {
        let id = id.trim();
        let (alert, policy_ms) = match id.split_once('.') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse().ok()?)),
            None => (id.parse().ok()?, None),
        };
        Some(Position {
            alert,
            policy_ms: policy_ms.unwrap_or(now_ms),
        })
    }
}

fn alert_event(row: &StoredAlert, at: Position) -> Event {
    Event::default()
        .event("alert")
        .id(at.id())
        .data(serde_json::to_string(row).unwrap_or_default())
}

fn policy_event(row: &PolicyResultRow, at: Position) -> Event {
    Event::default()
        .event("policy_result")
        .id(at.id())
        .data(serde_json::to_string(row).unwrap_or_default())
}

fn triage_event(change: &TriageChange) -> Event {
    Event::default()
        .event("triage")
        .data(serde_json::json!({"id": change.alert_id, "triage": change.triage}).to_string())
}

impl PolicyBacklog {
    /// The results received at or after `from_ms`, to read.
    fn from(from_ms: u64) -> PolicyBacklog {
        PolicyBacklog {
            watch: PolicyWatch::resumed(from_ms),
            rows: VecDeque::new(),
            caught_up: false,
        }
    }
}

/// A subscriber: the alerts of an id above `sent` not sent yet, and when resumed the policy
/// results received since its position, then what the hub sends.
struct Subscriber {
    api: Api,
    hub: Hub,
    /// The caller's session or token, checked again every [`RECHECK`].
    caller: Arc<Caller>,
    checked: tokio::time::Instant,
    receiver: broadcast::Receiver<Change>,
    sent: Position,
    /// Read from the store, not sent yet.
    backlog: VecDeque<StoredAlert>,
    /// The backlog is read up to what is stored.
    caught_up: bool,
    /// The policy results read from the store and not sent yet, and those sent since the
    /// position the stream resumed from (the hub may send them again). `None`: none to read.
    policy_backlog: Option<PolicyBacklog>,
    /// The time of the position the stream began at: a result received before it is not sent
    /// (the hub may find one stored just before the stream opened after it opened).
    policy_floor_ms: u64,
}

struct PolicyBacklog {
    watch: PolicyWatch,
    rows: VecDeque<PolicyResultRow>,
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

    fn send_policy(&mut self, row: &PolicyResultRow) -> Event {
        self.sent.policy_ms = self.sent.policy_ms.max(row.received_ms);
        policy_event(row, self.sent)
    }

    async fn produce(&mut self) -> Option<Event> {
        loop {
            if let Some(row) = self.backlog.pop_front() {
                self.sent.alert = self.sent.alert.max(row.id);
                return Some(alert_event(&row, self.sent));
            }
            if !self.caught_up {
                let after = self.sent.alert;
                let page = run_query(&self.hub.store, move |s| s.alerts_after(after, PAGE))
                    .await
                    .ok()?;
                self.caught_up = (page.len() as u64) < PAGE;
                self.backlog.extend(page);
                continue;
            }
            if let Some(b) = self.policy_backlog.as_mut() {
                if let Some(row) = b.rows.pop_front() {
                    return Some(self.send_policy(&row));
                }
                if !b.caught_up {
                    let rows = b.watch.read(&self.hub.store).await.ok()?;
                    b.caught_up = true;
                    b.rows.extend(rows);
                    continue;
                }
            }
            match self.receiver.recv().await {
                Ok(Change::Alert(row)) if row.id > self.sent.alert => {
                    self.sent.alert = row.id;
                    return Some(alert_event(&row, self.sent));
                }
                Ok(Change::Alert(_)) => {}
                Ok(Change::Triage(change)) => return Some(triage_event(&change)),
                Ok(Change::Policy(row)) => {
                    if row.received_ms < self.policy_floor_ms {
                        continue;
                    }
                    // Sent from the store already when resumed from before it.
                    if let Some(b) = self.policy_backlog.as_mut() {
                        if !b.watch.give(&row) {
                            continue;
                        }
                    }
                    return Some(self.send_policy(&row));
                }
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
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.caught_up = false;
                    self.policy_backlog = Some(PolicyBacklog::from(self.sent.policy_ms));
                }
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
    let now = now_ms();
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| Position::parse(v, now))
                .ok_or_else(|| {
                    bad_request("Last-Event-ID is not an event id (ALERT.MS) or an alert id".into())
                })?,
        ),
        None => None,
    };
    let (sent, policy_backlog) = match resume {
        // The policy results received since the position, when it has one, over the last
        // [`POLICY_RESUME_MS`] at most: what a stream holds back is bounded, whatever id a
        // client sends (a page away for longer reads the list again).
        Some(at) => {
            let at = Position {
                policy_ms: at.policy_ms.max(now.saturating_sub(POLICY_RESUME_MS)),
                ..at
            };
            (
                at,
                (at.policy_ms < now).then(|| PolicyBacklog::from(at.policy_ms)),
            )
        }
        None => {
            let alert = super::query(&api, |s| s.last_alert_id()).await?;
            let at = Position {
                alert,
                policy_ms: now,
            };
            (at, None)
        }
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
        policy_backlog,
        policy_floor_ms: sent.policy_ms,
    };
    let stream = futures_util::stream::unfold(subscriber, |mut s| async move {
        s.next().await.map(|e| (Ok(e), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn a_position_is_an_alert_id_and_a_time_or_an_alert_id_alone() {
        let at = Position::parse("17.1700000000123", 5).unwrap();
        assert_eq!(
            at,
            Position {
                alert: 17,
                policy_ms: 1_700_000_000_123
            }
        );
        assert_eq!(Position::parse(&at.id(), 5), Some(at));
        assert_eq!(
            Position::parse(" 17 ", 5),
            Some(Position {
                alert: 17,
                policy_ms: 5
            })
        );
        for bad in ["", "x", "17.", ".5", "17.5.6", "-1", "17.x"] {
            assert_eq!(Position::parse(bad, 5), None, "{bad:?}");
        }
    }
}
