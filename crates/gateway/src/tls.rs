//! TLS: the listener's certificate, reloaded without a restart, and the upstream's trust.
//!
//! The listener's rustls settings resolve the certificate per handshake from a
//! [`Reloading`] resolver: a new certificate and key replace the old ones when the files
//! change (cert-manager rotates them in place; a Kubernetes Secret volume swaps a symlink)
//! or on SIGHUP. A pair that does not load (a half-written file, a key of another
//! certificate) is logged and counted, and the old pair stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// Reads every certificate of a PEM file.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// When the file cannot be read or holds no key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A certificate chain and its key, checked to belong together.
///
/// # Errors
/// When either file does not load or the key is not the certificate's.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    pair_from_pem(&read(cert)?, &read(key)?, cert, key)
}

/// [`load_pair`] from the files' contents, read already (`cert` and `key` name them in
/// errors).
fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, String> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))
}

/// When the chain's first certificate expires, in Unix seconds.
pub fn not_after(pair: &CertifiedKey) -> Option<i64> {
    let leaf = pair.cert.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The listener's certificate resolver: the pair loaded last from two files.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    state: Mutex<ReloadState>,
}

/// The two files as read: their bytes, or why they could not be read.
type Contents = (Result<Vec<u8>, String>, Result<Vec<u8>, String>);

#[derive(Debug)]
struct ReloadState {
    /// The files' contents the current pair came from.
    loaded: (Vec<u8>, Vec<u8>),
    /// Files that did not load, and whether that was told.
    failing: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    /// What was read of the two files.
    contents: Contents,
    told: bool,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Reloading {
    /// Loads the pair from `cert` and `key`.
    ///
    /// # Errors
    /// When the pair does not load.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloading>, String> {
        let contents = (read(cert)?, read(key)?);
        let pair = pair_from_pem(&contents.0, &contents.1, cert, key)?;
        set_expiry(&pair);
        Ok(Arc::new(Reloading {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(pair),
            state: Mutex::new(ReloadState {
                loaded: contents,
                failing: None,
            }),
        }))
    }

    /// Loads the pair again if the files changed (or always, when `force`): answers whether
    /// a new pair is served. A pair that fails to load keeps the old one served; the failure
    /// is logged and counted once the same files failed at two checks in a row (a rotation
    /// caught between its two files is right at the next check) or at once when `force`d,
    /// and not again until the files change.
    pub fn reload(&self, force: bool) -> bool {
        let contents = (read(&self.cert), read(&self.key));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match &contents {
            (Ok(cert), Ok(key)) => {
                if !force && state.loaded == (cert.clone(), key.clone()) {
                    state.failing = None;
                    return false;
                }
                pair_from_pem(cert, key, &self.cert, &self.key)
            }
            (Err(error), _) | (_, Err(error)) => Err(error.clone()),
        };
        match outcome {
            Ok(pair) => {
                set_expiry(&pair);
                self.current.store(Arc::new(pair));
                if let (Ok(cert), Ok(key)) = contents {
                    state.loaded = (cert, key);
                }
                state.failing = None;
                metrics::counter!("fanout_tls_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(cert = %self.cert.display(), "TLS certificate loaded");
                true
            }
            Err(error) => {
                // Told before, for these same files?
                let before = state
                    .failing
                    .as_ref()
                    .filter(|failing| failing.contents == contents)
                    .map(|failing| failing.told);
                let tell = force || before == Some(false);
                state.failing = Some(Failing {
                    contents,
                    told: tell || before == Some(true),
                });
                if tell {
                    metrics::counter!("fanout_tls_reloads_total", "outcome" => "error")
                        .increment(1);
                    tracing::error!(%error, "TLS certificate not reloaded; the previous one is still served");
                }
                false
            }
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn set_expiry(pair: &CertifiedKey) {
    if let Some(at) = not_after(pair) {
        metrics::gauge!("fanout_tls_certificate_expiry_timestamp_seconds").set(at as f64);
    }
}

/// The listener's rustls settings: TLS 1.2 and 1.3 (ring), HTTP/1.1 by ALPN (WebSocket
/// upgrades are HTTP/1.1), the certificate from `resolver`.
///
/// # Errors
/// Cannot fail with the ring provider's defaults; an error names what rustls refused.
pub fn server_config(resolver: Arc<Reloading>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// SIGHUP, listened to from start-up on: its default would end the process, undrained.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening (on the runtime, at once).
    pub fn listen() -> Hangups {
        Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// The next SIGHUP; never, where there are none.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut()
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Checks the files every `interval`, and at once on SIGHUP, until `stop`; without a
/// certificate to reload (`resolver` none), a SIGHUP is only logged.
pub async fn watch(
    resolver: Option<Arc<Reloading>>,
    mut hangups: Hangups,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let force = tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick(), if resolver.is_some() => false,
            () = hangups.next() => {
                if resolver.is_none() {
                    tracing::info!("SIGHUP: nothing to reload (no TLS certificate)");
                    continue;
                }
                tracing::info!("SIGHUP: reloading the TLS certificate");
                true
            }
        };
        let Some(resolver) = resolver.clone() else {
            continue;
        };
        // Reading two small files; off the runtime's workers all the same.
        let _ = tokio::task::spawn_blocking(move || resolver.reload(force)).await;
    }
}
