//! Distributed runs over NATS JetStream: a coordinator publishes one job per shard, workers pull
//! and process them, and a key-value bucket records every shard's state.
//!
//! - Jobs live in the stream [`JOB_STREAM`] (work-queue retention, file storage) on subjects
//!   `capfilt.jobs.RUN_ID`. A job is a reference to the shard's rows in the run's storage, never
//!   the rows themselves. One durable pull consumer, [`WORKER_CONSUMER`], is shared by all
//!   workers, so each job goes to one worker at a time.
//! - Shard states live in the bucket [`STATE_BUCKET`] under `RUN_ID.shard.SHARD_ID`: queued,
//!   running, done (with counts and timings) or failed (with the last error). A worker writes
//!   `done` only after the shard's Parquet object is complete, and acknowledges the job after
//!   that, so a job lost between the two is redone and overwrites the same object.
//! - The run itself is described under `RUN_ID.run`, for `capfilt status`.

pub mod coordinator;
pub mod status;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, kv, stream};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::pipeline::ShardRecord;

/// The stream that carries jobs of every run.
pub const JOB_STREAM: &str = "CAPFILT_JOBS";
/// The durable pull consumer shared by all workers.
pub const WORKER_CONSUMER: &str = "capfilt-workers";
/// The key-value bucket with run and shard states.
pub const STATE_BUCKET: &str = "capfilt-state";

/// Folder, within a run's storage, for everything that is not an output shard.
const RUN_FOLDER: &str = "_capfilt/runs";

/// How to reach NATS. Secrets are wrapped so `Debug` output never shows them.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (nats://, tls://). Credentials in the URL work but
    /// are better passed with the options below.
    #[arg(long = "nats", env = "CAPFILT_NATS_URL", value_name = "URL")]
    pub url: Secret,
    /// User name for user/password authentication.
    #[arg(long = "nats-user", env = "CAPFILT_NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[arg(
        long = "nats-password",
        env = "CAPFILT_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,
    /// Authentication token.
    #[arg(
        long = "nats-token",
        env = "CAPFILT_NATS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,
    /// NKey seed (starts with `SU`).
    #[arg(long = "nats-nkey", env = "CAPFILT_NATS_NKEY", hide_env_values = true)]
    pub nkey: Option<Secret>,
    /// Credentials file (JWT and NKey seed) as issued by nsc.
    #[arg(long = "nats-creds", env = "CAPFILT_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// PEM file of CA certificates that sign the server's certificate.
    #[arg(long = "nats-tls-ca", env = "CAPFILT_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs --nats-tls-key.
    #[arg(
        long = "nats-tls-cert",
        env = "CAPFILT_NATS_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "nats-tls-key", env = "CAPFILT_NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long = "nats-require-tls", env = "CAPFILT_NATS_REQUIRE_TLS")]
    pub require_tls: bool,
}

/// A string that prints as `***` in `Debug` and `Display`, for passwords, tokens and URLs that
/// may carry credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Removes `user:password@` from each URL of a comma-separated list, for logs and errors.
pub fn redact_url_list(urls: &str) -> String {
    urls.split(',')
        .map(|url| crate::redact::redact_urls(url.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsArgs {
    /// Connects and then reconnects without limit, so a client outlives NATS restarts. With
    /// `wait_for_server`, the first connection is retried in the background too, for workers
    /// that start before the server. `name` identifies the client in the server's monitoring.
    pub async fn connect(
        &self,
        name: &str,
        wait_for_server: bool,
    ) -> anyhow::Result<async_nats::Client> {
        let display_url = redact_url_list(self.url.expose());
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(10))
            .require_tls(self.require_tls)
            .event_callback(|event| async move { log_connection_event(event) });

        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_string());
        }
        if let Some(seed) = &self.nkey {
            options = options.nkey(seed.expose().to_string());
        }
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.with_context(|| {
                format!("failed to read NATS credentials file {}", path.display())
            })?;
        }
        if wait_for_server {
            options = options.retry_on_initial_connect();
        }
        if let Some(path) = &self.tls_ca {
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }

        tracing::info!(server = %display_url, "connecting to NATS");
        options
            .connect(self.url.expose())
            .await
            .map_err(|e| anyhow::anyhow!("failed to connect to NATS at {display_url}: {e}"))
    }
}

