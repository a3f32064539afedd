//! Shard output: one Parquet file per shard, written under a temporary name and renamed into
//! place when closed, so a file under its final name is always complete.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, BooleanBuilder, Float32Builder, ListBuilder, RecordBatch, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::format::KeyValue;

use crate::status::RowStatus;

/// Columns every shard file has, in order; kept input columns follow them.
pub const FIXED_COLUMNS: [&str; 17] = [
    "key",
    "url",
    "caption",
    "status",
    "error",
    "width",
    "height",
    "image_format",
    "sha256",
    "captions",
    "caption_stops",
    "web_itm",
    "caption_itm",
    "web_itc",
    "caption_itc",
    "keep_web",
    "keep_captions",
];

/// Rows buffered before they are encoded as one record batch.
const BATCH_ROWS: usize = 1024;
/// Row groups are closed at this many rows or bytes, whichever comes first, so readers never
/// need a huge row group in memory even with very long captions.
const ROW_GROUP_ROWS: usize = 8192;
const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// One output row.
#[derive(Debug, Clone, Default)]
pub struct OutputRow {
    pub key: String,
    pub url: Option<String>,
    pub caption: Option<String>,
    pub status: Option<RowStatus>,
    pub error: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub image_format: Option<String>,
    pub sha256: Option<String>,
    /// Generated captions; `None` when the row failed before captioning.
    pub captions: Option<Vec<String>>,
    pub caption_stops: Option<Vec<String>>,
    /// Filter scores; `None` when the filter is off or the row failed.
    pub web_itm: Option<f32>,
    pub caption_itm: Option<Vec<f32>>,
    pub web_itc: Option<f32>,
    pub caption_itc: Option<Vec<f32>>,
    pub keep_web: Option<bool>,
    pub keep_captions: Option<Vec<bool>>,
    pub kept: Vec<Option<String>>,
}

/// Builds the Arrow schema for shard files with the given kept columns.
pub fn schema(kept_columns: &[String]) -> SchemaRef {
    let list_of = |name: &str, item: DataType| Field::new(name, DataType::List(Arc::new(Field::new("item", item, true))), true);
    let list = |name: &str| list_of(name, DataType::Utf8);
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("image_format", DataType::Utf8, true),
        Field::new("sha256", DataType::Utf8, true),
        list("captions"),
        list("caption_stops"),
        Field::new("web_itm", DataType::Float32, true),
        list_of("caption_itm", DataType::Float32),
        Field::new("web_itc", DataType::Float32, true),
        list_of("caption_itc", DataType::Float32),
        Field::new("keep_web", DataType::Boolean, true),
        list_of("keep_captions", DataType::Boolean),
    ];
    fields.extend(kept_columns.iter().map(|name| Field::new(name, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// Checks that kept column names are distinct and do not shadow a fixed output column.
pub fn check_kept_columns(kept_columns: &[String]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for name in kept_columns {
        if FIXED_COLUMNS.contains(&name.as_str()) {
            anyhow::bail!("kept column {name:?} has the same name as an output column; rename it in the input");
        }
        if !seen.insert(name) {
            anyhow::bail!("kept column {name:?} is listed twice");
        }
    }
    Ok(())
}

/// Writes one shard's rows to `dir/{shard_id}.parquet` atomically and returns the final path.
pub fn write_shard(
    dir: &Path,
    shard_id: &str,
    kept_columns: &[String],
    rows: &[OutputRow],
    metadata: &HashMap<String, String>,
) -> anyhow::Result<PathBuf> {
    let final_path = dir.join(format!("{shard_id}.parquet"));
    let temp_path = dir.join(format!(".{shard_id}.parquet.{}.tmp", std::process::id()));

    let result = write_file(&temp_path, kept_columns, rows, metadata);
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temp_path);
        return Err(error);
    }

    std::fs::rename(&temp_path, &final_path)
        .with_context(|| format!("failed to move {} to {}", temp_path.display(), final_path.display()))?;
    Ok(final_path)
}

fn write_file(path: &Path, kept_columns: &[String], rows: &[OutputRow], metadata: &HashMap<String, String>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    let schema = schema(kept_columns);
    let mut key_values: Vec<KeyValue> = metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    key_values.sort_by(|a, b| a.key.cmp(&b.key));
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .set_key_value_metadata(Some(key_values))
        .build();

    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
    for chunk in rows.chunks(BATCH_ROWS) {
        writer.write(&record_batch(&schema, kept_columns.len(), chunk)?)?;
        if writer.in_progress_size() >= ROW_GROUP_BYTES {
            writer.flush()?;
        }
    }

    let file = writer.into_inner()?;
    file.sync_all().with_context(|| format!("failed to sync {}", path.display()))?;
    Ok(())
}

fn record_batch(schema: &SchemaRef, kept: usize, rows: &[OutputRow]) -> anyhow::Result<RecordBatch> {
    let strings = |get: &dyn Fn(&OutputRow) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::new();
        for row in rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let numbers = |get: &dyn Fn(&OutputRow) -> Option<u32>| -> ArrayRef {
        let mut builder = UInt32Builder::new();
        for row in rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let lists = |get: &dyn Fn(&OutputRow) -> Option<&Vec<String>>| -> ArrayRef {
        let mut builder = ListBuilder::new(StringBuilder::new());
        for row in rows {
            match get(row) {
                Some(values) => {
                    for value in values {
                        builder.values().append_value(value);
                    }
                    builder.append(true);
                }
                None => builder.append(false),
            }
        }
        Arc::new(builder.finish())
    };

    let mut columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.key.as_str())),
        strings(&|r| r.url.as_deref()),
        strings(&|r| r.caption.as_deref()),
        strings(&|r| Some(r.status.unwrap_or(RowStatus::Ok).as_str())),
        strings(&|r| r.error.as_deref()),
        numbers(&|r| r.width),
        numbers(&|r| r.height),
        strings(&|r| r.image_format.as_deref()),
        strings(&|r| r.sha256.as_deref()),
        lists(&|r| r.captions.as_ref()),
        lists(&|r| r.caption_stops.as_ref()),
        floats(rows, |r| r.web_itm),
        float_lists(rows, |r| r.caption_itm.as_ref()),
        floats(rows, |r| r.web_itc),
        float_lists(rows, |r| r.caption_itc.as_ref()),
        booleans(rows, |r| r.keep_web),
        boolean_lists(rows, |r| r.keep_captions.as_ref()),
    ];
    for index in 0..kept {
        columns.push(strings(&|r| r.kept.get(index).and_then(|v| v.as_deref())));
    }

    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn floats(rows: &[OutputRow], get: impl Fn(&OutputRow) -> Option<f32>) -> ArrayRef {
    let mut builder = Float32Builder::new();
    for row in rows {
        builder.append_option(get(row));
    }
    Arc::new(builder.finish())
}

