//! Command-line interface. Every flag overrides the config file and presets, and can also be
//! set as a `CAPFILT_*` environment variable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config::RunConfig;

#[derive(Debug, Parser)]
#[command(name = "capfilt", version, about = "Caption and filter web-scale image datasets with BLIP")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CAPFILT_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Caption URL lists in this process and write one Parquet file per shard.
    Run(RunArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write the bootstrapped dataset (kept web and synthetic captions) from shard files.
    Export(ExportArgs),
    /// Shard URL lists into NATS JetStream jobs and wait until workers have done them all.
    Coordinator(CoordinatorArgs),
    /// Pull shard jobs from NATS JetStream and caption them.
    Worker(WorkerArgs),
    /// Show a distributed run's progress: shards done, in flight and failed, and images/s.
    Status(StatusArgs),
    /// Write a static HTML report of an output folder: statuses, scores, caption lengths, samples.
    Report(crate::report::ReportArgs),
    /// Print the schema, row groups, capfilt metadata and first rows of one Parquet file.
    Inspect(crate::inspect::InspectArgs),
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// URL lists: files, directories, glob patterns, https:// or s3:// URLs.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Storage for shard rows, shard files and _manifest.json: a folder every worker can reach,
    /// or s3://BUCKET/PREFIX.
    #[arg(long, short, env = "CAPFILT_OUTPUT", value_name = "URI")]
    pub output: String,
    /// Run id; the same id resumes a run. Default: derived from the inputs and the output.
    #[arg(long, env = "CAPFILT_RUN_ID")]
    pub run_id: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (for example 0.0.0.0:9464).
    #[arg(long, env = "CAPFILT_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub nats: crate::distributed::NatsArgs,
    #[command(flatten)]
    pub queue: crate::distributed::QueueArgs,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub nats: crate::distributed::NatsArgs,
    #[command(flatten)]
    pub queue: crate::distributed::QueueArgs,
    /// Compute device for every job (cpu, cuda or cuda:N), overriding the run's configuration.
    #[arg(long, env = "CAPFILT_DEVICE")]
    pub device: Option<String>,
    /// Jobs held at once; the second keeps the model busy while the next shard downloads.
    #[arg(long, env = "CAPFILT_MAX_SHARDS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_shards: u16,
    /// Exit when no job is waiting or held by any worker (for batch clusters).
    #[arg(long, env = "CAPFILT_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,
    /// Time allowed after SIGTERM for the jobs in hand to finish; the rest are handed back.
    #[arg(long, env = "CAPFILT_SHUTDOWN_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Delay before a failed job is offered again, doubled on each further delivery (at most 60 s).
    #[arg(long, env = "CAPFILT_RETRY_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub retry_delay: std::time::Duration,
    /// Name in logs and shard states. Default: host name and process id.
    #[arg(long, env = "CAPFILT_WORKER_NAME")]
    pub name: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (for example 0.0.0.0:9464).
    #[arg(long, env = "CAPFILT_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: crate::distributed::NatsArgs,
    /// The run to show.
    #[arg(long, env = "CAPFILT_RUN_ID")]
    pub run_id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Folder of shard files written by `capfilt run`.
    pub dir: PathBuf,
    /// File to write.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::export::ExportFormat::BlipJson)]
    pub format: crate::export::ExportFormat,
    /// Export every caption of shards written without the filter.
    #[arg(long)]
    pub unfiltered: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (presets, file, environment and flags) as TOML.
    Show(Settings),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// URL lists: files, directories, glob patterns or https:// URLs.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,

    /// Folder for the shard files and _manifest.json.
    #[arg(long, short, env = "CAPFILT_OUTPUT")]
    pub output: PathBuf,

    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts.
    #[arg(long, env = "CAPFILT_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub settings: Settings,
}

/// Settings shared by every command that builds a configuration.
#[derive(Debug, Args)]
pub struct Settings {
    /// Config preset (default, capfilt, quality, fast) or TOML file; flags override it.
    #[arg(long, env = "CAPFILT_CONFIG")]
    pub config: Option<String>,

