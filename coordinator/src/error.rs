//! Errors of the URL-list readers: [`InputError`] stops a whole input,
//! [`RowProblem`] marks one row and lets the reader go on.

use std::fmt;
use std::io;

/// A problem that stops reading one input (or resolving a pattern).
///
/// Messages about one input start with its label, and with the line when
/// one is known, so that a user with thousands of inputs can find the
/// culprit.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A pattern matched no file.
    #[error("`{pattern}` matches no input file")]
    NoMatch {
        /// The pattern as the user gave it.
        pattern: String,
    },

    /// A glob pattern could not be parsed.
    #[error("`{pattern}` is not a valid glob pattern: {source}")]
    BadPattern {
        /// The pattern as the user gave it.
        pattern: String,
        /// The glob parser's error.
        source: glob::PatternError,
    },

    /// A file or folder could not be opened, listed or read.
    #[error("{place}: {source}")]
    Io {
        /// The label, the path when it differs, and the line when known.
        place: String,
        /// The operating system's error.
        source: io::Error,
    },

    /// A format name given by the user is not one of the supported ones.
    #[error("unknown input format `{0}`; expected json, jsonl, csv, tsv, txt or parquet")]
    UnknownFormatName(String),

    /// The format could not be detected from the file name.
    #[error(
        "{label}: cannot tell the format from the name; give it explicitly \
         (json, jsonl, csv, tsv, txt or parquet)"
    )]
    UnknownFormat {
        /// The input's label.
        label: String,
    },

    /// A gzip-compressed Parquet file: Parquet compresses its pages itself,
    /// and its reader needs random access, which a gzip stream does not give.
    #[error("{label}: Parquet files cannot be read through gzip; decompress the file first")]
    GzippedParquet {
        /// The input's label.
        label: String,
    },

    /// A column named in the options is not in the header or schema.
    #[error("{label}: no {role} column `{name}`; available columns: {available}")]
    MissingColumn {
        /// The input's label.
        label: String,
        /// The option that named it: "URL", "caption", "key" or "kept".
        role: &'static str,
        /// The name the user gave.
        name: String,
        /// The columns the input has, comma-separated.
        available: String,
    },

    /// None of the default URL column names is in the header or schema.
    #[error("{label}: no URL column (tried {tried}); available columns: {available}")]
    NoUrlColumn {
        /// The input's label.
        label: String,
        /// The default names that were tried, comma-separated.
        tried: String,
        /// The columns the input has, comma-separated.
        available: String,
    },

    /// A headerless file was given a column name instead of an index.
    #[error(
        "{label}: has no header row, so the {role} column must be a 0-based index, not `{name}`"
    )]
    ColumnNotIndex {
        /// The input's label.
        label: String,
        /// The option that named it.
        role: &'static str,
        /// The name the user gave.
        name: String,
    },

    /// Column options were given for a plain list of URLs, which has none.
    #[error("{label}: a text list has one URL per line and no columns, but the {role} column `{name}` was asked for")]
    NoColumnsInText {
        /// The input's label.
        label: String,
        /// The option that named it.
        role: &'static str,
        /// The name the user gave.
        name: String,
    },

    /// The Parquet URL column contains something other than strings.
    #[error("{label}: URL column `{name}` has type {data_type}, expected strings")]
    UrlColumnType {
        /// The input's label.
        label: String,
        /// The column's name.
        name: String,
        /// The Arrow type found.
        data_type: String,
    },

    /// The header row itself could not be parsed.
    #[error("{0}")]
    BadHeader(String),

    /// A JSON file that is not an array of objects, or broken before its
    /// first element.
    #[error("{0}")]
    NotJsonArray(String),

    /// The Parquet reader failed (bad footer, corrupt page, ...).
    #[error("{label}: {source}")]
    Parquet {
        /// The input's label.
        label: String,
        /// The Parquet crate's error.
        source: parquet::errors::ParquetError,
    },

    /// Converting a Parquet column to strings failed.
    #[error("{label}: {source}")]
    Arrow {
        /// The input's label.
        label: String,
        /// The Arrow crate's error.
        source: arrow::error::ArrowError,
    },

    /// Shards of zero rows were asked for.
    #[error("the shard size must be at least 1")]
    ZeroShardSize,
}

impl InputError {
    /// Builds an I/O error at `place`, a location as [`place`] formats it.
    pub(crate) fn io(place: String, source: io::Error) -> Self {
        InputError::Io { place, source }
    }
}

/// Formats a location: "urls.jsonl line 7", or "urls.parquet row 7"
/// for formats without lines (Parquet rows are counted from 0, like keys).
pub(crate) fn place(label: &str, line: Option<u64>, row_index: u64) -> String {
    match line {
        Some(line) => format!("{label} line {line}"),
        None => format!("{label} row {row_index}"),
    }
}

/// The reason one row cannot be captioned. The reader marks the row and
/// continues.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowProblem {
    /// The URL field is absent, empty, blank or a null marker.
    MissingUrl,
    /// The URL is present but unusable. The text gives the reason (e.g. its scheme).
    InvalidUrl(String),
    /// The record itself could not be parsed; the text names file and line.
    Malformed(String),
}

impl RowProblem {
    /// Returns the message with file and line in front, for logs and reports.
    ///
    /// `Malformed` already carries its place, because the parser that found
    /// it knew the exact line and column. The URL problems come from
    /// [`crate::check_url`], which gets only the string.
    pub fn located(&self, label: &str, line: Option<u64>, row_index: u64) -> String {
        match self {
            RowProblem::Malformed(message) => message.clone(),
            other => format!("{}: {other}", place(label, line, row_index)),
        }
    }
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowProblem::MissingUrl => f.write_str("missing URL"),
            RowProblem::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            RowProblem::Malformed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RowProblem {}
