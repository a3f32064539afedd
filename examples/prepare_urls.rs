//! Times capfilt's preparation stage alone: download every URL of a list with capfilt's
//! `Fetcher`, then decode and preprocess it on the decode pool with the `Preparer`, as
//! `capfilt run` does before the model. Used by `benches/prepare_stage.py`.
//!
//! ```text
//! cargo run --example prepare_urls -- URLS.txt [--threads N] [--concurrency N] [--repeat N] [--jpeg-dct-scaling]
//! ```
//!
//! `URLS.txt` has one URL per line. Private and loopback addresses are allowed, since the
//! benchmark serves the images from a local HTTP server. `--threads` sizes the decode pool
//! (default: every CPU, as `capfilt run`), `--concurrency` the downloads in flight (default:
//! capfilt's download default). `--jpeg-dct-scaling` decodes large JPEGs at a reduced scale, as
//! `capfilt run --jpeg-dct-scaling` does. The JSON on stdout has the wall time of each pass over
//! the list.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use capfilt::fetch::{DownloadConfig, Fetcher};
use capfilt::pipeline::prepare::Preparer;
use capfilt_workers::image::{DecodeLimits, PreprocessConfig};
use futures::StreamExt;
use serde_json::json;

struct Args {
    urls: Vec<String>,
    threads: usize,
    concurrency: usize,
    repeat: usize,
    jpeg_dct_scaling: bool,
}

fn parse_args() -> Result<Args> {
    let mut list = None;
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut concurrency = DownloadConfig::default().concurrency;
    let mut repeat = 1;
    let mut jpeg_dct_scaling = false;

    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--concurrency" => concurrency = value()?.parse().context("--concurrency")?,
            "--repeat" => repeat = value()?.parse().context("--repeat")?,
            "--jpeg-dct-scaling" => jpeg_dct_scaling = true,
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            path => list = Some(path.to_string()),
        }
    }

    let list = list.context("usage: prepare_urls URLS.txt [--threads N] [--concurrency N] [--repeat N] [--jpeg-dct-scaling]")?;
    let text = std::fs::read_to_string(&list).with_context(|| format!("reading {list}"))?;
    let urls = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    Ok(Args { urls, threads, concurrency, repeat: repeat.max(1), jpeg_dct_scaling })
}

fn preparer(args: &Args) -> Result<Preparer> {
    let (threads, concurrency) = (args.threads, args.concurrency);
    // The benchmark's server listens on loopback, which the download guard rejects by default.
    let download = DownloadConfig { allow_private_networks: true, concurrency, per_host_concurrency: 0, ..DownloadConfig::default() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;

    Ok(Preparer {
        fetcher: Fetcher::new(download)?,
        limits: DecodeLimits::default(),
        preprocess: PreprocessConfig::blip(),
        jpeg_min_side: args.jpeg_dct_scaling.then_some(2 * PreprocessConfig::blip().size),
        pool: Arc::new(pool),
        failure_log: Default::default(),
    })
}

/// One pass over the list; returns the seconds taken and how many images were prepared.
async fn pass(preparer: &Preparer, urls: &[String], concurrency: usize) -> (f64, usize, Vec<String>) {
    let start = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(urls)
        .map(|url| prepare_one(preparer, url))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();

    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    (seconds, urls.len() - errors.len(), errors)
}

/// Prepares one image and drops its pixels at once, as `capfilt run` frees them once the model
/// has read its batch. Keeping every image's pixels (1.8 MB each) until the pass ended made the
/// first pass fault in over 200 MB of fresh pages that no pipeline holds.
async fn prepare_one(preparer: &Preparer, url: &str) -> Result<(), String> {
    preparer.prepare(url, None).await.map(drop).map_err(|e| e.message)
}

async fn run(args: Args) -> Result<serde_json::Value> {
    let preparer = preparer(&args)?;

    let mut times = Vec::with_capacity(args.repeat);
    let mut prepared = 0;
    let mut errors = Vec::new();
    for _ in 0..args.repeat {
        let (seconds, ok, failed) = pass(&preparer, &args.urls, args.concurrency).await;
        times.push(seconds);
        prepared = ok;
        errors = failed;
    }

    Ok(json!({
        "urls": args.urls.len(),
        "prepared": prepared,
        "errors": errors,
        "threads": args.threads,
        "concurrency": args.concurrency,
        "jpeg_dct_scaling": args.jpeg_dct_scaling,
        "seconds_per_run": times,
    }))
}

fn main() -> ExitCode {
    // The same allocator settings as the capfilt binary, whose preparation this example measures.
    capfilt_workers::allocator::tune_for_inference();

    let outcome = parse_args().and_then(|args| {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(run(args))
    });
    match outcome {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("prepare_urls: {error:#}");
            ExitCode::FAILURE
        }
    }
}
