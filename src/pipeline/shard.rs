//! The collector: assembles each shard's rows as results arrive, writes the shard file when its
//! last row is done, and writes the run manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use capfilt_coordinator::Shard;
use capfilt_workers::CaptionSettings;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::{Event, RowId, RunSummary};
use crate::model_source::ResolvedModel;
use crate::progress::{Counts, Progress};
use crate::sink::{write_shard, OutputRow};
use crate::status::RowStatus;

/// A shard whose rows are being processed.
pub struct OpenShard {
    sequence: u64,
    id: String,
    input: String,
    first_row: u64,
    rows: Vec<OutputRow>,
    urls: Vec<Option<String>>,
    remaining: usize,
    counts: Counts,
    started: Instant,
    done: Option<oneshot::Sender<ShardRecord>>,
    _permit: OwnedSemaphorePermit,
}

/// A row waiting for its image.
pub struct PendingRow {
    pub row: usize,
    pub url: String,
    pub key: String,
    pub web_caption: Option<String>,
}

/// A written shard, as listed in the manifest.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShardRecord {
    pub id: String,
    pub input: String,
    pub first_row: u64,
    pub rows: usize,
    pub file: String,
    pub counts: Counts,
    pub seconds: f64,
}

impl OpenShard {
    /// Prepares output rows for every input row; rows the reader rejected are final already.
    pub fn new(sequence: u64, shard: &Shard, permit: OwnedSemaphorePermit, done: Option<oneshot::Sender<ShardRecord>>) -> Self {
        let mut counts = Counts::default();
        let mut remaining = 0;
        let mut urls = Vec::with_capacity(shard.rows.len());
        let rows = shard
            .rows
            .iter()
            .map(|input| {
                let mut row = OutputRow {
                    key: input.key.clone(),
                    url: input.url.clone(),
                    caption: input.caption.clone(),
                    kept: input.kept.clone(),
                    ..Default::default()
                };
                match &input.problem {
                    Some(problem) => {
                        let status = problem_status(problem);
                        row.status = Some(status);
                        row.error = Some(problem.located(&shard.input_label, input.line, input.row_index));
                        counts.add(status);
                        urls.push(None);
                    }
                    None => {
                        remaining += 1;
                        urls.push(input.url.clone());
                    }
                }
                row
            })
            .collect();

        Self {
            sequence,
            id: shard.id.clone(),
            input: shard.input_label.clone(),
            first_row: shard.first_row,
            rows,
            urls,
            remaining,
            counts,
            started: Instant::now(),
            done,
            _permit: permit,
        }
    }

    /// Rows still to download.
    pub fn pending_rows(&self) -> Vec<PendingRow> {
        self.urls
            .iter()
            .enumerate()
            .filter_map(|(i, url)| {
                url.clone().map(|url| PendingRow {
                    row: i,
                    url,
                    key: self.rows[i].key.clone(),
                    web_caption: self.rows[i].caption.clone(),
                })
            })
            .collect()
    }

    fn finish_row(&mut self, row: usize, status: RowStatus) {
        self.rows[row].status = Some(status);
        self.counts.add(status);
        self.remaining -= 1;
    }
}

fn problem_status(problem: &capfilt_coordinator::RowProblem) -> RowStatus {
    match problem {
        capfilt_coordinator::RowProblem::MissingUrl => RowStatus::MissingUrl,
        capfilt_coordinator::RowProblem::InvalidUrl(_) => RowStatus::InvalidUrl,
        capfilt_coordinator::RowProblem::Malformed(_) => RowStatus::InvalidRow,
    }
}

pub fn output_path(dir: &Path, shard_id: &str) -> PathBuf {
    dir.join(format!("{shard_id}.parquet"))
}

/// Deletes temporary files an interrupted run left in the output folder.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && name.contains(".parquet.") {
            tracing::warn!(file = %name, "removing a partial shard file left by an interrupted run");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Key-value metadata stored in every shard file: tool version, model and decoding settings.
