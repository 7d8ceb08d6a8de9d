//! Load for `bench/backend.sh`: publishes alerts as several devices at once (MQTT v5, QoS 1,
//! mutual TLS, one connection per device, Postcard), then waits until the backend's store
//! holds them all. Prints one line of JSON:
//!
//! `{"published": N, "stored": N, "first_publish_ms": T0, "published_ms": T1, "last_received_ms": T2}`
//!
//! (`stored` is less than `published` when the wait ended at `--timeout` or `--deadline`), where `published_ms` is when the broker had acknowledged every message and
//! `last_received_ms` the latest `received_ms` in the store (the backend's clock: the same
//! machine's).
//!
//! Usage: `bench_publish --host H --port P --ca CA --certs DIR --devices N --alerts N
//!         (--sqlite FILE | --postgres CONNINFO) [--timeout SECS] [--deadline SECS] [--poll-ms MS]`
//! Device `i` (1-based) is `bench-%04d`, with `DIR/bench-%04d.pem` and `.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use picket_backend::tls;
use picket_proto::topic::{self, Channel};
use picket_proto::{Alert, AlertKind, Ancestor, Details, Format, ProcessContext, Severity};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::oneshot::{Receiver, Sender};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    ca: PathBuf,
    /// Directory of the device certificates.
    #[arg(long)]
    certs: PathBuf,
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Alerts in all (split evenly between the devices).
    #[arg(long, default_value_t = 10_000)]
    alerts: usize,
    #[arg(
        long,
        conflicts_with = "postgres",
        required_unless_present = "postgres"
    )]
    sqlite: Option<PathBuf>,
    #[arg(long)]
    postgres: Option<String>,
    /// Stop waiting when the store has not grown for this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Stop waiting this many seconds after the first publish in any case.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
    /// How often to count the stored alerts, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn alert(device: usize, seq: u64) -> Alert {
    let t = now_ms();
    let exe = format!("/tmp/bench/{device}/x{seq}");
    Alert {
        seq,
        boot_id: "4578ef3d-5c57-4a43-9ef6-2f1c1d4bd7a1".into(),
        time_ms: t,
        kind: AlertKind::UnknownExecutable,
        severity: Severity::High,
        rule: "executables".into(),
        path: Some(exe.clone()),
        details: Details(serde_json::json!({
            "sha256": "c79b1bd0c0c5c4d3a1f5e1dcb8f3f2b8e0c5f3b1a9d7e6c5b4a3928171605f4e"
        })),
        count: 1,
        first_ms: t,
        last_ms: t,
        process: Some(ProcessContext {
            pid: Some(3611),
            ppid: Some(3560),
            uid: Some(0),
            exe: Some(exe),
            sha256: Some("c79b1bd0c0c5c4d3a1f5e1dcb8f3f2b8e0c5f3b1a9d7e6c5b4a3928171605f4e".into()),
            argv: vec!["x".into(), "--run".into()],
            argv_dropped: 0,
            ancestry: vec![Ancestor {
                pid: 3560,
                exe: Some("/usr/bin/bash".into()),
            }],
            cgroup_id: Some(1),
        }),
    }
}

/// Connects every device, then publishes `per_device` alerts from each at once; returns when
/// the broker acknowledged them all, with the time of the first publish.
async fn publish(args: &Args, per_device: usize) -> anyhow::Result<u64> {
    let mut devices = Vec::new();
    for i in 1..=args.devices {
        devices.push(connect(args, i, per_device)?);
    }
    let mut waiting = Vec::new();
    for (id, client, connected, done) in devices {
        tokio::time::timeout(Duration::from_secs(15), connected)
            .await
            .with_context(|| format!("{id}: no connection to the broker within 15 s"))?
            .with_context(|| format!("{id}: the connection failed"))?;
        waiting.push((id, client, done));
    }
    // Encoded up front: the time measured is the broker's and the backend's, not the encoder's.
    let mut loads = Vec::new();
    for (n, (id, client, done)) in waiting.into_iter().enumerate() {
        let t = topic::topic(&id, Channel::Alert);
        let payloads = (1..=per_device as u64)
            .map(|seq| picket_proto::encode(Format::Postcard, &id, &alert(n, seq)))
            .collect::<Result<Vec<_>, _>>()?;
        loads.push((id, client, t, payloads, done));
    }
    let first = now_ms();
    publish_all(loads).await?;
    Ok(first)
}

