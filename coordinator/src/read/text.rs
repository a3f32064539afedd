//! Plain lists: one URL per line, `#` comments, no columns.

use crate::error::InputError;
use crate::read::lines::LineReader;
use crate::read::{Field, Picked, Record};
use crate::row::ReadOptions;

/// Records of a plain URL list. The whole line (trimmed) is the URL, so
/// commas, quotes, tabs and HTML entities in it are kept as they are.
pub(crate) struct TextSource {
    lines: LineReader,
}

impl TextSource {
    /// Refuses column options, which a plain list cannot honour.
    pub fn open(lines: LineReader, opts: &ReadOptions) -> Result<Self, InputError> {
        let named = [
            ("URL", opts.url_col.as_ref()),
            ("caption", opts.caption_col.as_ref()),
            ("key", opts.key_col.as_ref()),
            ("kept", opts.keep_cols.first()),
        ];

        if let Some((role, Some(name))) = named.into_iter().find(|(_, name)| name.is_some()) {
            return Err(InputError::NoColumnsInText {
                label: lines.label().to_string(),
                role,
                name: name.clone(),
            });
        }
        Ok(TextSource { lines })
    }

    fn record(&self, number: u64, bytes: &[u8]) -> Record {
        let at = Some(number);

        match std::str::from_utf8(bytes) {
            Ok(url) => Record::row(
                at,
                Picked {
                    url: Field::Text(url.to_string()),
                    ..Picked::default()
                },
            ),
            Err(_) => {
                let message = format!("{} line {number}: not valid UTF-8", self.lines.label());
                Record::malformed(at, message)
            }
        }
    }
}

impl Iterator for TextSource {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };

            if line.too_long {
                let message = line.too_long_message(self.lines.label(), self.lines.max_bytes());
                return Some(Ok(Record::malformed(Some(line.number), message)));
            }

            let content = line.trimmed();
            if content.is_empty() || content.starts_with(b"#") {
                continue;
            }
            return Some(Ok(self.record(line.number, content)));
        }
    }
}
