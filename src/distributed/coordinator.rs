//! `capfilt coordinator`: shards the inputs, stores each shard's rows, publishes one job per
//! shard, follows the shard states until every shard is done or failed, and writes the manifest.
//!
//! Re-running with the same run id resumes: shards recorded as done are not published again,
//! failed ones are requeued, and queued or running ones are published again only when their
//! job is no longer in the stream. Shard ids depend only on the input label, the shard size and
//! the row range, so a rerun finds the same ids.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use capfilt_coordinator::{read_rows, shards, InputFile, Shard};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    check_run_id, job_subject, now, rows_object, run_key, shard_key, Job, NatsArgs, Queue,
    QueueArgs, RunInfo, ShardState,
};
use crate::config::RunConfig;
use crate::fetch::Fetcher;
use crate::pipeline::{read_options, ShardRecord};
use crate::progress::Counts;
use crate::storage::Storage;

/// How often progress is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Publish acknowledgements awaited at once; more in flight would only queue in the client.
const PUBLISH_WINDOW: usize = 256;

/// Coordinator settings besides the run configuration.
pub struct CoordinatorOptions {
    pub inputs: Vec<String>,
    pub output: String,
    pub run_id: Option<String>,
    pub nats: NatsArgs,
    pub queue: QueueArgs,
}

