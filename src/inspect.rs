//! `capfilt inspect`: a terminal view of one Parquet file (schema, row groups, capfilt metadata
//! and the first rows), for checking a shard without Python or a notebook.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::Args;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;

/// Maximum characters printed for one value, because captions can be very long.
const MAX_VALUE_CHARS: usize = 160;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Parquet file to inspect, such as a shard file written by `capfilt run`.
    pub file: PathBuf,
    /// Rows to print from the start of the file (0 prints none).
    #[arg(long, default_value_t = 5)]
    pub rows: usize,
}

/// Prints the inspection of `args.file` to stdout. A reader that closes the pipe early, such as
/// `head`, ends the output without an error.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let result = inspect(&args.file, args.rows, &mut std::io::stdout().lock());

    let closed_pipe = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
    if closed_pipe {
        return Ok(());
    }
    result
}

/// Prints the schema, row groups, capfilt metadata and first `rows` rows of `path` to `out`.
pub fn inspect(path: &Path, rows: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    let builder = open_parquet(path)?;
    let metadata = builder.metadata().clone();
    let schema = builder.schema().clone();

    writeln!(out, "file: {}", path.display())?;
    writeln!(out, "rows: {}", metadata.file_metadata().num_rows())?;
    if let Some(created_by) = metadata.file_metadata().created_by() {
        writeln!(out, "created by: {}", printable(created_by))?;
    }

    writeln!(out, "\nschema ({} columns):", schema.fields().len())?;
    for field in schema.fields() {
        let nullable = if field.is_nullable() {
            ""
        } else {
            ", not null"
        };
        writeln!(
            out,
            "  {}: {}{nullable}",
            printable(field.name()),
            field.data_type()
        )?;
    }

    write_row_groups(&metadata, out)?;
    write_key_values(&metadata, out)?;

    if rows > 0 {
        let batches = first_batches(builder, rows, path)?;
        write_rows(&batches, out)?;
    }
    Ok(())
}

/// Opens `path` as Parquet, with errors that tell a missing file from one that is not Parquet.
fn open_parquet(path: &Path) -> anyhow::Result<ParquetRecordBatchReaderBuilder<File>> {
    if path.is_dir() {
        bail!(
            "{} is a folder; give one .parquet file (capfilt report reads a whole output folder)",
            path.display()
        );
    }

    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a valid Parquet file", path.display()))
}

fn write_row_groups(metadata: &ParquetMetaData, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "\nrow groups: {}", metadata.num_row_groups())?;
    for (index, group) in metadata.row_groups().iter().enumerate() {
        writeln!(
            out,
            "  {index}: {} rows, {} bytes compressed, {} bytes uncompressed",
            group.num_rows(),
            group.compressed_size(),
            group.total_byte_size()
        )?;
    }
    Ok(())
}

/// Prints the `capfilt.*` key-value metadata, then names the other keys. The Arrow schema key
/// contains base64 that only repeats the schema above, so its value is left out.
fn write_key_values(metadata: &ParquetMetaData, out: &mut dyn Write) -> anyhow::Result<()> {
    let entries = metadata
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let (capfilt, other): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| e.key.starts_with("capfilt."));

    if capfilt.is_empty() {
        writeln!(out, "\ncapfilt metadata: none (not written by capfilt)")?;
    } else {
        writeln!(out, "\ncapfilt metadata:")?;
        for entry in &capfilt {
            let value = entry
                .value
                .as_deref()
                .map(printable)
                .unwrap_or_else(|| "(no value)".into());
            writeln!(out, "  {}: {value}", printable(&entry.key))?;
        }
    }

    if !other.is_empty() {
        let keys: Vec<String> = other.iter().map(|e| printable(&e.key)).collect();
        writeln!(out, "other metadata keys: {}", keys.join(", "))?;
    }
    Ok(())
}

fn first_batches(
    builder: ParquetRecordBatchReaderBuilder<File>,
    rows: usize,
    path: &Path,
) -> anyhow::Result<Vec<RecordBatch>> {
    let reader = builder
        .with_batch_size(rows.min(8192))
        .with_limit(rows)
        .build()
        .with_context(|| format!("failed to read rows of {}", path.display()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("failed to decode rows of {}", path.display()))
}

/// Prints rows as `column: value` records, because shard rows are too wide for a table.
fn write_rows(batches: &[RecordBatch], out: &mut dyn Write) -> anyhow::Result<()> {
    let options = FormatOptions::default().with_null("null");
    let mut printed = 0;

    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        let schema = batch.schema();

        for row in 0..batch.num_rows() {
            writeln!(out, "\nrow {printed}:")?;
            for (field, formatter) in schema.fields().iter().zip(&formatters) {
                let value = formatter.value(row).to_string();
                writeln!(
                    out,
                    "  {}: {}",
                    printable(field.name()),
                    shorten(&printable(&value))
                )?;
            }
            printed += 1;
        }
    }

    if printed == 0 {
        writeln!(out, "\n(the file has no rows)")?;
    }
    Ok(())
}

/// Escapes control characters, because captions come from the web and an escape sequence in one
/// could rewrite the terminal.
fn printable(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

fn shorten(text: &str) -> String {
    let count = text.chars().count();
    if count <= MAX_VALUE_CHARS {
        return text.to_string();
    }

    let prefix: String = text.chars().take(MAX_VALUE_CHARS).collect();
    format!("{prefix}... ({} more characters)", count - MAX_VALUE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable("plain text, é"), "plain text, é");
    }

    #[test]
    fn shorten_cuts_long_values() {
        let long = "x".repeat(MAX_VALUE_CHARS + 40);
        assert_eq!(
            shorten(&long),
            format!("{}... (40 more characters)", "x".repeat(MAX_VALUE_CHARS))
        );
        assert_eq!(shorten("short"), "short");
    }
}
