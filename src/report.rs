//! `capfilt report`: one static HTML page summarising an output folder: rows by status and
//! failure reason, ITM score and caption length histograms, and a gallery of sampled rows.
//!
//! Shards are read one record batch at a time into fixed-size histograms and a bounded sample,
//! so memory does not grow with the number of rows.

mod chart;
mod page;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::Float32Type;
use clap::Args;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use chart::Histogram;

/// Bins of the ITM score histograms over [0, 1].
const SCORE_BINS: usize = 20;
/// Caption lengths at or above this many words share the last bin.
const MAX_WORDS: u32 = 40;
/// Distinct failure reasons tracked; rarer ones beyond this are counted together.
const MAX_REASONS: usize = 10_000;
/// Reason text is cut to this many characters, because some errors quote whole responses.
const MAX_REASON_CHARS: usize = 200;
/// Metadata key of the CapFilt threshold in shard files.
const THRESHOLD_KEY: &str = "capfilt.filter.threshold";

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output folder of `capfilt run`: shard files and, when present, _manifest.json.
    pub dir: PathBuf,
    /// HTML file to write [default: _report.html in the output folder].
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// `ok` rows shown in the gallery. The sample is the same on every run over the same rows.
    #[arg(long, default_value_t = 48)]
    pub samples: usize,
}

/// Everything the page shows, gathered from the shard files and the manifest.
#[derive(Debug)]
pub struct RunStats {
    pub dir: PathBuf,
    pub shard_files: Vec<String>,
    pub rows: u64,
    pub by_status: BTreeMap<String, u64>,
    /// Row count per (status, error text with the row's URL replaced by `<url>`).
    pub reasons: HashMap<(String, String), u64>,
    /// Failed rows whose reason was not tracked because `MAX_REASONS` was reached.
    pub untracked_reasons: u64,
    pub web_itm: Histogram,
    pub caption_itm: Histogram,
    pub web_kept: u64,
    pub web_scored: u64,
    pub captions_kept: u64,
    pub captions_scored: u64,
    /// Distinct `capfilt.filter.threshold` values, as written in the files.
    pub thresholds: BTreeSet<String>,
    pub web_words: Histogram,
    pub caption_words: Histogram,
    pub samples: Vec<Sample>,
    pub manifest: Option<Manifest>,
    /// Problems found while reading that the page should point out.
    pub warnings: Vec<String>,
}

/// One `ok` row shown in the gallery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sample {
    pub key: String,
    pub url: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub caption: Option<String>,
    /// ITM score as text, because `f32` has no total order for the sample heap.
    pub web_itm: Option<String>,
    pub keep_web: Option<bool>,
    pub captions: Vec<SyntheticCaption>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SyntheticCaption {
    pub text: String,
    pub itm: Option<String>,
    pub keep: Option<bool>,
}

/// The parts of _manifest.json the page shows.
#[derive(Debug, Default)]
pub struct Manifest {
    pub version: Option<String>,
    pub model: Option<String>,
    pub filter_model: Option<String>,
    pub inputs: Vec<String>,
    pub rows: Option<u64>,
    pub seconds: Option<f64>,
    pub images_per_second: Option<f64>,
    pub failed_inputs: Vec<(String, String)>,
    pub shard_files: Vec<String>,
}

/// Writes the report for `args.dir` and returns the statistics it shows.
pub fn run(args: &ReportArgs) -> anyhow::Result<(PathBuf, RunStats)> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.dir.join("_report.html"));
    let stats = read_output_folder(&args.dir, args.samples)?;

    let html = page::render(&stats);
    std::fs::write(&output, html)
        .with_context(|| format!("failed to write {}", output.display()))?;
    Ok((output, stats))
}

