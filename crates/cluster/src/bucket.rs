//! The cluster's JetStream objects (its key-value buckets and the log's stream), adopted when
//! they exist and made when they do not, and made again when NATS lost them (its state was
//! wiped).
//!
//! An object that exists is used as it is: an operator may have made it with more replicas,
//! longer limits or another storage, and a node never scales it down nor refuses it. Only
//! what the node cannot work without is added (the log's subjects); a setting that differs
//! from what this node would make is said once in the log.

use async_nats::jetstream::{self, kv, stream};

/// A bucket of `config`, and how to make it again.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub(crate) store: kv::Store,
    context: jetstream::Context,
    config: kv::Config,
    /// The age limit of the bucket as it is (an adopted one may have one).
    max_age: std::time::Duration,
}

impl Bucket {
    /// Opens the bucket `config` names, adopting it as it is if it exists and creating it as
    /// `config` says if not; the error is JetStream's.
    pub(crate) async fn open(
        client: async_nats::Client,
        config: kv::Config,
    ) -> Result<Bucket, String> {
        let context = jetstream::new(client);
        let mut max_age = config.max_age;
        let store = match context.get_key_value(&config.bucket).await {
            Ok(store) => {
                if let Some(found) = note_differences(&context, &config).await {
                    max_age = found;
                }
                store
            }
            Err(_) => match context.create_key_value(config.clone()).await {
                Ok(store) => store,
                // Made meanwhile by another node.
                Err(created) => context
                    .get_key_value(&config.bucket)
                    .await
                    .map_err(|_| created.to_string())?,
            },
        };
        Ok(Bucket {
            store,
            context,
            config,
            max_age,
        })
    }

    /// Its age limit (zero: none).
    pub(crate) fn max_age(&self) -> std::time::Duration {
        self.max_age
    }

    /// Creates the bucket again if NATS lost it; the handle works on.
    pub(crate) async fn reopen(&self) -> Result<(), String> {
        if self
            .context
            .get_key_value(&self.config.bucket)
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.context
            .create_key_value(self.config.clone())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Says which of an adopted bucket's settings differ from what this node would have made;
/// answers its age limit.
async fn note_differences(
    context: &jetstream::Context,
    config: &kv::Config,
) -> Option<std::time::Duration> {
    let mut stream = context
        .get_stream(format!("KV_{}", config.bucket))
        .await
        .ok()?;
    let info = stream.info().await.ok()?;
    let found = &info.config;
    if found.max_age != config.max_age || found.num_replicas != config.num_replicas.max(1) {
        tracing::info!(
            bucket = %config.bucket,
            replicas = found.num_replicas,
            max_age = ?found.max_age,
            wanted_replicas = config.num_replicas.max(1),
            wanted_max_age = ?config.max_age,
            "Using the existing bucket as it is"
        );
    }
    Some(found.max_age)
}

/// Opens the stream `config` names, adopting it if it exists (adding `config`'s subjects if
/// it lacks them, nothing else) and creating it as `config` says if not.
pub(crate) async fn open_stream(
    context: &jetstream::Context,
    config: &stream::Config,
) -> Result<stream::Stream, String> {
    let mut existing = match context.get_stream(&config.name).await {
        Ok(existing) => existing,
        Err(_) => {
            return match context.create_stream(config.clone()).await {
                Ok(made) => Ok(made),
                Err(created) => context
                    .get_stream(&config.name)
                    .await
                    .map_err(|_| created.to_string()),
            };
        }
    };
    let info = existing.info().await.map_err(|e| e.to_string())?;
    let mut adopted = info.config.clone();
    let missing: Vec<String> = config
        .subjects
        .iter()
        .filter(|ours| !adopted.subjects.iter().any(|theirs| covers(theirs, ours)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        adopted.subjects.extend(missing);
        context
            .update_stream(adopted.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    if adopted.num_replicas != config.num_replicas.max(1) || adopted.max_bytes != config.max_bytes {
        tracing::info!(
            stream = %config.name,
            replicas = adopted.num_replicas,
            max_bytes = adopted.max_bytes,
            "Using the existing log's stream as it is"
        );
    }
    context
        .get_stream(&config.name)
        .await
        .map_err(|e| e.to_string())
}

/// Whether the subject filter `wide` takes every subject `narrow` (itself a filter) takes.
fn covers(wide: &str, narrow: &str) -> bool {
    let mut wide = wide.split('.');
    let mut narrow = narrow.split('.');
    loop {
        match (wide.next(), narrow.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(n)) if n != ">" => {}
            (Some(w), Some(n)) if w == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_wider_filter_covers_a_narrower_one() {
        for (wide, narrow) in [
            ("fanout.>", "fanout.*.*"),
            ("fanout.*.*", "fanout.*.*"),
            ("fanout.*.*", "fanout.o.n1"),
            (">", "fanout.o.*"),
            ("fanout.>", "fanout.>"),
        ] {
            assert!(covers(wide, narrow), "{wide} {narrow}");
        }
        for (wide, narrow) in [
            ("fanout.*.*", "fanout.>"),
            ("fanout.*", "fanout.*.*"),
            ("fanout.o.*", "fanout.*.*"),
            ("other.>", "fanout.*.*"),
            ("fanout.*.*.*", "fanout.*.*"),
        ] {
            assert!(!covers(wide, narrow), "{wide} {narrow}");
        }
    }
}
