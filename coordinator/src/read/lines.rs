//! Opening inputs (gzip or not) and reading them line by line with a cap on
//! line length, so that no single line can take all memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use flate2::read::MultiGzDecoder;

use crate::error::{place, InputError};
use crate::row::InputFile;

/// The gzip magic number. Inputs are sniffed rather than trusted by name,
/// because a downloaded file's local name may have lost its `.gz`.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A UTF-8 byte order mark, which spreadsheet exports put before the header.
const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// Maximum line length kept. Longer lines are reported and skipped. The
/// value is an estimate: far above any real record, far below a worker's
/// memory.
pub(crate) const MAX_LINE_BYTES: usize = 16 << 20;

const READ_BUFFER: usize = 256 << 10;

/// Describes where the input's bytes are, for messages: the label, plus the local
/// path when the caller downloaded the input somewhere else.
pub(crate) fn file_place(input: &InputFile) -> String {
    let path = input.path.display().to_string();
    if path == input.label {
        return path;
    }
    format!("{} (read from {path})", input.label)
}

/// Opens the raw file, without decompression.
pub(crate) fn open_raw(input: &InputFile) -> Result<BufReader<File>, InputError> {
    let file = File::open(&input.path).map_err(|e| InputError::io(file_place(input), e))?;
    Ok(BufReader::with_capacity(READ_BUFFER, file))
}

/// Checks whether the file starts with the gzip magic number.
pub(crate) fn is_gzip(input: &InputFile) -> Result<bool, InputError> {
    let mut head = Vec::with_capacity(GZIP_MAGIC.len());
    open_raw(input)?
        .take(GZIP_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|e| InputError::io(file_place(input), e))?;
    Ok(head == GZIP_MAGIC)
}

/// Opens the file as a stream of its (decompressed) bytes.
///
/// `MultiGzDecoder` because `.gz` files made by concatenating gzip members
/// (as `cat a.gz b.gz` or parallel compressors do) are common in datasets.
pub(crate) fn open_decoded(input: &InputFile) -> Result<Box<dyn BufRead + Send>, InputError> {
    let gzipped = is_gzip(input)?;
    let raw = open_raw(input)?;

    if gzipped {
        let decoder = MultiGzDecoder::new(raw);
        return Ok(Box::new(BufReader::with_capacity(READ_BUFFER, decoder)));
    }
    Ok(Box::new(raw))
}

/// One physical line, without its `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// 1-based line number.
    pub number: u64,
    /// The bytes, empty when `too_long`.
    pub bytes: Vec<u8>,
    /// Whether the line was longer than the cap and dropped.
    pub too_long: bool,
}

impl Line {
    /// Returns the bytes without surrounding ASCII whitespace (including a `\r`
    /// left by CRLF line ends).
    pub fn trimmed(&self) -> &[u8] {
        self.bytes.trim_ascii()
    }

    /// Formats the message for a line over the cap.
    pub fn too_long_message(&self, label: &str, cap: usize) -> String {
        format!(
            "{label} line {}: line is longer than {cap} bytes",
            self.number
        )
    }
}

/// Physical lines of a stream, numbered from 1.
pub(crate) struct LineReader {
    input: Box<dyn BufRead + Send>,
    label: String,
    next_number: u64,
    max_bytes: usize,
}

impl LineReader {
    pub fn new(input: Box<dyn BufRead + Send>, label: &str) -> Self {
        Self::with_cap(input, label, MAX_LINE_BYTES)
    }

    /// Creates a reader with another line cap, so tests need not write 16 MiB.
    pub fn with_cap(input: Box<dyn BufRead + Send>, label: &str, max_bytes: usize) -> Self {
        LineReader {
            input,
            label: label.to_string(),
            next_number: 1,
            max_bytes,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Reads the next line. Returns `None` at the end, or the read error
    /// with its line number.
    pub fn next_line(&mut self) -> Option<Result<Line, InputError>> {
        let number = self.next_number;
        let mut bytes = Vec::new();

        let (seen, too_long) = match self.read_capped(&mut bytes) {
            Ok(outcome) => outcome,
            Err(e) => return Some(Err(InputError::io(place(&self.label, Some(number), 0), e))),
        };
        if !seen {
            return None;
        }

        if number == 1 && bytes.starts_with(&BOM) {
            bytes.drain(..BOM.len());
        }
        self.next_number += 1;
        Some(Ok(Line {
            number,
            bytes,
            too_long,
        }))
    }

    /// Reads up to and past the next `\n`, keeping at most `max_bytes`.
    /// Returns whether any byte was read and whether the line was cut.
    fn read_capped(&mut self, out: &mut Vec<u8>) -> io::Result<(bool, bool)> {
        let mut seen = false;
        let mut too_long = false;

        loop {
            let buffer = match self.input.fill_buf() {
                Ok(buffer) => buffer,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buffer.is_empty() {
                return Ok((seen, too_long));
            }
            seen = true;

            let newline = buffer.iter().position(|&b| b == b'\n');
            let chunk = &buffer[..newline.unwrap_or(buffer.len())];
            if !too_long && out.len() + chunk.len() > self.max_bytes {
                too_long = true;
                out.clear();
                out.shrink_to_fit();
            }
            if !too_long {
                out.extend_from_slice(chunk);
            }

            let used = newline.map_or(buffer.len(), |i| i + 1);
            self.input.consume(used);
            if newline.is_some() {
                return Ok((true, too_long));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn reader(text: &[u8], cap: usize) -> LineReader {
        let input = BufReader::with_capacity(4, Cursor::new(text.to_vec()));
        LineReader::with_cap(Box::new(input), "t.txt", cap)
    }

    fn all_lines(mut lines: LineReader) -> Vec<Line> {
        std::iter::from_fn(|| lines.next_line())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn lines_numbered_and_capped() {
        // The cap counts raw bytes, BOM included: line 1 has 6.
        let text = b"\xef\xbb\xbfab\r\n\nabcdefghij\nxyz";

        let lines = all_lines(reader(text, 6));

        let got: Vec<(u64, &[u8], bool)> = lines
            .iter()
            .map(|l| (l.number, l.bytes.as_slice(), l.too_long))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, &b"ab\r"[..], false),
                (2, &b""[..], false),
                (3, &b""[..], true),
                (4, &b"xyz"[..], false),
            ]
        );
        assert_eq!(lines[0].trimmed(), b"ab");
    }

    #[test]
    fn final_newline_no_extra_line() {
        let lines = all_lines(reader(b"a\nb\n", 100));

        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].bytes, b"b");
    }
}