/// Reads every shard file in `dir` and the manifest, if any.
pub fn read_output_folder(dir: &Path, sample_size: usize) -> anyhow::Result<RunStats> {
    let files = crate::export::shard_files(dir)?;
    let mut stats = RunStats::new(dir);
    let mut sampler = Sampler::new(sample_size);

    for file in &files {
        read_shard(file, &mut stats, &mut sampler)
            .with_context(|| format!("failed to read shard file {}", file.display()))?;
        stats.shard_files.push(file_name(file));
    }

    stats.samples = sampler.into_sorted();
    stats.manifest = read_manifest(dir, &mut stats.warnings);
    check_manifest(&mut stats);
    Ok(stats)
}

impl RunStats {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            shard_files: Vec::new(),
            rows: 0,
            by_status: BTreeMap::new(),
            reasons: HashMap::new(),
            untracked_reasons: 0,
            web_itm: Histogram::unit(SCORE_BINS),
            caption_itm: Histogram::unit(SCORE_BINS),
            web_kept: 0,
            web_scored: 0,
            captions_kept: 0,
            captions_scored: 0,
            thresholds: BTreeSet::new(),
            web_words: Histogram::integers(MAX_WORDS),
            caption_words: Histogram::integers(MAX_WORDS),
            samples: Vec::new(),
            manifest: None,
            warnings: Vec::new(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_shard(path: &Path, stats: &mut RunStats, sampler: &mut Sampler) -> anyhow::Result<()> {
    let file = File::open(path).context("failed to open the file")?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).context("not a valid Parquet file")?;

    let key_values = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    if let Some(threshold) = key_values
        .iter()
        .find(|e| e.key == THRESHOLD_KEY)
        .and_then(|e| e.value.clone())
    {
        stats.thresholds.insert(threshold);
    }

    for batch in builder.build()? {
        let batch = batch.context("failed to decode a record batch")?;
        let columns = ShardColumns::new(&batch)?;
        for row in 0..batch.num_rows() {
            add_row(&columns, row, stats, sampler);
        }
    }
    Ok(())
}

/// The columns of one record batch that the report reads. The filter columns are optional,
/// because shards written without the filter may lack them.
struct ShardColumns<'a> {
    key: &'a StringArray,
    url: &'a StringArray,
    caption: &'a StringArray,
    status: &'a StringArray,
    error: &'a StringArray,
    width: Option<&'a UInt32Array>,
    height: Option<&'a UInt32Array>,
    captions: Option<&'a ListArray>,
    web_itm: Option<&'a Float32Array>,
    caption_itm: Option<&'a ListArray>,
    keep_web: Option<&'a BooleanArray>,
    keep_captions: Option<&'a ListArray>,
}

impl<'a> ShardColumns<'a> {
    fn new(batch: &'a RecordBatch) -> anyhow::Result<Self> {
        Ok(Self {
            key: required(batch, "key")?,
            url: required(batch, "url")?,
            caption: required(batch, "caption")?,
            status: required(batch, "status")?,
            error: required(batch, "error")?,
            width: optional(batch, "width")?,
            height: optional(batch, "height")?,
            captions: optional(batch, "captions")?,
            web_itm: optional(batch, "web_itm")?,
            caption_itm: optional(batch, "caption_itm")?,
            keep_web: optional(batch, "keep_web")?,
            keep_captions: optional(batch, "keep_captions")?,
        })
    }
}

fn required<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a T> {
    optional(batch, name)?
        .with_context(|| format!("no column {name}; is this a shard file written by capfilt?"))
}

/// Returns the column `name` as `T`, `None` when the file has no such column, and an error when
/// it has one of another type.
fn optional<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<Option<&'a T>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };

    match column.as_any().downcast_ref::<T>() {
        Some(typed) => Ok(Some(typed)),
        None => bail!(
            "column {name} has type {}, which capfilt does not write",
            column.data_type()
        ),
    }
}

