//! The embedded pipeline behind `capfilt run`: read and shard URL lists, download and prepare
//! images, caption them in batches on a model thread, and write one Parquet file per shard.
//!
//! Stages talk through bounded queues: at most `download.concurrency` rows are being fetched or
//! prepared, at most `batch_size * prefetch_batches` prepared images wait for the model, and a
//! bounded number of shards are open at once, so memory does not grow with the input.

mod in_flight;
mod model;
// Public so that benches can time download and preparation without the model.
pub mod prepare;
mod shard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use capfilt_coordinator::{read_rows, shards, InputFile, ReadOptions, Shard};
use capfilt_workers::image::{DecodeLimits, PreprocessConfig};
use capfilt_workers::filter::Filter;
use capfilt_workers::{CaptionSettings, Captioner};
use candle_core::{DType, Device};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::config::RunConfig;
use crate::fetch::Fetcher;
use crate::labelled::LabelledIndex;
use crate::model_source::ResolvedModel;
use crate::progress::Counts;
use crate::sink::check_kept_columns;
use crate::status::RowStatus;

pub use in_flight::{ImageKey, InFlight, Joined, Waiter};
pub use model::{BatchItem, CaptionedRow, ModelStage, ModelStats};
pub use prepare::{ImageInfo, PreparedImage, Preparer, RowFailure};
pub use shard::{Collected, OpenShard, PendingRow, ShardRecord};

/// A row within the run: the shard's sequence number and the row's position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowId {
    pub shard: u64,
    pub row: usize,
}

/// Messages to the collector, which assembles shard files.
pub enum Event {
    Opened(OpenShard),
    Failed { row: RowId, failure: RowFailure },
    Captioned(CaptionedRow),
    Skipped { id: String, input: String, rows: usize },
    InputsRead { rows: u64 },
    InputFailed { input: String, error: String },
}

/// Work item handed to the dispatcher.
enum Work {
    Shard {
        shard: Shard,
        base_dir: Option<PathBuf>,
        /// Receives the shard's record once its file is written.
        done: Option<oneshot::Sender<ShardRecord>>,
    },
}

/// The outcome of a run, also written to `_manifest.json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub version: &'static str,
    pub output: PathBuf,
    pub inputs: Vec<String>,
    pub model: ResolvedModel,
    pub filter_model: Option<ResolvedModel>,
    pub config: RunConfig,
    pub counts: Counts,
    /// Images fetched (downloads and local file reads), one per distinct URL in flight.
    pub downloads: u64,
    /// Rows that used another row's fetch of the same URL instead of a fetch of their own.
    pub deduplicated_rows: u64,
    pub shards: Vec<ShardRecord>,
    pub skipped_shards: Vec<String>,
    pub failed_inputs: Vec<(String, String)>,
    pub seconds: f64,
    pub images_per_second: f64,
    pub model_batches: u64,
    pub model_seconds: f64,
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match cuda_ordinal(name)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => open_cuda(ordinal),
    }
}

/// Rejects a device name that this build could never open (a malformed name, or a GPU in a
/// build without CUDA), without opening anything. Whether the GPU itself opens is found when
/// the model loads.
pub fn check_device(name: &str) -> anyhow::Result<()> {
    match cuda_ordinal(name)? {
        Some(ordinal) if !cfg!(feature = "cuda") => Err(cuda_not_built(ordinal)),
        _ => Ok(()),
    }
}

/// Returns the CUDA device that `name` selects, or `None` for the CPU.
fn cuda_ordinal(name: &str) -> anyhow::Result<Option<usize>> {
    match name.trim() {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(ordinal) => Ok(Some(ordinal)),
            None => bail!("invalid device {other:?}: expected cpu, cuda or cuda:N"),
        },
    }
}

/// Opens a GPU. The error names which of the two usual causes applies: a binary built without
/// CUDA support, or a machine where the driver finds no such GPU.
fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    if !cfg!(feature = "cuda") {
        return Err(cuda_not_built(ordinal));
    }
    Device::new_cuda(ordinal)
        .with_context(|| format!("failed to open CUDA device {ordinal}: check that the driver is loaded and that `nvidia-smi` lists the GPU"))
}

fn cuda_not_built(ordinal: usize) -> anyhow::Error {
    anyhow::anyhow!("device cuda:{ordinal} is not available: this capfilt was built without CUDA support. Rebuild it with `cargo build --release --features cuda`.")
}

