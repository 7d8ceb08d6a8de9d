//! The integrations of `serve` (`docs/INTEGRATIONS.md`): each configured receiver, a webhook
//! ([`webhook`]) or a syslog server ([`syslog`]), gets the stored alerts from a task of its own,
//! fed from the store. A receiver's cursor (the id of the last alert it acknowledged) is kept in
//! the store: the task delivers the alerts of a higher id, in id order (the order stored, so in
//! order per device), a batch at a time, and moves the cursor only once the receiver has
//! acknowledged the batch. A receiver that is down, or refuses, gets the same batch again, after
//! a backoff, until it takes it: nothing is lost, and a batch may be delivered twice (at least
//! once). The tasks wake when the newest alert id stored moves ([`crate::newest`]); one that
//! panics is logged and started again ([`supervise`]).

pub mod config;
mod syslog;
#[cfg(test)]
mod syslog_tests;
#[cfg(test)]
mod tests;
mod webhook;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::api::run_query;
use crate::config::Config;
use crate::ingest::now_ms;
use crate::newest::Newest;
use crate::store::{Store, StoredAlert};

/// The first wait after a failure; it doubles up to the receiver's `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

type Shared = Arc<Mutex<Box<dyn Store>>>;

/// Why a batch was not acknowledged.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Down, unreachable, overloaded: tried again after a backoff that grows.
    Retry(String),
    /// The receiver refused the request itself (an HTTP 4xx but 408 and 429, or a 3xx): a
    /// configuration problem on one side, tried again at the longest backoff.
    Refused(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Retry(m) | Failure::Refused(m) => m,
        }
    }
}

/// A configured receiver.
enum Receiver {
    Webhook(Box<webhook::Webhook>),
    Syslog(syslog::Syslog),
}

impl Receiver {
    async fn deliver(&self, alerts: &[StoredAlert]) -> Result<(), Failure> {
        match self {
            Receiver::Webhook(w) => w.deliver(alerts).await,
            Receiver::Syslog(s) => s.deliver(alerts).await,
        }
    }
}

/// What every receiver's task needs to know of it.
struct Settings {
    name: String,
    kind: &'static str,
    batch: u64,
    max_backoff: Duration,
    backfill: bool,
}