fn add_row(columns: &ShardColumns, row: usize, stats: &mut RunStats, sampler: &mut Sampler) {
    let status = columns.status.value(row);
    stats.rows += 1;
    *stats.by_status.entry(status.to_string()).or_default() += 1;

    if status != "ok" {
        add_failure(columns, row, status, stats);
        return;
    }

    let caption = text(columns.caption, row);
    if let Some(caption) = caption.filter(|c| !c.trim().is_empty()) {
        stats.web_words.add(word_count(caption) as f64);
    }
    let generated = string_list(columns.captions, row);
    for text in &generated {
        stats.caption_words.add(word_count(text) as f64);
    }

    let web_itm = float(columns.web_itm, row);
    let keep_web = boolean(columns.keep_web, row);
    add_web_score(stats, web_itm, keep_web);
    let scores = float_list(columns.caption_itm, row);
    let keeps = bool_list(columns.keep_captions, row);
    add_caption_scores(stats, &scores, &keeps);

    let url = text(columns.url, row).unwrap_or_default();
    let key = columns.key.value(row);
    if sampler.wants(key) {
        let captions = generated
            .into_iter()
            .enumerate()
            .map(|(i, text)| SyntheticCaption {
                text,
                itm: scores.get(i).map(|s| format!("{s:.3}")),
                keep: keeps.get(i).copied(),
            })
            .collect();
        let sample = Sample {
            key: key.to_string(),
            url: url.to_string(),
            width: number(columns.width, row),
            height: number(columns.height, row),
            caption: caption.map(str::to_string),
            web_itm: web_itm.map(|s| format!("{s:.3}")),
            keep_web,
            captions,
        };
        sampler.offer(sample);
    }
}

fn add_failure(columns: &ShardColumns, row: usize, status: &str, stats: &mut RunStats) {
    let error = text(columns.error, row).unwrap_or("(no error message)");
    let reason = failure_reason(error, text(columns.url, row));
    let id = (status.to_string(), reason);

    if let Some(count) = stats.reasons.get_mut(&id) {
        *count += 1;
    } else if stats.reasons.len() < MAX_REASONS {
        stats.reasons.insert(id, 1);
    } else {
        stats.untracked_reasons += 1;
    }
}

/// Groups error messages that differ only in the row's URL, which most download errors quote,
/// or in the input line number, which errors about input rows quote.
fn failure_reason(error: &str, url: Option<&str>) -> String {
    let without_url = match url.filter(|u| !u.is_empty()) {
        Some(url) => error.replace(url, "<url>"),
        None => error.to_string(),
    };
    let mut reason = hide_line_numbers(&without_url);

    if reason.chars().count() > MAX_REASON_CHARS {
        reason = reason.chars().take(MAX_REASON_CHARS).collect::<String>() + "...";
    }
    reason
}

/// Replaces the number in each "line 123" with `<n>`; "line" must start a word, so a message
/// such as "deadline 5 s" keeps its number.
fn hide_line_numbers(text: &str) -> String {
    const WORD: &str = "line ";
    let mut hidden = String::with_capacity(text.len());
    let mut rest = text;

    while let Some(start) = rest.find(WORD) {
        let after = &rest[start + WORD.len()..];
        hidden.push_str(&rest[..start + WORD.len()]);
        rest = after;

        let starts_word = hidden[..hidden.len() - WORD.len()]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if starts_word && digits > 0 {
            hidden.push_str("<n>");
            rest = &after[digits..];
        }
    }

    hidden.push_str(rest);
    hidden
}

fn add_web_score(stats: &mut RunStats, score: Option<f32>, keep: Option<bool>) {
    if let Some(score) = score {
        stats.web_itm.add(score as f64);
        stats.web_scored += 1;
    }
    if keep == Some(true) {
        stats.web_kept += 1;
    }
}

