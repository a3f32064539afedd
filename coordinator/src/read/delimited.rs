//! CSV and TSV, with or without a header row.
//!
//! Records are assembled from physical lines and split by csv-core. A
//! quoted field may span lines, but an unterminated quote would otherwise
//! swallow the rest of the file into one field. So a record still inside
//! quotes after [`MAX_QUOTED_LINES`] lines (or at the end of the file) is
//! reported as malformed at its first line, and reading starts again on the
//! line after it.

use std::collections::VecDeque;

use csv_core::{ReadRecordResult, ReaderBuilder, Terminator};

use crate::error::InputError;
use crate::read::columns::Positions;
use crate::read::lines::{Line, LineReader};
use crate::read::Record;
use crate::row::ReadOptions;

/// Maximum physical lines one quoted record may span. More is taken for a
/// runaway quote.
// NOTE: 64 is an estimate. Captions in URL lists rarely span more than a few
// lines, but a list with long multi-line fields would see them cut off here.
const MAX_QUOTED_LINES: usize = 64;

/// One record as fields, or why it is not one.
struct RawRecord {
    line: u64,
    fields: Result<Vec<String>, String>,
}

/// Records of a CSV or TSV stream.
pub(crate) struct DelimitedSource {
    lines: LineReader,
    /// Lines read while looking for the end of a runaway quote, to be read
    /// again as records of their own.
    replay: VecDeque<Line>,
    parser: csv_core::Reader,
    delimiter: u8,
    fields: FieldBuffer,
    /// `None` when a header was expected and the file is empty.
    positions: Option<Positions>,
    /// Fields per record: the header's, or the first record's when there is
    /// no header. Other widths mean the columns cannot be trusted.
    width: Option<usize>,
}

impl DelimitedSource {
    /// Opens the stream and, if there is one, reads the header row.
    pub fn open(lines: LineReader, delimiter: u8, opts: &ReadOptions) -> Result<Self, InputError> {
        let mut source = DelimitedSource {
            lines,
            replay: VecDeque::new(),
            parser: parser(delimiter),
            delimiter,
            fields: FieldBuffer::default(),
            positions: None,
            width: None,
        };

        if !opts.header {
            source.positions = Some(Positions::by_index(opts, source.lines.label())?);
            return Ok(source);
        }

        if let Some(names) = source.read_header()? {
            source.positions = Some(Positions::by_name(&names, opts, source.lines.label())?);
            source.width = Some(names.len());
        }
        Ok(source)
    }

    fn read_header(&mut self) -> Result<Option<Vec<String>>, InputError> {
        let Some(raw) = self.next_raw().transpose()? else {
            return Ok(None);
        };

        let names = raw.fields.map_err(InputError::BadHeader)?;
        Ok(Some(
            names.into_iter().map(|n| n.trim().to_string()).collect(),
        ))
    }

    /// Returns the next line, from the replay queue first.
    fn take_line(&mut self) -> Option<Result<Line, InputError>> {
        match self.replay.pop_front() {
            Some(line) => Some(Ok(line)),
            None => self.lines.next_line(),
        }
    }