/// The running integrations; dropping it stops their tasks (a batch being delivered then is
/// delivered again by the next `serve`).
pub struct Integrations {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Integrations {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kind (`webhook` or `syslog`) of each configured integration, by name.
pub fn configured(config: &Config) -> Vec<(String, &'static str)> {
    let webhooks = config.webhook.iter().map(|w| (w.name.clone(), "webhook"));
    let syslogs = config.syslog.iter().map(|s| (s.name.clone(), "syslog"));
    webhooks.chain(syslogs).collect()
}

/// Checks every receiver of the configuration (their secrets, certificates and addresses):
/// an error names the entry. Nothing is started.
fn receivers(config: &Config) -> anyhow::Result<Vec<(Settings, Receiver)>> {
    let mut out = Vec::new();
    for w in &config.webhook {
        let receiver = webhook::Webhook::new(w)
            .map_err(|e| anyhow::anyhow!("[[webhook]] `{}`: {e:#}", w.name))?;
        let settings = Settings {
            name: w.name.clone(),
            kind: "webhook",
            batch: w.batch.into(),
            max_backoff: w.max_backoff,
            backfill: w.backfill,
        };
        out.push((settings, Receiver::Webhook(Box::new(receiver))));
    }
    for s in &config.syslog {
        let receiver = syslog::Syslog::new(s)
            .map_err(|e| anyhow::anyhow!("[[syslog]] `{}`: {e:#}", s.name))?;
        let settings = Settings {
            name: s.name.clone(),
            kind: "syslog",
            batch: s.batch.into(),
            max_backoff: s.max_backoff,
            backfill: s.backfill,
        };
        out.push((settings, Receiver::Syslog(receiver)));
    }
    Ok(out)
}

/// Checks the configured receivers, then starts a task for each on `store` (a connection of
/// their own), woken by `newest`. With none configured, nothing runs. In a tokio runtime.
pub fn start(
    config: &Config,
    store: Arc<Mutex<Box<dyn Store>>>,
    newest: Newest,
) -> anyhow::Result<Integrations> {
    let receivers = receivers(config)?;
    let mut tasks = Vec::new();
    for (settings, receiver) in receivers {
        log::info!(
            "integration `{}` ({}): delivering the stored alerts",
            settings.name,
            settings.kind
        );
        tasks.push(tokio::spawn(supervise(
            Arc::new(settings),
            Arc::new(receiver),
            store.clone(),
            newest.clone(),
        )));
    }
    Ok(Integrations { tasks })
}

/// Runs `f` on the store until it succeeds, waiting a little more after each failure: the
/// tasks never skip what they could not read or write.
async fn retry_store<T, F>(what: &str, store: &Shared, f: F) -> T
where
    T: Send + 'static,
    F: Fn(&mut dyn Store) -> anyhow::Result<T> + Clone + Send + 'static,
{
    let mut wait = FIRST_BACKOFF;
    loop {
        match run_query(store, f.clone()).await {
            Ok(v) => return v,
            Err(e) => {
                log::error!("{what}: {e:#}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The wait before attempt `attempt + 1` (from 0): doubling from [`FIRST_BACKOFF`] up to `max`,
/// then between half of it and all of it, at random (receivers coming back are not hit by
/// every `serve` at once).
fn backoff(attempt: u32, max: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(20))
        .min(max);
    let mut byte = [0u8];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    full / 2 + full / 2 * u32::from(byte[0]) / 255
}

/// How long a receiver's task must have run before a panic for its restart to wait the first
/// backoff again (rather than the next, longer one).
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs a receiver's task ([`run`]) and, when it panics, logs it, naming the receiver, and
/// starts it again after a backoff (as after a failed delivery): it resumes from its cursor in
/// the store, so nothing is skipped. Ends with the task (when `serve` stops).
async fn supervise(
    settings: Arc<Settings>,
    receiver: Arc<Receiver>,
    store: Shared,
    newest: Newest,
) {
    use futures_util::FutureExt;
    let mut panics = 0;
    loop {
        let started = tokio::time::Instant::now();
        let task = run(
            settings.clone(),
            receiver.clone(),
            store.clone(),
            newest.clone(),
        );
        let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await else {
            return;
        };
        if started.elapsed() >= HEALTHY_RUN {
            panics = 0;
        }
        let wait = backoff(panics, settings.max_backoff);
        panics += 1;
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        log::error!(
            "integration `{}` ({}): the delivery task panicked ({message}); restarting it in \
             {} from its cursor",
            settings.name,
            settings.kind,
            humantime::format_duration(wait)
        );
        tokio::time::sleep(wait).await;
    }
}

/// One receiver's task: from its cursor on, every alert, in batches, each until acknowledged.
/// Returns when the newest alert id is no longer published (`serve` stops).
async fn run(settings: Arc<Settings>, receiver: Arc<Receiver>, store: Shared, mut newest: Newest) {
    let name = settings.name.clone();
    let backfill = settings.backfill;
    let what = format!("integration `{name}`");
    let mut cursor = retry_store(&what, &store, move |s| {
        let from = if backfill { 0 } else { s.last_alert_id()? };
        s.forward_start(&name, from)
    })
    .await;
    // The error last noted: a failure is logged and stored when it differs from it.
    let mut failing: Option<String> = None;
    loop {
        let seen = *newest.borrow_and_update();
        if seen <= cursor {
            if newest.changed().await.is_err() {
                return;
            }
            continue;
        }
        let (after, limit) = (cursor, settings.batch);
        let batch = retry_store(&what, &store, move |s| s.alerts_after(after, limit)).await;
        let Some(last) = batch.last().map(|a| a.id) else {
            // Removed since (retention, quota): nothing to deliver up to what was seen.
            cursor = seen;
            continue;
        };
        #[cfg(test)]
        tests::panic_if_armed(&settings.name);
        let mut attempt = 0;
        while let Err(failure) = receiver.deliver(&batch).await {
            let message = failure.message().to_string();
            if failing.as_deref() != Some(message.as_str()) {
                match &failure {
                    Failure::Retry(m) => log::warn!(
                        "{what} ({}): {m}; retrying with backoff, nothing is skipped",
                        settings.kind
                    ),
                    Failure::Refused(m) => log::warn!(
                        "{what} ({}): {m}: a configuration problem (of the receiver or of \
                         this entry); retrying every {}, nothing is skipped",
                        settings.kind,
                        humantime::format_duration(settings.max_backoff)
                    ),
                }
                let (name, m) = (settings.name.clone(), message.clone());
                retry_store(&what, &store, move |s| {
                    s.forward_failed(&name, &m, now_ms())
                })
                .await;
                failing = Some(message);
            }
            let wait = match failure {
                Failure::Retry(_) => backoff(attempt, settings.max_backoff),
                Failure::Refused(_) => settings.max_backoff,
            };
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(wait).await;
        }
        let name = settings.name.clone();
        retry_store(&what, &store, move |s| {
            s.forward_acknowledged(&name, last, now_ms())
        })
        .await;
        if failing.take().is_some() {
            log::info!("{what} ({}): delivering again", settings.kind);
        }
        cursor = last;
    }
}

/// The JSON of an alert as the HTTP API gives it.
pub(crate) fn alert_json(a: &StoredAlert) -> serde_json::Value {
    serde_json::to_value(a).unwrap_or_default()
}