/// A device connecting: its id, its client, and what says it connected and that every alert
/// it will publish was acknowledged.
type Connecting = (String, AsyncClient, Receiver<()>, Receiver<()>);

/// A device ready to publish: its id, client, alert topic, encoded alerts and what says they
/// were all acknowledged.
type Load = (String, AsyncClient, String, Vec<Vec<u8>>, Receiver<()>);

/// Starts the connection of device `i` (`bench-%04d`, with its certificate), its event loop in
/// a task.
fn connect(args: &Args, i: usize, per_device: usize) -> anyhow::Result<Connecting> {
    let id = format!("bench-{i:04}");
    let tls = tls::client_config(
        &args.ca,
        &args.certs.join(format!("{id}.pem")),
        &args.certs.join(format!("{id}.key")),
    )?;
    let mut options = MqttOptions::new(id.clone(), args.host.clone(), args.port);
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )))
        .set_keep_alive(Duration::from_secs(30))
        .set_connection_timeout(10);
    let (client, eventloop) = AsyncClient::new(options, 1000);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let name = id.clone();
    tokio::spawn(drive(eventloop, name, connected_tx, done_tx, per_device));
    Ok((id, client, connected_rx, done_rx))
}

/// Polls a device's event loop: says when it connected and when `per_device` PUBACKs came;
/// ends with the connection (reporting the error unless every message was acknowledged).
async fn drive(
    mut eventloop: EventLoop,
    name: String,
    connected_tx: Sender<()>,
    done_tx: Sender<()>,
    per_device: usize,
) {
    let mut connected = Some(connected_tx);
    let mut done = Some(done_tx);
    let mut acked = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == per_device {
                    if let Some(tx) = done.take() {
                        let _ = tx.send(());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The end of the connection once every message is acknowledged is
                // the disconnection.
                if done.is_some() {
                    eprintln!("{name}: {e}");
                }
                return;
            }
        }
    }
}

/// Publishes every device's alerts at once, one task per device; returns once each device's
/// were all acknowledged and it disconnected.
async fn publish_all(loads: Vec<Load>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (id, client, t, payloads, done) in loads {
        tasks.push(tokio::spawn(async move {
            for p in payloads {
                client
                    .publish(t.clone(), QoS::AtLeastOnce, false, p)
                    .await
                    .with_context(|| format!("{id}: publishing"))?;
            }
            done.await
                .with_context(|| format!("{id}: the connection ended before every PUBACK"))?;
            let _ = client.disconnect().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// How many alerts the store holds, and the latest time one was received.
fn stored(args: &Args, pg: &mut Option<postgres::Client>) -> anyhow::Result<(u64, u64)> {
    if let Some(path) = &args.sqlite {
        return sqlite_stored(path);
    }
    let conninfo = args.postgres.as_deref().unwrap_or_default();
    if pg.is_none() {
        *pg = Some(
            postgres::Client::connect(conninfo, postgres::NoTls)
                .with_context(|| format!("connecting to {conninfo}"))?,
        );
    }
    let client = pg.as_mut().context("no PostgreSQL connection")?;
    let row = client.query_one(
        "SELECT count(*), COALESCE(max(received_ms), 0) FROM alerts",
        &[],
    )?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

fn sqlite_stored(path: &Path) -> anyhow::Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let (n, last): (i64, i64) = conn.query_row(
        "SELECT count(*), COALESCE(max(received_ms), 0) FROM alerts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((n as u64, last as u64))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    let per_device = args.alerts / args.devices;
    anyhow::ensure!(per_device > 0, "--alerts must be at least --devices");
    let total = (per_device * args.devices) as u64;
    let mut pg = None;
    let (before, _) = stored(&args, &mut pg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let first = runtime.block_on(publish(&args, per_device))?;
    let published = now_ms();
    let mut last_change = Instant::now();
    let mut seen = before;
    let (count, last) = loop {
        let (count, last) = stored(&args, &mut pg)?;
        if count >= before + total {
            break (count, last);
        }
        if count != seen {
            seen = count;
            last_change = Instant::now();
        }
        if last_change.elapsed() >= Duration::from_secs(args.timeout)
            || now_ms().saturating_sub(first) >= args.deadline * 1000
        {
            eprintln!(
                "stopped waiting: the store holds {} of the {total} alerts",
                count - before
            );
            break (count, last);
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms));
    };
    println!(
        "{}",
        serde_json::json!({
            "published": total,
            "stored": count - before,
            "first_publish_ms": first,
            "published_ms": published,
            "last_received_ms": last,
        })
    );
    Ok(())
}
