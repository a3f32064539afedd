//! `capfilt worker`: pulls shard jobs, runs them through the same pipeline as `capfilt run`,
//! uploads each shard's Parquet file and acknowledges the job only after that.
//!
//! A worker pulls only as many jobs as it has free slots and reports progress on every job it
//! holds. On SIGTERM it stops pulling and lets the jobs in hand finish until the shutdown
//! deadline. It hands the rest back with a negative acknowledgement, so another worker takes
//! them at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use capfilt_coordinator::{InputRow, Shard};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    check_shard_id, now, shard_key, shard_object, Job, NatsArgs, Queue, QueueArgs, ShardState,
};
use crate::config::RunConfig;
use crate::fetch::Fetcher;
use crate::pipeline::{Engine, ShardRecord};
use crate::storage::Storage;

/// How long one pull request waits for jobs before the worker checks for idleness or shutdown.
const FETCH_EXPIRY: Duration = Duration::from_secs(2);

/// How long a configuration whose pipeline failed to start is failed without another try.
const BROKEN_CONFIG_MEMORY: Duration = Duration::from_secs(300);

/// Maximum delay before a failed job is offered again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Worker settings from the command line.
pub struct WorkerOptions {
    pub nats: NatsArgs,
    pub queue: QueueArgs,
    /// The name in logs and shard states.
    pub name: String,
    /// Jobs held at once. Two keep the model busy while the next shard downloads.
    pub max_shards: usize,
    pub exit_when_idle: bool,
    /// Time allowed after SIGTERM for the jobs in hand to finish before they are handed back.
    pub shutdown_timeout: Duration,
    /// Overrides the compute device of every job's configuration.
    pub device: Option<String>,
    /// Base delay before a failed job is retried; doubled on each further delivery.
    pub retry_delay: Duration,
}

/// Job counts of a worker, printed when it exits.
#[derive(Debug, Default)]
pub struct WorkerSummary {
    pub done: u64,
    pub skipped: u64,
    pub failed: u64,
    pub retried: u64,
    pub handed_back: u64,
}

/// The result of one job.
enum Outcome {
    Done,
    /// The shard was already done; the duplicate job was acknowledged.
    Skipped,
    Failed,
    Retried,
    HandedBack,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// A job failure: transient ones are retried until deliveries run out, permanent ones fail the
/// shard at once.
struct JobError {
    message: String,
    permanent: bool,
}

impl JobError {
    fn transient(error: anyhow::Error) -> Self {
        JobError {
            message: format!("{error:#}"),
            permanent: false,
        }
    }

