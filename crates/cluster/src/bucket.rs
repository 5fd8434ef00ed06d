//! A NATS key-value bucket that is made again when NATS lost it (its state was wiped): the
//! leases and the interest both live in one.

use async_nats::jetstream::{self, kv};

/// A bucket of `config`, and how to make it again.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub(crate) store: kv::Store,
    context: jetstream::Context,
    config: kv::Config,
}

impl Bucket {
    /// Opens (creating if needed) the bucket `config` describes; the error is JetStream's.
    pub(crate) async fn open(
        client: async_nats::Client,
        config: kv::Config,
    ) -> Result<Bucket, String> {
        let context = jetstream::new(client);
        let store = context
            .create_key_value(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Bucket {
            store,
            context,
            config,
        })
    }

    /// Creates the bucket again if NATS lost it; the handle works on.
    pub(crate) async fn reopen(&self) -> Result<(), String> {
        self.context
            .create_key_value(self.config.clone())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
