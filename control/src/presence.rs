//! Camera presence: what relay nodes report, and what "online" means when read.
//!
//! Relays report only changes, plus a lease heartbeat per node (see
//! [`shared::api::PresenceReport`]). A device row keeps the last presence write it accepted
//! (`status`, `presence_node`, `presence_epoch`, `presence_conn`, `presence_at_ms`); whether it is
//! online *now* is derived when read ([`derived_columns`]): stored online AND the lease of that
//! node and epoch is alive. So a dead or restarted node takes its cameras offline by its lease
//! lapsing, with no write per camera, and idle cameras cost nothing in steady state.
//!
//! Ordering is decided by the conditional `UPDATE`s, atomically per row, so several vc-control
//! instances behind a load balancer may apply reports concurrently:
//! * `online` from node N wins over an older connection of N (same epoch, smaller or equal
//!   connection number; or an older epoch) and over another node's write made earlier (its
//!   `at_ms`). Node clocks only matter to order a camera's moves between nodes, which take at
//!   least a reconnect.
//! * `offline` applies only to the connection that is stored, or an older one of the same node
//!   and epoch: a camera that moved from node A to node B stays online even if A's `offline`
//!   arrives after B's `online`.

use shared::api::{PresenceAck, PresenceReport, Revocation};
use sqlx::Row;
use uuid::Uuid;

use crate::db::Db;
use crate::error::ApiError;

/// Bounds on the lease a report may ask for, milliseconds.
const LEASE_MIN_MS: u64 = 1_000;
const LEASE_MAX_MS: u64 = 120_000;

/// Leases of nodes gone for longer than this are deleted (bounded table).
pub const LEASE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Revocations are kept this long: a relay that could not report for longer has lost its
/// lease anyway, and its cameras' tickets are refused by then.
pub const REVOCATION_RETENTION_MS: i64 = 3600 * 1000;

/// Revocations are answered from a little before the relay's cursor, so clocks that differ
/// between control instances behind a load balancer do not lose one.
const REVOCATION_OVERLAP_MS: i64 = 10_000;

/// At most this many revocations in one ack (the rest come with the next reports).
const MAX_REVOCATIONS_PER_ACK: i64 = 1000;

/// A lease is rewritten only when older than this part of its length: a node's heartbeat every
/// second then costs a row lock, not a row version.
const LEASE_RENEW_FRACTION: i64 = 4;

/// `status` and `last_seen` as of `now_param` (a bound unix-ms parameter such as `$2`), for a
/// query over `devices d LEFT JOIN node_leases l ON l.node_id = d.presence_node`.
///
/// An online device was last seen now; one whose node's lease lapsed, when the lease was last
/// renewed; otherwise when its last presence event happened.
pub fn derived_columns(now_param: &str) -> String {
    let alive = format!("l.epoch = d.presence_epoch AND l.expires_at_ms > {now_param}");
    format!(
        "CASE WHEN d.status = 'online' AND {alive} THEN 'online' \
              WHEN d.status = 'pending' THEN 'pending' ELSE 'offline' END AS status, \
         CASE WHEN d.status = 'online' AND {alive} THEN {now_param} / 1000 \
              WHEN d.status = 'online' AND l.epoch = d.presence_epoch THEN l.renewed_at_ms / 1000 \
              ELSE d.last_seen END AS last_seen"
    )
}

/// The join [`derived_columns`] reads from.
pub const DEVICES_WITH_LEASES: &str =
    "devices d LEFT JOIN node_leases l ON l.node_id = d.presence_node";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renews the reporting node's lease and applies its events, in one transaction. Answers the