fn booleans(rows: &[OutputRow], get: impl Fn(&OutputRow) -> Option<bool>) -> ArrayRef {
    let mut builder = BooleanBuilder::new();
    for row in rows {
        builder.append_option(get(row));
    }
    Arc::new(builder.finish())
}

fn float_lists(rows: &[OutputRow], get: impl Fn(&OutputRow) -> Option<&Vec<f32>>) -> ArrayRef {
    list_column(rows, Float32Builder::new(), get)
}

fn boolean_lists(rows: &[OutputRow], get: impl Fn(&OutputRow) -> Option<&Vec<bool>>) -> ArrayRef {
    list_column(rows, BooleanBuilder::new(), get)
}

/// Builds a nullable list column of `T` values with `values` as the item builder.
fn list_column<T: Copy, B>(rows: &[OutputRow], values: B, get: impl Fn(&OutputRow) -> Option<&Vec<T>>) -> ArrayRef
where
    B: arrow::array::ArrayBuilder + Extend<Option<T>>,
{
    let mut builder = ListBuilder::new(values);
    for row in rows {
        match get(row) {
            Some(items) => {
                builder.values().extend(items.iter().map(|&v| Some(v)));
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ListArray, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn row(key: &str, caption: Option<String>) -> OutputRow {
        OutputRow {
            key: key.into(),
            url: Some(format!("http://127.0.0.1/{key}.jpg")),
            caption,
            status: Some(RowStatus::Ok),
            captions: Some(vec!["a cat".into(), "a dog".into()]),
            caption_stops: Some(vec!["end_token".into(), "max_length".into()]),
            kept: vec![Some("v".into())],
            ..Default::default()
        }
    }

    #[test]
    fn shard_round_trips_long_captions() {
        let dir = tempfile::tempdir().unwrap();
        let long = "word ".repeat(100_000);
        let rows: Vec<OutputRow> = (0..3000).map(|i| row(&format!("k{i}"), (i == 7).then(|| long.clone()))).collect();
        let metadata = HashMap::from([("capfilt.version".to_string(), "test".to_string())]);

        let path = write_shard(dir.path(), "shard-00000", &["extra".into()], &rows, &metadata).unwrap();

        let file = File::open(&path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let kv = builder.metadata().file_metadata().key_value_metadata().unwrap().clone();
        assert!(kv.iter().any(|e| e.key == "capfilt.version" && e.value.as_deref() == Some("test")));
        let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(total, 3000);

        let first = &batches[0];
        let captions = first.column_by_name("caption").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(captions.value(7).len(), long.len());
        assert!(captions.is_null(0));
        let generated = first.column_by_name("captions").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(generated.value(0).len(), 2);
        assert!(first.column_by_name("extra").is_some());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind: {leftovers:?}");
    }

    #[test]
    fn kept_column_named_like_output_rejected() {
        assert!(check_kept_columns(&["status".into()]).is_err());
        assert!(check_kept_columns(&["a".into(), "a".into()]).is_err());
        assert!(check_kept_columns(&["license".into()]).is_ok());
    }
}
