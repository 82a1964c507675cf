//! Config loading shared by both daemons: serde defaults, then an optional TOML file,
//! then environment overrides `VC_<KEY>` (nested keys: `VC_SECTION__KEY`).

use std::path::Path;

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::Error;

/// Loads `T` from its `Default`, the TOML file at `file` (if given; it must exist), and
/// `VC_*` environment variables, later layers winning.
pub fn load<T>(file: Option<&Path>) -> Result<T, Error>
where
    T: DeserializeOwned + Serialize + Default,
{
    load_with_env(file, "VC_")
}

/// Like [`load`] with another environment prefix (tests use a unique one).
pub fn load_with_env<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, Error>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(Error::Config(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        listen: String,
        limits: Limits,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Limits {
        max: u32,
    }
    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                limits: Limits::default(),
            }
        }
    }
    impl Default for Limits {
        fn default() -> Self {
            Self { max: 7 }
        }
    }

    #[test]
    // figment's `Jail` API fixes the closure's error type; nothing to shrink here.
    #[allow(clippy::result_large_err)]
    fn layers() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen = \"0.0.0.0:2\"\n[limits]\nmax = 9\n")?;
            jail.set_env("VCT_LIMITS__MAX", "11");
            let s: Sample = load_with_env(Some(Path::new("c.toml")), "VCT_").unwrap();
            assert_eq!(s.listen, "0.0.0.0:2");
            assert_eq!(s.limits.max, 11);
            let d: Sample = load_with_env(None, "VCX_").unwrap();
            assert_eq!(d, Sample::default());
            assert!(load_with_env::<Sample>(Some(Path::new("missing.toml")), "VCX_").is_err());
            Ok(())
        });
    }
}

/// Reads the secret stored at `path`, or creates it (256 random bits, base64url, mode 0600)
/// when the file does not exist. Returns the secret and whether it was created, so the caller
/// can log that it generated one. Used for the JWT and ticket secrets of an unconfigured
/// install: a restart keeps them, so nobody is logged out.
pub fn load_or_create_secret(path: &Path) -> Result<(crate::Secret, bool), Error> {
    if let Some(secret) = read_secret(path)? {
        return Ok((secret, false));
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| Error::Config("no system randomness".into()))?;
    let value = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    write_private(path, &value)
        .map_err(|e| Error::Config(format!("write {}: {e}", path.display())))?;
    Ok((crate::Secret::new(value), true))
}

/// Reads a secret file (trimmed); `None` when it does not exist. Warns when the file is
/// open to group or others.
pub fn read_secret(path: &Path) -> Result<Option<crate::Secret>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => {
            warn_if_not_private(path);
            Ok(Some(crate::Secret::new(s.trim())))
        }
        Ok(_) => Err(Error::Config(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Config(format!("read {}: {e}", path.display()))),
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or warns when it exists with a looser
/// mode (it is left as the operator made it).
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        warn_if_not_private(dir);
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::Config(format!("create {}: {e}", dir.display())))
}

/// The permission bits of `path` when group or others have any access to it (a `tracing`
/// warning is logged), `None` when it is private or cannot be read.
pub fn warn_if_not_private(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "readable or writable by group or others; chmod it to 0{} (owner only)",
                if path.is_dir() { "700" } else { "600" }
            );
            return Some(mode);
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(value.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secret_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("vc-secret-{}", uuid::Uuid::new_v4()));
        let path = dir.join("ticket.secret");
        let (a, created) = load_or_create_secret(&path).unwrap();
        assert!(created);
        assert!(a.expose().len() >= 43);
        assert!(a.check_strength("generated").is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700, "data dir created owner-only");
            assert_eq!(mode(&path), 0o600, "secret file created owner-only");
            assert_eq!(warn_if_not_private(&path), None);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(warn_if_not_private(&path), Some(0o644));
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(warn_if_not_private(&dir), Some(0o755));
        }
        let (b, created) = load_or_create_secret(&path).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
