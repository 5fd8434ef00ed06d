//! How a node reaches NATS: the servers, the node's credentials and TLS.
//!
//! Credentials come from one place: the URLs (`nats://USER:PASSWORD@host`,
//! `nats://TOKEN@host`, as other NATS clients take them) or a credentials file (a `.creds`
//! file, or a user NKey seed). No secret is ever printed: [`Servers`] shows its URLs with the
//! password (or token) masked, and nothing here puts a file's contents into an error.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use percent_encoding::percent_decode_str;

/// What a node needs to reach NATS.
#[derive(Clone, Default)]
pub struct BusSettings {
    /// One or more servers, comma-separated, each `nats://`, `tls://`, `ws://` or `wss://`
    /// (or a bare `host:port`), with credentials in the URL if any.
    pub url: String,
    /// A `.creds` file (a user JWT and its seed) or a file holding a user NKey seed.
    pub credentials_file: Option<PathBuf>,
    /// The CA that signed the servers' certificates (PEM); makes TLS required.
    pub ca_file: Option<PathBuf>,
    /// The node's client certificate (PEM), for servers that verify clients.
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

impl fmt::Debug for BusSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusSettings")
            .field("url", &masked(&self.url))
            .field("credentials_file", &self.credentials_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

impl BusSettings {
    /// Checks what can be checked without NATS: the URLs, one source of credentials, a
    /// client certificate with its key.
    ///
    /// # Errors
    /// The first [`BusError`] found.
    pub fn check(&self) -> Result<Servers, BusError> {
        let servers = Servers::parse(&self.url)?;
        if servers.has_credentials() && self.credentials_file.is_some() {
            return Err(BusError::TwoSources);
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(BusError::HalfClientCert);
        }
        Ok(servers)
    }
}

/// Why a node cannot reach NATS as configured.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A URL did not parse (shown masked).
    #[error("cannot read the NATS URL {0}")]
    Url(String),
    /// No URL at all.
    #[error("no NATS URL")]
    NoUrl,
    /// The URLs carry different credentials.
    #[error("the NATS URLs carry different credentials; give them once")]
    MixedCredentials,
    /// Credentials both in the URL and in a file.
    #[error("credentials both in the NATS URL and in cluster.credentials_file; give them once")]
    TwoSources,
    /// The credentials file could not be used.
    #[error("cluster.credentials_file {path}: {reason}")]
    Credentials {
        /// Which file.
        path: PathBuf,
        /// Why (never its contents).
        reason: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error("cluster.client_cert_file and cluster.client_key_file go together")]
    HalfClientCert,
}

/// Credentials given in a URL.
#[derive(Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The servers of [`BusSettings::url`] without their credentials, and the credentials.
#[derive(Clone)]
pub struct Servers {
    addrs: Vec<ServerAddr>,
    auth: Option<UrlAuth>,
    /// The URLs as given, masked, for messages.
    shown: String,
}

impl fmt::Display for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Servers({})", self.shown)
    }
}

impl Servers {
    /// Reads a comma-separated list of server URLs.
    ///
    /// # Errors
    /// [`BusError`] when a URL does not parse, there is none, or they disagree on credentials.
    pub fn parse(urls: &str) -> Result<Servers, BusError> {
        let mut addrs = Vec::new();
        let mut auth = None;
        for one in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let addr: ServerAddr = one.parse().map_err(|_| BusError::Url(masked(one)))?;
            let mut url = addr.into_inner();
            let user = decode(url.username());
            let this = match (user.is_empty(), url.password()) {
                (true, None) => None,
                (_, Some(password)) => Some(UrlAuth::UserPassword(user, decode(password))),
                (false, None) => Some(UrlAuth::Token(user)),
            };
            if this.is_some() {
                if auth.as_ref().is_some_and(|a| Some(a) != this.as_ref()) {
                    return Err(BusError::MixedCredentials);
                }
                auth = this;
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            addrs.push(ServerAddr::from_url(url).map_err(|_| BusError::Url(masked(one)))?);
        }
        if addrs.is_empty() {
            return Err(BusError::NoUrl);
        }
        Ok(Servers {
            addrs,
            auth,
            shown: masked(urls),
        })
    }

    /// Whether the URLs carry credentials.
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }
}

fn decode(part: &str) -> String {
    percent_decode_str(part).decode_utf8_lossy().into_owned()
}