    fn permanent(error: anyhow::Error) -> Self {
        JobError {
            message: format!("{error:#}"),
            permanent: true,
        }
    }
}

/// State shared by the worker's job tasks.
struct Shared {
    states: jetstream::kv::Store,
    name: String,
    staging: PathBuf,
    ack_wait: Duration,
    max_deliver: i64,
    retry_delay: Duration,
    storages: Mutex<HashMap<String, Storage>>,
    hand_back: CancellationToken,
}

/// The pipeline for one configuration. Jobs with another configuration wait until it drains.
struct LoadedEngine {
    fingerprint: String,
    engine: Arc<Engine>,
}

/// Runs a worker until SIGTERM or SIGINT, or until the queue is empty with `exit_when_idle`.
pub async fn run(options: WorkerOptions) -> anyhow::Result<WorkerSummary> {
    let client = options
        .nats
        .connect(&format!("capfilt-worker {}", options.name), true)
        .await?;
    let mut queue = super::open_queue(&client, options.queue).await?;
    let consumer_config = queue.consumer.cached_info().config.clone();
    let staging =
        tempfile::tempdir().context("failed to create a staging folder for shard files")?;
    tracing::info!(worker = %options.name, max_shards = options.max_shards, ack_wait = ?consumer_config.ack_wait, max_deliver = consumer_config.max_deliver, "worker started");

    let shutdown = shutdown_signal();
    let shared = Arc::new(Shared {
        states: queue.states.clone(),
        name: options.name.clone(),
        staging: staging.path().to_path_buf(),
        ack_wait: consumer_config.ack_wait,
        max_deliver: consumer_config.max_deliver,
        retry_delay: options.retry_delay,
        storages: Mutex::new(HashMap::new()),
        hand_back: CancellationToken::new(),
    });

    let mut summary = WorkerSummary::default();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut engine: Option<LoadedEngine> = None;
    let mut errors = ErrorLog::default();
    // Configurations whose pipeline failed to start, with the error and the time, so their
    // other jobs fail at once for a while instead of loading the same models again.
    let mut broken: HashMap<String, (String, Instant)> = HashMap::new();

    while !shutdown.is_cancelled() {
        reap(&mut tasks, &mut summary);
        if engine.as_ref().is_some_and(|e| e.engine.is_stopped()) {
            anyhow::bail!("the pipeline stopped; exiting so the jobs in hand go to other workers");
        }

        let free = options.max_shards.saturating_sub(tasks.len());
        if free == 0 {
            tokio::select! {
                Some(joined) = tasks.join_next() => record(joined, &mut summary),
                _ = shutdown.cancelled() => {}
            }
            continue;
        }

        let messages = match pull(&queue, free, &shutdown).await {
            Ok(messages) => {
                errors.recovered();
                messages
            }
            Err(error) => {
                errors.failed(&error);
                tokio::time::sleep(Duration::from_secs(1)).await;
                reopen(&client, &mut queue, options.queue).await;
                continue;
            }
        };

        if messages.is_empty() {
            // An empty pull also follows a deleted consumer, which no pull reports as an error,
            // so the consumer is checked each time.
            let backlog = match consumer_backlog(&mut queue).await {
                Ok(backlog) => backlog,
                Err(error) => {
                    errors.failed(&error);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    reopen(&client, &mut queue, options.queue).await;
                    continue;
                }
            };
            if options.exit_when_idle && tasks.is_empty() && backlog == 0 {
                tracing::info!(worker = %options.name, "no jobs left; exiting");
                break;
            }
            continue;
        }

        for message in messages {
            let Some(job) = parse_job(&message).await else {
                continue;
            };
            let fingerprint = fingerprint(&job.config, options.device.as_deref());
            broken.retain(|_, (_, since)| since.elapsed() < BROKEN_CONFIG_MEMORY);
            if let Some((error, _)) = broken.get(&fingerprint) {
                fail_without_engine(&message, &job, &shared, error).await;
                continue;
            }
            if engine.as_ref().is_none_or(|e| e.fingerprint != fingerprint) {
                drain(&mut tasks, &mut summary).await;
                if let Some(old) = engine.take() {
                    finish_engine(old).await;
                }
                let config = effective_config(&job.config, options.device.as_deref());
                match start_engine(&config, &shared.staging).await {
                    Ok(started) => {
                        engine = Some(LoadedEngine {
                            fingerprint,
                            engine: Arc::new(started),
                        })
                    }
                    Err(error) => {
                        // One run's bad configuration (a missing model, say) must not stop the
                        // worker: its jobs fail through the usual retries, other runs go on.
                        let error = format!("failed to start the pipeline: {error:#}");
                        tracing::error!(worker = %options.name, run_id = %job.run_id, %error, "cannot run this configuration");
                        fail_without_engine(&message, &job, &shared, &error).await;
                        broken.insert(fingerprint, (error, Instant::now()));
                        continue;
                    }
                }
            }
            let engine = engine.as_ref().expect("started above").engine.clone();
            crate::metrics::metrics().shards_in_flight.inc();
            tasks.spawn(handle_job_counted(message, job, engine, shared.clone()));
        }
    }

    shut_down(&mut tasks, &mut summary, &shared, options.shutdown_timeout).await;
    // After a hand-back the pipeline still contains those shards. Waiting for it would redo work
    // that another worker now owns, so the process exits without draining it.
    if summary.handed_back == 0 {
        if let Some(old) = engine.take() {
            finish_engine(old).await;
        }
    }
    Ok(summary)
}

/// Cancels on SIGTERM or SIGINT.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested: no new jobs will be pulled");
        cancel.cancel();
    });
    token
}

/// Pulls up to `count` jobs, waiting at most [`FETCH_EXPIRY`] for the first.
async fn pull(
    queue: &Queue,
    count: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = queue
        .consumer
        .fetch()
        .max_messages(count)
        .expires(FETCH_EXPIRY)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("failed to pull jobs: {e}"))?;

    let mut messages = Vec::new();
    loop {
        tokio::select! {
            next = batch.next() => match next {
                Some(Ok(message)) => messages.push(message),
                Some(Err(error)) => {
                    // Jobs received before the error are kept; the rest stay on the server.
                    if messages.is_empty() {
                        anyhow::bail!("failed to pull jobs: {error}");
                    }
                    return Ok(messages);
                }
                None => return Ok(messages),
            },
            _ = shutdown.cancelled() => {
                // A job received while shutting down goes straight back to the queue.
                for message in messages.drain(..) {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                return Ok(messages);
            }
        }
    }
}