fn add_caption_scores(stats: &mut RunStats, scores: &[f32], keeps: &[bool]) {
    for score in scores {
        stats.caption_itm.add(*score as f64);
    }
    stats.captions_scored += scores.len() as u64;
    stats.captions_kept += keeps.iter().filter(|&&keep| keep).count() as u64;
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

fn text(column: &StringArray, row: usize) -> Option<&str> {
    (!column.is_null(row)).then(|| column.value(row))
}

fn number(column: Option<&UInt32Array>, row: usize) -> Option<u32> {
    column.filter(|c| !c.is_null(row)).map(|c| c.value(row))
}

fn float(column: Option<&Float32Array>, row: usize) -> Option<f32> {
    column.filter(|c| !c.is_null(row)).map(|c| c.value(row))
}

fn boolean(column: Option<&BooleanArray>, row: usize) -> Option<bool> {
    column.filter(|c| !c.is_null(row)).map(|c| c.value(row))
}

fn string_list(column: Option<&ListArray>, row: usize) -> Vec<String> {
    let Some(values) = column.filter(|c| !c.is_null(row)).map(|c| c.value(row)) else {
        return Vec::new();
    };
    let Some(strings) = values.as_string_opt::<i32>() else {
        return Vec::new();
    };
    strings
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect()
}

fn float_list(column: Option<&ListArray>, row: usize) -> Vec<f32> {
    let Some(values) = column.filter(|c| !c.is_null(row)).map(|c| c.value(row)) else {
        return Vec::new();
    };
    let Some(floats) = values.as_primitive_opt::<Float32Type>() else {
        return Vec::new();
    };
    floats.iter().flatten().collect()
}

fn bool_list(column: Option<&ListArray>, row: usize) -> Vec<bool> {
    let Some(values) = column.filter(|c| !c.is_null(row)).map(|c| c.value(row)) else {
        return Vec::new();
    };
    let Some(booleans) = values.as_boolean_opt() else {
        return Vec::new();
    };
    booleans.iter().map(|b| b.unwrap_or(false)).collect()
}

/// Keeps the `size` rows whose keys have the smallest SHA-256 (bottom-k sampling). The sample
/// is uniform over rows, does not depend on the order shards are read in, and stays the same
/// when the report is written again.
struct Sampler {
    size: usize,
    heap: BinaryHeap<([u8; 32], Sample)>,
}

impl Sampler {
    fn new(size: usize) -> Self {
        Self {
            size,
            heap: BinaryHeap::with_capacity(size + 1),
        }
    }

    /// Tells whether a row with `key` would enter the sample, before its values are copied.
    fn wants(&self, key: &str) -> bool {
        if self.size == 0 {
            return false;
        }
        self.heap.len() < self.size
            || self
                .heap
                .peek()
                .is_some_and(|(largest, _)| key_hash(key) < *largest)
    }

    fn offer(&mut self, sample: Sample) {
        self.heap.push((key_hash(&sample.key), sample));
        if self.heap.len() > self.size {
            self.heap.pop();
        }
    }

    fn into_sorted(self) -> Vec<Sample> {
        let mut samples: Vec<Sample> = self.heap.into_iter().map(|(_, sample)| sample).collect();
        samples.sort_by(|a, b| a.key.cmp(&b.key));
        samples
    }
}

fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Reads _manifest.json when present. A manifest that cannot be read adds a warning instead of
/// failing, because the shard files alone are enough for the report.
fn read_manifest(dir: &Path, warnings: &mut Vec<String>) -> Option<Manifest> {
    let path = dir.join("_manifest.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            warnings.push(format!("failed to read {}: {error}", path.display()));
            return None;
        }
    };

    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) if value.is_object() => Some(manifest_fields(&value)),
        Ok(_) => {
            warnings.push(format!(
                "{} is not a JSON object; its run details are left out",
                path.display()
            ));
            None
        }
        Err(error) => {
            warnings.push(format!(
                "{} is not valid JSON ({error}); its run details are left out",
                path.display()
            ));
            None
        }
    }
}

