//! Run progress: a live bar on a terminal, periodic log lines otherwise, and the final counts.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::status::RowStatus;

/// How often progress is logged when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Row counts by status and throughput.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Counts {
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    /// Rows matched by an earlier run's label (`--skip-labelled`), counted neither as `ok`
    /// nor as `failed`. Absent in records written before the option existed.
    #[serde(default)]
    pub already_labelled: u64,
    pub by_status: BTreeMap<String, u64>,
}

impl Counts {
    pub fn add(&mut self, status: RowStatus) {
        self.rows += 1;
        match status {
            RowStatus::Ok => self.ok += 1,
            RowStatus::AlreadyLabelled => self.already_labelled += 1,
            _ => self.failed += 1,
        }
        *self.by_status.entry(status.as_str().to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Counts) {
        self.rows += other.rows;
        self.ok += other.ok;
        self.failed += other.failed;
        self.already_labelled += other.already_labelled;
        for (status, count) in &other.by_status {
            *self.by_status.entry(status.clone()).or_default() += count;
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
    pub counts: Counts,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rows {msg} ETA {eta}")
                .expect("progress template is valid");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self { bar, started: now, last_log: now, counts: Counts::default() }
    }

    /// Sets the total once every input has been read, which enables the ETA.
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub fn record(&mut self, status: RowStatus) {
        self.counts.add(status);
        let metrics = crate::metrics::metrics();
        metrics.record_row(status);
        metrics.images_per_second.set(self.images_per_second());
        let message = self.message();
        if let Some(bar) = &self.bar {
            bar.set_position(self.counts.rows);
            bar.set_message(message);
        } else if self.last_log.elapsed() >= LOG_INTERVAL {
            self.last_log = Instant::now();
            tracing::info!(rows = self.counts.rows, ok = self.counts.ok, failed = self.counts.failed, "progress: {message}");
        }
    }

    pub fn images_per_second(&self) -> f64 {
        self.counts.ok as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn message(&self) -> String {
        format!("ok {} failed {} {:.2} img/s", self.counts.ok, self.counts.failed, self.images_per_second())
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