    /// Captioning model: Hugging Face hub id or local folder in HF layout
    /// [default: Salesforce/blip-image-captioning-large].
    #[arg(long, env = "CAPFILT_MODEL")]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit) of the model.
    #[arg(long, env = "CAPFILT_REVISION")]
    pub revision: Option<String>,
    /// Use only model files already in the Hugging Face cache.
    #[arg(long, env = "CAPFILT_OFFLINE")]
    pub offline: bool,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, env = "CAPFILT_DEVICE")]
    pub device: Option<String>,

    /// Input format, instead of detecting it from the file extension.
    #[arg(long, value_parser = ["json", "jsonl", "csv", "tsv", "txt", "parquet"], env = "CAPFILT_INPUT_FORMAT")]
    pub input_format: Option<String>,
    /// URL column name, or 0-based index with --no-header.
    #[arg(long, env = "CAPFILT_URL_COL")]
    pub url_col: Option<String>,
    /// Web caption column name, or 0-based index with --no-header.
    #[arg(long, env = "CAPFILT_CAPTION_COL")]
    pub caption_col: Option<String>,
    /// Column whose value becomes the row key (default: input file and row number).
    #[arg(long, env = "CAPFILT_KEY_COL")]
    pub key_col: Option<String>,
    /// Input columns copied to the output, comma separated.
    #[arg(long, value_delimiter = ',', env = "CAPFILT_KEEP_COLS")]
    pub keep_cols: Option<Vec<String>>,
    /// CSV/TSV files have no header row (CC3M style: caption, then URL).
    #[arg(long, env = "CAPFILT_NO_HEADER")]
    pub no_header: bool,

    /// Input rows per output file.
    #[arg(long, env = "CAPFILT_SHARD_SIZE")]
    pub shard_size: Option<usize>,
    /// Images per model batch.
    #[arg(long, env = "CAPFILT_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Redo shards whose output file exists instead of skipping them.
    #[arg(long, env = "CAPFILT_OVERWRITE")]
    pub overwrite: bool,
    /// Image decoding threads (0: one per core).
    #[arg(long, env = "CAPFILT_DECODE_THREADS")]
    pub decode_threads: Option<usize>,
    /// Output folder (or shard file) of an earlier run: rows it labelled `ok` with the same
    /// models and settings get status already_labelled instead of being captioned again
    /// (repeatable; comma separated in the environment variable).
    #[arg(long = "skip-labelled", value_name = "PATH", value_delimiter = ',', env = "CAPFILT_SKIP_LABELLED")]
    pub skip_labelled: Vec<String>,
    /// Match earlier labels by URL (no download) or by the SHA-256 of the downloaded bytes.
    #[arg(long, value_enum, env = "CAPFILT_SKIP_BY")]
    pub skip_by: Option<crate::config::SkipBy>,

    /// Caption decoding: greedy, beam or sample (nucleus sampling).
    #[arg(long, value_parser = ["greedy", "beam", "sample"], env = "CAPFILT_DECODING")]
    pub decoding: Option<String>,
    /// Captions per image when sampling.
    #[arg(long, env = "CAPFILT_NUM_CAPTIONS")]
    pub num_captions: Option<usize>,
    /// Nucleus sampling mass (0 < p <= 1).
    #[arg(long, env = "CAPFILT_TOP_P")]
    pub top_p: Option<f32>,
    /// Sample only from the k most likely tokens (0: no limit).
    #[arg(long, env = "CAPFILT_TOP_K")]
    pub top_k: Option<usize>,
    /// Sampling temperature.
    #[arg(long, env = "CAPFILT_TEMPERATURE")]
    pub temperature: Option<f32>,
    /// Sampling seed; the same seed and input give the same captions.
    #[arg(long, env = "CAPFILT_SEED")]
    pub seed: Option<u64>,
    /// Beams for beam search.
    #[arg(long, env = "CAPFILT_NUM_BEAMS")]
    pub num_beams: Option<usize>,
    /// Maximum caption length in tokens, prompt included.
    #[arg(long, env = "CAPFILT_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Minimum caption length in tokens, prompt included.
    #[arg(long, env = "CAPFILT_MIN_LENGTH")]
    pub min_length: Option<usize>,
    /// Most generated tokens, prompt not counted (replaces --max-length).
    #[arg(long, env = "CAPFILT_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<usize>,
    /// Fewest generated tokens before the end token, prompt not counted (replaces --min-length).
    #[arg(long, env = "CAPFILT_MIN_NEW_TOKENS")]
    pub min_new_tokens: Option<usize>,
    /// Forbid repeating any n-gram of this many tokens (0: off).
    #[arg(long, env = "CAPFILT_NO_REPEAT_NGRAM_SIZE")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Repetition penalty (1.0 disables it).
    #[arg(long, env = "CAPFILT_REPETITION_PENALTY")]
    pub repetition_penalty: Option<f32>,
    /// Text the captions start from, removed from the output ("" for none).
    #[arg(long, env = "CAPFILT_PROMPT")]
    pub prompt: Option<String>,

    /// Score web and generated captions with BLIP's image-text matching head (CapFilt).
    #[arg(long, env = "CAPFILT_FILTER", overrides_with = "no_filter")]
    pub filter: bool,
    /// Turn the filter off even when the preset enables it.
    #[arg(long, overrides_with = "filter")]
    pub no_filter: bool,
    /// Filter model: hub id or local folder of a BlipForImageTextRetrieval checkpoint
    /// [default: Salesforce/blip-itm-large-coco].
    #[arg(long, env = "CAPFILT_FILTER_MODEL")]
    pub filter_model: Option<String>,
    /// Hub revision of the filter model.
    #[arg(long, env = "CAPFILT_FILTER_REVISION")]
    pub filter_revision: Option<String>,
    /// Smallest ITM P(match) for which a text is kept.
    #[arg(long, env = "CAPFILT_THRESHOLD")]
    pub threshold: Option<f32>,
    /// First text token for the ITM head: enc (BLIP training) or cls (transformers).
    #[arg(long, value_parser = ["enc", "cls"], env = "CAPFILT_FIRST_TOKEN")]
    pub first_token: Option<String>,
    /// Also store ITC cosines between image and text embeddings.
    #[arg(long, env = "CAPFILT_ITC")]
    pub itc: bool,

    /// Concurrent downloads.
    #[arg(long, env = "CAPFILT_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Seconds allowed for one download attempt (connection, headers and body).
    #[arg(long, env = "CAPFILT_TIMEOUT")]
    pub timeout: Option<f64>,
    /// Seconds allowed to connect.
    #[arg(long, env = "CAPFILT_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<f64>,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "CAPFILT_MAX_BYTES")]
    pub max_bytes: Option<u64>,
    /// Redirects followed per download.
    #[arg(long, env = "CAPFILT_MAX_REDIRECTS")]
    pub max_redirects: Option<usize>,
    /// Retries after a transient download failure.
    #[arg(long, env = "CAPFILT_RETRIES")]
    pub retries: Option<u32>,
    /// User-Agent header sent with downloads.
    #[arg(long, env = "CAPFILT_USER_AGENT")]
    pub user_agent: Option<String>,
    /// Smallest accepted image side in pixels.
    #[arg(long, env = "CAPFILT_MIN_SIZE")]
    pub min_size: Option<u32>,
    /// Largest accepted image in pixels (width x height).
    #[arg(long, env = "CAPFILT_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Decode large JPEGs at a reduced DCT scale (sides at least twice the model's input size):
    /// several times faster on photos, with pixels slightly different from a full decode.
    #[arg(long, env = "CAPFILT_JPEG_DCT_SCALING")]
    pub jpeg_dct_scaling: bool,
    /// Downloads in flight at once to one host (0: no limit).
    #[arg(long, env = "CAPFILT_PER_HOST_CONCURRENCY")]
    pub per_host_concurrency: Option<usize>,
    /// Let downloads reach loopback, private and link-local addresses; cloud metadata
    /// addresses stay blocked.
    #[arg(long, env = "CAPFILT_ALLOW_PRIVATE_NETWORKS")]
    pub allow_private_networks: bool,
    /// CIDR block or single address that downloads may reach although the SSRF guard blocks
    /// it (repeatable; comma separated in the environment variable).
    #[arg(long = "allow-cidr", value_name = "CIDR", value_delimiter = ',', env = "CAPFILT_ALLOW_CIDR")]
    pub allow_cidr: Vec<String>,
    /// Download images even when their X-Robots-Tag header says noai or noimageai.
    #[arg(long, env = "CAPFILT_IGNORE_OPT_OUT")]
    pub ignore_opt_out: bool,
    /// Reject rows that name local files (paths and file:// URLs), for untrusted lists.
    #[arg(long, env = "CAPFILT_NO_LOCAL_FILES")]
    pub no_local_files: bool,
}

