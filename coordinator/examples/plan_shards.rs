//! Times planning: reads a URL list with `read_rows` and cuts it into shards with `shards`, as
//! the coordinator and `capfilt run` do, then drops each shard. Used by `benches/plan.sh`.
//!
//! ```text
//! cargo run -p capfilt-coordinator --example plan_shards -- INPUT [--shard-size N]
//! ```
//!
//! Prints one JSON line with the rows, shards and rows per second. Peak memory comes from the
//! caller (`/usr/bin/time -v`), because only the operating system measures the whole process.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use capfilt_coordinator::{read_rows, shards, InputFile, ReadOptions};

/// `capfilt run`'s default shard size.
const DEFAULT_SHARD_SIZE: usize = 10_000;

fn parse_args() -> Result<(String, usize)> {
    let mut input = None;
    let mut shard_size = DEFAULT_SHARD_SIZE;

    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--shard-size" {
            shard_size = args.next().context("--shard-size needs a value")?.parse().context("--shard-size")?;
        } else {
            input = Some(arg);
        }
    }
    Ok((input.context("usage: plan_shards INPUT [--shard-size N]")?, shard_size))
}

fn run() -> Result<()> {
    let (path, shard_size) = parse_args()?;
    let input = InputFile::local(&path);
    let start = Instant::now();

    let reader = read_rows(&input, &ReadOptions::default())?;
    let (mut rows, mut count, mut problems) = (0u64, 0u64, 0u64);
    for shard in shards(reader, &input, shard_size) {
        let shard = shard?;
        count += 1;
        rows += shard.rows.len() as u64;
        problems += shard.rows.iter().filter(|r| r.problem.is_some()).count() as u64;
    }

    let seconds = start.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "input": path,
        "rows": rows,
        "rows_with_problems": problems,
        "shards": count,
        "seconds": seconds,
        "rows_per_s": rows as f64 / seconds,
    });
    println!("{report}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plan_shards: {error:#}");
            ExitCode::FAILURE
        }
    }
}