/// `urls` with every password (or token) replaced by `***`: `nats://u:***@h:4222`,
/// `nats://***@h`. What does not parse is shown as `<unreadable URL>`, since it might hold
/// a secret in a place we cannot find.
pub fn masked(urls: &str) -> String {
    urls.split(',')
        .map(|one| {
            let trimmed = one.trim();
            if trimmed.is_empty() {
                return String::new();
            }
            let Ok(addr) = trimmed.parse::<ServerAddr>() else {
                return "<unreadable URL>".to_owned();
            };
            let mut url = addr.into_inner();
            let _ = match (url.username().is_empty(), url.password().is_some()) {
                (_, true) => url.set_password(Some("***")),
                (false, false) => url.set_username("***"),
                (true, false) => Ok(()),
            };
            url.to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What a credentials file holds.
enum FileAuth {
    /// A `.creds` file's text.
    Creds(String),
    /// A user NKey seed.
    Seed(String),
}

async fn read_credentials(path: &PathBuf) -> Result<FileAuth, BusError> {
    let fail = |reason: String| BusError::Credentials {
        path: path.clone(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| fail(e.kind().to_string()))?;
    if text.contains("BEGIN NATS USER JWT") {
        return Ok(FileAuth::Creds(text));
    }
    let seed = text.trim();
    if seed.starts_with("SU") && !seed.contains(char::is_whitespace) {
        return Ok(FileAuth::Seed(seed.to_owned()));
    }
    Err(fail(
        "holds neither a .creds file nor a user NKey seed (SU…)".to_owned(),
    ))
}

/// Connects as `settings` say, named `name`.
///
/// # Errors
/// [`BusError`] for settings that cannot work; a [`async_nats::ConnectError`] (which names no
/// secret) as its text when NATS refuses or cannot be reached.
pub async fn connect(
    settings: &BusSettings,
    name: String,
    timeout: Duration,
) -> Result<async_nats::Client, ConnectFailure> {
    let servers = settings.check()?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    match (&servers.auth, &settings.credentials_file) {
        (Some(UrlAuth::UserPassword(user, password)), None) => {
            options = options.user_and_password(user.clone(), password.clone());
        }
        (Some(UrlAuth::Token(token)), None) => options = options.token(token.clone()),
        (None, Some(path)) => {
            options = match read_credentials(path).await? {
                FileAuth::Creds(text) => {
                    options
                        .credentials(&text)
                        .map_err(|e| BusError::Credentials {
                            path: path.clone(),
                            reason: format!("not a valid .creds file ({})", e.kind()),
                        })?
                }
                FileAuth::Seed(seed) => options.nkey(seed),
            };
        }
        (Some(_), Some(_)) | (None, None) => {}
    }
    if let (Some(cert), Some(key)) = (&settings.client_cert_file, &settings.client_key_file) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if let Some(ca) = &settings.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    options
        .connect(servers.addrs.clone())
        .await
        .map_err(|e| ConnectFailure::Refused {
            servers: servers.shown.clone(),
            reason: e.to_string(),
        })
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The settings cannot work.
    #[error(transparent)]
    Settings(#[from] BusError),
    /// NATS refused or could not be reached.
    #[error("cannot reach NATS at {servers}: {reason}")]
    Refused {
        /// The servers, masked.
        servers: String,
        /// Why, as the client says (it names no secret).
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_taken_out_and_masked() {
        let s = Servers::parse("nats://alice:s%40cret@127.0.0.1:4222").expect("test setup");
        assert!(
            matches!(&s.auth, Some(UrlAuth::UserPassword(u, p)) if u == "alice" && p == "s@cret")
        );
        assert_eq!(s.addrs[0].username(), None);
        assert_eq!(s.addrs[0].password(), None);
        assert!(!s.to_string().contains("cret"), "{s}");
        assert!(s.to_string().contains("alice:***@"), "{s}");

        let t = Servers::parse("tls://Tok3n@h1:4222, tls://Tok3n@h2:4222").expect("test setup");
        assert!(matches!(&t.auth, Some(UrlAuth::Token(x)) if x == "Tok3n"));
        assert_eq!(t.addrs.len(), 2);
        assert!(t.addrs.iter().all(ServerAddr::tls_required));
        assert!(!format!("{t} {t:?}").contains("Tok3n"));

        let plain = Servers::parse("h:4222").expect("test setup");
        assert!(!plain.has_credentials());
        assert_eq!(plain.addrs[0].port(), 4222);
    }

    #[test]
    fn urls_that_disagree_or_are_empty_are_refused() {
        assert!(matches!(
            Servers::parse("nats://a:b@h1,nats://a:c@h2"),
            Err(BusError::MixedCredentials)
        ));
        assert!(matches!(Servers::parse(" , "), Err(BusError::NoUrl)));
        // One with credentials and one without is one set of credentials.
        assert!(
            Servers::parse("nats://a:b@h1,nats://h2")
                .expect("test setup")
                .has_credentials()
        );
    }

    #[test]
    fn masking_never_shows_a_secret() {
        for (url, secret) in [
            ("nats://u:p4ss@h:1", "p4ss"),
            ("nats://t0ken@h", "t0ken"),
            ("nats://u:p4ss@h:1,nats://u:p4ss@h:2", "p4ss"),
            ("nats://u:p4ss@[bad", "p4ss"),
        ] {
            let shown = masked(url);
            assert!(!shown.contains(secret), "{url} → {shown}");
        }
        let settings = BusSettings {
            url: "nats://u:p4ss@h".into(),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("p4ss"));
    }

    #[tokio::test]
    async fn a_credentials_file_must_hold_credentials() {
        let dir = std::env::temp_dir().join(format!("fanout-bus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let junk = dir.join("junk");
        std::fs::write(&junk, "password=hunter2\n").expect("test setup");
        let error = match read_credentials(&junk).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("junk taken as credentials"),
        };
        assert!(!error.contains("hunter2"), "{error}");
        let seed = dir.join("seed");
        std::fs::write(
            &seed,
            "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n",
        )
        .expect("test setup");
        assert!(matches!(
            read_credentials(&seed).await,
            Ok(FileAuth::Seed(_))
        ));
        assert!(matches!(
            read_credentials(&dir.join("missing")).await,
            Err(BusError::Credentials { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
