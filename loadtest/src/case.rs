//! Scenario files (`loadtest/cases/*.toml`): what to open, what to send, what is measured.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What a scenario measures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// Sessions open and subscribed, no events: memory per session.
    Idle,
    /// Events at increasing rates: delivered rate, latency, loss, CPU.
    Throughput,
    /// All sessions dropped and reconnecting at once: handshakes per second.
    Storm,
}

/// One rate step of a throughput scenario.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum Step {
    /// `"max"`: as fast as the target takes events (a closed loop with a window of
    /// outstanding events per customer); finds saturation.
    Max(MaxTag),
    /// A fraction of the saturation rate the `max` step found.
    Fraction(f64),
}

/// The string `"max"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MaxTag {
    /// Saturation.
    Max,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Max(_) => f.write_str("max"),
            Step::Fraction(x) => write!(f, "{:.0}%", x * 100.0),
        }
    }
}

/// A scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Case {
    /// Its name (`tenants`).
    pub(crate) name: String,
    /// What it is for, with the target figure.
    pub(crate) goal: String,
    /// What it measures.
    pub(crate) kind: Kind,
    /// Downstream sessions in all.
    pub(crate) sessions: u32,
    /// Customers the sessions are spread over (round-robin).
    pub(crate) customers: u32,
    /// Bytes of each event as a client receives it.
    #[serde(default = "default_event_bytes")]
    pub(crate) event_bytes: usize,
    /// Length of each rate step.
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub(crate) duration: Duration,
    /// Rate steps, in order; the first must be `"max"` if any is a fraction.
    #[serde(default)]
    pub(crate) steps: Vec<Step>,
    /// Events per customer that may be outstanding in the `max` step.
    #[serde(default = "default_window")]
    pub(crate) window: u32,
    /// How long idle sessions are held before memory is read.
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub(crate) hold: Duration,
    /// Handshakes in flight at most while opening sessions.
    #[serde(default = "default_concurrency")]
    pub(crate) connect_concurrency: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+sources) the sessions are spread over.
    #[serde(default = "default_sources")]
    pub(crate) sources: u8,
}

fn default_event_bytes() -> usize {
    300
}
fn default_duration() -> Duration {
    Duration::from_secs(8)
}
fn default_window() -> u32 {
    8
}
fn default_hold() -> Duration {
    Duration::from_secs(5)
}
fn default_concurrency() -> usize {
    1000
}
fn default_sources() -> u8 {
    16
}

impl Case {
    /// Reads a case file.
    ///
    /// # Errors
    /// When the file cannot be read or does not describe a case.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Case> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let case: Case =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        case.check()?;
        Ok(case)
    }

    /// Checks the case makes sense.
    ///
    /// # Errors
    /// A message naming the problem.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sessions > 0 && self.customers > 0,
            "sessions and customers must be positive"
        );
        anyhow::ensure!(
            self.customers <= self.sessions,
            "at least one session per customer"
        );
        anyhow::ensure!(
            self.event_bytes >= 64 && self.event_bytes <= 64 * 1024,
            "event_bytes in 64..=65536"
        );
        if self.kind == Kind::Throughput {
            anyhow::ensure!(!self.steps.is_empty(), "a throughput case needs steps");
            if self.steps.iter().any(|s| matches!(s, Step::Fraction(_))) {
                anyhow::ensure!(
                    matches!(self.steps[0], Step::Max(_)),
                    "fractions need a first \"max\" step"
                );
            }
        }
        Ok(())
    }

    /// Sessions of customer `c` (sessions are dealt round-robin).
    pub(crate) fn sessions_of(&self, c: u32) -> u32 {
        self.sessions / self.customers + u32::from(c < self.sessions % self.customers)
    }
}
