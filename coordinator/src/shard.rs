//! Cutting an input's rows into shards, the unit of work and of output.

use sha2::{Digest, Sha256};

use crate::error::InputError;
use crate::read::RowReader;
use crate::row::{InputFile, InputRow};

/// Hex digits of the label's hash kept in tags: 48 bits, so a collision
/// among even a million inputs is about a one-in-a-million chance.
const TAG_HEX_DIGITS: usize = 12;

/// Returns a short, stable name for an input: the first 12 hex digits of the
/// SHA-256 of its label. Default keys and shard ids start with it.
pub fn input_tag(label: &str) -> String {
    let digest = Sha256::digest(label.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..TAG_HEX_DIGITS].to_string()
}

/// A run of consecutive rows of one input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// `"{input_tag}-{index:05}"`: the same input and shard size give the
    /// same ids on every run, so finished shards can be skipped on resume.
    pub id: String,
    /// The input's label.
    pub input_label: String,
    /// The shard's position in its input, from 0.
    pub index: u64,
    /// The `row_index` of the first row, `index * shard_size`.
    pub first_row: u64,
    /// The rows, at most `shard_size` of them; only the last shard of an
    /// input may be shorter.
    pub rows: Vec<InputRow>,
}

/// Cuts one input's rows into shards of `shard_size` rows.
///
/// Shards never span inputs. If the input fails part way, the rows read
/// since the last full shard are dropped and the error comes instead: a
/// short shard under a full shard's id would be taken for finished work.
/// A `shard_size` of 0 gives one [`InputError::ZeroShardSize`].
pub fn shards(reader: RowReader, input: &InputFile, shard_size: usize) -> Shards {
    Shards {
        reader,
        label: input.label.clone(),
        tag: input_tag(&input.label),
        shard_size,
        next_index: 0,
        done: false,
    }
}

/// The iterator returned by [`shards`].
#[derive(Debug)]
pub struct Shards {
    reader: RowReader,
    label: String,
    tag: String,
    shard_size: usize,
    next_index: u64,
    done: bool,
}

impl Shards {
    fn fail(&mut self, error: InputError) -> Option<Result<Shard, InputError>> {
        self.done = true;
        Some(Err(error))
    }
}

impl Iterator for Shards {
    type Item = Result<Shard, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.shard_size == 0 {
            return self.fail(InputError::ZeroShardSize);
        }

        let rows: Vec<InputRow> = self.reader.by_ref().take(self.shard_size).collect();
        if let Some(error) = self.reader.take_failure() {
            return self.fail(error);
        }
        let Some(first) = rows.first() else {
            self.done = true;
            return None;
        };

        let index = self.next_index;
        self.next_index += 1;
        Some(Ok(Shard {
            id: format!("{}-{index:05}", self.tag),
            input_label: self.label.clone(),
            index,
            first_row: first.row_index,
            rows,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_sha256_prefixes() {
        // sha256("abc") is ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(input_tag("abc"), "ba7816bf8f01");
        assert_eq!(input_tag(""), "e3b0c44298fc");
    }
}
