//! Reader inputs and outputs: options, files and rows.

use std::path::{Path, PathBuf};

use crate::error::RowProblem;
use crate::format::InputFormat;

/// How to read one URL list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// The format, or `None` to detect it from the file name (after any `.gz`).
    pub format: Option<InputFormat>,
    /// The URL column: a name, or a 0-based index in headerless CSV/TSV.
    /// `None` tries `url`, `URL`, `image_url` (index 1 when headerless).
    pub url_col: Option<String>,
    /// The caption column, named like `url_col`. `None` tries `caption`,
    /// `TEXT`, `text` (index 0 when headerless) and reads no caption when
    /// none of them exists.
    pub caption_col: Option<String>,
    /// A column whose value becomes the row's key instead of the position.
    pub key_col: Option<String>,
    /// Further columns carried to the output as strings, in this order.
    pub keep_cols: Vec<String>,
    /// Whether CSV/TSV files start with a header row. `false` reads
    /// Conceptual Captions style TSV (caption, then URL) by index.
    pub header: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: None,
            url_col: None,
            caption_col: None,
            key_col: None,
            keep_cols: Vec::new(),
            header: true,
        }
    }
}

/// One input file, with the name the user knows it by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputFile {
    /// The local path of the bytes.
    pub path: PathBuf,
    /// The location as the user gave it: the path itself, or e.g. the https
    /// URL the caller downloaded to `path`. Keys, shard ids and messages
    /// derive from it, so it must not change between runs.
    pub label: String,
}

impl InputFile {
    /// Creates a file whose label is its path as given.
    pub fn local(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let label = path.display().to_string();
        InputFile { path, label }
    }

    /// Creates a file read from `path` but known to the user as `label`.
    pub fn new(path: impl Into<PathBuf>, label: impl Into<String>) -> Self {
        InputFile {
            path: path.into(),
            label: label.into(),
        }
    }
}

/// One data row of a URL list. It serializes so that a coordinator can hand
/// a shard's rows to workers on other machines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputRow {
    /// The `key_col` value, or `"{input_tag}:{row_index}"`.
    pub key: String,
    /// The row's position among the data rows of its file, from 0, counting
    /// malformed rows too, so positions do not depend on what parsed.
    pub row_index: u64,
    /// The 1-based line where the row starts; `None` for Parquet.
    pub line: Option<u64>,
    /// The URL as given, trimmed; `None` when missing or unreadable.
    pub url: Option<String>,
    /// The caption as given; `None` when the list has none for this row.
    pub caption: Option<String>,
    /// The `keep_cols` values in their order; `None` for null or absent.
    pub kept: Vec<Option<String>>,
    /// The reason the row cannot be captioned, if any.
    pub problem: Option<RowProblem>,
}