pub fn file_metadata(
    model: &ResolvedModel,
    caption: &CaptionSettings,
    filter: Option<(&ResolvedModel, &crate::config::FilterConfig)>,
    image: &crate::config::ImageConfig,
) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    metadata.insert("capfilt.version".into(), env!("CARGO_PKG_VERSION").into());
    metadata.insert("capfilt.captioner.model".into(), model.id.clone());
    metadata.insert("capfilt.captioner.source".into(), model.source.into());
    if let Some(revision) = &model.revision {
        metadata.insert("capfilt.captioner.revision".into(), revision.clone());
    }
    if let Some(commit) = &model.commit {
        metadata.insert("capfilt.captioner.commit".into(), commit.clone());
    }
    if let Some(hash) = &model.weights_sha256 {
        metadata.insert("capfilt.captioner.weights_sha256".into(), hash.clone());
    }
    metadata.insert("capfilt.caption.settings".into(), serde_json::to_string(caption).unwrap_or_default());
    metadata.insert("capfilt.caption.seed".into(), caption.seed.to_string());
    if let Some((filter_model, filter)) = filter {
        metadata.insert("capfilt.filter.model".into(), filter_model.id.clone());
        if let Some(revision) = &filter_model.revision {
            metadata.insert("capfilt.filter.revision".into(), revision.clone());
        }
        if let Some(commit) = &filter_model.commit {
            metadata.insert("capfilt.filter.commit".into(), commit.clone());
        }
        if let Some(hash) = &filter_model.weights_sha256 {
            metadata.insert("capfilt.filter.weights_sha256".into(), hash.clone());
        }
        metadata.insert("capfilt.filter.threshold".into(), filter.threshold.to_string());
        metadata.insert("capfilt.filter.first_token".into(), format!("{:?}", filter.first_token).to_lowercase());
        metadata.insert("capfilt.filter.settings".into(), serde_json::to_string(filter).unwrap_or_default());
    }
    metadata.insert(
        "capfilt.image.background".into(),
        "alpha composited on white (255, 255, 255)".into(),
    );
    // Written only when on, so files from runs that decode in full keep matching each other.
    if image.jpeg_dct_scaling {
        metadata.insert("capfilt.image.jpeg_decode".into(), "dct_scaled_to_twice_the_input_size".into());
    }
    metadata
}

/// Results the collector gathered over the run.
pub struct Collected {
    pub counts: Counts,
    pub shards: Vec<ShardRecord>,
    pub skipped: Vec<String>,
    pub failed_inputs: Vec<(String, String)>,
}

/// Receives row results until every sender is gone, writing each shard as it completes.
pub async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
    output: &Path,
    kept_columns: &[String],
    metadata: &HashMap<String, String>,
) -> anyhow::Result<Collected> {
    let mut open: HashMap<u64, OpenShard> = HashMap::new();
    let mut progress = Progress::new();
    let mut collected = Collected { counts: Counts::default(), shards: Vec::new(), skipped: Vec::new(), failed_inputs: Vec::new() };

    while let Some(event) = events.recv().await {
        let finished_shard = match event {
            Event::Opened(shard) => {
                for row in shard.rows.iter().filter(|r| r.status.is_some()) {
                    progress.record(row.status.expect("filtered on status"));
                }
                let sequence = shard.sequence;
                open.insert(sequence, shard);
                Some(sequence)
            }
            Event::Failed { row, failure } => {
                let shard = open_shard(&mut open, row)?;
                let output_row = &mut shard.rows[row.row];
                output_row.error = Some(failure.message);
                if let Some(info) = failure.info {
                    apply_info(output_row, &info);
                }
                shard.finish_row(row.row, failure.status);
                progress.record(failure.status);
                Some(row.shard)
            }
            Event::Captioned(captioned) => {
                let row = captioned.row;
                let captions = captioned.result.map_err(|e| anyhow::anyhow!("captioning failed: {e}"))?;
                let shard = open_shard(&mut open, row)?;
                let output_row = &mut shard.rows[row.row];
                apply_info(output_row, &captioned.info);
                apply_captions(output_row, captions);
                shard.finish_row(row.row, RowStatus::Ok);
                progress.record(RowStatus::Ok);
                Some(row.shard)
            }
            Event::Skipped { id, input, rows } => {
                tracing::info!(shard = %id, %input, rows, "shard already written, skipping");
                collected.skipped.push(id);
                None
            }
            Event::InputsRead { rows } => {
                progress.set_total(rows);
                None
            }
            Event::InputFailed { input, error } => {
                collected.failed_inputs.push((input, error));
                None
            }
        };

        if let Some(sequence) = finished_shard {
            if open.get(&sequence).is_some_and(|s| s.remaining == 0) {
                let mut shard = open.remove(&sequence).expect("checked above");
                let done = shard.done.take();
                let record = write_finished(shard, output, kept_columns, metadata).await?;
                if let Some(done) = done {
                    let _ = done.send(record.clone());
                }
                collected.counts.merge(&record.counts);
                collected.shards.push(record);
            }
        }
    }

    progress.finish();
    if !open.is_empty() {
        anyhow::bail!("{} shard(s) were left incomplete because a pipeline stage stopped early", open.len());
    }
    Ok(collected)
}