/// Opens the stream, consumer and bucket again after an error: the server may have restarted
/// or the consumer may have been deleted.
async fn reopen(client: &async_nats::Client, queue: &mut Queue, settings: QueueArgs) {
    match super::open_queue(client, settings).await {
        Ok(reopened) => {
            tracing::info!("job stream, consumer and state bucket opened again");
            *queue = reopened;
        }
        Err(error) => {
            tracing::debug!(error = %format!("{error:#}"), "NATS queue not available yet")
        }
    }
}

/// Returns the jobs the consumer has waiting or held by any worker, or an error when the
/// consumer cannot be read (deleted, or the server is away).
async fn consumer_backlog(queue: &mut Queue) -> anyhow::Result<u64> {
    let info = queue
        .consumer
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("failed to read the worker consumer: {e}"))?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

async fn parse_job(message: &jetstream::Message) -> Option<Job> {
    match serde_json::from_slice::<Job>(&message.payload) {
        Ok(job)
            if check_shard_id(&job.shard_id).is_ok()
                && super::check_run_id(&job.run_id).is_ok() =>
        {
            Some(job)
        }
        Ok(job) => {
            tracing::error!(run_id = %job.run_id, shard = %job.shard_id, "job has an invalid run or shard id; discarding it");
            let _ = message.ack_with(AckKind::Term).await;
            None
        }
        Err(error) => {
            tracing::error!(subject = %message.subject, %error, "job is not valid JSON for this capfilt version; discarding it");
            let _ = message.ack_with(AckKind::Term).await;
            None
        }
    }
}

fn effective_config(config: &RunConfig, device: Option<&str>) -> RunConfig {
    let mut config = config.clone();
    if let Some(device) = device {
        config.model.device = device.to_string();
    }
    config
}

/// Identifies the pipeline a job needs: jobs whose configurations match share one engine.
fn fingerprint(config: &RunConfig, device: Option<&str>) -> String {
    serde_json::to_string(&effective_config(config, device)).unwrap_or_default()
}

async fn start_engine(config: &RunConfig, staging: &std::path::Path) -> anyhow::Result<Engine> {
    config.validate()?;
    let fetcher = Fetcher::new(config.download.clone())?;
    Engine::start(config, fetcher, staging).await
}

async fn finish_engine(loaded: LoadedEngine) {
    match Arc::try_unwrap(loaded.engine) {
        Ok(engine) => {
            if let Err(error) = engine.finish().await {
                tracing::warn!(error = %format!("{error:#}"), "pipeline stopped with an error");
            }
        }
        Err(_) => tracing::debug!("pipeline still referenced; leaving it to stop with the process"),
    }
}

fn reap(tasks: &mut JoinSet<Outcome>, summary: &mut WorkerSummary) {
    while let Some(joined) = tasks.try_join_next() {
        record(joined, summary);
    }
}

async fn drain(tasks: &mut JoinSet<Outcome>, summary: &mut WorkerSummary) {
    while let Some(joined) = tasks.join_next().await {
        record(joined, summary);
    }
}

fn record(joined: Result<Outcome, tokio::task::JoinError>, summary: &mut WorkerSummary) {
    if joined.is_err() {
        let metrics = crate::metrics::metrics();
        metrics.shards_in_flight.dec();
        metrics.record_shard("panicked");
    }
    match joined {
        Ok(Outcome::Done) => summary.done += 1,
        Ok(Outcome::Skipped) => summary.skipped += 1,
        Ok(Outcome::Failed) => summary.failed += 1,
        Ok(Outcome::Retried) => summary.retried += 1,
        Ok(Outcome::HandedBack) => summary.handed_back += 1,
        Err(error) => tracing::error!(%error, "a job task panicked; its job will be redelivered"),
    }
}

/// Lets the jobs in hand finish until `timeout`, then hands the rest back.
async fn shut_down(
    tasks: &mut JoinSet<Outcome>,
    summary: &mut WorkerSummary,
    shared: &Shared,
    timeout: Duration,
) {
    if tasks.is_empty() {
        return;
    }
    tracing::info!(jobs = tasks.len(), timeout = ?timeout, "waiting for the jobs in hand");
    if tokio::time::timeout(timeout, drain(tasks, summary))
        .await
        .is_ok()
    {
        return;
    }

    tracing::warn!(
        jobs = tasks.len(),
        "shutdown deadline reached; handing the remaining jobs back"
    );
    shared.hand_back.cancel();
    if tokio::time::timeout(Duration::from_secs(10), drain(tasks, summary))
        .await
        .is_err()
    {
        tracing::warn!(
            "some jobs could not be handed back; the server redelivers them after the ack wait"
        );
    }
}