    /// Assembles the next record from one or more lines.
    fn next_raw(&mut self) -> Option<Result<RawRecord, InputError>> {
        let first = loop {
            let line = match self.take_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.too_long {
                let message = line.too_long_message(self.lines.label(), self.lines.max_bytes());
                return Some(Ok(RawRecord {
                    line: line.number,
                    fields: Err(message),
                }));
            }
            if !line.trimmed().is_empty() {
                break line;
            }
        };

        self.parser.reset();
        self.fields.clear();
        let mut record_lines = vec![first];

        loop {
            let last = record_lines.last().expect("a record has at least one line");
            if self.fields.feed_line(&mut self.parser, &last.bytes) {
                return Some(Ok(self.complete(record_lines)));
            }

            // Still inside a quoted field: the record goes on to the next
            // line, unless the quote has run too far.
            if record_lines.len() >= MAX_QUOTED_LINES {
                let reason = format!("is still open after {MAX_QUOTED_LINES} lines");
                return Some(Ok(self.give_back(record_lines, &reason)));
            }
            match self.take_line() {
                None => return Some(Ok(self.give_back(record_lines, "is never closed"))),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(line)) if line.too_long => {
                    let reason =
                        format!("is still open at line {}, which is too long", line.number);
                    record_lines.push(line);
                    return Some(Ok(self.give_back(record_lines, &reason)));
                }
                Some(Ok(line)) => record_lines.push(line),
            }
        }
    }

    /// Returns the record, unless it spans lines and one of its quotes is
    /// stray.
    ///
    /// csv-core lets text follow a closing quote (`"a"b` reads `ab`). On a
    /// single line that is harmless, so it is accepted. Across lines it means
    /// that another quote further down closed an unbalanced one, so the lines
    /// in between are records of their own.
    fn complete(&mut self, record_lines: Vec<Line>) -> RawRecord {
        if record_lines.len() > 1 && has_stray_quote(&record_lines, self.delimiter) {
            return self.give_back(record_lines, "is closed by a stray quote on a later line");
        }
        self.finish(record_lines[0].number)
    }

    /// Reports a runaway quote at the record's first line and queues the
    /// lines after it to be read again.
    fn give_back(&mut self, mut record_lines: Vec<Line>, reason: &str) -> RawRecord {
        let start = record_lines[0].number;
        let label = self.lines.label();
        let message = format!("{label} line {start}: quoted field {reason}");

        for line in record_lines.drain(1..).rev() {
            self.replay.push_front(line);
        }
        RawRecord {
            line: start,
            fields: Err(message),
        }
    }

    /// Converts the parsed record's fields to strings.
    fn finish(&self, line: u64) -> RawRecord {
        let label = self.lines.label();
        let fields = self.fields.strings().map_err(|column| {
            format!(
                "{label} line {line}: field {} is not valid UTF-8",
                column + 1
            )
        });
        RawRecord { line, fields }
    }

    /// Checks the record's width and takes its wanted cells.
    fn record_from(&mut self, raw: RawRecord, positions: &Positions) -> Record {
        let line = Some(raw.line);
        let fields = match raw.fields {
            Ok(fields) => fields,
            Err(message) => return Record::malformed(line, message),
        };

        let width = *self.width.get_or_insert(fields.len());
        if fields.len() != width {
            let message = format!(
                "{} line {}: expected {width} fields, found {}",
                self.lines.label(),
                raw.line,
                fields.len()
            );
            return Record::malformed(line, message);
        }
        Record::row(line, positions.pick(&fields))
    }
}

impl Iterator for DelimitedSource {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        let positions = self.positions.clone()?;

        let raw = match self.next_raw()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(self.record_from(raw, &positions)))
    }
}

/// Position of a strict CSV scanner within a record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// Just after a `"` inside a quoted field: an escape or the close.
    QuoteInQuoted,
}