pub fn read_options(config: &RunConfig) -> anyhow::Result<ReadOptions> {
    let format = match &config.input.format {
        Some(name) => Some(name.parse().map_err(|e| anyhow::anyhow!("invalid input format {name:?}: {e}"))?),
        None => None,
    };
    Ok(ReadOptions {
        format,
        url_col: config.input.url_col.clone(),
        caption_col: config.input.caption_col.clone(),
        key_col: config.input.key_col.clone(),
        keep_cols: config.input.keep_cols.clone(),
        header: config.input.header,
    })
}

/// Runs the whole job in this process.
pub async fn run(inputs: &[String], output: &Path, config: RunConfig) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    config.validate()?;
    // Checked before the output folder is created, so that a device this build cannot use leaves
    // nothing behind.
    check_device(&config.model.device)?;
    let options = read_options(&config)?;
    std::fs::create_dir_all(output).with_context(|| format!("failed to create output folder {}", output.display()))?;
    shard::remove_stale_temp_files(output);

    let fetcher = Fetcher::new(config.download.clone())?;
    let list_dir = tempfile::tempdir().context("failed to create a temporary folder for remote lists")?;
    let input_files = crate::inputs::resolve(inputs, &fetcher, list_dir.path()).await?;
    tracing::info!(inputs = input_files.len(), "inputs resolved");

    // Read before this run replaces it, so shards kept from an earlier run stay counted.
    let previous = shard::read_manifest_records(output);
    let engine = Engine::start(&config, fetcher, output).await?;
    let producer = spawn_producer(input_files, options, config.clone(), output.to_path_buf(), engine.work.clone(), engine.events.clone());
    producer.await.context("the input reader stopped unexpectedly")?;
    let (model, filter_model) = (engine.model.clone(), engine.filter_model.clone());
    let EngineTotals { collected, model: stats, fetches } = engine.finish().await?;

    let seconds = started.elapsed().as_secs_f64();
    let images_per_second = collected.counts.ok as f64 / seconds.max(1e-9);
    let (counts, shards) = shard::with_kept_shards(collected.counts, collected.shards, &collected.skipped, &previous);
    let summary = RunSummary {
        version: env!("CARGO_PKG_VERSION"),
        output: output.to_path_buf(),
        inputs: inputs.iter().map(|input| crate::redact::redact_urls(input)).collect(),
        model,
        filter_model,
        images_per_second,
        counts,
        downloads: fetches.downloads,
        deduplicated_rows: fetches.deduplicated_rows,
        shards,
        skipped_shards: collected.skipped,
        failed_inputs: collected.failed_inputs,
        config,
        seconds,
        model_batches: stats.batches,
        model_seconds: stats.busy.as_secs_f64(),
    };
    shard::write_manifest(output, &summary)?;
    Ok(summary)
}

/// The running stages (downloads, decoding, the model thread and the shard writer), fed one
/// shard at a time. `capfilt run` feeds it from the input files; a worker feeds it jobs.
pub struct Engine {
    pub model: ResolvedModel,
    pub filter_model: Option<ResolvedModel>,
    work: mpsc::Sender<Work>,
    events: mpsc::UnboundedSender<Event>,
    collector: tokio::task::JoinHandle<anyhow::Result<shard::Collected>>,
    dispatcher: tokio::task::JoinHandle<FetchCounts>,
    model_thread: std::thread::JoinHandle<ModelStats>,
}

impl Engine {
    /// Loads the models and starts every stage. Shard files are written to `output`.
    pub async fn start(config: &RunConfig, fetcher: Fetcher, output: &Path) -> anyhow::Result<Self> {
        check_kept_columns(&config.input.keep_cols)?;
        let (model, captioner) = load_model(config).await?;
        let filter = load_filter(config, captioner.image_size()).await?;
        let metadata = shard::file_metadata(&model, &config.caption, filter.as_ref().map(|(m, _)| (m, &config.filter)), &config.image);
        let labelled = load_labelled(&config.run, &metadata).await?;

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let prefetch = config.run.batch_size * config.run.prefetch_batches.max(1);
        let (batch_tx, batch_rx) = flume::bounded::<BatchItem>(prefetch);
        let filter_model = filter.as_ref().map(|(m, _)| m.clone());
        let in_flight = Arc::new(InFlight::default());
        let stage = ModelStage { captioner, filter: filter.map(|(_, f)| f), in_flight: in_flight.clone(), output: events_tx.clone() };
        let model_thread = spawn_model_thread(stage, batch_rx, config);

        let preparer = Arc::new(Preparer {
            fetcher,
            limits: decode_limits(config),
            preprocess: PreprocessConfig { size: model.image_size as u32, ..PreprocessConfig::blip() },
            jpeg_min_side: config.image.jpeg_dct_scaling.then_some(2 * model.image_size as u32),
            pool: Arc::new(decode_pool(config.run.decode_threads)?),
            failure_log: Default::default(),
        });
        let (work_tx, work_rx) = mpsc::channel(1);
        let dispatcher = Dispatcher {
            preparer,
            in_flight,
            batches: batch_tx,
            events: events_tx.clone(),
            open_shards: Arc::new(Semaphore::new(open_shard_limit(config))),
            downloads: Arc::new(Semaphore::new(config.download.concurrency)),
            run_seed: config.caption.seed,
            labelled,
        };
        let dispatcher = tokio::spawn(dispatcher.run(work_rx));

        let (output, keep_cols) = (output.to_path_buf(), config.input.keep_cols.clone());
        let collector = tokio::spawn(async move { shard::collect(events_rx, &output, &keep_cols, &metadata).await });
        Ok(Engine { model, filter_model, work: work_tx, events: events_tx, collector, dispatcher, model_thread })
    }