/// Runs `handle_job` and counts its outcome in the metrics as soon as it is settled.
async fn handle_job_counted(
    message: jetstream::Message,
    job: Job,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
) -> Outcome {
    let outcome = handle_job(message, job, engine, shared).await;
    let metrics = crate::metrics::metrics();
    metrics.shards_in_flight.dec();
    metrics.record_shard(outcome.as_str());
    outcome
}

/// Processes one job and settles it: acknowledged when done, retried with a delay on a
/// transient error, terminated when it can never succeed or its deliveries are used up.
async fn handle_job(
    message: jetstream::Message,
    job: Job,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
) -> Outcome {
    let delivery = message.info().map(|i| i.delivered).unwrap_or(1);
    let key = shard_key(&job.run_id, &job.shard_id);
    if is_done(&shared.states, &key).await {
        tracing::info!(shard = %job.shard_id, "shard already done; acknowledging a duplicate job");
        let _ = message.double_ack().await;
        return Outcome::Skipped;
    }

    let running = ShardState::Running {
        worker: shared.name.clone(),
        delivery,
        at: now(),
    };
    put_state(&shared.states, &key, &running).await;
    tracing::info!(shard = %job.shard_id, run_id = %job.run_id, delivery, rows = job.rows, "shard started");

    let work = process(&job, &engine, &shared);
    let result = tokio::select! {
        result = with_progress_acks(&message, shared.ack_wait, work) => result,
        _ = shared.hand_back.cancelled() => {
            tracing::info!(shard = %job.shard_id, "handing the shard back");
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return Outcome::HandedBack;
        }
    };

    match result {
        Ok((record, upload_seconds)) => {
            settle_done(&message, &job, &shared, delivery, record, upload_seconds).await
        }
        Err(error) => settle_failed(&message, &job, &shared, delivery, error).await,
    }
}

async fn settle_done(
    message: &jetstream::Message,
    job: &Job,
    shared: &Shared,
    delivery: i64,
    record: ShardRecord,
    upload_seconds: f64,
) -> Outcome {
    tracing::info!(shard = %job.shard_id, rows = record.rows, ok = record.counts.ok, seconds = record.seconds, upload_seconds, "shard done");
    let state = ShardState::Done {
        worker: shared.name.clone(),
        delivery,
        at: now(),
        record,
        upload_seconds,
    };
    let key = shard_key(&job.run_id, &job.shard_id);

    // The output object is complete, so a lost state write or acknowledgement only costs a
    // redelivery that redoes the shard and overwrites the same object.
    if !put_state(&shared.states, &key, &state).await {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return Outcome::Retried;
    }
    if let Err(error) = message.double_ack().await {
        tracing::warn!(shard = %job.shard_id, %error, "failed to acknowledge the job; it may be redelivered and skipped");
    }
    Outcome::Done
}

async fn settle_failed(
    message: &jetstream::Message,
    job: &Job,
    shared: &Shared,
    delivery: i64,
    error: JobError,
) -> Outcome {
    let last = error.permanent || delivery >= shared.max_deliver;
    if !last {
        let delay = retry_delay(shared.retry_delay, delivery);
        tracing::warn!(shard = %job.shard_id, delivery, error = %error.message, retry_in = ?delay, "shard failed; it will be retried");
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        return Outcome::Retried;
    }

    tracing::error!(shard = %job.shard_id, delivery, error = %error.message, "shard failed for good");
    let state = ShardState::Failed {
        error: error.message,
        deliveries: delivery,
        at: now(),
    };
    put_state(
        &shared.states,
        &shard_key(&job.run_id, &job.shard_id),
        &state,
    )
    .await;
    let _ = message.ack_with(AckKind::Term).await;
    Outcome::Failed
}

/// Settles a job whose pipeline could not start, as a transient failure: another worker, with
/// other files or devices, may still run it.
async fn fail_without_engine(
    message: &jetstream::Message,
    job: &Job,
    shared: &Shared,
    error: &str,
) {
    let delivery = message.info().map(|i| i.delivered).unwrap_or(1);
    let error = JobError {
        message: error.to_string(),
        permanent: false,
    };
    let outcome = settle_failed(message, job, shared, delivery, error).await;
    crate::metrics::metrics().record_shard(outcome.as_str());
}

/// Doubles `base` for every delivery after the first, up to [`MAX_RETRY_DELAY`].
fn retry_delay(base: Duration, delivery: i64) -> Duration {
    let doublings = (delivery - 1).clamp(0, 16) as u32;
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// Runs `work` while telling the server every third of the ack wait that the job is alive.
async fn with_progress_acks<T>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "failed to report job progress");
                }
            }
        }
    }
}