/// The run manifest the coordinator writes as `_manifest.json` into the run's storage.
#[derive(Debug, Serialize)]
pub struct CoordinatorSummary {
    pub version: &'static str,
    pub run_id: String,
    pub output: String,
    pub inputs: Vec<String>,
    pub config: RunConfig,
    pub counts: Counts,
    pub shards: Vec<DoneShard>,
    pub failed_shards: Vec<FailedShard>,
    pub failed_inputs: Vec<(String, String)>,
    pub seconds: f64,
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoneShard {
    #[serde(flatten)]
    pub record: ShardRecord,
    pub worker: String,
    pub delivery: i64,
    pub upload_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedShard {
    pub id: String,
    pub error: String,
    pub deliveries: i64,
}

/// Runs a coordinator until every shard of the run is done or failed.
pub async fn run(
    options: CoordinatorOptions,
    config: RunConfig,
) -> anyhow::Result<CoordinatorSummary> {
    let started = Instant::now();
    config.validate()?;
    let storage = Storage::open(&options.output).await?;
    let fetcher = Fetcher::new(config.download.clone())?;
    let list_dir =
        tempfile::tempdir().context("failed to create a temporary folder for remote lists")?;
    let input_files = crate::inputs::resolve(&options.inputs, &fetcher, list_dir.path()).await?;

    let run_id = match &options.run_id {
        Some(run_id) => run_id.clone(),
        None => default_run_id(&options.inputs, &storage.uri()),
    };
    check_run_id(&run_id)?;

    let client = options.nats.connect("capfilt-coordinator", false).await?;
    let queue = super::open_queue(&client, options.queue).await?;
    let max_payload = client.server_info().max_payload;
    tracing::info!(run_id = %run_id, output = %storage.uri(), inputs = input_files.len(), max_payload, "coordinator started");

    check_same_run(&queue, &run_id, &storage, &options.inputs).await?;
    let known = load_states(&queue, &run_id).await?;
    let planner = Planner {
        queue: &queue,
        storage: &storage,
        config: &config,
        run_id: &run_id,
        max_payload,
        known,
    };
    let plan = planner.plan_and_publish(input_files).await?;
    put_run_info(&queue, &run_id, &storage, &options.inputs, &plan).await?;

    let states = follow(&queue, &run_id, plan.shards, &client).await?;
    let summary = summarize(
        &run_id,
        &storage,
        &options.inputs,
        config,
        states,
        plan.failed_inputs,
        started.elapsed().as_secs_f64(),
    );
    let manifest = serde_json::to_vec_pretty(&summary)?;
    storage.put_bytes("_manifest.json", manifest).await?;
    Ok(summary)
}

/// Derives the default run id from the inputs and output, so the same command resumes.
pub fn default_run_id(inputs: &[String], output: &str) -> String {
    use sha2::{Digest, Sha256};

    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(input.as_bytes());
        hasher.update([0]);
    }
    hasher.update(output.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("run-{hex}")
}

/// Reads every shard state recorded for the run.
async fn load_states(queue: &Queue, run_id: &str) -> anyhow::Result<BTreeMap<String, ShardState>> {
    let states = super::read_shard_states(&queue.states, run_id).await?;
    if !states.is_empty() {
        let done = states
            .values()
            .filter(|s| matches!(s, ShardState::Done { .. }))
            .count();
        tracing::info!(run_id, recorded = states.len(), done, "resuming a run");
    }
    Ok(states)
}

/// The planned run: every shard with its known state, and the inputs that failed.
struct Plan {
    shards: BTreeMap<String, Option<ShardState>>,
    rows: u64,
    failed_inputs: Vec<(String, String)>,
}

struct Planner<'a> {
    queue: &'a Queue,
    storage: &'a Storage,
    config: &'a RunConfig,
    run_id: &'a str,
    max_payload: usize,
    known: BTreeMap<String, ShardState>,
}

enum Planned {
    Shard(Shard, Option<std::path::PathBuf>),
    InputFailed(String, String),
}

impl Planner<'_> {
    /// Reads the inputs on a blocking thread and publishes a job for every shard not yet done.
    async fn plan_and_publish(mut self, files: Vec<InputFile>) -> anyhow::Result<Plan> {
        let (sender, mut receiver) = mpsc::channel::<Planned>(4);
        let reader = spawn_reader(files, self.config.clone(), sender)?;
        let mut plan = Plan {
            shards: BTreeMap::new(),
            rows: 0,
            failed_inputs: Vec::new(),
        };
        let mut acks = FuturesUnordered::new();
        let mut published = 0usize;

        while let Some(planned) = receiver.recv().await {
            let (shard, base_dir) = match planned {
                Planned::Shard(shard, base_dir) => (shard, base_dir),
                Planned::InputFailed(input, error) => {
                    tracing::error!(%input, %error, "failed to read input");
                    plan.failed_inputs.push((input, error));
                    continue;
                }
            };
            plan.rows += shard.rows.len() as u64;

            let known = self.known.remove(&shard.id);
            if let Some(state @ ShardState::Done { .. }) = known {
                plan.shards.insert(shard.id.clone(), Some(state));
                continue;
            }
            if self.job_is_queued(&shard.id, known.as_ref()).await {
                plan.shards.insert(shard.id.clone(), known);
                continue;
            }

            plan.shards.insert(shard.id.clone(), None);
            acks.push(self.publish(shard, base_dir).await?.into_future());
            published += 1;
            while acks.len() >= PUBLISH_WINDOW {
                wait_for_ack(&mut acks).await?;
            }
        }
        while !acks.is_empty() {
            wait_for_ack(&mut acks).await?;
        }
        reader
            .await
            .context("the input reader stopped unexpectedly")?;

        tracing::info!(
            run_id = self.run_id,
            shards = plan.shards.len(),
            published,
            rows = plan.rows,
            "jobs published"
        );
        Ok(plan)
    }

    /// Checks whether a queued or running shard's job is still in the stream, in which case
    /// publishing it again would only make a duplicate.
    async fn job_is_queued(&self, shard_id: &str, known: Option<&ShardState>) -> bool {
        if !matches!(
            known,
            Some(ShardState::Queued { .. } | ShardState::Running { .. })
        ) {
            return false;
        }
        let subject = format!("{}.{shard_id}", job_subject(self.run_id));
        self.queue
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok()
    }

