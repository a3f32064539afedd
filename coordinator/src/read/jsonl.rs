//! JSON Lines: one object per line.

use serde_json::Value;

use crate::error::InputError;
use crate::read::columns::JsonColumns;
use crate::read::lines::LineReader;
use crate::read::Record;

/// Records of a JSON Lines stream. Blank lines are skipped and are not
/// rows. A line that is not a JSON object is a malformed row, and reading
/// continues with the next line.
pub(crate) struct JsonlSource {
    lines: LineReader,
    columns: JsonColumns,
    checked_first: bool,
}

impl JsonlSource {
    pub fn new(lines: LineReader, columns: JsonColumns) -> Self {
        JsonlSource {
            lines,
            columns,
            checked_first: false,
        }
    }

    fn parse(&mut self, number: u64, bytes: &[u8]) -> Result<Record, InputError> {
        let label = self.lines.label();
        let at = Some(number);

        let object = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                let found = json_kind(&other);
                let message =
                    format!("{label} line {number}: expected a JSON object, found {found}");
                return Ok(Record::malformed(at, message));
            }
            Err(e) => {
                let message = format!("{label} line {number}: {}", error_text(&e));
                return Ok(Record::malformed(at, message));
            }
        };

        if !self.checked_first {
            self.columns.check_first(&object)?;
            self.checked_first = true;
        }
        Ok(Record::row(at, self.columns.pick(&object)))
    }
}

impl Iterator for JsonlSource {
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
            if line.trimmed().is_empty() {
                continue;
            }
            // The untrimmed bytes, so that error columns match the file.
            return Some(self.parse(line.number, &line.bytes));
        }
    }
}

/// Returns a serde_json message without its "at line L column C" tail, with the
/// column put back: within one line the line number is the caller's.
pub(crate) fn error_text(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let tail = format!(" at line {} column {}", e.line(), e.column());
    let bare = full.strip_suffix(&tail).unwrap_or(&full);

    match e.column() {
        0 => bare.to_string(),
        column => format!("{bare} at column {column}"),
    }
}

/// Names the kind of a JSON value, for messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_keeps_the_column_only() {
        let e = serde_json::from_str::<Value>("{\"a\": }").unwrap_err();

        assert_eq!(error_text(&e), "expected value at column 7");
    }
}
