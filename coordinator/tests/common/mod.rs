//! Helpers shared by the integration tests: every input is a real file
//! written into a temporary folder.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use capfilt_coordinator::{read_rows, InputFile, InputRow, ReadOptions, RowProblem};
use flate2::write::GzEncoder;
use flate2::Compression;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, content).unwrap();
    path
}

/// Gzips `content` into `dir/name`.
pub fn write_gz(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    write(dir, name, &gzip(content))
}

pub fn gzip(content: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(content).unwrap();
    encoder.finish().unwrap()
}

/// Reads every row of a file, which must open and read to the end.
pub fn rows(path: &Path, opts: &ReadOptions) -> Vec<InputRow> {
    rows_of(&InputFile::local(path), opts)
}

/// Like [`rows`], under a short label so messages can be compared whole.
pub fn rows_labelled(path: &Path, label: &str, opts: &ReadOptions) -> Vec<InputRow> {
    rows_of(&InputFile::new(path, label), opts)
}

fn rows_of(input: &InputFile, opts: &ReadOptions) -> Vec<InputRow> {
    let mut reader = read_rows(input, opts).unwrap();
    let rows: Vec<InputRow> = reader.by_ref().collect();
    assert!(
        reader.take_failure().is_none(),
        "{} failed part way",
        input.label
    );
    rows
}

/// (url, caption) of each row.
pub fn urls_and_captions(rows: &[InputRow]) -> Vec<(Option<&str>, Option<&str>)> {
    rows.iter()
        .map(|r| (r.url.as_deref(), r.caption.as_deref()))
        .collect()
}

pub fn is_malformed(row: &InputRow) -> bool {
    matches!(row.problem, Some(RowProblem::Malformed(_)))
}

pub fn malformed_message(row: &InputRow) -> &str {
    match &row.problem {
        Some(RowProblem::Malformed(message)) => message,
        other => panic!("row {} is not malformed: {other:?}", row.row_index),
    }
}

/// Options with the given column settings.
pub fn options(url: Option<&str>, caption: Option<&str>) -> ReadOptions {
    ReadOptions {
        url_col: url.map(str::to_string),
        caption_col: caption.map(str::to_string),
        ..ReadOptions::default()
    }
}

/// Writes a LAION-like Parquet file: URL and TEXT strings, an Int64 width, with
/// nulls in TEXT and width, written in row groups of `group_rows`.
pub fn write_laion_parquet(dir: &Path, name: &str, rows: usize, group_rows: usize) -> PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("SAMPLE_ID", DataType::Int64, false),
        Field::new("URL", DataType::Utf8, true),
        Field::new("TEXT", DataType::Utf8, true),
        Field::new("WIDTH", DataType::Int64, true),
    ]));

    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..rows).map(|i| 1000 + i as i64),
    ));
    let urls: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..rows).map(|i| format!("https://img.example/{i}.jpg")),
    ));
    let texts: ArrayRef = Arc::new(StringArray::from_iter(
        (0..rows).map(|i| (i % 3 != 2).then(|| format!("caption {i}"))),
    ));
    let widths: ArrayRef = Arc::new(Int64Array::from_iter(
        (0..rows).map(|i| (i % 5 != 4).then_some(100 + i as i64)),
    ));
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, urls, texts, widths]).unwrap();

    let path = dir.join(name);
    let properties = WriterProperties::builder()
        .set_max_row_group_size(group_rows)
        .build();
    let mut writer =
        ArrowWriter::try_new(fs::File::create(&path).unwrap(), schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}