    /// Stores the shard's rows, marks it queued and publishes its job. The state is written
    /// before the job so that a fast worker's `done` can never be overwritten by `queued`.
    async fn publish(
        &self,
        shard: Shard,
        base_dir: Option<std::path::PathBuf>,
    ) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
        let object = rows_object(self.run_id, &shard.id);
        let encoded = tokio::task::spawn_blocking({
            let shard = shard.clone();
            move || encode_rows(&shard)
        })
        .await
        .context("row encoder stopped")??;
        self.storage.put_bytes(&object, encoded).await?;

        let job = Job {
            run_id: self.run_id.to_string(),
            shard_id: shard.id.clone(),
            input: shard.input_label.clone(),
            index: shard.index,
            first_row: shard.first_row,
            rows: shard.rows.len(),
            storage: self.storage.uri(),
            rows_object: object,
            base_dir,
            config: self.config.clone(),
        };
        let payload = serde_json::to_vec(&job)?;
        if payload.len() > self.max_payload {
            bail!(
                "the job for shard {} is {} bytes, over the server's max_payload of {} bytes; shorten the configuration or raise max_payload",
                shard.id,
                payload.len(),
                self.max_payload
            );
        }

        let state = ShardState::Queued { at: now() };
        self.queue
            .states
            .put(
                shard_key(self.run_id, &shard.id),
                serde_json::to_vec(&state)?.into(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("failed to record shard {} as queued: {e}", shard.id))?;

        // The message id lets the server drop a copy that the client resends after a
        // reconnect. It includes the time so that a later requeue is not dropped as a duplicate.
        let subject = format!("{}.{}", job_subject(self.run_id), shard.id);
        let message_id = format!("{}.{}.{}", self.run_id, shard.id, now());
        let publish = PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(message_id);
        self.queue
            .context
            .send_publish(subject, publish)
            .await
            .map_err(|e| anyhow::anyhow!("failed to publish the job for shard {}: {e}", shard.id))
    }
}

async fn wait_for_ack<F>(acks: &mut FuturesUnordered<F>) -> anyhow::Result<()>
where
    F: std::future::Future<
        Output = Result<
            async_nats::jetstream::publish::PublishAck,
            async_nats::jetstream::context::PublishError,
        >,
    >,
{
    match acks.next().await {
        Some(Ok(_)) | None => Ok(()),
        Some(Err(error)) => bail!("the server did not confirm a published job: {error}"),
    }
}

/// Writes a shard's rows as gzipped JSON lines, one `InputRow` per line.
pub fn encode_rows(shard: &Shard) -> anyhow::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for row in &shard.rows {
        serde_json::to_writer(&mut encoder, row)?;
        encoder.write_all(b"\n")?;
    }
    Ok(encoder.finish()?)
}

fn spawn_reader(
    files: Vec<InputFile>,
    config: RunConfig,
    sender: mpsc::Sender<Planned>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let options = read_options(&config)?;
    Ok(tokio::task::spawn_blocking(move || {
        for file in files {
            let base_dir = file
                .path
                .parent()
                .map(Path::to_path_buf)
                .filter(|_| !file.label.contains("://"));
            let reader = match read_rows(&file, &options) {
                Ok(reader) => reader,
                Err(error) => {
                    let _ = sender
                        .blocking_send(Planned::InputFailed(file.label.clone(), error.to_string()));
                    continue;
                }
            };
            for shard in shards(reader, &file, config.run.shard_size) {
                let planned = match shard {
                    Ok(shard) => Planned::Shard(shard, base_dir.clone()),
                    Err(error) => Planned::InputFailed(file.label.clone(), error.to_string()),
                };
                let failed = matches!(planned, Planned::InputFailed(..));
                if sender.blocking_send(planned).is_err() || failed {
                    break;
                }
            }
        }
    }))
}

/// Rejects a run id already used with other inputs or another output: resuming it would mix
/// two runs' shards under one id.
async fn check_same_run(
    queue: &Queue,
    run_id: &str,
    storage: &Storage,
    inputs: &[String],
) -> anyhow::Result<()> {
    let Ok(Some(value)) = queue.states.get(run_key(run_id)).await else {
        return Ok(());
    };
    let Ok(earlier) = serde_json::from_slice::<RunInfo>(&value) else {
        return Ok(());
    };

    if earlier.storage != storage.uri() || earlier.inputs != inputs {
        bail!(
            "run id {run_id:?} was used for inputs {:?} with output {}; pick another --run-id, or give the same inputs and output to resume it",
            earlier.inputs,
            earlier.storage
        );
    }
    Ok(())
}