/// Checks whether a closing quote in these lines is followed by anything but a
/// delimiter, a line end or another quote (which would make it an escape).
fn has_stray_quote(lines: &[Line], delimiter: u8) -> bool {
    let mut state = Quoting::FieldStart;

    for line in lines {
        for &byte in line.bytes.iter().chain(b"\n") {
            state = match (state, byte) {
                (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                (Quoting::QuoteInQuoted, b'\r' | b'\n') => Quoting::FieldStart,
                (Quoting::QuoteInQuoted, b) if b == delimiter => Quoting::FieldStart,
                (Quoting::QuoteInQuoted, _) => return true,
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (_, b) if b == delimiter || b == b'\n' => Quoting::FieldStart,
                (Quoting::FieldStart, b'"') => Quoting::Quoted,
                (_, _) => Quoting::Unquoted,
            };
        }
    }
    false
}

/// Builds a parser for one record at a time. Lines are split on `\n` only (a `\r`
/// before it is stripped from the last field), so a record ends exactly at
/// the end of a line.
fn parser(delimiter: u8) -> csv_core::Reader {
    ReaderBuilder::new()
        .delimiter(delimiter)
        .terminator(Terminator::Any(b'\n'))
        .quoting(true)
        .double_quote(true)
        .build()
}

/// csv-core's output: the record's field bytes end to end, and where each
/// field ends.
#[derive(Default)]
struct FieldBuffer {
    bytes: Vec<u8>,
    bytes_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
}

impl FieldBuffer {
    fn clear(&mut self) {
        self.bytes_len = 0;
        self.ends_len = 0;
    }

    /// Feeds one line and its newline; true when that completed a record.
    fn feed_line(&mut self, parser: &mut csv_core::Reader, line: &[u8]) -> bool {
        self.feed(parser, line);
        self.feed(parser, b"\n")
    }

    fn feed(&mut self, parser: &mut csv_core::Reader, mut input: &[u8]) -> bool {
        // csv-core takes empty input as the end of the data and would close
        // the record; an empty line inside quotes must not do that.
        if input.is_empty() {
            return false;
        }

        loop {
            let (result, read, written, ended) = parser.read_record(
                input,
                &mut self.bytes[self.bytes_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.bytes_len += written;
            self.ends_len += ended;

            match result {
                ReadRecordResult::InputEmpty => return false,
                ReadRecordResult::OutputFull => grow(&mut self.bytes, 1024),
                ReadRecordResult::OutputEndsFull => grow(&mut self.ends, 16),
                ReadRecordResult::Record | ReadRecordResult::End => return true,
            }
        }
    }

    /// Returns the fields as strings, or the index of the first that is not
    /// UTF-8.
    fn strings(&self) -> Result<Vec<String>, usize> {
        let mut fields = Vec::with_capacity(self.ends_len);
        let mut start = 0;

        for (column, &end) in self.ends[..self.ends_len].iter().enumerate() {
            let mut field = &self.bytes[start..end];
            if column + 1 == self.ends_len {
                field = field.strip_suffix(b"\r").unwrap_or(field);
            }
            let text = std::str::from_utf8(field).map_err(|_| column)?;
            fields.push(text.to_string());
            start = end;
        }
        Ok(fields)
    }
}

fn grow<T: Default + Clone>(buffer: &mut Vec<T>, minimum: usize) {
    let size = (buffer.len() * 2).max(minimum);
    buffer.resize(size, T::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn source(text: &str, opts: &ReadOptions) -> DelimitedSource {
        let input = Box::new(BufReader::new(Cursor::new(text.as_bytes().to_vec())));
        DelimitedSource::open(LineReader::new(input, "t.csv"), b',', opts).unwrap()
    }

    /// A record's line, and its URL or its problem.
    type Summary = (Option<u64>, Result<Option<String>, String>);

    fn summary(records: DelimitedSource) -> Vec<Summary> {
        records
            .map(|r| {
                let r = r.unwrap();
                let url = r.body.map(|p| match p.url {
                    crate::read::Field::Text(s) => Some(s),
                    _ => None,
                });
                (r.line, url)
            })
            .collect()
    }

    #[test]
    fn stray_closing_quote_marks_one_row() {
        let text =
            "url,caption\nhttp://a/1,\"never closed\nhttp://a/2,fine\nhttp://a/3,\"ok\"\"ok\"\n";

        let got = summary(source(text, &ReadOptions::default()));

        assert_eq!(
            got,
            vec![
                (
                    Some(2),
                    Err(
                        "t.csv line 2: quoted field is closed by a stray quote on a later line"
                            .to_string()
                    )
                ),
                (Some(3), Ok(Some("http://a/2".to_string()))),
                (Some(4), Ok(Some("http://a/3".to_string()))),
            ]
        );
    }

    #[test]
    fn stray_quote_vs_escape() {
        let line = |text: &str| Line {
            number: 1,
            bytes: text.as_bytes().to_vec(),
            too_long: false,
        };

        let clean = ["a,\"x\"\"y\",b", "\"multi", "line\",c\r", "a, \"b\"c"];
        let stray = ["a,\"x\"y,b", "\"x\" ,b"];

        for text in clean {
            assert!(!has_stray_quote(&[line(text)], b','), "{text}");
        }
        assert!(!has_stray_quote(&[line(clean[1]), line(clean[2])], b','));
        for text in stray {
            assert!(has_stray_quote(&[line(text)], b','), "{text}");
        }
        assert!(has_stray_quote(&[line("\"x\tq"), line("y\"z")], b'\t'));
    }

    #[test]
    fn open_quote_cut_after_limit() {
        let mut text = String::from("url,caption\nhttp://a/0,\"opens\n");
        for i in 1..=MAX_QUOTED_LINES + 5 {
            text.push_str(&format!("http://a/{i},x\n"));
        }
        text.push_str("http://a/end,\"closes\"\n");

        let got = summary(source(&text, &ReadOptions::default()));

        let cut = "t.csv line 2: quoted field is still open after 64 lines".to_string();
        assert_eq!(got[0], (Some(2), Err(cut)));
        assert_eq!(got[1], (Some(3), Ok(Some("http://a/1".to_string()))));
        assert_eq!(got.len(), MAX_QUOTED_LINES + 7);
    }

    #[test]
    fn quoted_field_multiline_crlf() {
        let text = "url,caption\r\nhttp://a/1,\"two\r\nlines\"\r\nhttp://a/2,x\r\n";

        let records: Vec<Record> = source(text, &ReadOptions::default())
            .map(Result::unwrap)
            .collect();

        let first = records[0].body.as_ref().unwrap();
        assert_eq!(
            first.caption,
            crate::read::Field::Text("two\r\nlines".into())
        );
        assert_eq!(records[1].line, Some(4));
        assert_eq!(
            records[1].body.as_ref().unwrap().caption,
            crate::read::Field::Text("x".into())
        );
    }
}
