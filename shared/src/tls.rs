//! The one reloadable TLS certificate every TLS listener shares. rustls with ring only (no
//! OpenSSL, no aws-lc); PEM is read with `rustls-pki-types` (rustls-pemfile is unmaintained).
//!
//! [`ReloadableCert`] is the rustls certificate resolver: each handshake reads the current
//! [`CertifiedKey`], so a reload affects new handshakes only and open connections keep the
//! session they negotiated. A reload that finds a bad file logs it and keeps the old
//! certificate: a half-written renewal must not take the relay offline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{version, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// A certificate chain and key loaded from two PEM files, swapped in place by [`Self::reload`].
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' mtimes at the last load attempt (good or bad): a bad file is retried once it
    /// changes again, not on every poll.
    seen: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl std::fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// The `[tls]` certificate of a daemon: `None` when `cert_file` is empty (TLS off), an
    /// error when only the key is missing or a file cannot be loaded (no silent plaintext).
    pub fn load_configured(cert_file: &Path, key_file: &Path) -> Result<Option<Arc<Self>>, Error> {
        if cert_file.as_os_str().is_empty() {
            return Ok(None);
        }
        if key_file.as_os_str().is_empty() {
            return Err(Error::Config(
                "tls.cert_file is set but tls.key_file is not".into(),
            ));
        }
        Self::load(cert_file, key_file).map(Some)
    }

    /// Loads both files; unlike a reload, a bad file here is an error (nothing to fall back to).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, Error> {
        let provider = Arc::new(ring::default_provider());
        let seen = mtimes(cert_file, key_file);
        let key = load_pair(cert_file, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the files again. On success new handshakes get the new certificate; on failure
    /// the error is logged and returned and the old certificate stays.
    pub fn reload(&self) -> Result<(), Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) =
            mtimes(&self.cert_file, &self.key_file);
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }

    /// Reloads when either file's mtime differs from the last load attempt; true if it did
    /// (successfully or not).
    pub fn reload_if_changed(&self) -> bool {
        let now = mtimes(&self.cert_file, &self.key_file);
        let changed = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload();
        }
        changed
    }

    /// The certificate chain new handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A server config resolving through `self`: TLS 1.3 (preferred by rustls when both ends
    /// have it) and 1.2, no client certificates, offering `alpn` in the server's order.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// [`Self::server_config`] as a tokio acceptor.
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config(alpn))
    }

    /// Reloads on SIGHUP and whenever the files' mtimes change (checked every `check`; zero:
    /// SIGHUP only). The SIGHUP handler is installed before this returns (a SIGHUP sent once
    /// the caller is up must not kill the process); the returned future runs until dropped.
    pub fn watch(
        self: Arc<Self>,
        check: Duration,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| Error::Tls(format!("install SIGHUP handler: {e}")))?;
        Ok(async move {
            // A zero period would make `interval` panic; "never" is a very long one.
            let period = if check.is_zero() {
                Duration::from_secs(365 * 24 * 3600)
            } else {
                check
            };
            let mut poll = tokio::time::interval(period);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                tokio::select! {
                    got = hup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        let _ = self.reload();
                    }
                    _ = poll.tick() => {
                        self.reload_if_changed();
                    }
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| Error::Tls(format!("{} / {}: {e}", cert.display(), key.display())))
}

/// What a client trusts: the certificates in `ca_file` (PEM; a test CA, a private PKI), or the
/// system's roots when there is none. The one root store of every TLS client (vc-camera's
/// HTTPS and QUIC, vc-relay's presence reports to an HTTPS vc-control).
pub fn client_roots(ca_file: Option<&Path>) -> Result<tokio_rustls::rustls::RootCertStore, String> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A malformed system root is skipped, as browsers do; the rest still work.
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// A rustls client config (ring provider) trusting [`client_roots`], for `versions`.
pub fn client_config(
    ca_file: Option<&Path>,
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    Ok(tokio_rustls::rustls::ClientConfig::builder_with_provider(
        Arc::new(ring::default_provider()),
    )
    .with_protocol_versions(versions)
    .map_err(|e| e.to_string())?
    .with_root_certificates(client_roots(ca_file)?)
    .with_no_client_auth())
}