async fn put_run_info(
    queue: &Queue,
    run_id: &str,
    storage: &Storage,
    inputs: &[String],
    plan: &Plan,
) -> anyhow::Result<()> {
    let info = RunInfo {
        run_id: run_id.to_string(),
        storage: storage.uri(),
        inputs: inputs.to_vec(),
        shards: plan.shards.len(),
        rows: plan.rows,
        started_at: now(),
    };
    queue
        .states
        .put(run_key(run_id), serde_json::to_vec(&info)?.into())
        .await
        .map_err(|e| anyhow::anyhow!("failed to record run {run_id}: {e}"))?;
    Ok(())
}

/// Follows shard states until every shard is final. Jobs that exhaust their deliveries without
/// a worker recording the failure (the worker was killed each time) are caught through the
/// server's max-deliveries advisories.
async fn follow(
    queue: &Queue,
    run_id: &str,
    mut shards: BTreeMap<String, Option<ShardState>>,
    client: &async_nats::Client,
) -> anyhow::Result<BTreeMap<String, Option<ShardState>>> {
    let advisory_subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        super::JOB_STREAM,
        super::WORKER_CONSUMER
    );
    let mut advisories = client
        .subscribe(advisory_subject)
        .await
        .map_err(|e| anyhow::anyhow!("failed to subscribe to advisories: {e}"))?;
    let mut progress = ShardProgress::new(shards.len() as u64);
    progress.update(&shards);
    // Created once, so a steady stream of state updates cannot keep postponing the log line.
    let mut ticker = tokio::time::interval(LOG_INTERVAL);
    let mut idle_since: Option<Instant> = None;

    while !all_final(&shards) {
        let mut watch = match queue
            .states
            .watch_with_history(format!("{run_id}.shard.>"))
            .await
        {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%error, "failed to watch shard states; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };

        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        apply_entry(&mut shards, run_id, &entry);
                        progress.update(&shards);
                        if all_final(&shards) {
                            break;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "shard state watch failed; restarting it");
                        break;
                    }
                    None => break,
                },
                Some(message) = advisories.next() => {
                    record_exhausted(queue, run_id, &shards, &message.payload).await;
                }
                _ = ticker.tick() => {
                    progress.log(&shards);
                    check_queue(queue, run_id, &shards, &mut idle_since).await;
                }
            }
        }
    }

    progress.finish(&shards);
    Ok(shards)
}

/// Copies the worker consumer's backlog into the queue gauges.
/// Updates the queue gauges, and fails the run's unfinished shards once the consumer has had
/// nothing to deliver and nothing in flight for twice the ack wait (at least 10 s).
///
/// A job whose deliveries ran out while no coordinator listened for the advisory stays in the
/// stream, but the server never delivers it again. Without this check the coordinator would
/// wait forever.
async fn check_queue(
    queue: &Queue,
    run_id: &str,
    shards: &BTreeMap<String, Option<ShardState>>,
    idle_since: &mut Option<Instant>,
) {
    let mut consumer = queue.consumer.clone();
    let Ok(info) = consumer.info().await else {
        return;
    };
    let metrics = crate::metrics::metrics();
    metrics.queue_pending.set(info.num_pending as i64);
    metrics.queue_ack_pending.set(info.num_ack_pending as i64);
    metrics.queue_redelivered.set(info.num_redelivered as i64);

    if info.num_pending > 0 || info.num_ack_pending > 0 {
        *idle_since = None;
        return;
    }
    let since = *idle_since.get_or_insert_with(Instant::now);
    let grace = (info.config.ack_wait * 2).max(Duration::from_secs(10));
    if since.elapsed() >= grace {
        fail_stranded(queue, run_id, shards).await;
        *idle_since = None;
    }
}

