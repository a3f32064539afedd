//! `capfilt export`: the bootstrapped dataset from shard files, as BLIP released it (a JSON list
//! of `{"url", "caption"}` with the kept web and kept synthetic captions), or as JSONL or Parquet.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray, Float32Array, Float32Builder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use clap::ValueEnum;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A JSON list of `{"url", "caption"}`, BLIP's release format.
    BlipJson,
    /// One `{"url", "caption", "source", "key", "itm"}` object per line.
    Jsonl,
    /// Columns `url`, `caption`, `source`, `key`, `itm`.
    Parquet,
}

/// One exported text: a web or synthetic caption the filter kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub url: String,
    pub caption: String,
    /// `web` or `synthetic`.
    pub source: &'static str,
    pub key: String,
    pub itm: Option<f32>,
}

/// Counts of what an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    pub rows: u64,
    pub web: u64,
    pub synthetic: u64,
}

/// Writes the kept pairs of every shard in `dir` to `output`. Without `unfiltered`, shards
/// written without the filter are an error, because they carry no keep decisions.
pub fn export(dir: &Path, output: &Path, format: ExportFormat, unfiltered: bool) -> anyhow::Result<ExportCounts> {
    let shards = shard_files(dir)?;
    let mut sink = Sink::create(output, format)?;
    let mut counts = ExportCounts::default();

    for shard in &shards {
        for batch in read_batches(shard)? {
            counts.rows += batch.num_rows() as u64;
            for pair in kept_pairs(&batch, unfiltered).with_context(|| format!("in {}", shard.display()))? {
                match pair.source {
                    "web" => counts.web += 1,
                    _ => counts.synthetic += 1,
                }
                sink.write(&pair)?;
            }
        }
    }

    sink.finish()?;
    Ok(counts)
}

/// Lists the shard files of an output folder, sorted, leaving out hidden temporary files.
pub(crate) fn shard_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("failed to read output folder {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no shard files (*.parquet) in {}", dir.display());
    }
    Ok(files)
}

fn read_batches(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?
        .build()?;
    reader.collect::<Result<Vec<_>, _>>().with_context(|| format!("failed to read {}", path.display()))
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .with_context(|| format!("shard file has no string column {name}; was it written by capfilt?"))
}

/// Collects the texts of `ok` rows that the filter kept (all of them with `unfiltered` on shards
/// written without the filter).
fn kept_pairs(batch: &RecordBatch, unfiltered: bool) -> anyhow::Result<Vec<Pair>> {
    let keys = strings(batch, "key")?;
    let urls = strings(batch, "url")?;
    let web = strings(batch, "caption")?;
    let status = strings(batch, "status")?;
    let captions = batch.column_by_name("captions").context("shard file has no captions column")?.as_list::<i32>();
    let web_itm = batch.column_by_name("web_itm").and_then(|c| c.as_any().downcast_ref::<Float32Array>());
    let keep_web = batch.column_by_name("keep_web").map(|c| c.as_boolean());
    let caption_itm = batch.column_by_name("caption_itm").map(|c| c.as_list::<i32>());
    let keep_captions = batch.column_by_name("keep_captions").map(|c| c.as_list::<i32>());

    let mut pairs = Vec::new();
    for row in 0..batch.num_rows() {
        if status.value(row) != "ok" || urls.is_null(row) {
            continue;
        }
        let filtered = keep_captions.is_some_and(|k| !k.is_null(row));
        if !filtered && !unfiltered {
            bail!("row {} was written without the filter; rerun with the filter or export with --unfiltered", keys.value(row));
        }
        let pair = |caption: &str, source, itm| Pair {
            url: urls.value(row).to_string(),
            caption: caption.to_string(),
            source,
            key: keys.value(row).to_string(),
            itm,
        };

        if !web.is_null(row) && !web.value(row).trim().is_empty() {
            let keep = keep_web.map(|k| !k.is_null(row) && k.value(row)).unwrap_or(false);
            if keep || !filtered {
                pairs.push(pair(web.value(row), "web", web_itm.filter(|s| !s.is_null(row)).map(|s| s.value(row))));
            }
        }

        let generated = captions.value(row);
        let generated = generated.as_string::<i32>();
        let keeps = keep_captions.filter(|k| !k.is_null(row)).map(|k| k.value(row));
        let scores = caption_itm.filter(|s| !s.is_null(row)).map(|s| s.value(row));
        for i in 0..generated.len() {
            let keep = keeps.as_ref().is_some_and(|k| k.as_boolean().value(i));
            let itm = scores.as_ref().map(|s| s.as_primitive::<arrow::datatypes::Float32Type>().value(i));
            if keep || !filtered {
                pairs.push(pair(generated.value(i), "synthetic", itm));
            }
        }
    }
    Ok(pairs)
}

enum Sink {
    BlipJson { out: BufWriter<File>, first: bool },
    Jsonl(BufWriter<File>),
    Parquet { writer: ArrowWriter<File>, pending: Vec<Pair> },
}

const PARQUET_BATCH: usize = 8192;

impl Sink {
    fn create(path: &Path, format: ExportFormat) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(match format {
            ExportFormat::BlipJson => {
                let mut out = BufWriter::new(file);
                out.write_all(b"[")?;
                Sink::BlipJson { out, first: true }
            }
            ExportFormat::Jsonl => Sink::Jsonl(BufWriter::new(file)),
            ExportFormat::Parquet => Sink::Parquet { writer: ArrowWriter::try_new(file, pair_schema(), None)?, pending: Vec::new() },
        })
    }

    fn write(&mut self, pair: &Pair) -> anyhow::Result<()> {
        match self {
            Sink::BlipJson { out, first } => {
                if !*first {
                    out.write_all(b",")?;
                }
                *first = false;
                out.write_all(b"\n")?;
                serde_json::to_writer(&mut *out, &serde_json::json!({"url": pair.url, "caption": pair.caption}))?;
            }
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, pair)?;
                out.write_all(b"\n")?;
            }
            Sink::Parquet { writer, pending } => {
                pending.push(pair.clone());
                if pending.len() >= PARQUET_BATCH {
                    writer.write(&pair_batch(pending)?)?;
                    pending.clear();
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::BlipJson { mut out, .. } => {
                out.write_all(b"\n]\n")?;
                out.into_inner()?.sync_all()?;
            }
            Sink::Jsonl(out) => out.into_inner()?.sync_all()?,
            Sink::Parquet { mut writer, pending } => {
                if !pending.is_empty() {
                    writer.write(&pair_batch(&pending)?)?;
                }
                writer.close()?;
            }
        }
        Ok(())
    }
}

fn pair_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("url", DataType::Utf8, false),
        Field::new("caption", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("itm", DataType::Float32, true),
    ]))
}

fn pair_batch(pairs: &[Pair]) -> anyhow::Result<RecordBatch> {
    let mut url = StringBuilder::new();
    let mut caption = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut itm = Float32Builder::new();
    for pair in pairs {
        url.append_value(&pair.url);
        caption.append_value(&pair.caption);
        source.append_value(pair.source);
        key.append_value(&pair.key);
        itm.append_option(pair.itm);
    }
    let columns: Vec<Arc<dyn Array>> =
        vec![Arc::new(url.finish()), Arc::new(caption.finish()), Arc::new(source.finish()), Arc::new(key.finish()), Arc::new(itm.finish())];
    Ok(RecordBatch::try_new(pair_schema(), columns)?)
}
