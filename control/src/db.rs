//! The database: one sqlx `Any` pool over SQLite (default) or Postgres, migrated on start from
//! the single `migrations/` directory (portable SQL: TEXT and BIGINT columns only,
//! `$n` placeholders, which both drivers accept).

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection as _, Executor};

use crate::error::StartError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The pool plus what differs between engines.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// A pooled connection idle at least this long is pinged before it serves a query.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Db {
    /// Opens (creating the SQLite file and its directory if needed) and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StartError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StartError::Config(
                "database_url must start with sqlite: or postgres:".into(),
            ));
        };
        if backend == Backend::Sqlite {
            create_sqlite_file(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            // sqlx pings every connection it hands out by default: one more database round
            // trip per query (on Postgres as costly as the indexed read itself; 2 of the 4
            // round trips of an authenticated list). Only a connection idle for a while is
            // checked, so one left broken by a database restart is replaced before use;
            // under load connections are never idle that long and a query's own error
            // closes a broken one.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; busy_timeout makes
                        // writers queue instead of failing under load.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction cannot fail with SQLITE_BUSY
    /// when another writer commits in between; Postgres uses row locks instead.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// `true` when a trivial query succeeds.
    pub async fn healthy(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// `sqlite://data/x.db?mode=rwc` -> creates `data/` (0700) and an empty `x.db` (0600: an
/// empty file is an empty database) unless they exist; an existing file open to group or
/// others gets a warning. SQLite gives its `-wal` and `-shm` files the database file's mode.
fn create_sqlite_file(url: &str) -> Result<(), StartError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') || path.starts_with("file:") {
        return Ok(()); // in-memory, or a URI SQLite resolves itself
    }
    let path = Path::new(path);
    let config = |e: shared::Error| StartError::Config(e.to_string());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        shared::config::create_private_dir(dir).map_err(config)?;
    }
    if !url.contains("mode=rwc") {
        // SQLite will not create it either: only check an existing one.
        shared::config::warn_if_not_private(path);
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            shared::config::warn_if_not_private(path);
            Ok(())
        }
        Err(e) => Err(StartError::Config(format!(
            "create {}: {e}",
            path.display()
        ))),
    }
}

/// `true` when the error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// `true` when the error is a foreign-key violation.
pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test]
    async fn sqlite_dir_and_file_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let file = dir.join("vc.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = Db::connect(&url, 1).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        // The WAL SQLite opened beside it inherits the database file's mode.
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(&db.pool)
            .await
            .unwrap();
        let wal = dir.join("vc.db-wal");
        assert!(wal.exists());
        assert_eq!(mode(&wal), 0o600);
        db.pool.close().await;
        // An existing, looser file is kept as it is (and warned about), not rewritten.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let db = Db::connect(&url, 1).await.unwrap();
        assert_eq!(mode(&file), 0o644);
        assert_eq!(shared::config::warn_if_not_private(&file), Some(0o644));
        db.pool.close().await;
    }
}
