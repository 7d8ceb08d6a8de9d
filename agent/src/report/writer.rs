//! The spool writer: alerts from the detection loop are made durable on a thread of their own,
//! so that the event loop never waits for the disk; and [`fit`], which cuts an alert down to
//! the spool's record limit.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::Context as _;

use super::Shared;
use crate::{
    alert::{self, AlertSink},
    counters::Counters,
};

/// An alert on its way to the spool.
struct Spooled {
    seq: u64,
    severity: u8,
    body: Vec<u8>,
}

/// What the detection loop hands to the spool writer.
enum ToWriter {
    /// Alerts to spool and make durable, in sequence order.
    Alerts(Vec<Spooled>),
    /// Make everything durable, then answer with how many alerts could not be written.
    Sync(std::sync::mpsc::SyncSender<usize>),
}

/// How often the writer makes acknowledgements durable (tombstones) when no alert comes, and
/// tries again after a failed write.
const WRITER_IDLE: Duration = Duration::from_secs(1);

/// How often the writer says again that the spool cannot be written.
const FAILING_REPEAT: Duration = Duration::from_secs(60);

/// The spool writer: a thread that pushes alerts into the spool and makes them durable (one
/// write and one `fdatasync` for all that arrived meanwhile), so that the event loop, which
/// reads the sensors' ring buffer, never waits for the disk. Ends when its sender is dropped,
/// after a last flush.
fn spool_writer(shared: Arc<Shared>, from_loop: std::sync::mpsc::Receiver<ToWriter>) {
    use std::sync::mpsc::RecvTimeoutError;
    // While flushes fail: when that was last said.
    let mut failing: Option<std::time::Instant> = None;
    loop {
        let mut alerts = Vec::new();
        let mut syncs = Vec::new();
        let mut take = |m: ToWriter| match m {
            ToWriter::Alerts(mut a) => alerts.append(&mut a),
            ToWriter::Sync(answer) => syncs.push(answer),
        };
        let last = match from_loop.recv_timeout(WRITER_IDLE) {
            Ok(m) => {
                take(m);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(m) = from_loop.try_recv() {
            take(m);
        }
        let acked = shared.acked.swap(false, Relaxed);
        if alerts.is_empty() && syncs.is_empty() && !acked && failing.is_none() && !last {
            // Nothing to write: an idle agent does not touch the spool.
            continue;
        }
        let flushed = {
            let mut spool = shared.spool();
            for a in alerts {
                match spool.push(a.seq, a.severity, &a.body) {
                    Ok(()) => Counters::add(&shared.counters.spooled, 1),
                    Err(e) => {
                        log::error!("alert #{} cannot be spooled: {e:#}", a.seq);
                        Counters::add(&shared.counters.dropped, 1);
                    }
                }
            }
            shared.dropped.fetch_add(spool.take_dropped(), Relaxed);
            // Also what the reporter acknowledged meanwhile (a no-op when there is nothing).
            let flushed = spool.flush();
            (flushed, spool.stats().unflushed)
        };
        let unwritten = flushed.1;
        match flushed {
            (Ok(()), _) => {
                if failing.take().is_some() {
                    log::info!("the spool is written to disk again");
                }
            }
            // A full or failing disk: the batch stays buffered in the spool (within its size
            // limit: past it the least severe alerts are dropped, counted and reported) and the
            // next round tries again, every second. Nothing unflushed is ever published.
            (Err(e), waiting) => {
                if failing.is_none_or(|said| said.elapsed() >= FAILING_REPEAT) {
                    log::error!(
                        "writing the spool to disk: {e:#}: {waiting} alert(s) wait in memory \
                         and are not sent until they are written; tried again every second, \
                         said again every minute"
                    );
                    failing = Some(std::time::Instant::now());
                }
            }
        }
        // New alerts to send; and the reporter, which does not wait for the spool while this
        // thread holds it, may have skipped sending meanwhile.
        shared.wake.notify_one();
        for answer in syncs {
            let _ = answer.send(if failing.is_some() { unwritten } else { 0 });
        }
        if last {
            return;
        }
    }
}

/// The alert sink that spools: alerts go to the spool writer's thread with each flush, and
/// are durable when `sync` returns.
pub struct SpoolSink {
    shared: Arc<Shared>,
    /// The alerts a `sync` last found unwritten, once said.
    unwritten_said: usize,
    batch: Vec<Spooled>,
    max_payload: usize,
    writer: std::sync::mpsc::Sender<ToWriter>,
}

impl SpoolSink {
    /// Starts the spool writer's thread.
    pub fn new(shared: Arc<Shared>) -> anyhow::Result<Self> {
        let (writer, from_loop) = std::sync::mpsc::channel();
        let max_payload = shared.spool().max_payload();
        let for_writer = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || spool_writer(for_writer, from_loop))
            .context("starting the spool writer's thread")?;
        Ok(Self {
            shared,
            unwritten_said: 0,
            batch: Vec::new(),
            max_payload,
            writer,
        })
    }
}

impl AlertSink for SpoolSink {
    /// Never fails the detection loop: an alert that cannot be spooled is logged and counted
    /// as dropped (the heartbeat shows it).
    fn send(&mut self, alert: &alert::Alert) -> anyhow::Result<()> {
        match fit(alert.to_wire(), self.max_payload) {
            Ok(body) => self.batch.push(Spooled {
                seq: alert.seq,
                severity: alert.severity.rank(),
                body,
            }),
            Err(e) => {
                log::error!("alert #{} cannot be spooled: {e:#}", alert.seq);
                Counters::add(&self.shared.counters.dropped, 1);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            let n = batch.len() as u64;
            if self.writer.send(ToWriter::Alerts(batch)).is_err() {
                log::error!("the spool writer is gone: {n} alert(s) not spooled");
                Counters::add(&self.shared.counters.dropped, n);
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        let (answer, done) = std::sync::mpsc::sync_channel(1);
        if self.writer.send(ToWriter::Sync(answer)).is_err() {
            return Ok(());
        }
        match done.recv_timeout(Duration::from_secs(10)) {
            Err(_) => log::warn!("the spool writer did not finish in 10 s"),
            // The spool cannot be written (said by the writer): what waits in memory ends with
            // this run. Said once, with the count.
            Ok(n) if n > 0 && n != self.unwritten_said => {
                log::error!(
                    "the spool cannot be written: {n} alert(s) never written are lost when the \
                     agent stops"
                );
                self.unwritten_said = n;
            }
            Ok(_) => {}
        }
        Ok(())
    }

    fn take_dropped(&mut self) -> u64 {
        let n = self.shared.dropped.swap(0, Relaxed);
        Counters::add(&self.shared.counters.dropped, n);
        n
    }
}

/// The alert's postcard body, made to fit in `max` bytes if it does not: long strings are cut
/// (argv, ancestry, paths, details), and `details` says so.
fn fit(mut wire: picket_proto::Alert, max: usize) -> anyhow::Result<Vec<u8>> {
    let body = postcard::to_allocvec(&wire).context("encoding an alert")?;
    if body.len() <= max {
        return Ok(body);
    }
    let cut = |s: &mut String, n: usize| {
        if s.len() > n {
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    };
    for limit in [1024, 256, 64] {
        if let Some(p) = wire.process.as_mut() {
            p.ancestry.truncate(4);
            for a in &mut p.ancestry {
                if let Some(exe) = a.exe.as_mut() {
                    cut(exe, limit);
                }
            }
            for arg in &mut p.argv {
                cut(arg, limit);
            }
            if let Some(exe) = p.exe.as_mut() {
                cut(exe, limit);
            }
        }
        if let Some(path) = wire.path.as_mut() {
            cut(path, limit);
        }
        let details = wire.details.0.to_string();
        if details.len() > limit {
            let mut text = details;
            cut(&mut text, limit);
            wire.details = picket_proto::Details(serde_json::json!({ "truncated": text }));
        }
        let body = postcard::to_allocvec(&wire).context("encoding an alert")?;
        if body.len() <= max {
            return Ok(body);
        }
    }
    anyhow::bail!(
        "{} bytes even cut down, over the spool's record limit of {max}",
        body.len()
    )
}

#[cfg(test)]
mod tests;