/// The one way this workspace builds a `reqwest` client: TLS through rustls with ring and
/// [`client_roots`] (`ca_file`, else the system's roots). reqwest is built with
/// `rustls-no-provider` (its default provider is aws-lc), and a client built without a
/// preconfigured TLS config panics there, so every client starts from this builder.
pub fn http_client_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, String> {
    let mut tls = client_config(ca_file, tokio_rustls::rustls::DEFAULT_VERSIONS)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn generate() -> Pair {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        Pair {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            der: ck.cert.der().to_vec(),
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vc-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(d: &Path, p: &Pair) -> (PathBuf, PathBuf) {
        let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
        std::fs::write(&c, &p.cert_pem).unwrap();
        std::fs::write(&k, &p.key_pem).unwrap();
        (c, k)
    }

    fn served(r: &ReloadableCert) -> Vec<u8> {
        r.current().cert[0].to_vec()
    }

    #[test]
    fn bad_files_fail_the_first_load() {
        let d = dir();
        let (a, b) = (generate(), generate());
        let (c, k) = write(&d, &a);
        assert!(ReloadableCert::load(&c, &d.join("missing.pem")).is_err());
        std::fs::write(&k, "not pem").unwrap();
        assert!(ReloadableCert::load(&c, &k).is_err(), "garbage key");
        // A key that is valid but not the certificate's.
        std::fs::write(&k, &b.key_pem).unwrap();
        assert!(ReloadableCert::load(&c, &k).is_err(), "mismatched key");
        std::fs::write(&c, "").unwrap();
        std::fs::write(&k, &a.key_pem).unwrap();
        assert!(ReloadableCert::load(&c, &k).is_err(), "no certificate");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn reload_swaps_and_a_bad_file_keeps_the_old_certificate() {
        let d = dir();
        let (a, b) = (generate(), generate());
        let (c, k) = write(&d, &a);
        let r = ReloadableCert::load(&c, &k).unwrap();
        assert_eq!(served(&r), a.der);
        write(&d, &b);
        r.reload().unwrap();
        assert_eq!(served(&r), b.der, "reload serves the new certificate");
        std::fs::write(&c, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        assert!(r.reload().is_err());
        assert_eq!(served(&r), b.der, "a bad file keeps the old certificate");
        // Cert renewed but key not yet written: mismatched, so still the old one.
        std::fs::write(&c, &a.cert_pem).unwrap();
        assert!(r.reload().is_err());
        assert_eq!(served(&r), b.der);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mtime_change_triggers_a_reload() {
        let d = dir();
        let (a, b) = (generate(), generate());
        let (c, k) = write(&d, &a);
        let r = ReloadableCert::load(&c, &k).unwrap();
        assert!(!r.reload_if_changed(), "unchanged files are not reloaded");
        write(&d, &b);
        // Coarse filesystem timestamps: make the change visible whatever the granularity.
        let later = SystemTime::now() + Duration::from_secs(5);
        for p in [&c, &k] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        assert!(r.reload_if_changed());
        assert_eq!(served(&r), b.der);
        assert!(!r.reload_if_changed(), "reloaded once per change");
        std::fs::remove_dir_all(d).unwrap();
    }

    static TLS12_ONLY: &[&tokio_rustls::rustls::SupportedProtocolVersion] = &[&version::TLS12];

    #[tokio::test]
    async fn handshake_serves_current_certificate_with_tls13() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
        let d = dir();
        let (a, b) = (generate(), generate());
        let (c, k) = write(&d, &a);
        let r = ReloadableCert::load(&c, &k).unwrap();
        let acceptor = r.acceptor(&[b"http/1.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let mut buf = [0u8; 4];
                        while tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                        }
                    }
                });
            }
        });
        let connect_with =
            |trust: Vec<u8>, versions: &'static [&'static SupportedProtocolVersion]| async move {
                let mut roots = RootCertStore::empty();
                roots.add(CertificateDer::from(trust)).unwrap();
                let cfg = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_protocol_versions(versions)
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
            };
        let connect = |trust: Vec<u8>| connect_with(trust, tokio_rustls::rustls::ALL_VERSIONS);
        let mut first = connect(a.der.clone()).await.expect("trusts cert a");
        // 1.3 when the client has it; a 1.2-only client is still served (the minimum).
        assert_eq!(
            first.get_ref().1.protocol_version(),
            Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3)
        );
        let old = connect_with(a.der.clone(), TLS12_ONLY)
            .await
            .expect("TLS 1.2");
        assert_eq!(
            old.get_ref().1.protocol_version(),
            Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2)
        );
        write(&d, &b);
        r.reload().unwrap();
        assert!(
            connect(a.der.clone()).await.is_err(),
            "new handshakes no longer get a"
        );
        let second = connect(b.der.clone()).await.expect("new handshake gets b");
        let peer = second.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(peer, b.der);
        // The connection made before the reload still works.
        first.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        std::fs::remove_dir_all(d).unwrap();
    }
}