fn open_shard(open: &mut HashMap<u64, OpenShard>, row: RowId) -> anyhow::Result<&mut OpenShard> {
    open.get_mut(&row.shard).with_context(|| format!("result for unknown shard {}", row.shard))
}

fn apply_captions(row: &mut OutputRow, result: super::model::RowCaptions) {
    row.caption_stops = Some(result.captions.iter().map(|c| c.stop.as_str().to_string()).collect());
    row.captions = Some(result.captions.into_iter().map(|c| c.text).collect());

    if let Some(web) = result.web_score {
        row.web_itm = Some(web.itm);
        row.web_itc = web.itc;
        row.keep_web = Some(web.keep);
    }
    if let Some(scores) = result.caption_scores {
        row.caption_itm = Some(scores.iter().map(|s| s.itm).collect());
        row.caption_itc = scores.iter().map(|s| s.itc).collect();
        row.keep_captions = Some(scores.iter().map(|s| s.keep).collect());
    }
}

fn apply_info(row: &mut OutputRow, info: &super::ImageInfo) {
    if info.width > 0 {
        row.width = Some(info.width);
        row.height = Some(info.height);
    }
    if !info.format.is_empty() {
        row.image_format = Some(info.format.clone());
    }
    if !info.sha256.is_empty() {
        row.sha256 = Some(info.sha256.clone());
    }
}

async fn write_finished(
    shard: OpenShard,
    output: &Path,
    kept_columns: &[String],
    metadata: &HashMap<String, String>,
) -> anyhow::Result<ShardRecord> {
    let (dir, kept, metadata) = (output.to_path_buf(), kept_columns.to_vec(), metadata.clone());
    let id = shard.id.clone();
    let rows = shard.rows;
    let row_count = rows.len();
    let path = tokio::task::spawn_blocking(move || write_shard(&dir, &id, &kept, &rows, &metadata))
        .await
        .context("shard writer stopped unexpectedly")??;

    let seconds = shard.started.elapsed().as_secs_f64();
    tracing::info!(shard = %shard.id, rows = row_count, ok = shard.counts.ok, failed = shard.counts.failed, seconds, "shard written");
    Ok(ShardRecord {
        id: shard.id,
        input: shard.input,
        first_row: shard.first_row,
        rows: row_count,
        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        counts: shard.counts,
        seconds,
    })
}

/// Reads the shard records of the `_manifest.json` an earlier run left in `output`, by shard id.
/// A missing or unreadable manifest gives none.
pub fn read_manifest_records(output: &Path) -> HashMap<String, ShardRecord> {
    #[derive(serde::Deserialize)]
    struct Earlier {
        #[serde(default)]
        shards: Vec<ShardRecord>,
    }

    let Ok(bytes) = std::fs::read(output.join("_manifest.json")) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<Earlier>(&bytes) {
        Ok(earlier) => earlier.shards.into_iter().map(|record| (record.id.clone(), record)).collect(),
        Err(error) => {
            tracing::warn!(%error, "the earlier _manifest.json is unreadable; shards it listed are not counted again");
            HashMap::new()
        }
    }
}

/// Adds the records of shards this run skipped as already written, so the manifest describes
/// every shard of the output rather than only those written this time.
pub fn with_kept_shards(
    mut counts: Counts,
    mut shards: Vec<ShardRecord>,
    skipped: &[String],
    previous: &HashMap<String, ShardRecord>,
) -> (Counts, Vec<ShardRecord>) {
    for id in skipped {
        if let Some(record) = previous.get(id) {
            counts.merge(&record.counts);
            shards.push(record.clone());
        }
    }
    shards.sort_by(|a, b| a.id.cmp(&b.id));
    (counts, shards)
}

/// Writes `_manifest.json` atomically.
pub fn write_manifest(output: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    let path = output.join("_manifest.json");
    let temp = output.join(format!("._manifest.json.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(summary)?;
    std::fs::write(&temp, json).with_context(|| format!("failed to write {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