/// Records every unfinished shard as failed, deleting its undeliverable job, so that a rerun of
/// the coordinator requeues it.
async fn fail_stranded(queue: &Queue, run_id: &str, shards: &BTreeMap<String, Option<ShardState>>) {
    let unfinished = shards
        .iter()
        .filter(|(_, state)| !state.as_ref().is_some_and(ShardState::is_final));
    for (shard_id, _) in unfinished {
        let subject = format!("{}.{shard_id}", job_subject(run_id));
        let error = match queue.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let _ = queue.stream.delete_message(message.sequence).await;
                "no worker can take the job any more: its deliveries ran out while no coordinator was running"
            }
            Err(_) => "the job left the queue without a result",
        };

        tracing::error!(shard = %shard_id, error, "shard failed");
        let state = ShardState::Failed {
            error: error.to_string(),
            deliveries: 0,
            at: now(),
        };
        if let Ok(value) = serde_json::to_vec(&state) {
            if let Err(put_error) = queue
                .states
                .put(shard_key(run_id, shard_id), value.into())
                .await
            {
                tracing::warn!(shard = %shard_id, error = %put_error, "failed to record the shard as failed");
            }
        }
    }
}

fn all_final(shards: &BTreeMap<String, Option<ShardState>>) -> bool {
    shards
        .values()
        .all(|s| s.as_ref().is_some_and(ShardState::is_final))
}

/// Applies one state update. `done` is never taken back: a late `running` from a duplicate
/// delivery of a finished shard does not reopen it.
fn apply_entry(
    shards: &mut BTreeMap<String, Option<ShardState>>,
    run_id: &str,
    entry: &async_nats::jetstream::kv::Entry,
) {
    let Some(shard_id) = entry.key.strip_prefix(&format!("{run_id}.shard.")) else {
        return;
    };
    let Some(slot) = shards.get_mut(shard_id) else {
        return;
    };
    let Ok(state) = serde_json::from_slice::<ShardState>(&entry.value) else {
        return;
    };

    if matches!(slot, Some(ShardState::Done { .. })) {
        return;
    }
    if let ShardState::Failed { error, .. } = &state {
        tracing::error!(shard = shard_id, %error, "shard failed");
    }
    *slot = Some(state);
}

/// Records a job whose deliveries ran out as failed, and deletes it from the stream so a rerun
/// can publish it afresh.
async fn record_exhausted(
    queue: &Queue,
    run_id: &str,
    shards: &BTreeMap<String, Option<ShardState>>,
    payload: &[u8],
) {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: i64,
    }

    let Ok(advisory) = serde_json::from_slice::<Advisory>(payload) else {
        return;
    };
    let Ok(message) = queue.stream.get_raw_message(advisory.stream_seq).await else {
        return;
    };
    let Ok(job) = serde_json::from_slice::<Job>(&message.payload) else {
        return;
    };
    if job.run_id != run_id
        || shards
            .get(&job.shard_id)
            .is_some_and(|s| s.as_ref().is_some_and(ShardState::is_final))
    {
        return;
    }

    let error = format!(
        "no worker finished the shard in {} deliveries; the workers stopped responding",
        advisory.deliveries
    );
    tracing::error!(shard = %job.shard_id, %error, "shard failed");
    let state = ShardState::Failed {
        error,
        deliveries: advisory.deliveries,
        at: now(),
    };
    if let Ok(value) = serde_json::to_vec(&state) {
        if let Err(error) = queue
            .states
            .put(shard_key(run_id, &job.shard_id), value.into())
            .await
        {
            tracing::warn!(shard = %job.shard_id, %error, "failed to record the shard as failed");
        }
    }
    let _ = queue.stream.delete_message(advisory.stream_seq).await;
}

