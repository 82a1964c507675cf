//! The audit log: one row per admin action or security-relevant event (issue 12). Records
//! are written in the caller's transaction where there is one, so an action and its record
//! commit together. Nothing secret goes in: ids, an action name, the client address and a
//! small JSON `detail` of non-secret facts.

use std::net::IpAddr;

use serde_json::Value;
use uuid::Uuid;

/// What happened (stable names: dashboards and exports key on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    LoginLimited,
    AccountDisabled,
    AccountEnabled,
    AccountDeleted,
    PasswordChanged,
    DeviceRevoked,
    DeviceDeleted,
    DeviceTransferred,
    ShareGranted,
    ShareRevoked,
    AdminCreated,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::LoginLimited => "login_limited",
            Action::AccountDisabled => "account_disabled",
            Action::AccountEnabled => "account_enabled",
            Action::AccountDeleted => "account_deleted",
            Action::PasswordChanged => "password_changed",
            Action::DeviceRevoked => "device_revoked",
            Action::DeviceDeleted => "device_deleted",
            Action::DeviceTransferred => "device_transferred",
            Action::ShareGranted => "share_granted",
            Action::ShareRevoked => "share_revoked",
            Action::AdminCreated => "admin_created",
        }
    }
}

/// One audit record.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub actor: Option<Uuid>,
    pub action: Action,
    pub target: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub detail: Value,
}

/// Writes `record` through `exec` (a transaction or the pool).
pub async fn record<'e, E>(exec: E, record: Record<'_>) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_id, action, target_id, client_ip, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(crate::routes::now_ms())
    .bind(record.actor.map(|a| a.to_string()))
    .bind(record.action.as_str())
    .bind(record.target.map(str::to_owned))
    .bind(record.client_ip.map(|ip| ip.to_string()))
    .bind(record.detail.to_string())
    .execute(exec)
    .await?;
    Ok(())
}