/// devices reported online that do not exist (deleted) and those revoked since the node's last
/// ack, whose connections the relay closes.
pub async fn apply_report(
    db: &Db,
    report: &PresenceReport,
    now_ms: u64,
) -> Result<PresenceAck, ApiError> {
    if report.node_id.is_empty() || report.node_id.len() > 255 {
        return Err(ApiError::validation(
            "bad_node_id",
            "node_id must be 1-255 bytes",
        ));
    }
    let node = report.node_id.as_str();
    let epoch = to_i64(report.epoch);
    let now = to_i64(now_ms);
    let lease = to_i64(report.lease_ms.clamp(LEASE_MIN_MS, LEASE_MAX_MS));
    let expires = now.saturating_add(lease);
    let mut tx = db.begin_write().await?;
    // A newer epoch takes the lease over; an older one (a late retry from a previous process)
    // changes nothing; the same one renews it once a quarter of it is used up (or it lapsed).
    sqlx::query(
        "INSERT INTO node_leases (node_id, epoch, renewed_at_ms, expires_at_ms) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (node_id) DO UPDATE SET epoch = excluded.epoch, \
             renewed_at_ms = excluded.renewed_at_ms, expires_at_ms = excluded.expires_at_ms \
         WHERE node_leases.epoch < excluded.epoch \
             OR (node_leases.epoch = excluded.epoch AND node_leases.expires_at_ms <= $5)",
    )
    .bind(node)
    .bind(epoch)
    .bind(now)
    .bind(expires)
    .bind(expires.saturating_sub(lease / LEASE_RENEW_FRACTION))
    .execute(&mut *tx)
    .await?;
    let current: i64 = sqlx::query_scalar("SELECT epoch FROM node_leases WHERE node_id = $1")
        .bind(node)
        .fetch_one(&mut *tx)
        .await?;
    if current > epoch {
        tx.rollback().await?;
        return Err(ApiError::conflict(
            "stale_epoch",
            format!(
                "node {node} reported epoch {epoch} but epoch {current} already holds its lease: \
                 an older process, or two relays configured with the same node_id"
            ),
        ));
    }

    let mut unknown = Vec::new();
    for event in &report.events {
        let id = event.device_id.to_string();
        let at = to_i64(event.at_ms);
        let conn = to_i64(event.conn);
        let applied = if event.online {
            sqlx::query(
                "UPDATE devices SET status = 'online', presence_node = $2, presence_epoch = $3, \
                     presence_conn = $4, presence_at_ms = $5, last_seen = $5 / 1000 \
                 WHERE id = $1 AND status <> 'pending' AND ( \
                     presence_node IS NULL OR presence_epoch IS NULL OR presence_conn IS NULL \
                     OR (presence_node = $2 AND (presence_epoch < $3 \
                         OR (presence_epoch = $3 AND presence_conn <= $4))) \
                     OR (presence_node <> $2 AND presence_at_ms <= $5))",
            )
            .bind(&id)
            .bind(node)
            .bind(epoch)
            .bind(conn)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE devices SET status = 'offline', presence_at_ms = $5, last_seen = $5 / 1000 \
                 WHERE id = $1 AND status = 'online' AND presence_node = $2 \
                     AND presence_epoch = $3 AND presence_conn <= $4",
            )
            .bind(&id)
            .bind(node)
            .bind(epoch)
            .bind(conn)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        if applied == 0 && event.online {
            let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1 AND status <> 'pending'")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists && !unknown.contains(&event.device_id) {
                unknown.push(event.device_id);
            }
        }
    }
    if report.leaving {
        sqlx::query(
            "UPDATE node_leases SET renewed_at_ms = $3, expires_at_ms = $3 \
             WHERE node_id = $1 AND epoch = $2",
        )
        .bind(node)
        .bind(epoch)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let since = to_i64(report.revoked_since_ms)
        .max(now.saturating_sub(REVOCATION_RETENTION_MS))
        .saturating_sub(REVOCATION_OVERLAP_MS);
    let rows = sqlx::query(
        "SELECT subject, device_id, revoked_at_ms FROM revocations WHERE revoked_at_ms > $1 \
         ORDER BY revoked_at_ms LIMIT $2",
    )
    .bind(since)
    .bind(MAX_REVOCATIONS_PER_ACK)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut revocations = Vec::with_capacity(rows.len());
    for r in &rows {
        let device: Option<String> = r.try_get("device_id")?;
        revocations.push(Revocation {
            subject: r.try_get("subject")?,
            device_id: device.and_then(|d| Uuid::parse_str(&d).ok()),
            revoked_at_ms: u64::try_from(r.try_get::<i64, _>("revoked_at_ms")?).unwrap_or(0),
        });
    }
    Ok(PresenceAck {
        unknown_devices: unknown,
        revocations,
        cursor_ms: now_ms,
    })
}

/// What to revoke (see [`Revocation`]).
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    /// A deleted or revoked camera: its connection closes, its older tickets stop working.
    Device(Uuid),
    /// Every ticket and connection of a user (disabled, deleted, logged out everywhere).
    User(&'a str),
    /// One user's access to one camera (a share revoked).
    Access { user: &'a str, device: Uuid },
}

/// Records a revocation in `tx`: every relay closes the matching connections and refuses
/// tickets issued before it when it next reports (within its heartbeat, 1 s by default).
pub async fn revoke(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    what: Revoke<'_>,
    now_ms: u64,
) -> Result<(), sqlx::Error> {
    let (subject, device) = match what {
        Revoke::Device(d) => (None, Some(d.to_string())),
        Revoke::User(u) => (Some(u.to_owned()), None),
        Revoke::Access { user, device } => (Some(user.to_owned()), Some(device.to_string())),
    };
    sqlx::query("INSERT INTO revocations (subject, device_id, revoked_at_ms) VALUES ($1, $2, $3)")
        .bind(subject)
        .bind(device)
        .bind(to_i64(now_ms))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes leases of nodes gone for [`LEASE_RETENTION_MS`] and revocations older than
/// [`REVOCATION_RETENTION_MS`].
pub async fn prune(db: &Db, now_ms: u64) -> Result<u64, sqlx::Error> {
    let now = to_i64(now_ms);
    let leases = sqlx::query("DELETE FROM node_leases WHERE expires_at_ms < $1")
        .bind(now.saturating_sub(LEASE_RETENTION_MS))
        .execute(&db.pool)
        .await?;
    let revocations = sqlx::query("DELETE FROM revocations WHERE revoked_at_ms < $1")
        .bind(now.saturating_sub(REVOCATION_RETENTION_MS))
        .execute(&db.pool)
        .await?;
    Ok(leases.rows_affected() + revocations.rows_affected())
}