impl Settings {
    /// Builds the effective configuration: preset or file first, then these flags.
    pub fn resolve(&self) -> anyhow::Result<RunConfig> {
        let mut config = RunConfig::load(self.config.as_deref())?;
        self.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    fn apply(&self, config: &mut RunConfig) -> anyhow::Result<()> {
        set(&mut config.model.id, self.model.clone());
        set_some(&mut config.model.revision, self.revision.clone());
        config.model.offline |= self.offline;
        set(&mut config.model.device, self.device.clone());

        set_some(&mut config.input.format, self.input_format.clone());
        set_some(&mut config.input.url_col, self.url_col.clone());
        set_some(&mut config.input.caption_col, self.caption_col.clone());
        set_some(&mut config.input.key_col, self.key_col.clone());
        set(&mut config.input.keep_cols, self.keep_cols.clone());
        if self.no_header {
            config.input.header = false;
        }

        set(&mut config.run.shard_size, self.shard_size);
        set(&mut config.run.batch_size, self.batch_size);
        config.run.overwrite |= self.overwrite;
        set(&mut config.run.decode_threads, self.decode_threads);
        set(&mut config.run.skip_labelled, (!self.skip_labelled.is_empty()).then(|| self.skip_labelled.clone()));
        set(&mut config.run.skip_by, self.skip_by);

        if let Some(decoding) = &self.decoding {
            config.caption.decoding = serde_json::from_value(serde_json::Value::String(decoding.clone()))?;
        }
        set(&mut config.caption.num_beams, self.num_beams);
        set(&mut config.caption.num_captions, self.num_captions);
        set(&mut config.caption.top_p, self.top_p);
        set(&mut config.caption.top_k, self.top_k);
        set(&mut config.caption.temperature, self.temperature);
        set(&mut config.caption.seed, self.seed);
        set(&mut config.caption.max_length, self.max_length);
        set(&mut config.caption.min_length, self.min_length);
        set_some(&mut config.caption.max_new_tokens, self.max_new_tokens);
        set_some(&mut config.caption.min_new_tokens, self.min_new_tokens);
        set(&mut config.caption.no_repeat_ngram_size, self.no_repeat_ngram_size);
        set(&mut config.caption.repetition_penalty, self.repetition_penalty);
        set(&mut config.caption.prompt, self.prompt.clone());

        if self.filter {
            config.filter.enabled = true;
        }
        if self.no_filter {
            config.filter.enabled = false;
        }
        set(&mut config.filter.model, self.filter_model.clone());
        set_some(&mut config.filter.revision, self.filter_revision.clone());
        set(&mut config.filter.threshold, self.threshold);
        if let Some(first_token) = &self.first_token {
            config.filter.first_token = serde_json::from_value(serde_json::Value::String(first_token.clone()))?;
        }
        config.filter.itc |= self.itc;

        set(&mut config.download.concurrency, self.concurrency);
        set(&mut config.download.timeout_secs, self.timeout);
        set(&mut config.download.connect_timeout_secs, self.connect_timeout);
        set(&mut config.download.max_bytes, self.max_bytes);
        set(&mut config.download.max_redirects, self.max_redirects);
        set(&mut config.download.retries, self.retries);
        set(&mut config.download.user_agent, self.user_agent.clone());
        set(&mut config.image.min_size, self.min_size);
        set(&mut config.image.max_pixels, self.max_pixels);
        config.image.jpeg_dct_scaling |= self.jpeg_dct_scaling;
        set(&mut config.download.per_host_concurrency, self.per_host_concurrency);
        config.download.allow_private_networks |= self.allow_private_networks;
        set(&mut config.download.allowed_cidrs, (!self.allow_cidr.is_empty()).then(|| self.allow_cidr.clone()));
        if self.ignore_opt_out {
            config.download.respect_opt_out = false;
        }
        if self.no_local_files {
            config.download.allow_local_files = false;
        }
        Ok(())
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn set_some<T>(target: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *target = value;
    }
}

/// Sends logs to stderr; `RUST_LOG` sets levels (default `info`).
pub fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Export(args) => {
            reject_remote_folder(&args.dir, "capfilt export", "copy the files to a local folder first (for example with `aws s3 sync`)")?;
            let counts = crate::export::export(&args.dir, &args.output, args.format, args.unfiltered)?;
            eprintln!(
                "exported {} web and {} synthetic captions from {} rows to {}",
                counts.web,
                counts.synthetic,
                counts.rows,
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Coordinator(args) => coordinator(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Status(args) => {
            let status = crate::distributed::status::query(&args.nats, &args.run_id).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            reject_remote_folder(&args.dir, "capfilt report", "copy the files to a local folder first (for example with `aws s3 sync`)")?;
            let (path, stats) = crate::report::run(&args)?;
            eprintln!("wrote the report of {} rows in {} shard files to {}", stats.rows, stats.shard_files.len(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect(args) => {
            reject_remote_folder(&args.file, "capfilt inspect", "copy the files to a local folder first (for example with `aws s3 sync`)")?;
            crate::inspect::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Show(settings)) => {
            print!("{}", settings.resolve()?.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    reject_remote_folder(&args.output, "capfilt run --output", "write to a local folder, or use `capfilt coordinator` for S3 output")?;
    let config = args.settings.resolve()?;
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr).await?;
        crate::metrics::watch_gpu_memory(&config.model.device);
    }
    tracing::info!(output = %args.output.display(), "starting run with config:\n{}", config.to_toml());

    let summary = tokio::select! {
        summary = crate::pipeline::run(&args.inputs, &args.output, config) => summary?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: finished shards are kept; run the same command again to resume");
            return Ok(ExitCode::from(130));
        }
    };

    print_summary(&summary);
    if summary.failed_inputs.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for (input, error) in &summary.failed_inputs {
            eprintln!("error: input {input} failed: {error}");
        }
        Ok(ExitCode::from(2))
    }
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let config = args.settings.resolve()?;
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr).await?;
    }
    let options = crate::distributed::coordinator::CoordinatorOptions {
        inputs: args.inputs,
        output: args.output,
        run_id: args.run_id,
        nats: args.nats,
        queue: args.queue,
    };

    let summary = tokio::select! {
        summary = crate::distributed::coordinator::run(options, config) => summary?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: published jobs stay queued; run the same command again to follow the run");
            return Ok(ExitCode::from(130));
        }
    };

    let counts = &summary.counts;
    eprintln!(
        "run {}: {} shards done, {} failed; {} rows, {} ok, {} failed, {:.1} s, {:.2} images/s",
        summary.run_id,
        summary.shards.len(),
        summary.failed_shards.len(),
        counts.rows,
        counts.ok,
        counts.failed,
        summary.seconds,
        summary.images_per_second
    );
    for failed in &summary.failed_shards {
        eprintln!("error: shard {} failed after {} deliveries: {}", failed.id, failed.deliveries, failed.error);
    }
    for (input, error) in &summary.failed_inputs {
        eprintln!("error: input {input} failed: {error}");
    }
    eprintln!("output: {}", summary.output);

    if summary.failed_shards.is_empty() && summary.failed_inputs.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(2))
    }
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr).await?;
        crate::metrics::watch_gpu_memory(args.device.as_deref().unwrap_or("cpu"));
    }
    let name = args.name.unwrap_or_else(default_worker_name);
    let options = crate::distributed::worker::WorkerOptions {
        nats: args.nats,
        queue: args.queue,
        name,
        max_shards: args.max_shards as usize,
        exit_when_idle: args.exit_when_idle,
        shutdown_timeout: args.shutdown_timeout,
        device: args.device,
        retry_delay: args.retry_delay,
    };
    let summary = crate::distributed::worker::run(options).await?;
    eprintln!(
        "worker stopped: {} shards done, {} duplicates skipped, {} failed, {} retried, {} handed back",
        summary.done, summary.skipped, summary.failed, summary.retried, summary.handed_back
    );
    Ok(ExitCode::SUCCESS)
}