    /// Queues a shard; `done` receives its record once the shard file is written. Waits while
    /// the stages are full, and fails when they have stopped.
    pub async fn submit(&self, shard: Shard, base_dir: Option<PathBuf>, done: oneshot::Sender<ShardRecord>) -> anyhow::Result<()> {
        self.work
            .send(Work::Shard { shard, base_dir, done: Some(done) })
            .await
            .map_err(|_| anyhow::anyhow!("the pipeline has stopped"))
    }

    /// Checks whether a stage has stopped, after which no submitted shard can finish.
    pub fn is_stopped(&self) -> bool {
        self.collector.is_finished() || self.dispatcher.is_finished() || self.model_thread.is_finished()
    }

    /// Lets queued shards finish, stops every stage and returns what the shard writer collected.
    pub async fn finish(self) -> anyhow::Result<EngineTotals> {
        drop(self.work);
        drop(self.events);

        let collected = self.collector.await.context("the shard writer stopped unexpectedly")?;
        let model = self.model_thread.join().map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
        let fetches = self.dispatcher.await.context("the download dispatcher stopped unexpectedly")?;
        Ok(EngineTotals { collected: collected?, model, fetches })
    }
}

/// Totals of an engine from start to finish.
pub struct EngineTotals {
    pub collected: shard::Collected,
    pub model: ModelStats,
    pub fetches: FetchCounts,
}

async fn load_model(config: &RunConfig) -> anyhow::Result<(ResolvedModel, Captioner)> {
    let model_config = config.model.clone();
    let settings: CaptionSettings = config.caption.clone();
    tokio::task::spawn_blocking(move || {
        let model = crate::model_source::resolve(&model_config.id, model_config.revision.as_deref(), model_config.offline)?;
        let device = parse_device(&model_config.device)?;
        tracing::info!(model = %model.id, source = model.source, dir = %model.dir.display(), device = %model_config.device, "loading model");
        let captioner = Captioner::load(&model.files, settings, &device, DType::F32)
            .with_context(|| format!("failed to load model {}", model.id))?;
        let model = ResolvedModel { image_size: captioner.image_size(), ..model };
        Ok((model, captioner))
    })
    .await
    .context("model loading stopped unexpectedly")?
}

/// Loads the ITM filter when enabled. It scores the captioner's preprocessed pixels, so both
/// models must take the same input size.
async fn load_filter(config: &RunConfig, image_size: usize) -> anyhow::Result<Option<(ResolvedModel, Filter)>> {
    if !config.filter.enabled {
        return Ok(None);
    }
    let filter_config = config.filter.clone();
    let model_config = config.model.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<(ResolvedModel, Filter)> {
        let model = crate::model_source::resolve(&filter_config.model, filter_config.revision.as_deref(), model_config.offline)?;
        let device = parse_device(&model_config.device)?;
        tracing::info!(model = %model.id, source = model.source, dir = %model.dir.display(), "loading filter model");
        let filter = Filter::load(&model.files, filter_config.settings(), &device, DType::F32)
            .with_context(|| format!("failed to load filter model {}", model.id))?;
        let model = ResolvedModel { image_size: filter.image_size(), ..model };
        Ok((model, filter))
    })
    .await
    .context("filter loading stopped unexpectedly")??;

    if loaded.0.image_size != image_size {
        bail!(
            "filter model {} takes {} px images but the captioner takes {image_size} px; pick models with the same input size",
            loaded.0.id,
            loaded.0.image_size
        );
    }
    Ok(Some(loaded))
}

