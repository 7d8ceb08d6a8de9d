//! The newest alert id stored, for the live events ([`crate::api`]) and the integrations
//! ([`crate::forward`]): one task of `serve` reads it every [`POLL`] (one indexed query) and
//! publishes it on a `watch` channel, and each of them reads the new alerts when it moves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::run_query;
use crate::store::Store;

/// How often the store is read.
pub const POLL: Duration = Duration::from_millis(250);

/// The newest alert id stored (0 until the first read): `changed()` wakes when it moves.
pub type Newest = watch::Receiver<u64>;

/// Starts the poller on `store` (a connection it shares with those it feeds); it stops once
/// every [`Newest`] it gave is dropped. In a tokio runtime.
pub fn start(store: Arc<Mutex<Box<dyn Store>>>) -> Newest {
    let (sender, receiver) = watch::channel(0);
    tokio::spawn(poll(store, sender));
    receiver
}

async fn poll(store: Arc<Mutex<Box<dyn Store>>>, newest: watch::Sender<u64>) {
    // An error is logged when it starts, not at every read.
    let mut failing = false;
    loop {
        match run_query(&store, |s| s.last_alert_id()).await {
            Ok(id) => {
                failing = false;
                newest.send_if_modified(|n| {
                    let changed = *n != id;
                    *n = id;
                    changed
                });
            }
            Err(e) if !failing => {
                failing = true;
                log::error!("reading the newest alert id: {e:#}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = newest.closed() => return,
        }
    }
}