fn summarize(
    run_id: &str,
    storage: &Storage,
    inputs: &[String],
    config: RunConfig,
    states: BTreeMap<String, Option<ShardState>>,
    failed_inputs: Vec<(String, String)>,
    seconds: f64,
) -> CoordinatorSummary {
    let mut counts = Counts::default();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (id, state) in states {
        match state {
            Some(ShardState::Done {
                worker,
                delivery,
                record,
                upload_seconds,
                ..
            }) => {
                counts.merge(&record.counts);
                done.push(DoneShard {
                    record,
                    worker,
                    delivery,
                    upload_seconds,
                });
            }
            Some(ShardState::Failed {
                error, deliveries, ..
            }) => failed.push(FailedShard {
                id,
                error,
                deliveries,
            }),
            _ => failed.push(FailedShard {
                id,
                error: "the shard never finished".into(),
                deliveries: 0,
            }),
        }
    }

    CoordinatorSummary {
        version: env!("CARGO_PKG_VERSION"),
        run_id: run_id.to_string(),
        output: storage.uri(),
        inputs: inputs.to_vec(),
        config,
        images_per_second: counts.ok as f64 / seconds.max(1e-9),
        counts,
        shards: done,
        failed_shards: failed,
        failed_inputs,
        seconds,
    }
}

/// Shard progress: a bar on a terminal, log lines every ten seconds in any case.
struct ShardProgress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl ShardProgress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;

        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} shards {msg} [{elapsed_precise}]",
                )
                .expect("the template is valid"),
            );
            bar
        });
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&mut self, shards: &BTreeMap<String, Option<ShardState>>) {
        let tally = Tally::of(shards);
        tally.export(self.started);
        if let Some(bar) = &self.bar {
            bar.set_position(tally.done + tally.failed);
            bar.set_message(format!(
                "{} failed, {} running, {:.1} images/s",
                tally.failed,
                tally.running,
                tally.rate(self.started)
            ));
        }
    }

    fn log(&self, shards: &BTreeMap<String, Option<ShardState>>) {
        let tally = Tally::of(shards);
        tracing::info!(
            done = tally.done,
            failed = tally.failed,
            running = tally.running,
            total = shards.len(),
            images_per_second = tally.rate(self.started),
            "run progress"
        );
    }

    fn finish(&self, shards: &BTreeMap<String, Option<ShardState>>) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        self.log(shards);
    }
}

/// Shard counts by state and the images captioned so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub done: u64,
    pub failed: u64,
    pub running: u64,
    pub queued: u64,
    pub ok_rows: u64,
}

impl Tally {
    pub fn of<'a>(shards: impl IntoIterator<Item = (&'a String, &'a Option<ShardState>)>) -> Self {
        let mut tally = Tally::default();
        for (_, state) in shards {
            match state {
                Some(ShardState::Done { record, .. }) => {
                    tally.done += 1;
                    tally.ok_rows += record.counts.ok;
                }
                Some(ShardState::Failed { .. }) => tally.failed += 1,
                Some(ShardState::Running { .. }) => tally.running += 1,
                Some(ShardState::Queued { .. }) | None => tally.queued += 1,
            }
        }
        tally
    }

    /// Sets the run gauges from this tally.
    fn export(&self, since: Instant) {
        let metrics = crate::metrics::metrics();
        for (state, count) in [
            ("done", self.done),
            ("failed", self.failed),
            ("running", self.running),
            ("queued", self.queued),
        ] {
            metrics.set_run_shards(state, count);
        }
        metrics.images_per_second.set(self.rate(since));
    }

    fn rate(&self, since: Instant) -> f64 {
        self.ok_rows as f64 / since.elapsed().as_secs_f64().max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_id_is_stable_and_valid() {
        let a = default_run_id(&["a.txt".into(), "b.txt".into()], "s3://bucket/out");
        let b = default_run_id(&["a.txt".into(), "b.txt".into()], "s3://bucket/out");
        let c = default_run_id(&["a.txtb.txt".into()], "s3://bucket/out");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(check_run_id(&a).is_ok());
    }
}
