//! The bundles `policy push` published to each device (`policy_pushes`, schema version 6), so
//! that a policy result is stored only for a bundle the device was sent: the agent answers
//! each bundle it receives on its policy topic and nothing else, and only `policy push` (the
//! command or the HTTP API) publishes there. A result for any other bundle is made up, and
//! refused (`unknown_policy`).
//!
//! Kept by device and bundle (its SHA-256, as the result names it): the time of its latest
//! push and, when the bundle could be read, its policy's name and serial. Retention does not
//! delete them: the bundle retained on a device's topic may have been pushed long ago, and the
//! device answers it again at each connection. What bounds them is the operator's pushes, and
//! [`MAX_PUSHES_PER_DEVICE`] (the oldest beyond it are forgotten; the newest, the one the
//! broker retains, never is).

use super::sql::{count_of, int, text, Arg, Db};

/// The table of version 6 (one SQL text for both databases).
pub(crate) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS policy_pushes (
    device_id TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    pushed_ms BIGINT NOT NULL,
    name TEXT,
    serial BIGINT,
    PRIMARY KEY (device_id, bundle_sha256)
);
";

/// The upgrade from version 5: the bundles of the results stored before, taken as pushed (they
/// were accepted then; the bundle retained on a device's topic is among them if the device
/// answered it since its push and the result is still kept).
pub(crate) const FILL: &str = "
INSERT INTO policy_pushes (device_id, bundle_sha256, pushed_ms, name, serial)
    SELECT device_id, bundle_sha256, min(received_ms), NULL, NULL
    FROM policy_results WHERE bundle_sha256 IS NOT NULL GROUP BY device_id, bundle_sha256
    ON CONFLICT (device_id, bundle_sha256) DO NOTHING;
";

/// The most bundles remembered per device.
pub const MAX_PUSHES_PER_DEVICE: u64 = 1000;

const RECORD: &str = "INSERT INTO policy_pushes (device_id, bundle_sha256, pushed_ms, name, serial)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (device_id, bundle_sha256) DO UPDATE SET pushed_ms = excluded.pushed_ms,
         name = excluded.name, serial = excluded.serial";

const PUSHES_OF: &str = "SELECT count(*) FROM policy_pushes WHERE device_id = ?1";

const FORGET_OLDEST: &str = "DELETE FROM policy_pushes WHERE device_id = ?1 AND bundle_sha256 IN (
         SELECT bundle_sha256 FROM policy_pushes WHERE device_id = ?1
         ORDER BY pushed_ms, bundle_sha256 LIMIT ?2)";

const PUSHED: &str =
    "SELECT count(*) FROM policy_pushes WHERE device_id = ?1 AND bundle_sha256 = ?2";

/// [`super::Store::record_push`].
pub(crate) fn record(
    db: &mut dyn Db,
    devices: &[String],
    bundle_sha256: &str,
    policy: Option<(&str, u64)>,
    now_ms: u64,
) -> anyhow::Result<()> {
    for device in devices {
        db.execute(
            RECORD,
            &[
                text(device),
                text(bundle_sha256),
                int(now_ms),
                Arg::Text(policy.map(|(name, _)| name)),
                policy.map_or(Arg::Int(None), |(_, serial)| int(serial)),
            ],
        )?;
        let kept = count_of(db, PUSHES_OF, &[text(device)])?;
        if kept > MAX_PUSHES_PER_DEVICE {
            db.execute(
                FORGET_OLDEST,
                &[text(device), int(kept - MAX_PUSHES_PER_DEVICE)],
            )?;
        }
    }
    Ok(())
}

/// [`super::Store::policy_pushed`].
pub(crate) fn pushed(
    db: &mut dyn Db,
    device_id: &str,
    bundle_sha256: &str,
) -> anyhow::Result<bool> {
    Ok(count_of(db, PUSHED, &[text(device_id), text(bundle_sha256)])? > 0)
}
