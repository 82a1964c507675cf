//! The headless-browser kit (`tests/browser`: playwright-core driving Debian's Chromium) that
//! the web app's end-to-end tests run their Node scripts with.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

/// The workspace root (the Node scripts live under `tests/e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

/// Fails (never skips) with a clear message when the browser kit is not installed.
pub fn require_browser_kit() -> Result<()> {
    let root = repo_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's chromium (bash .ci/setup does)"
    );
    ensure!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser --no-audit --no-fund` (bash .ci/setup does)"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    ensure!(
        node.map(|o| o.status.success()).unwrap_or(false),
        "node not found: install nodejs (bash .ci/setup does)"
    );
    Ok(())
}
