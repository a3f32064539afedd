//! Reading URL lists row by row, whatever their format.
//!
//! Each format has a record source that turns bytes into [`Record`]s: the
//! wanted cells of one row, or the reason the row could not be parsed.
//! [`RowReader`] then gives every record its index, key and URL verdict,
//! the same way for all formats.

mod columns;
mod delimited;
mod json_array;
mod jsonl;
mod lines;
mod parquet;
mod text;

use std::collections::VecDeque;
use std::fmt;

use crate::check::check_url;
use crate::error::{place, InputError, RowProblem};
use crate::format::InputFormat;
use crate::row::{InputFile, InputRow, ReadOptions};
use crate::shard::input_tag;

use columns::JsonColumns;
use lines::{open_decoded, LineReader};

/// Records read ahead at most while looking for the first JSON object, whose
/// keys are checked like a header.
const FIRST_OBJECT_LOOKAHEAD: usize = 64;

/// Maximum length of a non-string URL value quoted in a message.
const MAX_QUOTED_VALUE: usize = 80;

/// One cell of a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Field {
    /// No such column in this record, or a null.
    #[default]
    Absent,
    /// A string value.
    Text(String),
    /// A value of another type, as text (JSON text, or Arrow's display).
    Other(String),
}

impl Field {
    fn into_text(self) -> Option<String> {
        match self {
            Field::Absent => None,
            Field::Text(s) | Field::Other(s) => Some(s),
        }
    }
}

/// The cells a row needs, in the order of [`ReadOptions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Picked {
    pub url: Field,
    pub caption: Field,
    pub key: Field,
    pub kept: Vec<Field>,
}

/// One data row as a format source reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The 1-based line the row starts on, if the format has lines.
    pub line: Option<u64>,
    /// The cells, or a message naming file and line.
    pub body: Result<Picked, String>,
}

impl Record {
    fn row(line: Option<u64>, picked: Picked) -> Self {
        Record {
            line,
            body: Ok(picked),
        }
    }

    fn malformed(line: Option<u64>, message: String) -> Self {
        Record {
            line,
            body: Err(message),
        }
    }
}

/// A format source: records, or an error that ends the input.
type Source = Box<dyn Iterator<Item = Result<Record, InputError>> + Send>;

/// Opens one input for reading rows.
///
/// Fails on input-level problems: an unreadable file, an unknown format, a
/// named column that the header, schema or first JSON object lacks, or no
/// URL column at all. Row-level problems come back as rows instead.
pub fn read_rows(input: &InputFile, opts: &ReadOptions) -> Result<RowReader, InputError> {
    let format = format_of(input, opts)?;
    let label = input.label.as_str();

    let source: Source = match format {
        InputFormat::Parquet => Box::new(parquet::ParquetSource::open(input, opts)?),
        InputFormat::Text => Box::new(text::TextSource::open(lines(input)?, opts)?),
        InputFormat::Csv => Box::new(delimited::DelimitedSource::open(lines(input)?, b',', opts)?),
        InputFormat::Tsv => Box::new(delimited::DelimitedSource::open(
            lines(input)?,
            b'\t',
            opts,
        )?),
        InputFormat::Jsonl => {
            let columns = JsonColumns::new(opts, label);
            look_ahead(Box::new(jsonl::JsonlSource::new(lines(input)?, columns)))?
        }
        InputFormat::Json => {
            let columns = JsonColumns::new(opts, label);
            let source = json_array::JsonArraySource::spawn(open_decoded(input)?, columns, label)?;
            look_ahead(Box::new(source))?
        }
    };

    Ok(RowReader::new(label, opts, source))
}

/// Picks the format from the options, else from the local name, else from the
/// label (a downloaded file may sit under a temporary name).
fn format_of(input: &InputFile, opts: &ReadOptions) -> Result<InputFormat, InputError> {
    if let Some(format) = opts.format {
        return Ok(format);
    }

    let local_name = input.path.to_string_lossy();
    InputFormat::from_file_name(&local_name)
        .or_else(|| InputFormat::from_file_name(&input.label))
        .ok_or_else(|| InputError::UnknownFormat {
            label: input.label.clone(),
        })
}

fn lines(input: &InputFile) -> Result<LineReader, InputError> {
    Ok(LineReader::new(open_decoded(input)?, &input.label))
}

/// Reads a JSON source up to its first object, so that an error from
/// checking that object's keys (or an unreadable start) fails the input
/// here rather than later as a mid-stream failure. What was read is handed
/// on first.
fn look_ahead(mut source: Source) -> Result<Source, InputError> {
    let mut read = VecDeque::new();

    while read.len() < FIRST_OBJECT_LOOKAHEAD {
        match source.next() {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(record)) => {
                let parsed = record.body.is_ok();
                read.push_back(Ok(record));
                if parsed {
                    break;
                }
            }
        }
    }

    Ok(Box::new(read.into_iter().chain(source)))
}

/// The rows of one input, read as they are asked for.
///
/// Rows that cannot be parsed or have a bad URL still come out, marked with
/// a [`RowProblem`], so that row indices and keys stay the same whatever
/// goes wrong. An error that ends the input early (a read error, a corrupt
/// gzip stream or Parquet page) ends the iteration instead and is kept for
/// [`RowReader::take_failure`]: without that check a truncated file would
/// pass for a short one.
pub struct RowReader {
    label: String,
    tag: String,
    key_col: Option<String>,
    kept_len: usize,
    source: Source,
    next_row: u64,
    failure: Option<InputError>,
    finished: bool,
}