/// Loads the labels of the earlier runs named by `skip_labelled`, off the async runtime because
/// it reads every earlier shard file.
async fn load_labelled(run: &crate::config::RunSettings, metadata: &HashMap<String, String>) -> anyhow::Result<Option<Arc<LabelledIndex>>> {
    if run.skip_labelled.is_empty() {
        return Ok(None);
    }
    let (paths, mode, metadata) = (run.skip_labelled.clone(), run.skip_by, metadata.clone());
    let (index, counts) = tokio::task::spawn_blocking(move || LabelledIndex::load(&paths, mode, &metadata))
        .await
        .context("loading earlier labels stopped unexpectedly")??;

    tracing::info!(
        matching_shards = counts.matching_shards,
        ok_rows = counts.ok_rows,
        labels = index.len(),
        estimated_bytes = index.estimated_bytes(),
        skip_by = ?mode,
        "loaded earlier labels"
    );
    if counts.other_settings > 0 {
        tracing::info!(shards = counts.other_settings, "ignoring {} earlier shard file(s) written with other models or settings", counts.other_settings);
    }
    Ok(Some(Arc::new(index)))
}

fn spawn_model_thread(stage: ModelStage, input: flume::Receiver<BatchItem>, config: &RunConfig) -> std::thread::JoinHandle<ModelStats> {
    let batch_size = config.run.batch_size;
    let linger = Duration::from_millis(config.run.batch_linger_ms);
    std::thread::Builder::new()
        .name("capfilt-model".into())
        .spawn(move || model::run_model_loop(stage, input, batch_size, linger))
        .expect("spawning the model thread")
}

fn decode_limits(config: &RunConfig) -> DecodeLimits {
    DecodeLimits { max_pixels: config.image.max_pixels, min_size: config.image.min_size, ..DecodeLimits::default() }
}

fn decode_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("capfilt-decode-{i}"))
        .build()
        .context("failed to start the image decoding threads")
}

/// Enough open shards to keep every download slot busy, and at least two so one shard's last
/// stragglers do not stall the next.
fn open_shard_limit(config: &RunConfig) -> usize {
    let target_rows = 4 * config.download.concurrency;
    target_rows.div_ceil(config.run.shard_size).clamp(2, 256)
}

/// Reads inputs on a blocking thread and hands shards over one at a time; shards whose output
/// already exists are skipped unless `overwrite` is set.
fn spawn_producer(
    files: Vec<InputFile>,
    options: ReadOptions,
    config: RunConfig,
    output: PathBuf,
    work: mpsc::Sender<Work>,
    events: mpsc::UnboundedSender<Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut total_rows = 0u64;
        for file in files {
            let base_dir = file.path.parent().map(Path::to_path_buf).filter(|_| !file.label.contains("://"));
            let reader = match read_rows(&file, &options) {
                Ok(reader) => reader,
                Err(error) => {
                    tracing::error!(input = %file.label, %error, "failed to read input");
                    let _ = events.send(Event::InputFailed { input: file.label.clone(), error: error.to_string() });
                    continue;
                }
            };
            for shard in shards(reader, &file, config.run.shard_size) {
                let shard = match shard {
                    Ok(shard) => shard,
                    Err(error) => {
                        tracing::error!(input = %file.label, %error, "failed to read input");
                        let _ = events.send(Event::InputFailed { input: file.label.clone(), error: error.to_string() });
                        break;
                    }
                };
                total_rows += shard.rows.len() as u64;
                if !config.run.overwrite && shard::output_path(&output, &shard.id).exists() {
                    let _ = events.send(Event::Skipped { id: shard.id.clone(), input: file.label.clone(), rows: shard.rows.len() });
                    continue;
                }
                if work.blocking_send(Work::Shard { shard, base_dir: base_dir.clone(), done: None }).is_err() {
                    return;
                }
            }
        }
        let _ = events.send(Event::InputsRead { rows: total_rows });
    })
}

/// Counts of fetches the dispatcher started and of rows that shared another row's fetch.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchCounts {
    pub downloads: u64,
    pub deduplicated_rows: u64,
}

/// Starts every row of each shard: rows the reader already rejected go straight to the
/// collector; the others are downloaded and prepared with bounded concurrency, once per URL
/// among the rows in flight.
struct Dispatcher {
    preparer: Arc<Preparer>,
    in_flight: Arc<InFlight>,
    batches: flume::Sender<BatchItem>,
    events: mpsc::UnboundedSender<Event>,
    open_shards: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    run_seed: u64,
    /// Labels of earlier runs (`--skip-labelled`); rows they cover are not captioned again.
    labelled: Option<Arc<LabelledIndex>>,
}

