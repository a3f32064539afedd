//! One JSON array of objects, as BLIP's released bootstrapped datasets
//! (`[{"url": ..., "caption": ...}, ...]`), read element by element.
//!
//! serde_json has no pull parser, so a thread drives the deserializer and a
//! visitor over the sequence sends each element through a bounded channel.
//! The channel's bound is what keeps memory independent of the array's
//! length: the thread blocks until the reader takes more.
//!
//! After a syntax error the parser cannot find the next element again (the
//! error may sit inside a string or a nested value), so the file ends there
//! with one malformed row.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{place, InputError};
use crate::read::columns::JsonColumns;
use crate::read::jsonl::{error_text, json_kind};
use crate::read::Record;

/// Elements parsed ahead of the reader at most.
const CHANNEL_BOUND: usize = 256;

/// A report from the parsing thread.
enum Message {
    /// One array element and the line where it starts.
    Element { line: u64, value: Value },
    /// A syntax error: the message names file, line and column.
    Broken { line: u64, message: String },
    /// Reading the file failed.
    Failed(InputError),
}

/// Records of a JSON array, parsed on a thread of their own.
pub(crate) struct JsonArraySource {
    messages: Receiver<Message>,
    columns: JsonColumns,
    label: String,
    seen_element: bool,
    checked_first: bool,
    /// Elements parsed so far by the thread; lets tests see how far ahead
    /// of the reader it runs.
    #[cfg_attr(not(test), allow(dead_code))]
    parsed: Arc<AtomicU64>,
}

impl JsonArraySource {
    /// Starts the parsing thread. It stops by itself at the end of the
    /// array, at the first error, or once this source is dropped.
    pub fn spawn(
        input: Box<dyn BufRead + Send>,
        columns: JsonColumns,
        label: &str,
    ) -> Result<Self, InputError> {
        let (sender, messages) = mpsc::sync_channel(CHANNEL_BOUND);
        let parsed = Arc::new(AtomicU64::new(0));

        let thread_label = label.to_string();
        let thread_parsed = Arc::clone(&parsed);
        thread::Builder::new()
            .name("json-array".into())
            .spawn(move || parse_array(input, &sender, &thread_label, &thread_parsed))
            .map_err(|e| InputError::io(format!("{label}: cannot start the JSON reader"), e))?;

        Ok(JsonArraySource {
            messages,
            columns,
            label: label.to_string(),
            seen_element: false,
            checked_first: false,
            parsed,
        })
    }

    fn element(&mut self, line: u64, value: Value) -> Result<Record, InputError> {
        let object = match value {
            Value::Object(object) => object,
            other => {
                let found = json_kind(&other);
                let message = format!(
                    "{} line {line}: array element is {found}, not an object",
                    self.label
                );
                return Ok(Record::malformed(Some(line), message));
            }
        };

        if !self.checked_first {
            self.columns.check_first(&object)?;
            self.checked_first = true;
        }
        Ok(Record::row(Some(line), self.columns.pick(&object)))
    }

    #[cfg(test)]
    fn parsed(&self) -> u64 {
        self.parsed.load(Ordering::SeqCst)
    }
}

impl Iterator for JsonArraySource {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        // A closed channel means the thread is done: the array ended, or it
        // already sent the error that ended it.
        let message = self.messages.recv().ok()?;

        match message {
            Message::Element { line, value } => {
                let record = self.element(line, value);
                self.seen_element = true;
                Some(record)
            }
            // Broken before any element: not a JSON array at all, which is
            // a problem of the input, not of a row.
            Message::Broken { message, .. } if !self.seen_element => {
                Some(Err(InputError::NotJsonArray(message)))
            }
            Message::Broken { line, message } => Some(Ok(Record::malformed(Some(line), message))),
            Message::Failed(e) => Some(Err(e)),
        }
    }
}

