//! Parquet, as in the LAION metadata (`URL`, `TEXT` and many more columns).
//!
//! Only the wanted columns are decoded, one record batch at a time, so
//! memory follows the row group and batch size, not the file.

use std::collections::VecDeque;
use std::fs::File;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::error::InputError;
use crate::read::columns::Positions;
use crate::read::lines::{file_place, is_gzip};
use crate::read::{Field, Picked, Record};
use crate::row::{InputFile, ReadOptions};

/// Rows decoded per batch.
const BATCH_ROWS: usize = 4096;

/// The wanted columns, by name in the projected batches.
#[derive(Debug, Clone)]
struct Names {
    url: String,
    caption: Option<String>,
    key: Option<String>,
    kept: Vec<String>,
}

/// Records of a Parquet file.
pub(crate) struct ParquetSource {
    batches: ParquetRecordBatchReader,
    names: Names,
    label: String,
    /// The current batch's rows, already picked.
    rows: VecDeque<Picked>,
    failed: bool,
}

impl ParquetSource {
    /// Opens the file, finds the columns in its schema and sets up the
    /// projection.
    pub fn open(input: &InputFile, opts: &ReadOptions) -> Result<Self, InputError> {
        let label = input.label.clone();
        if is_gzip(input)? {
            return Err(InputError::GzippedParquet { label });
        }

        let file = File::open(&input.path).map_err(|e| InputError::io(file_place(input), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
            InputError::Parquet {
                label: label.clone(),
                source,
            }
        })?;

        let schema = builder.schema().clone();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let positions = Positions::by_name(&columns, opts, &label)?;
        check_url_type(
            schema.field(positions.url).data_type(),
            &columns[positions.url],
            &label,
        )?;

        // Arrow's top-level fields are the Parquet schema's root columns,
        // in the same order, so schema positions serve as root indices.
        let mask = ProjectionMask::roots(builder.parquet_schema(), positions.all());
        let batches = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|source| InputError::Parquet {
                label: label.clone(),
                source,
            })?;

        let name = |i: usize| columns[i].clone();
        let names = Names {
            url: name(positions.url),
            caption: positions.caption.map(name),
            key: positions.key.map(name),
            kept: positions.kept.iter().map(|&i| name(i)).collect(),
        };
        Ok(ParquetSource {
            batches,
            names,
            label,
            rows: VecDeque::new(),
            failed: false,
        })
    }

    /// Decodes the next batch into rows; false at the end of the file.
    fn refill(&mut self) -> Result<bool, InputError> {
        let batch = match self.batches.next() {
            None => return Ok(false),
            Some(batch) => batch.map_err(|source| self.arrow_error(source))?,
        };

        let column = |name: &str| -> Result<Vec<Field>, InputError> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| self.arrow_error(missing(name)))?;
            cells(array).map_err(|source| self.arrow_error(source))
        };
        let optional = |name: &Option<String>| -> Result<Vec<Field>, InputError> {
            match name {
                Some(name) => column(name),
                None => Ok(vec![Field::Absent; batch.num_rows()]),
            }
        };

        let url = column(&self.names.url)?;
        let caption = optional(&self.names.caption)?;
        let key = optional(&self.names.key)?;
        let kept = self
            .names
            .kept
            .iter()
            .map(|n| column(n))
            .collect::<Result<Vec<_>, _>>()?;

        self.rows = zip_rows(&batch, url, caption, key, kept);
        Ok(true)
    }

    fn arrow_error(&self, source: ArrowError) -> InputError {
        InputError::Arrow {
            label: self.label.clone(),
            source,
        }
    }
}

impl Iterator for ParquetSource {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Batches may be empty, so refill until a row or the end shows up.
        while self.rows.is_empty() && !self.failed {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }

        let picked = self.rows.pop_front()?;
        Some(Ok(Record::row(None, picked)))
    }
}

/// Turns per-column cells into per-row picks.
fn zip_rows(
    batch: &RecordBatch,
    url: Vec<Field>,
    caption: Vec<Field>,
    key: Vec<Field>,
    kept: Vec<Vec<Field>>,
) -> VecDeque<Picked> {
    let mut kept: Vec<std::vec::IntoIter<Field>> = kept.into_iter().map(Vec::into_iter).collect();
    let mut rows = VecDeque::with_capacity(batch.num_rows());

    for ((url, caption), key) in url.into_iter().zip(caption).zip(key) {
        let kept = kept
            .iter_mut()
            .map(|c| c.next().unwrap_or_default())
            .collect();
        rows.push_back(Picked {
            url,
            caption,
            key,
            kept,
        });
    }
    rows
}

fn missing(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!("projected batch lacks column `{name}`"))
}

/// Only string columns can hold URLs; anything else means the wrong column
/// was picked, which should stop the input rather than fail every row.
fn check_url_type(data_type: &DataType, name: &str, label: &str) -> Result<(), InputError> {
    if is_string(data_type) {
        return Ok(());
    }
    Err(InputError::UrlColumnType {
        label: label.to_string(),
        name: name.to_string(),
        data_type: data_type.to_string(),
    })
}

fn is_string(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// Converts one column to cells: strings as text, nulls as absent, other types as
/// Arrow displays them.
fn cells(array: &ArrayRef) -> Result<Vec<Field>, ArrowError> {
    match array.data_type() {
        DataType::Utf8 => Ok(texts(array.as_string::<i32>().iter())),
        DataType::LargeUtf8 => Ok(texts(array.as_string::<i64>().iter())),
        DataType::Utf8View => Ok(texts(array.as_string_view().iter())),
        DataType::Dictionary(_, values) if is_string(values) => {
            let plain = arrow::compute::cast(array, &DataType::Utf8)?;
            cells(&plain)
        }
        _ => displayed(array),
    }
}

fn texts<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Field> {
    values
        .map(|v| v.map_or(Field::Absent, |s| Field::Text(s.to_string())))
        .collect()
}

fn displayed(array: &ArrayRef) -> Result<Vec<Field>, ArrowError> {
    let options = FormatOptions::default();
    let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;

    let cell = |i: usize| match array.is_null(i) {
        true => Field::Absent,
        false => Field::Other(formatter.value(i).to_string()),
    };
    Ok((0..array.len()).map(cell).collect())
}