impl Dispatcher {
    async fn run(self, mut work: mpsc::Receiver<Work>) -> FetchCounts {
        let mut counts = FetchCounts::default();
        let mut sequence = 0u64;

        while let Some(Work::Shard { shard, base_dir, done }) = work.recv().await {
            // Log lines of the shard's downloads, the spawned tasks included, carry its id.
            let span = tracing::info_span!("shard", id = %shard.id, input = %shard.input_label);
            let opened = self.start_shard(sequence, shard, base_dir, done, &mut counts).instrument(span).await;
            if !opened {
                return counts;
            }
            sequence += 1;
        }
        counts
    }

    /// Opens the shard and starts each of its rows; returns false when the collector is gone.
    async fn start_shard(
        &self,
        sequence: u64,
        shard: Shard,
        base_dir: Option<PathBuf>,
        done: Option<oneshot::Sender<ShardRecord>>,
        counts: &mut FetchCounts,
    ) -> bool {
        let permit = self.open_shards.clone().acquire_owned().await.expect("semaphore is never closed");
        let open = OpenShard::new(sequence, &shard, permit, done);
        let pending = open.pending_rows();
        if self.events.send(Event::Opened(open)).is_err() {
            return false;
        }

        for row in pending {
            if let Some(source) = self.labelled.as_ref().and_then(|l| l.labelled_url(&row.url)) {
                let failure = RowFailure { status: RowStatus::AlreadyLabelled, message: source.to_string(), info: None };
                let _ = self.events.send(Event::Failed { row: RowId { shard: sequence, row: row.row }, failure });
                continue;
            }
            match self.start_row(sequence, row, &base_dir).await {
                Joined::First => counts.downloads += 1,
                Joined::Shared => counts.deduplicated_rows += 1,
            }
        }
        true
    }

    /// Joins the row to a fetch of its image already in flight, or starts one once a download
    /// slot is free. Rows that join take no slot: they cost no download.
    async fn start_row(&self, shard: u64, row: PendingRow, base_dir: &Option<PathBuf>) -> Joined {
        let PendingRow { row, url, key, web_caption } = row;
        let image = ImageKey { url, base_dir: base_dir.clone() };
        // An empty or blank web caption is no caption: scoring it would keep a text with no
        // content. The output row still shows it as given.
        let web_caption = web_caption.filter(|caption| !caption.trim().is_empty());
        let waiter = Waiter { row: RowId { shard, row }, web_caption };
        if self.in_flight.join(&image, waiter) == Joined::Shared {
            return Joined::Shared;
        }

        let permit = self.downloads.clone().acquire_owned().await.expect("semaphore is never closed");
        let seed = row_seed(self.run_seed, &key);
        let (preparer, in_flight, batches, events) =
            (self.preparer.clone(), self.in_flight.clone(), self.batches.clone(), self.events.clone());
        let labelled = self.labelled.clone();
        let task = async move {
            match preparer.prepare(&image.url, image.base_dir.clone()).await {
                Ok(prepared) => match labelled_content(labelled.as_deref(), &prepared.info) {
                    Some(failure) => fail_waiting_rows(&in_flight, &image, &failure, &events),
                    None => {
                        let item = BatchItem { image, seed, pixels: prepared.pixels, info: prepared.info };
                        let _ = batches.send_async(item).await;
                    }
                },
                Err(failure) => fail_waiting_rows(&in_flight, &image, &failure, &events),
            }
            drop(permit);
        };
        tokio::spawn(task.in_current_span());
        Joined::First
    }
}

/// Returns the `already_labelled` result for an image whose bytes an earlier run captioned, when
/// matching by content. The image keeps its size, format and hash in the output row.
fn labelled_content(labelled: Option<&LabelledIndex>, info: &ImageInfo) -> Option<RowFailure> {
    let source = labelled?.labelled_content(&info.sha256)?;
    Some(RowFailure { status: RowStatus::AlreadyLabelled, message: source.to_string(), info: Some(info.clone()) })
}

/// Gives every row waiting for `image` the same failure.
fn fail_waiting_rows(in_flight: &InFlight, image: &ImageKey, failure: &RowFailure, events: &mpsc::UnboundedSender<Event>) {
    for waiter in in_flight.take(image) {
        let _ = events.send(Event::Failed { row: waiter.row, failure: failure.clone() });
    }
}

/// Derives a row's sampling seed from the run seed and the row key, stable across runs and batches.
fn row_seed(run_seed: u64, key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{run_seed}:{key}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}