fn manifest_fields(value: &serde_json::Value) -> Manifest {
    let string = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let strings = |pointer: &str| -> Vec<String> {
        let items = value
            .pointer(pointer)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let failed_inputs = value
        .pointer("/failed_inputs")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let shards = value
        .pointer("/shards")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();

    Manifest {
        version: string("/version"),
        model: string("/model/id"),
        filter_model: string("/filter_model/id"),
        inputs: strings("/inputs"),
        rows: value.pointer("/counts/rows").and_then(|v| v.as_u64()),
        seconds: value.pointer("/seconds").and_then(|v| v.as_f64()),
        images_per_second: value.pointer("/images_per_second").and_then(|v| v.as_f64()),
        failed_inputs: failed_inputs
            .iter()
            .filter_map(|pair| {
                Some((
                    pair.get(0)?.as_str()?.to_string(),
                    pair.get(1)?.as_str()?.to_string(),
                ))
            })
            .collect(),
        shard_files: shards
            .iter()
            .filter_map(|s| s.get("file")?.as_str().map(str::to_string))
            .collect(),
    }
}

/// Warns about shard files the manifest lists but the folder lacks. The manifest's row count
/// covers only the shards written by its own run, so a resumed run's count may differ from the
/// folder's without anything being wrong, and that difference is shown, not warned about.
fn check_manifest(stats: &mut RunStats) {
    let Some(manifest) = &stats.manifest else {
        return;
    };

    let present: BTreeSet<&String> = stats.shard_files.iter().collect();
    let missing: Vec<&String> = manifest
        .shard_files
        .iter()
        .filter(|f| !present.contains(f))
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(10).map(|s| s.as_str()).collect();
        let warning = format!(
            "_manifest.json lists {} shard files that are not in the folder: {}",
            missing.len(),
            names.join(", ")
        );
        stats.warnings.push(warning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &str) -> Sample {
        Sample {
            key: key.into(),
            url: String::new(),
            width: None,
            height: None,
            caption: None,
            web_itm: None,
            keep_web: None,
            captions: Vec::new(),
        }
    }

    #[test]
    fn sampler_independent_of_order() {
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let pick = |keys: &mut dyn Iterator<Item = &String>| {
            let mut sampler = Sampler::new(10);
            for key in keys {
                if sampler.wants(key) {
                    sampler.offer(sample(key));
                }
            }
            sampler
                .into_sorted()
                .into_iter()
                .map(|s| s.key)
                .collect::<Vec<_>>()
        };

        let forward = pick(&mut keys.iter());
        let backward = pick(&mut keys.iter().rev());

        assert_eq!(forward.len(), 10);
        assert_eq!(forward, backward);
    }

    #[test]
    fn failure_reason_hides_row_url() {
        let reason = failure_reason(
            "HTTP 404 for http://a.test/x.jpg",
            Some("http://a.test/x.jpg"),
        );
        assert_eq!(reason, "HTTP 404 for <url>");
        let input = failure_reason("list.jsonl line 6: missing URL; see line 12", Some(""));
        assert_eq!(input, "list.jsonl line <n>: missing URL; see line <n>");
        assert_eq!(
            hide_line_numbers("deadline 5 s, line x"),
            "deadline 5 s, line x"
        );
        assert_eq!(hide_line_numbers("line 3"), "line <n>");
        let long = failure_reason(&"e".repeat(500), None);
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 3);
    }

    #[test]
    fn manifest_fields_read_run_summary() {
        let value = serde_json::json!({
            "version": "0.1.0",
            "model": {"id": "tiny"},
            "inputs": ["a.jsonl"],
            "counts": {"rows": 7},
            "failed_inputs": [["b.jsonl", "not found"]],
            "shards": [{"file": "x-00000.parquet"}],
        });

        let manifest = manifest_fields(&value);

        assert_eq!(manifest.model.as_deref(), Some("tiny"));
        assert_eq!(manifest.rows, Some(7));
        assert_eq!(
            manifest.failed_inputs,
            vec![("b.jsonl".to_string(), "not found".to_string())]
        );
        assert_eq!(manifest.shard_files, vec!["x-00000.parquet".to_string()]);
        assert!(manifest.filter_model.is_none());
    }
}
