//! The real `fanout-gateway` binary in a process of its own, for the tests about the
//! process: its signals, its descriptors, its runtime.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use fanout_test_support::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::service_token;

pub const BIN: &str = env!("CARGO_BIN_EXE_fanout-gateway");

pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The log lines written after "Gateway listening" (the last 10,000).
    pub logs: Arc<Mutex<VecDeque<String>>>,
}

impl Running {
    /// The log lines so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        let logs = self.logs.lock().expect("logs");
        logs.iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }
}

/// Starts the binary against `sim` and reads its addresses from its JSON log.
pub async fn spawn_gateway(sim: SocketAddr, extra_env: &[(&str, &str)]) -> Running {
    spawn_gateway_limited(sim, extra_env, None).await
}

/// Runs the binary against `sim` until it exits by itself (within [`WAIT`]): whether it
/// succeeded, and everything it wrote.
#[allow(dead_code)]
pub async fn run_gateway_to_exit(sim: SocketAddr, extra_env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream-url", &format!("ws://{sim}/v1.0/ws")])
        .env("FANOUT_JWT_SECRET", SECRET)
        .env("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FANOUT_UPSTREAM_TOKEN", service_token())
        .env("RUST_LOG", "debug")
        .kill_on_drop(true);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the gateway exits by itself")
        .expect("the gateway runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Starts the binary with at most `nofile` open files (soft and hard), when given.
pub async fn spawn_gateway_limited(
    sim: SocketAddr,
    extra_env: &[(&str, &str)],
    nofile: Option<u32>,
) -> Running {
    let mut command = match nofile {
        None => Command::new(BIN),
        Some(limit) => {
            let mut shell = Command::new("bash");
            shell.args([
                "-c",
                &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                BIN,
            ]);
            shell
        }
    };
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--upstream-url", &format!("ws://{sim}/v1.0/ws")])
        .env("FANOUT_JWT_SECRET", SECRET)
        .env("FANOUT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FANOUT_UPSTREAM_TOKEN", service_token())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("gateway binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let listening = tokio::time::timeout(WAIT, async {
        let mut before = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                before.push(line);
                continue;
            };
            assert!(
                !line.contains(SECRET),
                "a log line holds the secret: {line}"
            );
            if value["fields"]["message"] == "Gateway listening" {
                return value;
            }
            before.push(line);
        }
        panic!("the gateway exited before listening: {before:#?}");
    })
    .await
    .expect("the gateway logs its addresses");
    // Keep draining the log so the child never blocks on a full pipe; shown with
    // `GATEWAY_LOGS=1`.
    let show = std::env::var_os("GATEWAY_LOGS").is_some();
    let logs = Arc::new(Mutex::new(VecDeque::new()));
    let kept = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("{line}");
            }
            let mut kept = kept.lock().expect("logs");
            if kept.len() == 10_000 {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
    let addr = listening["fields"]["local_addr"]
        .as_str()
        .expect("local_addr")
        .parse()
        .expect("addr");
    let admin = listening["fields"]["admin_addr"]
        .as_str()
        .expect("admin_addr")
        .parse()
        .expect("addr");
    Running {
        child,
        addr,
        admin,
        logs,
    }
}

pub fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

/// Sends `signal` (`-HUP`, `-TERM`, …) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