impl RowReader {
    fn new(label: &str, opts: &ReadOptions, source: Source) -> Self {
        RowReader {
            label: label.to_string(),
            tag: input_tag(label),
            key_col: opts.key_col.clone(),
            kept_len: opts.keep_cols.len(),
            source,
            next_row: 0,
            failure: None,
            finished: false,
        }
    }

    /// Returns the input's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Returns how many rows have been handed out so far.
    pub fn rows_read(&self) -> u64 {
        self.next_row
    }

    /// Takes the error that ended the input early, if one did. Call it once the
    /// iterator is exhausted; `None` then means the whole input was read.
    pub fn take_failure(&mut self) -> Option<InputError> {
        self.failure.take()
    }

    /// Gives a record its index, key and URL verdict.
    fn shape(&self, record: Record, row_index: u64) -> InputRow {
        let line = record.line;
        let picked = match record.body {
            Ok(picked) => picked,
            Err(message) => return self.malformed_row(line, row_index, message),
        };

        let (url, url_problem) = judge_url(picked.url);
        let (key, key_problem) = self.key_of(picked.key, line, row_index);

        InputRow {
            key,
            row_index,
            line,
            url,
            caption: picked.caption.into_text(),
            kept: picked.kept.into_iter().map(Field::into_text).collect(),
            // A row without its key is the worse problem: its output could
            // not be joined back to the user's data even if it captioned.
            problem: key_problem.or(url_problem),
        }
    }

    fn malformed_row(&self, line: Option<u64>, row_index: u64, message: String) -> InputRow {
        InputRow {
            key: self.default_key(row_index),
            row_index,
            line,
            url: None,
            caption: None,
            kept: vec![None; self.kept_len],
            problem: Some(RowProblem::Malformed(message)),
        }
    }

    fn default_key(&self, row_index: u64) -> String {
        format!("{}:{row_index}", self.tag)
    }

    /// The row's key: the key column's value when one is configured and the
    /// row has it, else the default key (with a problem if it should have).
    fn key_of(
        &self,
        field: Field,
        line: Option<u64>,
        row_index: u64,
    ) -> (String, Option<RowProblem>) {
        let Some(name) = &self.key_col else {
            return (self.default_key(row_index), None);
        };

        match field.into_text() {
            Some(key) if !key.trim().is_empty() => (key, None),
            _ => {
                let at = place(&self.label, line, row_index);
                let problem = RowProblem::Malformed(format!("{at}: key column `{name}` is empty"));
                (self.default_key(row_index), Some(problem))
            }
        }
    }
}

/// Returns the URL to keep and its problem, if any.
fn judge_url(field: Field) -> (Option<String>, Option<RowProblem>) {
    let text = match field {
        Field::Absent => return (None, Some(RowProblem::MissingUrl)),
        Field::Other(value) => {
            let reason = format!("expected a string, found `{}`", shorten(&value));
            return (Some(value), Some(RowProblem::InvalidUrl(reason)));
        }
        Field::Text(text) => text,
    };

    let url = text.trim();
    match check_url(url) {
        Ok(()) => (Some(url.to_string()), None),
        Err(RowProblem::MissingUrl) => (None, Some(RowProblem::MissingUrl)),
        Err(problem) => (Some(url.to_string()), Some(problem)),
    }
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_VALUE) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

impl Iterator for RowReader {
    type Item = InputRow;

    fn next(&mut self) -> Option<InputRow> {
        if self.finished {
            return None;
        }

        let record = match self.source.next() {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                self.failure = Some(e);
                self.finished = true;
                return None;
            }
            None => {
                self.finished = true;
                return None;
            }
        };

        let row_index = self.next_row;
        self.next_row += 1;
        Some(self.shape(record, row_index))
    }
}

impl fmt::Debug for RowReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowReader")
            .field("label", &self.label)
            .field("rows_read", &self.next_row)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_verdicts_keep_the_trimmed_text() {
        let cases = [
            (
                Field::Text(" http://a.example/x.jpg ".into()),
                Some("http://a.example/x.jpg"),
                None,
            ),
            (Field::Text("  ".into()), None, Some(RowProblem::MissingUrl)),
            (Field::Absent, None, Some(RowProblem::MissingUrl)),
            (
                Field::Text("ftp://a/b".into()),
                Some("ftp://a/b"),
                Some(RowProblem::InvalidUrl("unsupported scheme `ftp`".into())),
            ),
            (
                Field::Other("42".into()),
                Some("42"),
                Some(RowProblem::InvalidUrl(
                    "expected a string, found `42`".into(),
                )),
            ),
        ];

        for (field, url, problem) in cases {
            let field_text = format!("{field:?}");
            assert_eq!(
                judge_url(field),
                (url.map(str::to_string), problem),
                "{field_text}"
            );
        }
    }

    #[test]
    fn long_values_are_cut_on_char_boundaries() {
        let value = "é".repeat(100);

        let short = shorten(&value);

        assert_eq!(short.chars().count(), MAX_QUOTED_VALUE + 3);
        assert!(short.ends_with("..."));
    }
}