fn log_connection_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("connected to NATS"),
        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
        other => tracing::debug!(event = %other, "NATS connection event"),
    }
}

/// Settings of the shared worker consumer. The first process to create the consumer sets them;
/// later ones use what the server has.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct QueueArgs {
    /// How long a job may go without an acknowledgement or progress report before the server
    /// hands it to another worker. Workers report progress every third of this.
    #[arg(long, env = "CAPFILT_ACK_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of a job before it is recorded as failed.
    #[arg(long, env = "CAPFILT_MAX_DELIVER", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliver: i64,
}

/// Creates (or opens) the job stream, the worker consumer and the state bucket.
pub async fn open_queue(client: &async_nats::Client, queue: QueueArgs) -> anyhow::Result<Queue> {
    // Processes starting together race to create the stream, consumer and bucket, and the
    // loser of a race gets an error (from NATS 2.9, "subjects overlap" for the stream). The
    // next attempt finds what the winner created.
    let mut attempt = 1;
    loop {
        match try_open_queue(client, queue).await {
            Ok(opened) => return Ok(opened),
            Err(error) if attempt < OPEN_ATTEMPTS => {
                tracing::debug!(attempt, error = %format!("{error:#}"), "opening the job queue failed; retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Attempts at opening the queue before giving up.
const OPEN_ATTEMPTS: u32 = 4;

async fn try_open_queue(client: &async_nats::Client, queue: QueueArgs) -> anyhow::Result<Queue> {
    let context = jetstream::new(client.clone());
    let stream = context
        .get_or_create_stream(stream::Config {
            name: JOB_STREAM.into(),
            subjects: vec!["capfilt.jobs.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("failed to open JetStream stream {JOB_STREAM}: {e} (check that the server is reachable and runs with JetStream enabled, -js)"))?;
    let consumer = open_consumer(&stream, queue).await?;
    let states = open_states(&context).await?;
    Ok(Queue {
        context,
        stream,
        consumer,
        states,
    })
}

/// The job stream, the worker consumer and the state bucket.
pub struct Queue {
    pub context: jetstream::Context,
    pub stream: stream::Stream,
    pub consumer: consumer::PullConsumer,
    pub states: kv::Store,
}

pub async fn open_consumer(
    stream: &stream::Stream,
    queue: QueueArgs,
) -> anyhow::Result<consumer::PullConsumer> {
    stream
        .get_or_create_consumer(
            WORKER_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(WORKER_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: queue.ack_wait,
                max_deliver: queue.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("failed to open JetStream consumer {WORKER_CONSUMER}: {e}"))
}

/// Opens the state bucket, creating its stream directly when it does not exist.
///
/// `create_key_value` first queries the account, and async-nats 0.52 cannot parse that reply
/// from NATS 2.9 servers (the version Debian 12 ships). The stream below has the layout NATS
/// defines for a bucket, so every client sees an ordinary key-value bucket.
async fn open_states(context: &jetstream::Context) -> anyhow::Result<kv::Store> {
    if let Ok(store) = context.get_key_value(STATE_BUCKET).await {
        return Ok(store);
    }
    context
        .get_or_create_stream(stream::Config {
            name: format!("KV_{STATE_BUCKET}"),
            subjects: vec![format!("$KV.{STATE_BUCKET}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("failed to create key-value bucket {STATE_BUCKET}: {e}"))?;
    context
        .get_key_value(STATE_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("failed to open key-value bucket {STATE_BUCKET}: {e}"))
}

/// One shard's work, as published. Small by design: the rows stay in storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    pub shard_id: String,
    pub input: String,
    /// The shard's position in its input, from 0.
    pub index: u64,
    pub first_row: u64,
    pub rows: usize,
    /// The run's storage location: a folder or `s3://bucket/prefix`.
    pub storage: String,
    /// The object, within `storage`, holding the shard's rows as gzipped JSON lines.
    pub rows_object: String,
    /// The folder that relative image paths in a local list resolve against.
    pub base_dir: Option<PathBuf>,
    pub config: RunConfig,
}

/// A shard's state in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ShardState {
    Queued {
        at: f64,
    },
    Running {
        worker: String,
        delivery: i64,
        at: f64,
    },
    Done {
        worker: String,
        delivery: i64,
        at: f64,
        record: ShardRecord,
        upload_seconds: f64,
    },
    Failed {
        error: String,
        deliveries: i64,
        at: f64,
    },
}

impl ShardState {
    pub fn is_final(&self) -> bool {
        matches!(self, ShardState::Done { .. } | ShardState::Failed { .. })
    }
}

/// A run's description, stored for `capfilt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub storage: String,
    pub inputs: Vec<String>,
    pub shards: usize,
    pub rows: u64,
    pub started_at: f64,
}

/// Reads every shard state recorded for a run, by shard id. Values that do not parse are left
/// out, so a shard written by an incompatible version counts as not started.
pub async fn read_shard_states(
    states: &kv::Store,
    run_id: &str,
) -> anyhow::Result<BTreeMap<String, ShardState>> {
    use futures::StreamExt;

    let prefix = format!("{run_id}.shard.");
    let mut keys = states
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("failed to list shard states: {e}"))?;
    let mut shards = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| anyhow::anyhow!("failed to list shard states: {e}"))?;
        let Some(shard_id) = key.strip_prefix(&prefix) else {
            continue;
        };

        let value = states
            .get(&key)
            .await
            .map_err(|e| anyhow::anyhow!("failed to read {key}: {e}"))?;
        if let Some(state) = value.and_then(|v| serde_json::from_slice::<ShardState>(&v).ok()) {
            shards.insert(shard_id.to_string(), state);
        }
    }
    Ok(shards)
}

pub fn shard_key(run_id: &str, shard_id: &str) -> String {
    format!("{run_id}.shard.{shard_id}")
}

pub fn run_key(run_id: &str) -> String {
    format!("{run_id}.run")
}

pub fn job_subject(run_id: &str) -> String {
    format!("capfilt.jobs.{run_id}")
}

pub fn rows_object(run_id: &str, shard_id: &str) -> String {
    format!("{RUN_FOLDER}/{run_id}/rows/{shard_id}.jsonl.gz")
}

pub fn shard_object(shard_id: &str) -> String {
    format!("{shard_id}.parquet")
}

/// Checks a run id. It becomes part of NATS subjects, bucket keys and object names, so only
/// letters, digits, `-` and `_` are allowed.
pub fn check_run_id(run_id: &str) -> anyhow::Result<()> {
    let valid = !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        bail!("invalid run id {run_id:?}: use 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// Checks a shard id read back from a job or the bucket before it names an object.
pub fn check_shard_id(shard_id: &str) -> anyhow::Result<()> {
    let valid = !shard_id.is_empty()
        && shard_id.len() <= 64
        && shard_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        bail!("invalid shard id {shard_id:?}");
    }
    Ok(())
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_restricted() {
        for bad in ["", "a.b", "a/b", "../x", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(check_run_id(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["nightly-2026_12_04", "r1", "ABC"] {
            assert!(check_run_id(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn server_list_is_redacted() {
        assert_eq!(
            redact_url_list("nats://user:pw@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url_list("nats://a:b@h1, nats://h2"),
            "nats://***@h1,nats://h2"
        );
        assert_eq!(
            redact_url_list("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