/// Reads the shard's rows, runs them through the pipeline and uploads the Parquet file.
async fn process(
    job: &Job,
    engine: &Engine,
    shared: &Shared,
) -> Result<(ShardRecord, f64), JobError> {
    let storage = storage_for(shared, &job.storage)
        .await
        .map_err(JobError::permanent)?;
    let shard = read_shard(job, &storage).await?;

    let (done_tx, done_rx) = oneshot::channel();
    engine
        .submit(shard, job.base_dir.clone(), done_tx)
        .await
        .map_err(JobError::transient)?;
    let record = done_rx.await.map_err(|_| {
        JobError::transient(anyhow::anyhow!(
            "the pipeline stopped before the shard was written"
        ))
    })?;

    let started = Instant::now();
    let local = shared.staging.join(&record.file);
    let uploaded = storage.put_file(&shard_object(&job.shard_id), &local).await;
    let _ = tokio::fs::remove_file(&local).await;
    uploaded.map_err(JobError::transient)?;
    Ok((record, started.elapsed().as_secs_f64()))
}

async fn storage_for(shared: &Shared, uri: &str) -> anyhow::Result<Storage> {
    if let Some(storage) = shared.storages.lock().expect("storage cache lock").get(uri) {
        return Ok(storage.clone());
    }
    let storage = Storage::open(uri).await?;
    shared
        .storages
        .lock()
        .expect("storage cache lock")
        .insert(uri.to_string(), storage.clone());
    Ok(storage)
}

/// Loads a job's rows. A missing or unreadable rows object can never succeed, so it fails the
/// shard at once; a storage error may pass and is retried.
async fn read_shard(job: &Job, storage: &Storage) -> Result<Shard, JobError> {
    let bytes = storage
        .get(&job.rows_object)
        .await
        .map_err(JobError::transient)?
        .ok_or_else(|| {
            JobError::permanent(anyhow::anyhow!(
                "the shard's rows are missing from {}",
                storage.describe(&job.rows_object)
            ))
        })?;
    let rows = tokio::task::spawn_blocking(move || decode_rows(&bytes))
        .await
        .map_err(|e| JobError::transient(e.into()))?
        .map_err(|e| {
            JobError::permanent(e.context(format!(
                "the shard's rows in {} are corrupt",
                storage.describe(&job.rows_object)
            )))
        })?;

    if rows.len() != job.rows {
        return Err(JobError::permanent(anyhow::anyhow!(
            "the rows object contains {} rows but the job expects {}",
            rows.len(),
            job.rows
        )));
    }
    Ok(Shard {
        id: job.shard_id.clone(),
        input_label: job.input.clone(),
        index: job.index,
        first_row: job.first_row,
        rows,
    })
}

/// Reads gzipped JSON lines of `InputRow`s.
pub fn decode_rows(bytes: &[u8]) -> anyhow::Result<Vec<InputRow>> {
    use std::io::BufRead;

    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(bytes));
    let mut rows = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.context("failed to decompress")?;
        let row = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not a valid row", number + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

async fn is_done(states: &jetstream::kv::Store, key: &str) -> bool {
    let Ok(Some(value)) = states.get(key).await else {
        return false;
    };
    matches!(
        serde_json::from_slice::<ShardState>(&value),
        Ok(ShardState::Done { .. })
    )
}

/// Writes a shard state, retrying briefly across a NATS reconnect. Returns whether it landed.
async fn put_state(states: &jetstream::kv::Store, key: &str, state: &ShardState) -> bool {
    let Ok(value) = serde_json::to_vec(state) else {
        return false;
    };
    for attempt in 0..5u32 {
        match states.put(key, value.clone().into()).await {
            Ok(_) => return true,
            Err(error) => {
                tracing::warn!(key, attempt, %error, "failed to write the shard state; retrying");
                tokio::time::sleep(Duration::from_millis(500) * (attempt + 1)).await;
            }
        }
    }
    false
}

/// Logs the first pull error and then one line every 30 seconds with a count, so a worker cut
/// off from NATS reports it without flooding the log.
#[derive(Default)]
struct ErrorLog {
    failures: u64,
    last_logged: Option<Instant>,
}

impl ErrorLog {
    fn failed(&mut self, error: &anyhow::Error) {
        self.failures += 1;
        let due = self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
        if due {
            tracing::warn!(error = %format!("{error:#}"), failures = self.failures, "cannot pull jobs; retrying every second");
            self.last_logged = Some(Instant::now());
        }
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "pulling jobs again");
        }
        *self = ErrorLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_cap() {
        let base = Duration::from_secs(1);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 3), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 40), MAX_RETRY_DELAY);
    }
}