/// Parses the array on the thread and reports how it ended.
fn parse_array(
    input: Box<dyn BufRead + Send>,
    sender: &SyncSender<Message>,
    label: &str,
    parsed: &AtomicU64,
) {
    let newlines = Rc::new(Cell::new(0));
    let counted = NewlineCounter {
        inner: input,
        newlines: Rc::clone(&newlines),
    };
    let mut deserializer = serde_json::Deserializer::from_reader(counted);

    let visitor = ArrayVisitor {
        sender,
        newlines: &newlines,
        parsed,
    };
    let outcome = deserializer
        .deserialize_seq(visitor)
        .and_then(|()| deserializer.end());

    if let Err(e) = outcome {
        // A send error means the receiver was dropped, so the error is
        // discarded with it.
        let _ = sender.send(ending(e, label));
    }
}

/// Turns the deserializer's error into the message that ends the stream.
fn ending(e: serde_json::Error, label: &str) -> Message {
    let line = e.line() as u64;

    if e.is_io() {
        return Message::Failed(InputError::io(
            place(label, Some(line), 0),
            io::Error::from(e),
        ));
    }
    let message = format!("{label} line {line}: {}", error_text(&e));
    Message::Broken { line, message }
}

/// Counts the newlines among the bytes the deserializer has pulled.
///
/// serde_json reads a `Read` one byte at a time and looks one byte ahead,
/// so when an element's deserialization starts the count covers exactly the
/// lines before that element's first byte.
struct NewlineCounter {
    inner: Box<dyn BufRead + Send>,
    newlines: Rc<Cell<u64>>,
}

impl Read for NewlineCounter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let found = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.newlines.set(self.newlines.get() + found);
        Ok(n)
    }
}

/// Visits the top-level array, sending each element on.
struct ArrayVisitor<'a> {
    sender: &'a SyncSender<Message>,
    newlines: &'a Rc<Cell<u64>>,
    parsed: &'a AtomicU64,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let seed = ElementSeed {
            newlines: self.newlines,
        };

        while let Some((line, value)) = seq.next_element_seed(seed)? {
            self.parsed.fetch_add(1, Ordering::SeqCst);
            if self.sender.send(Message::Element { line, value }).is_err() {
                return Err(de::Error::custom("the reader was dropped"));
            }
        }
        Ok(())
    }
}

/// Deserializes one element and notes the line it starts on.
#[derive(Clone, Copy)]
struct ElementSeed<'a> {
    newlines: &'a Rc<Cell<u64>>,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = (u64, Value);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let line = self.newlines.get() + 1;
        let value = serde::Deserialize::deserialize(deserializer)?;
        Ok((line, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};
    use std::time::{Duration, Instant};

    fn source(text: String) -> JsonArraySource {
        let input = Box::new(BufReader::new(Cursor::new(text.into_bytes())));
        let columns = JsonColumns::new(&Default::default(), "a.json");
        JsonArraySource::spawn(input, columns, "a.json").unwrap()
    }

    fn big_array(elements: usize) -> String {
        let mut text = String::from("[\n");
        for i in 0..elements {
            let comma = if i + 1 < elements { "," } else { "" };
            text.push_str(&format!(
                "{{\"url\": \"http://h.example/{i}.jpg\", \"caption\": \"c{i}\"}}{comma}\n"
            ));
        }
        text.push(']');
        text
    }

    #[test]
    fn parser_thread_bounded_lookahead() {
        let mut records = source(big_array(200_000));

        let first = records.next().unwrap().unwrap();
        // Give the thread time to run ahead as far as it is allowed to.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && records.parsed() < CHANNEL_BOUND as u64 + 1 {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(100));

        assert_eq!(first.line, Some(2));
        let ahead = records.parsed();
        assert!(
            ahead >= CHANNEL_BOUND as u64,
            "the thread parsed only {ahead} elements"
        );
        assert!(
            ahead <= CHANNEL_BOUND as u64 + 2,
            "the thread parsed {ahead} elements ahead"
        );
    }

    #[test]
    fn pretty_elements_line_numbers() {
        let text = "[\n  {\n    \"url\": \"http://a.example/1\"\n  },\n\n  {\"url\": \"http://a.example/2\"}\n]\n";

        let lines: Vec<Option<u64>> = source(text.to_string()).map(|r| r.unwrap().line).collect();

        assert_eq!(lines, vec![Some(2), Some(6)]);
    }
}