/// Rejects a path argument that is a URL: commands that take a local folder would otherwise
/// create a folder named like `s3:` in the working directory.
fn reject_remote_folder(path: &std::path::Path, what: &str, hint: &str) -> anyhow::Result<()> {
    let text = path.to_string_lossy();
    if text.contains("://") {
        anyhow::bail!("{what} takes a local path, not {text:?}; {hint}");
    }
    Ok(())
}

fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

fn print_summary(summary: &crate::pipeline::RunSummary) {
    let counts = &summary.counts;
    tracing::info!(
        rows = counts.rows,
        downloads = summary.downloads,
        deduplicated_rows = summary.deduplicated_rows,
        ok = counts.ok,
        failed = counts.failed,
        already_labelled = counts.already_labelled,
        seconds = summary.seconds,
        "run finished"
    );
    eprintln!(
        "done: {} rows in {} shards ({} skipped as already written), {} downloads ({} rows shared another row's download), {} ok, {} failed, {} already labelled, {:.1} s, {:.2} images/s",
        counts.rows,
        summary.shards.len(),
        summary.skipped_shards.len(),
        summary.downloads,
        summary.deduplicated_rows,
        counts.ok,
        counts.failed,
        counts.already_labelled,
        summary.seconds,
        summary.images_per_second
    );
    for (status, count) in &counts.by_status {
        eprintln!("  {status}: {count}");
    }
    if !summary.skipped_shards.is_empty() {
        eprintln!("shards already written were kept as they are; pass --overwrite to redo them");
    }
    eprintln!("output: {}", summary.output.display());
}
