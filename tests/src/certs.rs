//! Self-signed certificates (rcgen) for the TLS tests, written where vc-relay reads them.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// A generated certificate for `localhost` and `127.0.0.1`.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's DER: what a client trusts and what a handshake presents.
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn generate() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            der: ck.cert.der().to_vec(),
        })
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them); returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        // Write then rename, as a certificate renewal would: a reader never sees half a file.
        for (path, body) in [(&c, &self.cert_pem), (&k, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok((c, k))
    }
}

/// Connects with `connect` (which returns the connection and the certificate the server
/// presented) until the server presents `want` (reloads are asynchronous), within `within`.
/// The one retry loop of every certificate-reload test (WSS, HTTPS, TURN over TLS).
pub async fn until_served<T, F, Fut>(
    mut connect: F,
    want: &TestCert,
    within: std::time::Duration,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(T, Vec<u8>)>>,
{
    let t0 = std::time::Instant::now();
    loop {
        match connect().await {
            Ok((conn, der)) => {
                anyhow::ensure!(der == want.der, "handshake presented another certificate");
                return Ok(conn);
            }
            Err(_) if t0.elapsed() < within => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => anyhow::bail!("new certificate not served within {within:?}: {e}"),
        }
    }
}
