//! `vc-control admin create --email E [--config FILE]`: creates the first admin, or promotes
//! an existing account, from the command line (issue 12). The password comes from stdin,
//! never argv (visible in `ps` and shell history): prompted without echo on a terminal,
//! else the first line (so `printf '%s\n' "$PW" | vc-control admin create ...` works).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use uuid::Uuid;

use crate::audit::{self, Action, Record};
use crate::auth::Passwords;
use crate::domain::{Email, Password};
use crate::error::StartError;
use crate::{db, Config};

pub const USAGE: &str = "usage: vc-control admin create --email EMAIL [--config FILE]   \
                         (password read from stdin)";

/// Runs `admin ...` with the arguments after `admin`; returns what to print on success.
pub async fn run(args: Vec<String>) -> Result<String, StartError> {
    let mut args = args.into_iter();
    let usage = || StartError::Config(USAGE.into());
    if args.next().as_deref() != Some("create") {
        return Err(usage());
    }
    let (mut email, mut config_file) = (None, None::<PathBuf>);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--email" => email = Some(args.next().ok_or_else(usage)?),
            "--config" | "-c" => config_file = Some(args.next().ok_or_else(usage)?.into()),
            _ => return Err(usage()),
        }
    }
    let email = email.ok_or_else(usage)?;
    let config: Config = shared::config::load(config_file.as_deref())
        .map_err(|e| StartError::Config(format!("loading configuration: {e}")))?;
    let password =
        read_password().map_err(|e| StartError::Config(format!("reading password: {e}")))?;
    let (id, promoted) = create_admin(&config, &email, password).await?;
    Ok(if promoted {
        format!("promoted {id} to admin")
    } else {
        format!("created admin {id}")
    })
}

/// The password from stdin: prompted with echo off on a terminal, else one line.
fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("password: ");
        std::io::stderr().flush()?;
        set_echo(false);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        set_echo(true);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Turns terminal echo off or on with `stty` (on the inherited stdin), which avoids unsafe
/// termios calls; without `stty` the prompt still works, echoing.
fn set_echo(on: bool) {
    let _ = std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .status();
}

/// Creates `email` as an admin with `password`, or promotes the existing account and sets
/// its password (also how a lost admin password is recovered; its sessions end). Returns
/// the user id and whether it existed.
pub async fn create_admin(
    config: &Config,
    email: &str,
    password: String,
) -> Result<(Uuid, bool), StartError> {
    let invalid = |e: crate::ApiError| StartError::Config(e.to_string());
    let email = Email::parse(email).map_err(invalid)?;
    let password = Password::parse(password, config.password_min_len).map_err(invalid)?;
    let passwords = Passwords::new(&config.argon2)?;
    let hash = passwords
        .hash(password.expose().to_owned())
        .await
        .map_err(invalid)?;
    let db = db::Db::connect(&config.database_url, 1).await?;
    let now = crate::routes::now_secs();
    let mut tx = db.begin_write().await?;
    let existing: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let (id, promoted) = match existing {
        Some(id) => {
            sqlx::query(
                "UPDATE users SET role = 'admin', password_hash = $1, tokens_valid_after = $2 \
                 WHERE id = $3",
            )
            .bind(&hash)
            .bind(crate::auth::cutoff_now())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            (
                Uuid::parse_str(&id).map_err(|e| StartError::Config(e.to_string()))?,
                true,
            )
        }
        None => {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, created_at, role) \
                 VALUES ($1, $2, $3, $4, 'admin')",
            )
            .bind(id.to_string())
            .bind(email.as_str())
            .bind(&hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (id, false)
        }
    };
    let target = id.to_string();
    audit::record(
        &mut *tx,
        Record {
            actor: None,
            action: Action::AdminCreated,
            target: Some(&target),
            client_ip: None,
            detail: serde_json::json!({"promoted": promoted, "via": "cli"}),
        },
    )
    .await?;
    tx.commit().await?;
    db.pool.close().await;
    Ok((id, promoted))
}
